"""Prometheus metrics every service exports, and the dependency provider that records them.

Each service declares ``metrics = Metrics()``. The provider times every entrypoint (calls, errors,
latency histogram, labelled by service and entrypoint) and serves ``/metrics`` on the service's
``METRICS_PORT`` (see each ``config.yml``; 0 turns the exporter off, as the tests do), at
``DSS_METRICS_ADDRESS`` (loopback unless a deployment opens it to its scraper). Workers use the
injected ``MetricsAPI`` to count domain events such as bytes copied.
"""
from __future__ import annotations

import logging
import time

from nameko.extensions import DependencyProvider
from prometheus_client import Counter, Gauge, Histogram

from shared import probes
from shared.probes import start_http_server  # prometheus_client's, plus /healthz and /readyz

from shared.config import Settings

logger = logging.getLogger(__name__)

ENTRYPOINT_CALLS = Counter("dss_entrypoint_calls_total", "Entrypoint invocations.", ["service", "entrypoint"])
ENTRYPOINT_ERRORS = Counter("dss_entrypoint_errors_total", "Entrypoint invocations that raised.",
                            ["service", "entrypoint", "error"])
ENTRYPOINT_LATENCY = Histogram("dss_entrypoint_latency_seconds", "Entrypoint duration.",
                               ["service", "entrypoint"],
                               buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
BYTES_COPIED = Counter("dss_bytes_copied_total", "Bytes copied into a bucket.", ["service", "replica", "kind"])
BYTES_HASHED = Counter("dss_bytes_checksummed_total", "Bytes read and checksummed.", ["service", "replica"])
OBJECTS_WRITTEN = Counter("dss_objects_written_total", "Objects written to a main bucket.",
                          ["service", "replica", "kind"])
COPIES_IN_PROGRESS = Gauge("dss_copies_in_progress", "Copies running now.", ["service"])

_exporter_ports: set[int] = set()


def start_exporter(port: int, address: str) -> None:
    """Serve /metrics at ``address``:``port`` once per process (several containers may share one in tests)."""
    if port and port not in _exporter_ports:
        start_http_server(port, addr=address)
        _exporter_ports.add(port)
        logger.info("metrics exporter listening on %s:%s", address, port)


class Progress:
    """Logs how far a long operation has got, each time another ``1/steps`` of it is done."""

    def __init__(self, what: str, total: int, steps: int = 10, log: logging.Logger = logger):
        self.what, self.total, self.steps, self.log = what, max(total, 1), steps, log
        self.done, self.reported = 0, 0
        self.started = time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        reached = min(self.done * self.steps // self.total, self.steps)
        if reached > self.reported:
            self.reported = reached
            elapsed = time.monotonic() - self.started
            rate = self.done / elapsed / 1024 / 1024 if elapsed > 0 else 0.0
            self.log.info("%s: %d%% (%d of %d bytes, %.0f MiB/s)", self.what, reached * 100 // self.steps,
                          self.done, self.total, rate)


class MetricsAPI:
    def __init__(self, service: str):
        self.service = service

    def bytes_copied(self, replica: str, kind: str, count: int) -> None:
        BYTES_COPIED.labels(self.service, replica, kind).inc(count)

    def bytes_hashed(self, replica: str, count: int) -> None:
        BYTES_HASHED.labels(self.service, replica).inc(count)

    def object_written(self, replica: str, kind: str) -> None:
        OBJECTS_WRITTEN.labels(self.service, replica, kind).inc()

    def copy_in_progress(self):
        return COPIES_IN_PROGRESS.labels(self.service).track_inprogress()


class Metrics(DependencyProvider):
    def setup(self):
        self.port = int(self.container.config.get("METRICS_PORT", 0) or 0)
        self.address = Settings.from_config(self.container.config).metrics_address
        self.started: dict = {}

    def start(self):
        probes.watch(self.container, self.port)
        start_exporter(self.port, self.address)

    def worker_setup(self, worker_ctx):
        self.started[worker_ctx] = time.perf_counter()

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        began = self.started.pop(worker_ctx, None)
        service, entrypoint = self.container.service_name, worker_ctx.entrypoint.method_name
        ENTRYPOINT_CALLS.labels(service, entrypoint).inc()
        if began is not None:
            ENTRYPOINT_LATENCY.labels(service, entrypoint).observe(time.perf_counter() - began)
        if exc_info is not None:
            ENTRYPOINT_ERRORS.labels(service, entrypoint, exc_info[0].__name__).inc()

    def get_dependency(self, worker_ctx):
        return MetricsAPI(self.container.service_name)
