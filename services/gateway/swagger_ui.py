"""The interactive API documentation at /: Swagger UI on /v1/swagger.json, served by the gateway itself.

Swagger UI's files come from the ``swagger-ui-bundle`` package and are answered from memory at
/swagger-ui/<name>; the page and its start-up script are this module's. Nothing on the page comes
from another host (so it works offline and behind a firewall), and its Content-Security-Policy
says so to the browser: scripts, styles, images and requests go to the gateway only. "Authorize"
takes the value of the ``Authorization`` header (the description's apiKey scheme); a bare token,
as `make token` prints it, is sent as ``Bearer <token>``.
"""
from __future__ import annotations

import functools
import hashlib
import html
from typing import NamedTuple
from urllib.parse import urlsplit

from swagger_ui_bundle import swagger_ui_path
from werkzeug.wrappers import Response

from services.gateway import apidoc

ASSET_PREFIX = "/swagger-ui/"
START_SCRIPT = "dss-swagger-ui.js"
# Swagger UI's files the page uses, with their media types; no other name is answered.
BUNDLED_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-16x16.png": "image/png",
    "favicon-32x32.png": "image/png",
}
# React sets style attributes and the stylesheet embeds its icons as data: URLs; everything else
# is the gateway's own. connect-src also names the description's base URL: with DSS_PUBLIC_URL set,
# "Try it out" sends its requests there.
CONTENT_SECURITY_POLICY = ("default-src 'self'; connect-src 'self' {api}; img-src 'self' data:; "
                           "style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; "
                           "frame-ancestors 'none'")

# Starts Swagger UI once the bundle is loaded. validatorUrl null: by default the page would send
# the description to validator.swagger.io for a badge.
_START_SCRIPT = """\
// Swagger UI on the API description this gateway serves (services/gateway/swagger_ui.py).
window.addEventListener("load", function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-description"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    requestInterceptor: function (request) {
      // A token pasted into "Authorize" as `make token` prints it: no scheme yet (a JWT has no space).
      var value = request.headers && request.headers.Authorization;
      if (value && value.indexOf(" ") < 0) {
        request.headers.Authorization = "Bearer " + value;
      }
      return request;
    }
  });
});
"""

# Relative URLs: the page works under any path prefix the gateway is published at.
_PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="swagger-ui/swagger-ui.css">
<link rel="icon" type="image/png" href="swagger-ui/favicon-32x32.png" sizes="32x32">
<link rel="icon" type="image/png" href="swagger-ui/favicon-16x16.png" sizes="16x16">
</head>
<body>
<noscript><p>{title}: this page needs JavaScript. The API description is
<a href="v1/swagger.json">v1/swagger.json</a>.</p></noscript>
<div id="swagger-ui" data-description="v1/swagger.json"></div>
<script src="swagger-ui/swagger-ui-bundle.js"></script>
<script src="swagger-ui/{script}"></script>
</body>
</html>
"""


class Asset(NamedTuple):
    body: bytes
    content_type: str
    etag: str


def _asset(body: bytes, content_type: str) -> Asset:
    return Asset(body, content_type, hashlib.sha256(body).hexdigest()[:32])


@functools.lru_cache(maxsize=1)
def page() -> Asset:
    """The HTML page at /, made once per process."""
    text = _PAGE.format(title=html.escape(apidoc.title()), script=START_SCRIPT)
    return _asset(text.encode(), "text/html; charset=utf-8")


def asset(name: str) -> Asset | None:
    """The file /swagger-ui/``name``, or None for a name not served."""
    if name != START_SCRIPT and name not in BUNDLED_ASSETS:
        return None
    return _load(name)


@functools.lru_cache(maxsize=None)  # bounded: only the names above get here
def _load(name: str) -> Asset:
    if name == START_SCRIPT:
        return _asset(_START_SCRIPT.encode(), "text/javascript; charset=utf-8")
    return _asset((swagger_ui_path / name).read_bytes(), BUNDLED_ASSETS[name])


def security_headers(api_base_url: str) -> dict:
    """Headers of the page: the policy above, with the origin of the description's base URL."""
    api = urlsplit(api_base_url)
    return {"Content-Security-Policy": CONTENT_SECURITY_POLICY.format(api=f"{api.scheme}://{api.netloc}"),
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def static_response(request, body: bytes, content_type: str, etag: str, headers: dict | None = None) -> Response:
    """An answer that only changes with the process: revalidated by ETag (``no-cache``), so a client
    that has it gets a bodyless 304."""
    response = Response(body, content_type=content_type, headers=headers)
    response.set_etag(etag)
    response.headers["Cache-Control"] = "no-cache"
    return response.make_conditional(request)
