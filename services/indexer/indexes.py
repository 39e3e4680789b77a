"""The search indexes of both replicas as the indexer's workers use them: serialized per bundle,
written to the live generation and to a reindex's new one, searched, and reported on.

The indexer is the one process that writes the indexes (``shared.search.base``); searches in the
same process read the same engine objects, beside the writes: searches have their own slots
(``DSS_SEARCH_CONCURRENCY`` per replica) and time budget (``DSS_SEARCH_TIMEOUT_SECONDS``) and never
take the lock writes take, so however slow or many the searches, indexing goes on. A search that
finds its replica's slots taken is refused at once rather than queued: a waiting search would
hold one of the container's workers (nameko ``max_workers``, shared with the event handlers), and
enough of them would stall indexing again.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable

import eventlet
from eventlet import tpool
from eventlet.event import Event
from eventlet.semaphore import Semaphore
from prometheus_client import Counter

from shared.identifiers import REPLICAS
from shared.search import IndexBackend, SearchBusy, SearchTimeout, is_tombstone
from shared.search.base import timed_out

from services.indexer.documents import BundleSourceAPI
from services.indexer.exceptions import unknown_replica
from services.indexer.reindex import IDLE, ReindexJob

logger = logging.getLogger(__name__)

# How long a stopping service waits for a reindex to give up cleanly (it checks between batches).
REINDEX_STOP_TIMEOUT_S = 30
# How long past its budget a search's caller waits for the engine's own SearchTimeout (which it
# raises between its steps) before answering one itself.
SEARCH_DEADLINE_GRACE_S = 0.1

DOCUMENTS_WRITTEN = Counter("dss_index_documents_written_total", "Documents written to a replica's live index.",
                            ["replica", "kind"])
SEARCHES_REFUSED = Counter("dss_searches_refused_total",
                           "Searches refused: `busy` (every slot taken) or `timeout` (ran over their time budget).",
                           ["replica", "reason"])


class GuardedIndex:
    """An ``IndexBackend`` as the indexer's green threads use it. For the embedded engine its calls
    run on native threads: a tantivy commit takes tens of milliseconds (a bulk of hundreds of
    documents, most of a second), a search up to its time budget, and either would stall every
    green thread meanwhile.

    Writes and the other quick calls take ``_lock`` one at a time; searches never take it, and run
    at most ``search_slots`` at once, each within ``search_timeout`` seconds: a search that finds no
    free slot is ``SearchBusy`` (503) at once, one that runs over its time ``SearchTimeout`` (400).
    A tantivy search cannot be interrupted: its caller is answered at the deadline and its slot
    stays taken until the engine returns, so the slots bound the CPU searches use, answered or not.

    Two native threads (a search and a write) meet only on the engine's own locks, which are the
    operating system's (``embedded.py``); ``_lock`` is taken in the green thread, before any."""

    def __init__(self, backend: IndexBackend, offload: bool, search_slots: int, search_timeout: float | None):
        self.backend = backend
        self.offload = offload
        # OpenSearch calls are HTTP on green sockets: neither serializing nor offloading helps.
        self._lock = Semaphore() if offload else contextlib.nullcontext()
        self.search_slots = search_slots
        self.search_timeout = search_timeout
        self._searches = Semaphore(search_slots)

    @property
    def generation(self) -> str | None:
        return self.backend.generation

    @property
    def searches_in_flight(self) -> int:
        """Slots taken: searches the engine is working on (answered at their deadline or not)."""
        return self.search_slots - self._searches.counter

    def _call(self, method: str, *args, **kwargs):
        with self._lock:
            function = getattr(self.backend, method)
            return tpool.execute(function, *args, **kwargs) if self.offload else function(*args, **kwargs)

    def _here(self, method: str, *args, **kwargs):
        """Quick calls that log: logging's locks are green too, so they stay on this thread."""
        with self._lock:
            return getattr(self.backend, method)(*args, **kwargs)

    def put(self, doc_id: str, document: dict) -> None:
        self._call("put", doc_id, document)

    def bulk_put(self, items: list) -> int:
        return self._call("bulk_put", items) if items else 0

    def delete(self, doc_id: str) -> None:
        self._call("delete", doc_id)

    def get(self, doc_id: str) -> dict | None:
        return self._call("get", doc_id)

    def search(self, es_query: dict, size: int, search_after: str | None, include_source: bool) -> dict:
        timeout = self.search_timeout
        if not self._searches.acquire(blocking=False):
            SEARCHES_REFUSED.labels(self.backend.replica, "busy").inc()
            raise SearchBusy(f"all {self.search_slots} search slots of replica {self.backend.replica} are busy; "
                             f"retry later", "search_busy")
        arguments = (es_query, size, search_after, include_source, timeout)
        if not self.offload:
            try:
                return self._counting_timeouts(self.backend.search, *arguments)
            finally:
                self._searches.release()
        done = Event()

        def run():
            try:
                done.send(tpool.execute(self.backend.search, *arguments))
            except Exception as error:  # noqa: BLE001 - handed to the caller
                done.send_exception(error)
            finally:
                self._searches.release()  # only now: the engine has stopped working on it

        eventlet.spawn_n(run)
        return self._counting_timeouts(self._wait, done)

    def _wait(self, done: Event) -> dict:
        timeout = self.search_timeout
        with eventlet.Timeout(None if timeout is None else timeout + SEARCH_DEADLINE_GRACE_S, False):
            return done.wait()
        raise timed_out(timeout)  # the engine is still at it, in its slot

    def _counting_timeouts(self, function, *args):
        try:
            return function(*args)
        except SearchTimeout:
            SEARCHES_REFUSED.labels(self.backend.replica, "timeout").inc()
            raise

    def live_total(self) -> int:
        """Live documents, counted on the writers' side: a health check never waits for a slot."""
        return self._call("search", {}, 1, None, False)["total"]

    def close(self) -> None:
        self._call("close")

    def drop_generation(self, generation: str) -> None:
        self._call("drop_generation", generation)  # deletes a whole directory tree: off this thread

    def current_generation(self) -> str:
        return self._here("current_generation")

    def generations(self) -> list[str]:
        return self._here("generations")

    def new_generation(self) -> "GuardedIndex":
        return GuardedIndex(self._here("new_generation"), self.offload, self.search_slots, self.search_timeout)

    def switch_to(self, generation: str) -> None:
        self._here("switch_to", generation)

    def try_close(self) -> bool:
        """Close unless a call is in progress (a killed container must not wait on one)."""
        if isinstance(self._lock, Semaphore) and not self._lock.acquire(blocking=False):
            return False
        try:
            self.backend.close()
        finally:
            if isinstance(self._lock, Semaphore):
                self._lock.release()
        return True


