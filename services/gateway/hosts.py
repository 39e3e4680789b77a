"""Which ``Host`` headers the gateway answers when the links it hands out are built from them.

Without ``DSS_PUBLIC_URL`` the absolute URLs of answers (``Location``, ``Link``, the API
description's ``host``) are built from each request's ``Host``; a forged one would point them at
another server (a client following the link, or a cache keeping the answer, would go there). So
the ``Host`` must name this gateway: ``localhost``, ``127.0.0.1``, ``[::1]`` or the address the
connection reached, at the port it reached; or match an entry of ``DSS_ALLOWED_HOSTS`` (``name``:
any port, ``name:port``: that port). Any other is refused with 400 ``illegal_host`` before any
worker runs. With ``DSS_PUBLIC_URL`` set, links come from it and the ``Host`` is not looked at.
"""
from __future__ import annotations

import logging
from urllib.parse import urlsplit

from nameko.exceptions import ConfigurationError

from shared.exceptions import InvalidParameter

logger = logging.getLogger(__name__)

LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# Addresses a server binds to, never ones a client reaches it at.
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def split_host(host: str) -> tuple[str, int | None]:
    """``name[:port]`` (``[v6]`` in brackets) -> (lower-case name without brackets, port or None);
    ValueError for anything else."""
    if not host or any(char in host for char in "/?#@ \t\\"):
        raise ValueError(host)
    parsed = urlsplit("//" + host)
    name = parsed.hostname
    if not name:
        raise ValueError(host)
    return name, parsed.port  # .port raises ValueError for a port that is not a number in range


class AllowedHosts:
    """The rule above for one gateway, from its settings."""

    def __init__(self, public_url: str, entries: tuple[str, ...]):
        self.public_url = public_url
        try:
            self.entries = tuple(split_host(entry) for entry in entries)
        except ValueError as error:
            raise ConfigurationError(f"DSS_ALLOWED_HOSTS: `{error}` is not a host name or host:port") from None

    @classmethod
    def from_settings(cls, settings) -> "AllowedHosts":
        return cls(settings.public_url, settings.allowed_hosts)

    def allows(self, host: str, environ: dict) -> bool:
        """Whether links may be built from ``host`` (the request's, as werkzeug reads it: empty
        when missing or malformed, without the scheme's default port)."""
        try:
            name, port = split_host(host)
        except ValueError:
            return False
        if port is None:
            port = _DEFAULT_PORTS.get(environ.get("wsgi.url_scheme", "http"))
        own_port = environ.get("SERVER_PORT")
        reached = (environ.get("SERVER_NAME") or "").strip("[]").lower()
        if str(port) == own_port and (name in LOCAL_NAMES or (name == reached and reached not in _WILDCARDS)):
            return True
        return any(name == allowed and allowed_port in (None, port) for allowed, allowed_port in self.entries)

    def check(self, request) -> None:
        """400 ``illegal_host`` unless links may be built from ``request``'s Host (or need not be)."""
        if self.public_url or self.allows(request.host, request.environ):
            return
        shown = request.headers.get("Host", "")[:100]
        logger.info("refused a request for host %r from %s", shown, request.remote_addr)
        raise InvalidParameter(f"the Host header `{shown}` does not name this store", "illegal_host")
