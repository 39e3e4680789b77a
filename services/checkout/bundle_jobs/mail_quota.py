"""How many bundle checkout notices a caller may be sent: ``DSS_CHECKOUT_MAIL_PER_HOUR`` per
caller and clock hour (UTC), counted durably so that the limit holds whatever the number of
checkout processes and however often they restart.

Each notice about to be sent writes an empty marker in a checkout bucket,
``mail-quota/{hour}/{caller}/{job_id}`` (``hour``: hours since the epoch, zero-padded so that keys
sort by time; ``caller``: a hash of the caller's e-mail, which stays out of the key), then lists its
caller's markers of that hour: the notice is sent only if they are no more than the limit. A writer
lists after its own write, so among racing senders at most ``limit`` see a count within it (a race
may refuse one notice too many, never send one too many). A retried notice rewrites nothing (the
marker of its job is there) and is counted once. Markers of past hours are deleted by the sweeper.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Callable

from shared.blobstore import BlobAlreadyExists, BlobStore

logger = logging.getLogger(__name__)

QUOTA_PREFIX = "mail-quota/"
WINDOW_SECONDS = 3600


def window_of(now: float) -> int:
    return int(now // WINDOW_SECONDS)


def caller_hash(identity: str) -> str:
    return hashlib.sha256(identity.strip().lower().encode()).hexdigest()[:32]


def window_prefix(window: int) -> str:
    return f"{QUOTA_PREFIX}{window:010d}/"


class MailQuota:
    """The notices of every caller, in ``bucket`` of ``store``, at most ``per_hour`` each."""

    def __init__(self, store: BlobStore, bucket: str, per_hour: int, clock: Callable[[], float]):
        self.store, self.bucket, self.per_hour, self.clock = store, bucket, per_hour, clock

    def admit(self, identity: str, job_id: str) -> bool:
        """Whether the notice of ``job_id`` to ``identity`` (the caller's e-mail) may be sent now;
        counted as taken either way."""
        if self.per_hour <= 0:
            return False
        prefix = f"{window_prefix(window_of(self.clock()))}{caller_hash(identity)}/"
        try:
            self.store.put_bytes(self.bucket, prefix + job_id, b"", content_type="text/plain", if_absent=True)
        except BlobAlreadyExists:
            pass  # a retried notice of the same job
        taken = sum(1 for _ in self.store.list_keys(self.bucket, prefix))
        if taken > self.per_hour:
            logger.warning("checkout job %s: its caller's notices this hour are over the limit (%d counted, "
                           "%d allowed); this one is not sent", job_id, taken, self.per_hour)
            return False
        return True

    def sweep(self, limit: int) -> int:
        """Delete up to ``limit`` markers of hours past; how many were deleted."""
        current = window_prefix(window_of(self.clock()))
        deleted = 0
        for key in self.store.list_keys(self.bucket, QUOTA_PREFIX):
            if key >= current or deleted >= limit:
                break  # keys sort by hour: the rest are this hour's
            self.store.delete(self.bucket, key)
            deleted += 1
        return deleted
