"""The replicator's dependency providers: both replicas' main buckets as a ``ReplicatorAPI``
(``replication.py``), one memory budget and one memory of recent copies per process; and the depth
of the service's own queues (``QueueMonitor``), for health() and ``dss_replication_queue_depth``.
"""
from __future__ import annotations

import logging

import eventlet
from kombu import Connection
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.events import EventHandler
from nameko.extensions import DependencyProvider
from prometheus_client import Gauge

from shared.concurrency import SingleFlight
from shared.metrics import MetricsAPI
from shared.retry import DEAD_SUFFIX
from shared.storage import StorageProvider

from services.replicator.budget import MemoryBudget
from services.replicator.recent import RecentCopies
from services.replicator.replication import IGNORED, ReplicatorAPI

logger = logging.getLogger(__name__)

QUEUE_DEPTH = Gauge("dss_replication_queue_depth", "Messages waiting in the replicator's queues.", ["queue"])


class ReplicaStore(StorageProvider):
    """Injects a ``ReplicatorAPI`` over both replicas; its workers share one memory budget, one
    flight per blob copy and one memory of recent copies."""

    api_class = ReplicatorAPI

    def setup(self):
        super().setup()
        self.budget = MemoryBudget(self.settings.replication_memory_bytes)
        self.metrics = MetricsAPI(self.container.service_name)
        self.blob_copies = SingleFlight(share_failures=False)  # shared by all workers of the process
        self.recent = RecentCopies()

    def get_dependency(self, worker_ctx):
        return self.api_class(self.replicas, self.settings, self.budget, self.metrics, self.blob_copies,
                              self.recent)

    def is_echo(self, change: dict) -> bool:
        """Whether a change notification reports a copy this process made (counted as ignored
        ``own_copy``): the notification bridge drops it before a worker, so it never goes on the bus."""
        if change["kind"] == "created" and self.recent.is_own_write(change):
            IGNORED.labels(change["replica"], "own_copy").inc()
            return True
        return False


# --- queue depth -------------------------------------------------------------------------------------

class QueueDepths:
    """The last depths polled, for health()."""

    def __init__(self, depths: dict[str, int], error: str | None):
        self.depths = depths
        self.error = error

    def health(self) -> dict:
        if self.error is not None:
            return {"ok": False, "detail": f"broker unreachable: {self.error}"}
        if not self.depths:
            return {"ok": True, "detail": "not polled yet"}
        return {"ok": True, "detail": ", ".join(f"{name}: {count}" for name, count in sorted(self.depths.items()))}


class QueueMonitor(DependencyProvider):
    """Polls the message count of the service's event-handler queues and their dead letters every
    ``interval`` seconds (a passive declare: one cheap round trip each) into
    ``dss_replication_queue_depth``. A broker outage only pauses it."""

    interval = 5.0

    def setup(self):
        self.amqp_uri = self.container.config[AMQP_URI_CONFIG_KEY]
        self.depths: dict[str, int] = {}
        self.error: str | None = None

    def start(self):
        self.container.spawn_managed_thread(self._run, identifier="queue_monitor")

    def queue_names(self) -> list[str]:
        names = []
        for entrypoint in self.container.entrypoints:
            if isinstance(entrypoint, EventHandler):
                names += [entrypoint.queue.name, entrypoint.queue.name + DEAD_SUFFIX]
        return names

    def _run(self):
        names = self.queue_names()
        while True:
            try:
                with Connection(self.amqp_uri, connect_timeout=5) as connection:
                    while True:
                        for name in names:
                            self._poll(connection, name)
                        self.error = None
                        eventlet.sleep(self.interval)
            except Exception as error:  # noqa: BLE001 - the broker is away; try again later
                if self.error is None:
                    logger.warning("cannot poll queue depths: %s", error)
                self.error = str(error) or type(error).__name__
                eventlet.sleep(self.interval)

    def _poll(self, connection: Connection, name: str) -> None:
        from amqp.exceptions import NotFound as QueueNotFound

        channel = connection.channel()
        try:
            _, count, _ = channel.queue_declare(queue=name, passive=True)
        except QueueNotFound:  # the broker closed the channel; a dead-letter queue appears on first use
            count = 0
        else:
            channel.close()
        self.depths[name] = count
        QUEUE_DEPTH.labels(name).set(count)

    def get_dependency(self, worker_ctx):
        return QueueDepths(dict(self.depths), self.error)