class KeyedLocks:
    """One green lock per key, kept only while someone holds it or waits for it."""

    def __init__(self):
        self._locks: dict = {}

    @contextlib.contextmanager
    def hold(self, key):
        entry = self._locks.setdefault(key, [Semaphore(), 0])
        entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._locks[key]


class IndexState:
    """What the workers of one indexer share: the replicas' indexes, the per-bundle locks and the
    reindex jobs. ``spawn(function, name)`` runs a job in the background."""

    def __init__(self, backends: dict[str, IndexBackend], offload: bool, spawn: Callable, search_slots: int,
                 search_timeout: float | None):
        self.indexes = {replica: GuardedIndex(backend, offload, search_slots, search_timeout)
                        for replica, backend in backends.items()}
        # Held by every write to a live index (with its copy to a reindex), and by the switch.
        self.write_locks = {replica: Semaphore() for replica in backends}
        self.bundle_locks = KeyedLocks()
        self.jobs: dict[str, ReindexJob] = {}
        self.spawn = spawn

    def index(self, replica: str) -> GuardedIndex:
        try:
            return self.indexes[replica]
        except KeyError:
            raise unknown_replica(replica, REPLICAS) from None

    def running_job(self, replica: str) -> ReindexJob | None:
        job = self.jobs.get(replica)
        return job if job is not None and job.running else None

    def stop(self) -> None:
        """Cancel running reindexes, wait for them to give up, then release the engines."""
        for job in list(self.jobs.values()):
            if job.running:
                job.cancelled = True
                with contextlib.suppress(Exception):
                    job.finished.wait(REINDEX_STOP_TIMEOUT_S)
        for index in self.indexes.values():
            index.close()

    def kill(self) -> None:
        for job in self.jobs.values():
            job.cancelled = True
        for replica, index in self.indexes.items():
            if not index.try_close():
                logger.warning("the %s index was busy when the indexer was killed; not closed", replica)


