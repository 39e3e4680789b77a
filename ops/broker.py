"""Which RabbitMQ the operator commands (and `make up`) talk to: ``AMQP_URI`` (one URI, or the
``;``-separated URIs of a cluster's nodes, as nameko and kombu take it), or the local default; and
the management API of each node (``RABBITMQ_MANAGEMENT_URL``, also ``;``-separated, or derived
from the AMQP URIs by the port rule of ``management_port``)."""
from __future__ import annotations

import os
import urllib.parse

DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_MANAGEMENT_URL = "http://guest:guest@127.0.0.1:15672"
DEFAULT_AMQP_PORT = 5672
DEFAULT_MANAGEMENT_PORT = 15672


def amqp_uri() -> str:
    return os.environ.get("AMQP_URI") or DEFAULT_AMQP_URI


def amqp_uris(uri: str | None = None) -> list[str]:
    """The node URIs of ``uri`` (default: ``amqp_uri()``), in order."""
    return [part.strip() for part in (uri or amqp_uri()).split(";") if part.strip()]


def management_port(amqp_port: int) -> int:
    """The management port of a node whose AMQP port is ``amqp_port``: 15672 for 5672 (what nameko's
    test fixtures expect), else the AMQP port + 10000. The local stack starts its nodes this way."""
    return DEFAULT_MANAGEMENT_PORT if amqp_port == DEFAULT_AMQP_PORT else amqp_port + 10000


def management_urls(uri: str | None = None) -> list[str]:
    """The management API of every node: RABBITMQ_MANAGEMENT_URL (``;``-separated) if set, else one
    per AMQP URI (same host and credentials, port by ``management_port``)."""
    given = os.environ.get("RABBITMQ_MANAGEMENT_URL")
    if given:
        return [part.strip() for part in given.split(";") if part.strip()]
    urls = []
    for node in amqp_uris(uri):
        parts = urllib.parse.urlsplit(node)
        credentials = f"{parts.username or 'guest'}:{parts.password or 'guest'}@"
        urls.append(f"http://{credentials}{parts.hostname or '127.0.0.1'}:"
                    f"{management_port(parts.port or DEFAULT_AMQP_PORT)}")
    return urls


def management_url() -> str:
    """The first node's management API (the one the single-node commands use)."""
    return management_urls()[0]


def vhost_of(uri: str | None = None) -> str:
    """The vhost of the (first) AMQP URI: ``/`` when the path is empty or ``/``."""
    path = urllib.parse.urlsplit(amqp_uris(uri)[0]).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"
