"""The gateway's HTTP entrypoint: nameko's ``http`` with problem+json for every error.

Nameko's handler answers an exception with a ``text/plain`` traceback-ish line and its WSGI app
lets werkzeug render unmatched routes as HTML pages. Here both become problem+json: a worker's
exception through ``errors.response_for_exception`` and an unmatched route or method as a 404 or
405 (with ``Allow``) before any worker runs. Below it, the helpers every entrypoint uses to read
a request (query string, bounded JSON body) and to shape an answer (JSON, paging, file headers).
"""
from __future__ import annotations

import json
import logging
import socket
from typing import Any
from urllib.parse import urlencode, urlsplit

from eventlet.green import ssl as green_ssl
from nameko.exceptions import ConfigurationError
from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import HttpOnlyProtocol, WebServer, WsgiApp
from prometheus_client import Counter
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound
from werkzeug.routing import BaseConverter, Map, RequestRedirect
from werkzeug.wrappers import Request, Response

from services.gateway import apidoc, errors
from services.gateway.hosts import AllowedHosts
from shared import tracing
from shared.config import Settings
from shared.exceptions import DSSError, InvalidParameter, PayloadTooLarge, UnsupportedMediaType
from services.gateway.tls import ServerContext
from shared.schemas import load_arguments, nested_deeper_than, schema_instance
from shared.storage import JSON

logger = logging.getLogger(__name__)

TLS_HANDSHAKE_TIMEOUT_S = 10
# Nesting of a JSON request body: far beyond any API document, below what an RPC can encode (~900).
MAX_JSON_DEPTH = 640

# By status only: every other part of a request is the client's to choose (unbounded label values).
RESPONSES = Counter("dss_http_responses_total", "HTTP answers of the gateway, by status code.", ["status"])

# The longest request line served (eventlet's default is 8 KiB, and its 414 has no body): room for
# every query parameter at its documented maximum length, percent-encoded (up to 12 bytes a character).
MAX_REQUEST_LINE = 64 * 1024


# Where GA4GH DRS routes live: their errors have DRS's own body, even those refused before routing.
DRS_PATH_PREFIXES = ("/ga4gh/drs/", "/v1/ga4gh/drs/")


class BundleIdConverter(BaseConverter):
    """A path segment other than `all`: /v1/bundles/all is the listing, not a bundle, for every
    method (so that PUT /v1/bundles/all is a 405 with `Allow: GET, HEAD`, as documented)."""
    regex = r"(?!all(?![^/]))[^/]+"


