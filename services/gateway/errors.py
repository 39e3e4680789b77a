"""The one table from error types to HTTP statuses, and the problem+json rendering of errors.

Every error answer of the gateway goes through ``problem()``: ``application/problem+json`` with
``{status, code, title}``. A type not in the table (a bug, or a remote error nameko could not
rebuild) becomes a 500 with a generic title; its details go to the log, never to the client.
"""
from __future__ import annotations

import json
import logging

from nameko.exceptions import RemoteError
from werkzeug.wrappers import Response

import shared.search  # noqa: F401  (ElasticsearchBadRequest, SearchUnavailable)
from services.gateway.exceptions import MethodNotAllowed
from shared.exceptions import (Conflict, DSSError, Forbidden, InvalidParameter, InvalidRequest, NotAcceptable,
                               NotFound, PayloadTooLarge, Unauthorized, Unavailable, UnsupportedMediaType,
                               Unprocessable)

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = 10  # what 5xx answers ask clients to wait before retrying

STATUS_BY_TYPE: dict[type[DSSError], int] = {
    InvalidParameter: 400,
    InvalidRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    MethodNotAllowed: 405,
    NotAcceptable: 406,
    Conflict: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    Unprocessable: 422,
    Unavailable: 503,
}


def status_of(error: BaseException) -> int:
    """The status of an error's nearest type in the table (subclasses inherit their base's)."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_TYPE:
            return STATUS_BY_TYPE[cls]
    return 500


def problem(status: int, code: str, title: str, headers: dict | None = None) -> Response:
    headers = dict(headers or {})
    if status >= 500:
        headers.setdefault("Retry-After", str(RETRY_AFTER_S))
    if status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="dss"')
    body = json.dumps({"status": status, "code": code, "title": title})
    return Response(body, status=status, headers=headers, content_type=PROBLEM_JSON)


def response_for_exception(error: BaseException) -> Response:
    if isinstance(error, DSSError):
        status = status_of(error)
        if status == 500:
            logger.error("untabled error type %s: %s", type(error).__name__, error)
            return internal_error()
        return problem(status, error.error_code, error.title)
    if isinstance(error, RemoteError):
        logger.error("a service failed: %s: %s", error.exc_type, error.value)
    else:
        logger.error("unexpected %s in the gateway: %s", type(error).__name__, error)
    return internal_error()


def drs_response_for_exception(error: BaseException) -> Response:
    """The GA4GH DRS error body ``{msg, status_code}`` for ``error``, its status from the same table."""
    problem_response = response_for_exception(error)
    body = json.loads(problem_response.get_data())
    headers = {name: value for name, value in problem_response.headers.items()
               if name in ("Retry-After", "WWW-Authenticate")}
    return Response(json.dumps({"msg": body["title"], "status_code": body["status"]}),
                    status=problem_response.status_code, headers=headers, content_type="application/json")


def internal_error() -> Response:
    return problem(500, "internal_error", "the request failed unexpectedly; please retry later")
