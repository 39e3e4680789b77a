"""The API documentation page at / in a real browser: headless Chromium (Debian's `chromium`, driven
through its `chromedriver` by Selenium) against the e2e stack, over HTTP and over HTTPS (the
development CA of devtools.certificates, as `make up TLS=1` serves; the browser trusts that one key only).

The test opens /, authorizes with a bearer token pasted as `make token` prints it, runs "Try it out"
on a write that needs it (PUT /v1/collections) and on GET /v1/bundles/{uuid} for a bundle it stored,
and sees the answers (201, 200) rendered. Every request
the page makes is read from Chrome's performance log (the DevTools Network events): all go to the
gateway. The browser resolves no other name at all (`--host-resolver-rules`), so the page is shown
to work with no network beyond the gateway. A screenshot of the answered operation is kept at
var/screenshots/api-docs.png (api-docs-https.png over HTTPS) for people to look at.

`.ci/run` installs chromium and chromium-driver when they are missing; without them this test fails
(it does not skip) and says how to install them.
"""
import base64
import hashlib
import json
import pathlib
import shutil
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import Select, WebDriverWait

from devtools import http
from devtools.certificates import ensure_dev_certificate
from shared.identifiers import new_uuid, new_version
from tests.e2e.conftest import start_api
from tests.e2e.test_http_api import put_file

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = pathlib.Path(__file__).resolve().parents[2] / "var" / "screenshots"
WAIT_S = 60


@pytest.fixture(params=["http", "https"])
def served(request, service_config, web_config, runner_factory, tmp_path, monkeypatch):
    """(the API's base URL, the SPKI pin of its certificate or None): the e2e stack over HTTP, or
    over HTTPS with a certificate of the development CA, which this process then trusts."""
    config = {**service_config, "DSS_MAX_REQUEST_BYTES": 64 * 1024}
    if request.param == "http":
        return start_api(config, web_config, runner_factory), None
    certificate = ensure_dev_certificate(tmp_path / "tls", names=("127.0.0.1",))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certificate.ca_file)
    config.update(DSS_TLS_CERT_FILE=certificate.cert_file, DSS_TLS_KEY_FILE=certificate.key_file)
    api = start_api(config, web_config, runner_factory).replace("http://", "https://", 1)
    return api, spki_pin(certificate.cert_file)


def spki_pin(cert_file: str) -> str:
    """Base64 SHA-256 of the certificate's public key: what --ignore-certificate-errors-spki-list takes."""
    key = x509.load_pem_x509_certificate(pathlib.Path(cert_file).read_bytes()).public_key()
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def browser(served):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: the browser test needs Debian's chromium and its driver "
                    "(`apt-get install -y chromium chromium-driver`; .ci/run installs them)")
    _, pin = served
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1800", "--no-first-run", "--disable-extensions",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     # Only the gateway (on loopback) can be reached: any other name fails to resolve.
                     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    if pin:  # the development certificate, and no other, is trusted
        options.add_argument(f"--ignore-certificate-errors-spki-list={pin}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def stored_bundle(api, auth, stage) -> tuple[str, str, str]:
    """(uuid, version, file name) of a bundle of one file, stored through the API."""
    source_url, _ = stage(b'{"donor": "d1"}', content_type="application/json")
    file_uuid, file_version, response = put_file(api, auth, source_url)
    assert response.status_code == 201, response.text
    uuid, version = new_uuid(), new_version()
    body = {"creator_uid": 7, "files": [{"uuid": file_uuid, "version": file_version, "name": "donor.json",
                                         "indexed": False}]}
    response = http.put(f"{api}/bundles/{uuid}", params={"replica": "aws", "version": version},
                        headers=auth, json=body, timeout=60)
    assert response.status_code == 201, response.text
    return uuid, version, "donor.json"


def try_it_out(driver, operation_id: str, parameters: dict) -> tuple[str, str, str]:
    """Open the operation, press "Try it out", fill in ``parameters`` (a text field or a list to
    choose from), press "Execute"; (status, body, curl command) as the page shows the answer."""
    wait = WebDriverWait(driver, WAIT_S)
    selector = f"#operations-default-{operation_id}"
    operation = driver.find_element(By.CSS_SELECTOR, selector)
    driver.execute_script("arguments[0].scrollIntoView(true);", operation)
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, f"{selector} .try-out__btn"))).click()
    for name, value in parameters.items():
        field = operation.find_element(By.CSS_SELECTOR, f"tr[data-param-name='{name}'] input, "
                                                        f"tr[data-param-name='{name}'] select")
        if field.tag_name == "select":
            Select(field).select_by_value(value)
        else:
            field.send_keys(value)
    operation.find_element(By.CSS_SELECTOR, "button.execute").click()
    status = wait.until(ready.visibility_of_element_located(
        (By.CSS_SELECTOR, f"{selector} .live-responses-table tr.response .response-col_status")))
    driver.execute_script("arguments[0].scrollIntoView(true);", operation)
    body = operation.find_element(By.CSS_SELECTOR, ".live-responses-table .response-col_description pre").text
    curl = operation.find_element(By.CSS_SELECTOR, ".curl-command").text
    return status.text.strip(), body, curl


