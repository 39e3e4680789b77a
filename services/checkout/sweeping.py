"""The sweeper of the checkout buckets, which are caches: everything in them expires, whichever
part of the service wrote it. Blob copies of file reads and the files of bundle checkouts by the
copies' ``lifetime``, job records once untouched for as long, lost background-copy markers past
their deadline, and e-mail quota markers once their hour is past.

It runs on ``sweep_timer`` (nameko's timer every ``DSS_CHECKOUT_SWEEP_INTERVAL`` seconds, the
interval read when the container starts, so that a deployment, or a test, changes it without a code
change), a batch per replica each time, and on the ``sweep`` RPC.
"""
from __future__ import annotations

import itertools
import logging

import eventlet
from nameko.timer import Timer
from prometheus_client import Counter

from shared.blobstore import BlobNotFound
from shared.config import Settings
from shared.storage import ReplicaStorage, Replicas

from services.checkout.bundle_jobs.jobs import JOBS_PREFIX
from services.checkout.bundle_jobs.mail_quota import QUOTA_PREFIX, MailQuota
from services.checkout.file_reads.reads import MARKER_PREFIX, CheckoutState, marker_deadline
from services.checkout.lifetime import Lifetime

logger = logging.getLogger(__name__)

STAT_CONCURRENCY = 16

SWEPT = Counter("dss_checkout_swept_total", "Expired copies the sweeper deleted from a checkout bucket.",
                ["replica"])


class Sweeper:
    """Sweeps both replicas' checkout buckets. ``state``: the file reads' memory of the process
    (a swept copy is forgotten there; where the periodic sweeper goes on)."""

    def __init__(self, replicas: Replicas, settings: Settings, state: CheckoutState):
        self.replicas = replicas
        self.settings = settings
        self.state = state
        self.clock = state.clock
        self.lifetime = Lifetime.from_settings(settings)

    def sweep(self, replica: str, start_after: str | None = None, limit: int | None = None) -> dict:
        """Delete what expired among the next ``limit`` (``DSS_CHECKOUT_SWEEP_BATCH``) keys of
        ``replica``'s checkout bucket after ``start_after``: blob copies (``blobs/``), bundle checkouts
        (``bundles/``) and finished jobs' records (``checkout-jobs/``), by the same lifetime; and lost
        background-copy markers and e-mail quota markers of past hours (``markers_deleted``).
        ``next_start_after`` is where the next pass goes on (None: the listing ended)."""
        storage = self.replicas[replica]
        limit = limit or self.settings.checkout_sweep_batch
        # Copy markers have deadlines of their own, e-mail quota markers their hour (both below).
        listing = (key for key in storage.store.list_keys(storage.checkout_bucket, "", start_after)
                   if not key.startswith((MARKER_PREFIX, QUOTA_PREFIX)))
        keys = list(itertools.islice(listing, limit))
        now = self.clock()

        def stat(key):
            try:
                return key, storage.store.stat(storage.checkout_bucket, key)
            except BlobNotFound:  # deleted meanwhile
                return key, None

        deleted = kept = 0
        for key, info in eventlet.GreenPool(STAT_CONCURRENCY).imap(stat, keys):
            if info is None:
                continue
            if key.startswith(JOBS_PREFIX):
                # A job's record is rewritten while it runs: one untouched for a lifetime is long over.
                expired = info.last_modified is not None and now >= info.last_modified.timestamp() + \
                    self.lifetime.expiry
            else:
                expired = self.lifetime.expired(info, now)
                if not expired and self.lifetime.kept(info.content_type, info.size):
                    kept += 1
                    continue
            if expired:
                # An expired copy is one nobody read in its last DSS_CHECKOUT_REFRESH_DAYS (a read
                # refreshes it), so a read racing this delete is as unlikely as it is harmless:
                # its next GET copies the blob again.
                self.state.copies.forget((replica, key))
                storage.store.delete(storage.checkout_bucket, key)
                deleted += 1
                SWEPT.labels(replica).inc()
        markers = self._sweep_markers(storage, limit, now)
        markers += MailQuota(storage.store, storage.checkout_bucket, 0, self.clock).sweep(limit)
        if deleted or markers:
            logger.info("swept %d expired copies and %d lost copy markers of %d examined in %s", deleted, markers,
                        len(keys), replica)
        return {"replica": replica, "examined": len(keys), "deleted": deleted, "kept": kept,
                "markers_deleted": markers, "next_start_after": keys[-1] if len(keys) == limit else None}

    def sweep_next_batch(self, replica: str) -> dict:
        """One run of the periodic sweeper: the next batch after where the last run stopped."""
        result = self.sweep(replica, self.state.sweep_cursors.get(replica))
        self.state.sweep_cursors[replica] = result["next_start_after"]
        return result

    def _sweep_markers(self, storage: ReplicaStorage, limit: int, now: float) -> int:
        deleted = 0
        for key in itertools.islice(storage.store.list_keys(storage.checkout_bucket, MARKER_PREFIX), limit):
            deadline = marker_deadline(storage, key[len(MARKER_PREFIX):])
            if deadline is None or deadline <= now:
                storage.store.delete(storage.checkout_bucket, key)
                deleted += 1
        return deleted


class SweepTimer(Timer):
    def __init__(self, **kwargs):
        super().__init__(interval=None, **kwargs)

    def setup(self):
        super().setup()
        self.interval = Settings.from_config(self.container.config).checkout_sweep_interval


sweep_timer = SweepTimer.decorator
