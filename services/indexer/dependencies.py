"""The indexer's dependency providers, one per external system, each injecting a small domain API:

- ``BundleSource``: the replicas' main buckets as bundle versions and their documents
  (``documents.BundleSourceAPI``);
- ``EventJournal``: the bundle event journal in each replica's main bucket (``journal.EventJournalAPI``);
- ``SearchIndexes``: each replica's search index (``shared.search``), with the reindex jobs
  (``indexes.IndexesAPI``), opened once this process leads the index directory
  (``leadership.LeaderLock``; a standby meanwhile shows itself on the broker, ``leadership.StandbyPresence``).
"""
from __future__ import annotations

import logging

from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.extensions import DependencyProvider

from shared.config import Settings
from shared.identifiers import REPLICAS
from shared.search import open_index_backend
from shared.storage import StorageProvider

from services.indexer.documents import BundleSourceAPI
from services.indexer.indexes import IndexesAPI, IndexState
from services.indexer.journal import EventJournalAPI, JournalClock
from services.indexer.leadership import LeaderLock, StandbyPresence

logger = logging.getLogger(__name__)


class BundleSource(StorageProvider):
    api_class = BundleSourceAPI


class EventJournal(StorageProvider):
    """Injects an ``EventJournalAPI``; its clock (stamps, entries being written) is the provider's,
    shared by every worker."""

    def setup(self):
        super().setup()
        self.clock = JournalClock()

    def get_dependency(self, worker_ctx):
        return EventJournalAPI(self.replicas, self.clock)


class SearchIndexes(DependencyProvider):
    """Opens both replicas' indexes when the container starts (the embedded engine's writer is
    taken on the first write) and releases them when it stops. The container starts only once this
    process leads the index directory: until then its setup waits, and nothing is consumed."""

    def setup(self):
        settings = Settings.from_config(self.container.config)
        self.leader = LeaderLock(settings.index_dir)
        presence = StandbyPresence(self.container.config[AMQP_URI_CONFIG_KEY], self.container.service_name)
        try:
            self.leader.acquire(while_waiting=presence.keep)  # the presence opens only if another leads
        finally:
            presence.close()
        backends = {replica: open_index_backend(settings, replica) for replica in REPLICAS}
        self.state = IndexState(backends, offload=settings.index_backend == "embedded", spawn=self._spawn,
                                search_slots=settings.search_concurrency,
                                search_timeout=settings.search_timeout_seconds)
        logger.info("search indexes: %s backend%s", settings.index_backend,
                    f" under {settings.index_dir}" if settings.index_backend == "embedded" else "")

    def _spawn(self, function, name: str):
        return self.container.spawn_managed_thread(function, identifier=name)

    def stop(self):
        if hasattr(self, "state"):
            self.state.stop()
        self.leader.release()

    def kill(self):
        if hasattr(self, "state"):  # else killed while standing by
            self.state.kill()
        self.leader.release()

    def get_dependency(self, worker_ctx):
        return IndexesAPI(self.state)