def requested_urls(driver) -> list:
    """Every URL the page asked for, from the DevTools Network events of the performance log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_try_it_out_reads_a_stored_bundle_with_only_the_gateway_reached(served, mint_token, stage, browser):
    api, _ = served
    token = mint_token("user@example.org", ["dbio"])
    uuid, version, file_name = stored_bundle(api, {"Authorization": f"Bearer {token}"}, stage)
    gateway = urlsplit(api)
    # api-docs.png over HTTP (the one the README points at), api-docs-https.png over HTTPS
    screenshot = SCREENSHOTS / ("api-docs.png" if gateway.scheme == "http" else f"api-docs-{gateway.scheme}.png")
    page_url = f"{gateway.scheme}://{gateway.netloc}/"
    wait = WebDriverWait(browser, WAIT_S)

    browser.get(page_url)
    title = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, ".information-container .title")))
    assert "Data Storage System" in title.text

    # Authorize: the token as `make token` prints it (the page adds the `Bearer` scheme).
    browser.find_element(By.CSS_SELECTOR, ".auth-wrapper button.authorize").click()
    dialog = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, ".modal-ux")))
    dialog.find_element(By.CSS_SELECTOR, "input[type=text]").send_keys(token)
    dialog.find_element(By.CSS_SELECTOR, "button.modal-btn.authorize").click()
    wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, ".modal-ux button.btn-done"))).click()
    wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, ".auth-wrapper button.authorize.locked")))

    # A write that needs the token: PUT /v1/collections, with the body the page fills in from the
    # description's example.
    collection, collection_version = new_uuid(), new_version()
    status, body, curl = try_it_out(browser, "putCollection",
                                    {"replica": "aws", "uuid": collection, "version": collection_version})
    assert status == "201", body
    assert json.loads(body) == {"uuid": collection, "version": collection_version}
    assert f"Authorization: Bearer {token}" in curl

    # A read: GET /v1/bundles/{uuid} for the bundle stored above.
    try:
        status, body, curl = try_it_out(browser, "getBundle", {"uuid": uuid, "replica": "aws", "version": version})
    finally:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(screenshot))
    assert status == "200", body
    answer = json.loads(body)
    assert answer["bundle"]["uuid"] == uuid and answer["bundle"]["version"] == version
    assert [entry["name"] for entry in answer["bundle"]["files"]] == [file_name]
    assert f"'{page_url}v1/bundles/{uuid}?replica=aws&version={version}" in curl
    assert screenshot.stat().st_size > 0

    urls = requested_urls(browser)
    assert f"{page_url}v1/swagger.json" in urls and any(url.startswith(f"{page_url}v1/bundles/{uuid}?")
                                                        for url in urls), urls
    elsewhere = [url for url in urls if not url.startswith(page_url) and not url.startswith("data:")]
    assert elsewhere == [], elsewhere
    # Nothing refused by the page's Content-Security-Policy, no failed load.
    errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], errors