class ProblemWsgiApp(WsgiApp):
    def __call__(self, environ, start_response):
        if tracing.enabled:
            return self._traced(environ, start_response)
        response = self._respond(environ)
        return response(environ, start_response)

    def _respond(self, environ):
        try:
            response = self._dispatch(environ)
        except Exception:  # a bug in routing or a handler: still no HTML, no traceback
            logger.exception("unhandled error serving %s", environ.get("PATH_INFO"))
            response = errors.internal_error()
        RESPONSES.labels(str(response.status_code)).inc()
        return response

    def _traced(self, environ, start_response):
        """The request as a server span, continuing the client's trace (its ``traceparent``), its
        context handed to the worker (``GatewayWebServer.context_data_from_headers``) and named in
        the answer's ``traceparent``."""
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        method = environ.get("REQUEST_METHOD", "GET")
        parent = tracing.extract({name: environ.get(f"HTTP_{name.upper()}") for name in tracing.TRACE_HEADERS})
        # Named by the route once one matched; the method alone for what matched none (scans of
        # made-up paths must not make a name each).
        request_span = trace.get_tracer("dss").start_span(
            method, context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": environ.get("PATH_INFO", "")})
        token = context.attach(trace.set_span_in_context(request_span))
        try:
            response = self._respond(environ)
            route = environ.get("dss.route")
            if route:
                request_span.update_name(f"{method} {route}")
                request_span.set_attribute("http.route", route)
            request_span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 500:
                request_span.set_status(Status(StatusCode.ERROR))
            response.headers.update(tracing.current_headers())
            return response(environ, start_response)
        finally:
            request_span.end()
            context.detach(token)

    def _dispatch(self, environ):
        # shallow: nothing reads the body before the worker does (see nameko's WsgiApp)
        request = Request(environ, shallow=True)
        try:
            self.server.allowed_hosts.check(request)  # before anything builds a link from it
        except DSSError as error:
            if request.path.startswith(DRS_PATH_PREFIXES):
                return errors.drs_response_for_exception(error)
            return errors.response_for_exception(error)
        adapter = self.url_map.bind_to_environ(environ)
        try:
            provider, values = adapter.match()
        except RequestRedirect as redirect:  # e.g. //v1/... -> /v1/...: werkzeug's URL, on our base
            target = urlsplit(redirect.new_url)
            location = apidoc.base_url(self.server.settings, request) + target.path
            return Response(status=redirect.code,
                            headers={"Location": location + (f"?{target.query}" if target.query else "")})
        except WerkzeugMethodNotAllowed as error:
            allowed = ", ".join(sorted(error.valid_methods or ()))
            return errors.problem(405, "method_not_allowed",
                                  f"{request.method} is not supported on {request.path}; use {allowed}",
                                  headers={"Allow": allowed})
        except WerkzeugNotFound:
            return errors.problem(404, "not_found", f"no such resource: {request.path}")
        except HTTPException as error:
            return errors.problem(error.code or 400, "bad_request", error.name)
        request.path_values = values
        environ["dss.route"] = provider.url
        return provider.handle_request(request)


class GatewayWebServer(WebServer):
    """nameko's web server, serving HTTPS when ``DSS_TLS_CERT_FILE`` is set.

    The listening socket stays plain; each accepted connection is wrapped and its handshake made
    in the connection's own green thread, so a slow or broken client never holds up ``accept``.
    """

    def setup(self):
        super().setup()
        settings = self.settings = Settings.from_config(self.container.config)
        self.allowed_hosts = AllowedHosts.from_settings(settings)
        self.tls = None
        if settings.tls_cert_file:
            self.tls = ServerContext(settings.tls_cert_file, settings.tls_key_file, green_ssl.SSLContext)
            logger.info("serving HTTPS with the certificate %s", settings.tls_cert_file)
        elif settings.tls_key_file:
            raise ConfigurationError("DSS_TLS_KEY_FILE is set without DSS_TLS_CERT_FILE")

    def get_wsgi_app(self):
        return ProblemWsgiApp(self)

    def context_data_from_headers(self, request):
        # The worker's span is a child of the request's (current in this green thread): see ProblemWsgiApp.
        return tracing.current_headers()

    def make_url_map(self):
        url_map = Map(converters={"bundle_id": BundleIdConverter})
        for provider in self._providers:
            rule = provider.get_url_rule()
            rule.endpoint = provider
            url_map.add(rule)
        return url_map

    def get_wsgi_server(self, sock, wsgi_app, protocol=HttpOnlyProtocol, debug=False):
        server = super().get_wsgi_server(sock, wsgi_app, protocol=protocol, debug=debug)
        server.url_length_limit = MAX_REQUEST_LINE
        if self.tls:
            # eventlet tells https from the listening socket, which is plain here.
            server.environ = {"wsgi.url_scheme": "https", "HTTPS": "on"}
        return server

    def process_request(self, sock, address):
        # eventlet sends the head of an answer, then a body over its 16 KiB buffer in a second write,
        # which Nagle's algorithm holds until the client's delayed ACK (~40 ms): send at once.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            sock = self._handshake(sock, address)
            if sock is None:
                return
        super().process_request(sock, address)

    def _handshake(self, sock, address):
        try:
            sock.settimeout(TLS_HANDSHAKE_TIMEOUT_S)
            secure = self.tls.context().wrap_socket(sock, server_side=True)
            secure.settimeout(self._serv.socket_timeout)
            return secure
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError; a scanner, plain HTTP, a timeout
            logger.debug("TLS handshake with %s failed: %s", address[0], error)
            sock.close()
            return None


class ApiEndpoint(HttpRequestHandler):
    """``@api("GET", "/v1/...")``: a route whose errors are rendered as problem+json."""

    server = GatewayWebServer()

    def __init__(self, method, url, expected_exceptions=(DSSError,), **kwargs):
        # Typed errors are answers, not failures: nameko logs them as warnings.
        super().__init__(method, url, expected_exceptions=expected_exceptions, **kwargs)

    def response_from_exception(self, exc):
        return errors.response_for_exception(exc)


api = ApiEndpoint.decorator


class DrsEndpoint(ApiEndpoint):
    """A GA4GH DRS route: the same status table, errors in DRS's own body ``{msg, status_code}``."""

    def response_from_exception(self, exc):
        return errors.drs_response_for_exception(exc)


drs_api = DrsEndpoint.decorator


# --- request and response helpers ------------------------------------------------------------------

def query(request, schema: type) -> dict:
    """The query string validated by ``schema`` (a class: one instance per process). A parameter given twice with different values is ambiguous, so
    an error; given twice with the same value it is taken once: the dbio and hca CLIs follow a
    ``Link`` (which carries the request's parameters) and send their own parameters again."""
    repeated = sorted(name for name, values in request.args.lists() if len(set(values)) > 1)
    if repeated:
        raise InvalidParameter(f"query parameter(s) given more than once: {', '.join(repeated)}")
    return load_arguments(schema_instance(schema), request.args.to_dict(), where="query")


def json_body(request, schema: type, limit: int) -> dict:
    """The JSON body validated by ``schema`` (a class: one instance per process), read at most
    ``limit`` bytes far (413 beyond)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes", "payload_too_large")
    if request.mimetype != JSON:
        raise UnsupportedMediaType(f"the request body must be {JSON}", "unsupported_media_type")
    # Without a Content-Length (chunked) werkzeug's stream reads nothing: read the raw input.
    stream = request.stream if request.content_length is not None else request.environ["wsgi.input"]
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes", "payload_too_large")
    if not data.strip():
        raise InvalidParameter("the request body is empty; a JSON object is required", "invalid_json")
    try:
        document = json.loads(data)
        too_deep = nested_deeper_than(document, MAX_JSON_DEPTH)
        # A lone surrogate (`"\ud800"`) is valid JSON syntax but no Unicode text: nothing could
        # store or log it.
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError):
        raise InvalidParameter("the request body is not valid JSON text", "invalid_json") from None
    except RecursionError:  # deeper than the decoder's stack
        too_deep = True
    if too_deep:  # no service could take it: encoding it for an RPC would overflow the stack
        raise InvalidParameter(f"the request body nests JSON more than {MAX_JSON_DEPTH} levels deep",
                               "invalid_json")
    return load_arguments(schema_instance(schema), document, where="body")


def optional_json_body(request, schema: type, limit: int) -> dict:
    """As ``json_body``, for a body that may be left out entirely (no bytes: no fields)."""
    if not request.content_length and "Transfer-Encoding" not in request.headers:
        return load_arguments(schema_instance(schema), {}, where="body")
    return json_body(request, schema, limit)


def json_response(body: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers, content_type=JSON)


def bodyless_response(status: int, headers: dict | None = None) -> Response:
    """A redirect, a 202 or a HEAD answer: no body, and the API's media type rather than
    werkzeug's default text/plain (the description, Swagger 2.0, lists one set of types per operation)."""
    return Response(status=status, headers=headers, content_type=JSON)


def next_link(settings, request, **cursor) -> str:
    """Absolute URL of the next page: this request's URL with ``cursor`` replacing its parameters."""
    params = request.args.to_dict()
    params.update({name: str(value) for name, value in cursor.items()})
    return f"{apidoc.base_url(settings, request)}{request.path}?{urlencode(params)}"


def paged(body: Any, content_key: str, link: str | None) -> Response:
    """200 for a last page, 206 + ``Link: <next>; rel="next"`` when more follow."""
    headers = {"X-OpenAPI-Pagination": "true", "X-OpenAPI-Paginated-Content-Key": content_key}
    if link is None:
        return json_response(body, 200, headers)
    headers["Link"] = f'<{link}>; rel="next"'
    return json_response(body, 206, headers)


# API header name -> field of the stored file metadata
FILE_HEADERS = {
    "X-DSS-VERSION": "version",
    "X-DSS-CREATOR-UID": "creator_uid",
    "X-DSS-CONTENT-TYPE": "content-type",
    "X-DSS-SIZE": "size",
    "X-DSS-CRC32C": "crc32c",
    "X-DSS-S3-ETAG": "s3-etag",
    "X-DSS-SHA1": "sha1",
    "X-DSS-SHA256": "sha256",
}


def file_headers(metadata: dict) -> dict:
    headers = {}
    for header, field in FILE_HEADERS.items():
        value = metadata.get(field, metadata.get(field.replace("-", "_")))
        if value is not None:
            headers[header] = str(value)
    return headers
