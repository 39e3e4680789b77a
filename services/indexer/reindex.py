"""Rebuilding a replica's search index without downtime.

A job builds a new generation (``IndexBackend.new_generation``) from every bundle version in the
replica's main bucket, in batches, while the live generation keeps serving searches and taking
writes. Every write the handlers make meanwhile goes to both (``apply``), and a document they
wrote is never overwritten by the job's older reading of the bucket (``touched``). Once the bucket
is walked, the new generation becomes the live one in a single step (``switch_to``) taken while no
handler write is in progress, and the old generation is dropped.

One job per replica at a time; its progress is in ``status()``, the logs (every tenth) and the
gauges ``dss_reindex_running``, ``dss_reindex_documents`` and ``dss_reindex_progress_ratio``.
"""
from __future__ import annotations

import datetime
import itertools
import logging
import time

import eventlet
from eventlet.semaphore import Semaphore
from prometheus_client import Gauge

from shared.concurrency import green_map

from services.indexer.documents import BundleSourceAPI

logger = logging.getLogger(__name__)

BATCH_DOCUMENTS = 500       # documents per bulk write: one commit each
BUILD_CONCURRENCY = 8       # bundles whose documents are built at once (each reads its files concurrently)

IDLE, RUNNING, SUCCEEDED, FAILED = "idle", "running", "succeeded", "failed"

REINDEX_RUNNING = Gauge("dss_reindex_running", "1 while a reindex of the replica runs.", ["replica"])
REINDEX_DOCUMENTS = Gauge("dss_reindex_documents", "Documents the current (or last) reindex has written.",
                          ["replica"])
REINDEX_PROGRESS = Gauge("dss_reindex_progress_ratio", "Fraction of the current (or last) reindex done.",
                         ["replica"])


class Cancelled(Exception):
    """The service is stopping: the job gives up and leaves the live generation as it was."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class ReindexJob:
    def __init__(self, replica: str, live, builder, source: BundleSourceAPI, write_lock: Semaphore):
        self.replica = replica
        self.live = live                # GuardedIndex of the live generation
        self.builder = builder          # GuardedIndex of the new one; None once it stopped taking writes
        self.generation = builder.generation
        self.source = source
        self.write_lock = write_lock    # held by every live write (with its apply) and by the switch
        self.touched: set[str] = set()
        self._mutex = Semaphore()       # a handler's apply against the job's filtered bulk write
        self.state = RUNNING
        self.done = 0
        self.total: int | None = None
        self.error: str | None = None
        self.started_at, self.finished_at = _now(), None
        self.cancelled = False
        self.finished = eventlet.Event()
        self._reported = 0
        self._clock = time.monotonic()

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def status(self) -> dict:
        status = {"replica": self.replica, "state": self.state, "done": self.done, "total": self.total,
                  "generation": self.generation, "started_at": self.started_at, "finished_at": self.finished_at}
        if self.error is not None:
            status["error"] = self.error
        return status

    # --- writes made while the job runs ---------------------------------------------------------------
    def apply(self, doc_id: str, document: dict | None) -> None:
        """A handler's write (None: a deletion), made to the live generation: the new one takes it
        too. The caller holds ``write_lock``."""
        with self._mutex:
            if self.builder is None:
                return
            if document is None:
                self.builder.delete(doc_id)
            else:
                self.builder.put(doc_id, document)
            self.touched.add(doc_id)

    # --- the job ----------------------------------------------------------------------------------------
    def run(self) -> None:
        REINDEX_RUNNING.labels(self.replica).set(1)
        REINDEX_DOCUMENTS.labels(self.replica).set(0)
        REINDEX_PROGRESS.labels(self.replica).set(0)
        previous = self.live.current_generation()
        logger.info("reindex %s: building generation %s (live: %s)", self.replica, self.generation, previous)
        try:
            self.total = self.source.count(self.replica)
            logger.info("reindex %s: %d bundle versions to index", self.replica, self.total)
            listing = self.source.walk(self.replica)
            while batch := list(itertools.islice(listing, BATCH_DOCUMENTS)):
                if self.cancelled:
                    raise Cancelled("the indexer is stopping")
                self._write_batch(batch)
            self._switch()
        except Exception as error:  # noqa: BLE001 - reported in status(); the live generation is untouched
            self._abandon(error)
        else:
            self.state, self.finished_at = SUCCEEDED, _now()
            logger.info("reindex %s: generation %s is live with %d documents (%.1f s)", self.replica,
                        self.generation, self.done, time.monotonic() - self._clock)
            try:
                self.live.drop_generation(previous)
            except Exception:  # noqa: BLE001 - the new generation is live; an old one left over is harmless
                logger.exception("reindex %s: could not drop the old generation %s", self.replica, previous)
        finally:
            REINDEX_RUNNING.labels(self.replica).set(0)
            self.finished.send(self.state)

    def _write_batch(self, batch) -> None:
        documents = green_map(lambda listed: (listed.fqid, self.source.listed_document(self.replica, listed)),
                              batch, BUILD_CONCURRENCY)
        with self._mutex:
            # A document a handler wrote since the job began is newer than what the job read.
            fresh = [(doc_id, document) for doc_id, document in documents if doc_id not in self.touched]
            self.builder.bulk_put(fresh)
        self._advance(len(batch))

    def _advance(self, count: int) -> None:
        self.done += count
        REINDEX_DOCUMENTS.labels(self.replica).set(self.done)
        fraction = min(self.done / self.total, 1.0) if self.total else 1.0
        REINDEX_PROGRESS.labels(self.replica).set(fraction)
        tenth = int(fraction * 10)
        if tenth > self._reported:
            self._reported = tenth
            rate = self.done / max(time.monotonic() - self._clock, 1e-6)
            logger.info("reindex %s: %d%% (%d of %d documents, %.0f/s)", self.replica, tenth * 10, self.done,
                        self.total, rate)

    def _switch(self) -> None:
        with self.write_lock:  # no handler write is between its live write and its apply
            with self._mutex:
                builder, self.builder = self.builder, None
            builder.close()  # the embedded engine's writer lock, which the live index takes next
            self.live.switch_to(self.generation)

    def _abandon(self, error: Exception) -> None:
        self.state, self.finished_at = FAILED, _now()
        self.error = str(error) or type(error).__name__
        if isinstance(error, Cancelled):
            logger.warning("reindex %s: cancelled; generation %s dropped", self.replica, self.generation)
        else:
            logger.error("reindex %s failed after %d documents: %s", self.replica, self.done, self.error,
                         exc_info=error)
        with self.write_lock:
            with self._mutex:
                builder, self.builder = self.builder, None
        try:
            if builder is not None:
                builder.close()
            self.live.drop_generation(self.generation)
        except Exception:  # noqa: BLE001 - a left-over generation is dropped by the next reindex
            logger.exception("reindex %s: could not drop the unfinished generation %s", self.replica,
                             self.generation)
