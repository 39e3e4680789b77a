"""What this replicator process wrote or found intact in a replica lately: so that the echo of its own
copy (the destination's change notification) is not copied back, and a blob many files share is
looked at once, not for each of them."""
from __future__ import annotations

import time
from typing import Callable

from shared.blobstore import BlobInfo
from shared.concurrency import ExpiringCache

# How long this process trusts what it wrote or verified in a replica without looking again: long
# enough for the destination's notification of a copy to come back, short against an operator's
# purge (`dss-ops replicas verify` finds what such a purge breaks at any time).
RECENT_SECONDS = 300.0
RECENT_ENTRIES = 100_000


class RecentCopies:
    """(replica, key) -> (revision, size) of an object this process wrote there or found intact,
    for ``RECENT_SECONDS``; shared by the workers of one process."""

    def __init__(self, clock: Callable[[], float] = time.time, max_entries: int = RECENT_ENTRIES):
        self.known = ExpiringCache(clock, max_entries=max_entries)

    def remember(self, replica: str, info: BlobInfo) -> None:
        self.known.put((replica, info.key), (info.revision, info.size), until=self.known.clock() + RECENT_SECONDS)

    def intact_size(self, replica: str, key: str) -> int | None:
        """The size of ``key`` if this process wrote or verified it in ``replica`` lately."""
        known = self.known.get((replica, key))
        return None if known is None else known[1]

    def is_own_write(self, change: dict) -> bool:
        """Whether a change notification reports an object as this process wrote it: the echo of a
        copy, whose source holds the same (the revision is the GCS generation or the S3 ETag)."""
        known = self.known.get((change["replica"], change["key"]))
        if known is None or change["kind"] != "created":
            return False
        revision = change["checksums"].get("generation" if change["replica"] == "gcp" else "etag")
        return revision is not None and revision.lower() == str(known[0]).lower()
