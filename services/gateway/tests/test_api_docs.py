"""The documentation the gateway serves itself: the Swagger UI page at / with its assets
(``swagger_ui.py``), and /v1/swagger.json built once per process and revalidated by ETag
(``apidoc.swagger_json``). The page in a real browser: tests/e2e/test_api_docs_browser.py."""
import re
from html.parser import HTMLParser

from services.gateway import apidoc, swagger_ui
from services.gateway.tests.test_gateway import (assert_problem, gateway, gateway_config,  # noqa: F401
                                                 issuer, start_gateway)


class References(HTMLParser):
    """Every URL a page refers to (src, href), in order."""

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in ("src", "href", "data-description")]


def references(page: str) -> list:
    parser = References()
    parser.feed(page)
    return parser.urls


def test_the_page_loads_swagger_ui_from_the_gateway_only(gateway, web_session):
    response = web_session.get("/")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert f"<title>{apidoc.title()}</title>" in response.text
    urls = references(response.text)
    assert "swagger-ui/swagger-ui-bundle.js" in urls and f"swagger-ui/{swagger_ui.START_SCRIPT}" in urls
    assert "v1/swagger.json" in urls
    for url in urls:
        assert not re.match(r"^[a-z]+:|^//|^/", url), url  # relative: the gateway's own, under any prefix
        asset = web_session.get(f"/{url}")
        assert asset.status_code == 200 and asset.content, url
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    host = web_session.get("/v1/swagger.json").json()["host"]
    assert f"connect-src 'self' http://{host};" in policy


def test_assets_have_their_media_types_and_other_names_are_not_found(gateway, web_session):
    for name, content_type in swagger_ui.BUNDLED_ASSETS.items():
        response = web_session.get(f"/swagger-ui/{name}")
        assert response.status_code == 200 and response.headers["Content-Type"] == content_type, name
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    script = web_session.get(f"/swagger-ui/{swagger_ui.START_SCRIPT}")
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert "validatorUrl: null" in script.text  # the page sends the description nowhere
    for name in ("index.html", "swagger-ui.js.map", "..%2f__init__.py", "swagger-initializer.js"):
        assert_problem(web_session.get(f"/swagger-ui/{name}"), 404, "not_found")


def test_the_description_is_served_from_one_build_and_revalidated_by_etag(gateway, web_session):
    first = web_session.get("/v1/swagger.json")
    assert first.status_code == 200 and first.headers["Content-Type"] == "application/json"
    etag = first.headers["ETag"]
    assert first.headers["Cache-Control"] == "no-cache"
    again = web_session.get("/v1/swagger.json")
    assert again.content == first.content and again.headers["ETag"] == etag
    unchanged = web_session.get("/v1/swagger.json", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert web_session.get("/v1/swagger.json", headers={"If-None-Match": '"other"'}).status_code == 200
    page = web_session.get("/")
    assert web_session.get("/", headers={"If-None-Match": page.headers["ETag"]}).status_code == 304


def test_each_host_gets_its_own_description(gateway, web_session, web_config_port):
    local = web_session.get("/v1/swagger.json", headers={"Host": f"localhost:{web_config_port}"})
    loopback = web_session.get("/v1/swagger.json", headers={"Host": f"127.0.0.1:{web_config_port}"})
    assert local.json()["host"] == f"localhost:{web_config_port}"
    assert loopback.json()["host"] == f"127.0.0.1:{web_config_port}"
    assert local.headers["ETag"] != loopback.headers["ETag"]
    # the cached bytes are what swagger_document builds
    assert loopback.json() == apidoc._build(f"http://127.0.0.1:{web_config_port}", *_token_settings(loopback.json()))


def _token_settings(doc):
    security = doc["securityDefinitions"][apidoc.SECURITY_NAME]
    return security["x-audience"], security["x-email-claim"], security["x-group-claim"]


def test_a_public_url_is_the_base_of_the_description_and_the_pages_policy(container_factory, gateway_config,
                                                                           web_session):
    start_gateway(container_factory, {**gateway_config, "DSS_PUBLIC_URL": "https://dss.example.org/prefix/"})
    doc = web_session.get("/v1/swagger.json").json()
    assert (doc["schemes"], doc["host"], doc["basePath"]) == (["https"], "dss.example.org", "/prefix/v1")
    assert "connect-src 'self' https://dss.example.org;" in web_session.get("/").headers["Content-Security-Policy"]
