"""HTTP calls in tests: `requests`, with a default timeout, and a timeout error that names the call.

A test's HTTP call that never gets an answer would otherwise wait until pytest-timeout (300 s) stops
the whole test, and say only which test hung. Here every call has a deadline well under that
(``DEFAULT_TIMEOUT``, or the ``timeout=`` the call gives), and when it passes the error says which
request it was: ``GET http://127.0.0.1:8080/v1/files/...: no answer within 60 s``.

Use the module-level functions as ``requests``' (``http.get(url, ...)``), or ``TimeoutSession`` for a
session (the tests' ``web_session`` is one).
"""
from __future__ import annotations

import requests

# Well under pytest-timeout's 300 s (pyproject.toml), well over any single answer of the API under
# test (large uploads included); a call that needs longer says so with its own timeout=.
DEFAULT_TIMEOUT = 60.0


class TimeoutSession(requests.Session):
    """A requests session whose calls have ``DEFAULT_TIMEOUT`` unless given one, and whose
    timeouts name the method and URL of the call that timed out."""

    default_timeout = DEFAULT_TIMEOUT

    def request(self, method, url, *args, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        try:
            return super().request(method, url, *args, **kwargs)
        except requests.Timeout as timeout:
            # ConnectTimeout and ReadTimeout keep their type (callers may expect either).
            sent = getattr(timeout.request, "url", None) or url  # with the query string, when it was sent
            raise type(timeout)(f"{method.upper()} {sent}: no answer within {kwargs['timeout']} s ({timeout})",
                                request=timeout.request, response=timeout.response) from timeout


def request(method, url, **kwargs) -> requests.Response:
    """``requests.request`` with the default timeout (one session per call, as requests does)."""
    with TimeoutSession() as session:
        return session.request(method, url, **kwargs)


def get(url, params=None, **kwargs) -> requests.Response:
    return request("GET", url, params=params, **kwargs)


def head(url, **kwargs) -> requests.Response:
    # As requests.head: no redirects followed unless asked.
    kwargs.setdefault("allow_redirects", False)
    return request("HEAD", url, **kwargs)


def post(url, data=None, json=None, **kwargs) -> requests.Response:
    return request("POST", url, data=data, json=json, **kwargs)


def put(url, data=None, **kwargs) -> requests.Response:
    return request("PUT", url, data=data, **kwargs)


def patch(url, data=None, **kwargs) -> requests.Response:
    return request("PATCH", url, data=data, **kwargs)


def delete(url, **kwargs) -> requests.Response:
    return request("DELETE", url, **kwargs)
