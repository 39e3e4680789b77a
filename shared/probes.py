"""Liveness and readiness answers served beside each service's ``/metrics``, for Kubernetes probes.

The metrics exporter of ``shared.metrics`` is started through ``start_http_server`` below, which is
prometheus_client's own with two more paths on the same port:

- ``GET /healthz`` (liveness): 200 as long as the process's event loop runs. Under ``nameko run``
  the exporter's threads are green threads of that loop, so an answer proves the loop is not stuck.
- ``GET /readyz`` (readiness): 200 when every nameko container that asked for probes on that port
  (``watch``; one per ``nameko run`` process) is started and its broker consumer is connected and consuming; otherwise 503
  with the reason per service: still connecting, reconnecting after losing the broker, or stopping
  (its consumers are cancelled as soon as ``nameko run`` receives SIGTERM).

Every other path answers the metrics, as before.
"""
from __future__ import annotations

import json
import logging

import prometheus_client
from nameko.messaging import QueueConsumer

logger = logging.getLogger(__name__)

LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"

# exporter port -> the containers whose state its /readyz reports (tests run several per process),
# as the weak proxies extensions hold (a container gone is left out)
_watched: dict[int, list] = {}


def watch(container, port: int) -> None:
    """Make ``container``'s state part of the readiness answer of the exporter on ``port`` (0: none)."""
    if port:
        _watched.setdefault(port, []).append(container)


def consumer_problem(consumer: QueueConsumer) -> str | None:
    """None when the queue consumer is connected and consuming, else why not."""
    if not consumer._consumers_ready.ready():
        return "connecting to the broker"
    if consumer._gt is None or consumer._gt.dead:
        return "its broker consumer stopped"
    consumers = list(consumer._consumers.values())
    if not consumers:
        return "not consuming (stopping)"
    for kombu_consumer in consumers:
        channel = kombu_consumer.channel
        connection = getattr(channel, "connection", None)
        if not getattr(channel, "is_open", False) or connection is None or not connection.connected:
            return "reconnecting to the broker"
    return None


def not_ready(container) -> str | None:
    """None when ``container`` is started and all its broker consumers consume, else why not."""
    if not container.started:
        return "not started"
    for extension in container.subextensions:
        if isinstance(extension, QueueConsumer):
            reason = consumer_problem(extension)
            if reason:
                return reason
    return None


def readiness(port: int) -> tuple[bool, dict]:
    """(ready, the state of each service watched on ``port``)."""
    states, alive = {}, []
    for container in _watched.get(port, ()):
        try:
            states[container.service_name] = not_ready(container) or "ready"
        except ReferenceError:  # collected
            continue
        alive.append(container)
    _watched[port] = alive
    return bool(states) and all(state == "ready" for state in states.values()), states


def _answer(start_response, status: str, body: dict) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                            ("Cache-Control", "no-store")])
    return [data]


def with_probes(metrics_app, port: int):
    """The WSGI app of the exporter on ``port``: the two probe paths, every other request to ``metrics_app``."""

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == LIVENESS_PATH:
            return _answer(start_response, "200 OK", {"status": "alive"})
        if path == READINESS_PATH:
            ready, services = readiness(port)
            if ready:
                return _answer(start_response, "200 OK", {"status": "ready", "services": services})
            return _answer(start_response, "503 Service Unavailable", {"status": "not ready", "services": services})
        return metrics_app(environ, start_response)

    return app


def start_http_server(port: int, addr: str = "0.0.0.0", **kwargs):
    """prometheus_client's ``start_http_server`` (same arguments and result), whose server also
    answers ``/healthz`` and ``/readyz``."""
    server, thread = prometheus_client.start_http_server(port, addr=addr, **kwargs)
    server.set_app(with_probes(server.get_app(), port))
    return server, thread
