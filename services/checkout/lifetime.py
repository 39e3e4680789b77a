"""How long a copy in a checkout bucket lives, free of any storage: the stamp a verified copy
carries, when a copy may be served, is due for a refresh, or is swept. One rule for the whole
bucket: blob copies of file reads (``file_reads``) and the files of bundle checkouts
(``bundle_jobs``) carry the same stamp, and the sweeper (``sweeping``) judges both by it.

A copy carries the time it was made in its metadata (``dss-checked-out``, RFC 3339 UTC), written
only by copies that are verified (``copies``, or bytes read and checked before they were written); a
copy without it is never served. Readers judge a copy from one stat: its size and, when the
metadata can tell (GCS CRC32C, a single-part S3 ETag), its bytes.

Copies carry the checkout's metadata only (``copy_metadata``), never their source's, and a time
later than now (beyond a clock skew) is not trusted: no reader serves such a copy and the sweeper
deletes it, so metadata written by anyone else cannot keep a copy alive.
"""
from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import TYPE_CHECKING

from shared.blobstore import BlobInfo
from shared.verdicts import blob_verdict
from shared.storage import JSON

if TYPE_CHECKING:
    from services.checkout.file_reads.blobs import Blob

DAY = 86400.0
CHECKED_OUT_METADATA = "dss-checked-out"  # when the verified copy was made (RFC 3339 UTC)
STAMP_CLOCK_SKEW = 300.0   # a copy may be stamped by a process whose clock runs this much ahead


def rfc3339(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str | None) -> float | None:
    """Epoch seconds of an RFC 3339 time, or None if ``text`` is not one."""
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


# --- the stamp of a verified copy --------------------------------------------------------------------

def is_small_json(content_type: str | None, size: int, limit: int) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == JSON and size <= limit


def checked_out_at(info: BlobInfo) -> float | None:
    """When a checkout copy was made and verified, from its metadata; None if it does not say."""
    return parse_rfc3339(info.metadata.get(CHECKED_OUT_METADATA))


def stamped_in_the_future(made: float, now: float) -> bool:
    """A checkout time no process of the store wrote: later than now, beyond any clock skew."""
    return made > now + STAMP_CLOCK_SKEW


def copy_metadata(now: float) -> dict[str, str]:
    return {CHECKED_OUT_METADATA: rfc3339(now)}


# --- when a copy may be served ---------------------------------------------------------------------

class CopyState(enum.Enum):
    FRESH = "fresh"          # serve it
    DUE = "due"              # serve it, and refresh it: it is near the end of its life
    MISSING = "missing"      # absent, expired, unverified or of other bytes: copy it (again)


@dataclasses.dataclass(frozen=True)
class Verdict:
    state: CopyState
    # Epoch seconds from which a FRESH copy is DUE; None for a copy that never expires.
    refresh_at: float | None = None
    why: str = ""

    @property
    def servable(self) -> bool:
        return self.state is not CopyState.MISSING


FRESH_FOR_GOOD = Verdict(CopyState.FRESH, None, "kept")


@dataclasses.dataclass(frozen=True)
class Lifetime:
    """How long checkout copies live: ``expiry`` seconds after they were made, refreshed when read in
    the last ``refresh_margin`` seconds; JSON up to ``keep_json_bytes`` never expires."""
    expiry: float
    refresh_margin: float
    keep_json_bytes: int

    @classmethod
    def from_settings(cls, settings) -> "Lifetime":
        return cls(settings.checkout_expiry_days * DAY, settings.checkout_refresh_days * DAY,
                   settings.checkout_keep_json_bytes)

    def kept(self, content_type: str | None, size: int) -> bool:
        return is_small_json(content_type, size, self.keep_json_bytes)

    def judge(self, info: BlobInfo | None, blob: Blob, now: float) -> Verdict:
        """What a reader may do with the copy ``info`` describes (None: there is none)."""
        if info is None:
            return Verdict(CopyState.MISSING, why="absent")
        if info.size != blob.size or blob_verdict(info, blob.checksums) is False:
            return Verdict(CopyState.MISSING, why="other bytes")
        made = checked_out_at(info)
        if made is None:
            return Verdict(CopyState.MISSING, why="not verified")
        if stamped_in_the_future(made, now):
            return Verdict(CopyState.MISSING, why="stamped in the future")
        if self.kept(info.content_type, info.size):
            return FRESH_FOR_GOOD
        expires_at = made + self.expiry
        if now >= expires_at:
            return Verdict(CopyState.MISSING, why="expired")
        refresh_at = expires_at - self.refresh_margin
        if now >= refresh_at:
            return Verdict(CopyState.DUE, refresh_at, "near its expiry")
        return Verdict(CopyState.FRESH, refresh_at)

    def new_copy(self, blob: Blob, now: float) -> Verdict:
        """The verdict on a copy of ``blob`` made and verified at ``now``."""
        if self.kept(blob.content_type, blob.size):
            return FRESH_FOR_GOOD
        return Verdict(CopyState.FRESH, now + self.expiry - self.refresh_margin, "just made")

    def expired(self, info: BlobInfo, now: float) -> bool:
        """Whether the sweeper deletes this copy. One without the checkout time (not made by this
        service) counts from its last modification; one with neither is left alone; one stamped in
        the future was not stamped by this service and is deleted."""
        made = checked_out_at(info)
        if made is not None and stamped_in_the_future(made, now):
            return True
        if self.kept(info.content_type, info.size):
            return False
        if made is None and info.last_modified is not None:
            made = info.last_modified.timestamp()
        return made is not None and now >= made + self.expiry