class IndexesAPI:
    def __init__(self, state: IndexState):
        self.state = state

    def serialized(self, replica: str, uuid: str):
        """A block in which no other worker of this process indexes any version of ``uuid`` in
        ``replica`` (a create racing its tombstone could otherwise bring a bundle back)."""
        return self.state.bundle_locks.hold((replica, uuid))

    # --- documents --------------------------------------------------------------------------------
    def get(self, replica: str, doc_id: str) -> dict | None:
        return self.state.index(replica).get(doc_id)

    def write(self, replica: str, doc_id: str, document: dict) -> None:
        """Write to the live generation, and to the new one if a reindex is building it."""
        index = self.state.index(replica)
        with self.state.write_locks[replica]:
            index.put(doc_id, document)
            job = self.state.running_job(replica)
            if job is not None:
                job.apply(doc_id, document)
        DOCUMENTS_WRITTEN.labels(replica, "tombstone" if is_tombstone(document) else "bundle").inc()

    def remove(self, replica: str, doc_id: str) -> None:
        """Delete from the live generation, and from the new one if a reindex is building it."""
        index = self.state.index(replica)
        with self.state.write_locks[replica]:
            index.delete(doc_id)
            job = self.state.running_job(replica)
            if job is not None:
                job.apply(doc_id, None)
        DOCUMENTS_WRITTEN.labels(replica, "deletion").inc()

    def search(self, replica: str, es_query: dict, per_page: int, search_after: str | None,
               include_source: bool) -> dict:
        return self.state.index(replica).search(es_query, per_page, search_after, include_source)

    # --- reindexing -------------------------------------------------------------------------------
    def start_reindex(self, replica: str, source: BundleSourceAPI) -> dict:
        """Start a reindex of ``replica`` unless one runs; its status, with ``started``."""
        live = self.state.index(replica)
        with self.state.write_locks[replica]:  # two calls at once start one job
            running = self.state.running_job(replica)
            if running is not None:
                return {**running.status(), "started": False}
            self._drop_leftovers(live)
            job = ReindexJob(replica, live, live.new_generation(), source, self.state.write_locks[replica])
            self.state.jobs[replica] = job  # from here on, every live write reaches the new generation too
        self.state.spawn(job.run, f"reindex-{replica}")
        return {**job.status(), "started": True}

    @staticmethod
    def _drop_leftovers(live: GuardedIndex) -> None:
        """Generations of reindexes that never finished (the process stopped meanwhile)."""
        current = live.current_generation()
        for generation in live.generations():
            if generation != current:
                logger.warning("dropping generation %s left over by an unfinished reindex", generation)
                live.drop_generation(generation)

    def reindex_status(self, replica: str) -> dict:
        live = self.state.index(replica)
        job = self.state.jobs.get(replica)
        if job is None:
            return {"replica": replica, "state": IDLE, "done": 0, "total": None,
                    "generation": live.current_generation()}
        return job.status()

    # --- health -----------------------------------------------------------------------------------
    def health(self) -> dict:
        report = {}
        for replica, index in self.state.indexes.items():
            try:
                live = index.live_total()
                generation = index.current_generation()
            except Exception as error:  # noqa: BLE001 - reported, not raised: health must answer
                report[replica] = {"ok": False, "detail": f"index unavailable: {error}"}
                continue
            job = self.state.running_job(replica)
            detail = f"generation {generation}, {live} live documents"
            if job is not None:
                detail += f"; reindexing into {job.generation} ({job.done} of {job.total or '?'})"
            report[replica] = {"ok": True, "detail": detail}
        return report
