"""One background copy per file version at a time, whichever files process is asked.

A large PUT /files (above ``DSS_ASYNC_COPY_THRESHOLD``) answers 202 and leaves the copy to
``handle_file_upload_accepted``. Before it dispatches that copy, the service claims the file
version with a marker in the main bucket of the source's replica, ``ingesting/{uuid}.{version}``
(JSON ``{task_id, file, requested, deadline}``, ``file`` being the fields that make two PUTs the
same file), written only if absent. So the claim holds across processes: a repeat that finds a
marker within its deadline answers 202 with that marker's task and starts nothing (409 if the
marker is for other content). The copying worker removes the marker once the file is written or
the copy failed for good; while a failed copy waits for its retry, it stays. A marker past its
deadline belongs to a copy that was lost, and the next PUT replaces it and starts another.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time
from typing import Callable

from shared.blobstore import BlobAlreadyExists, BlobNotFound
from shared.storage import JSON, ReplicaStorage, Replicas

from services.files.metadata import file_identity

logger = logging.getLogger(__name__)

MARKER_PREFIX = "ingesting/"
# How long a background copy may take before a repeat may start another: a floor (the broker's
# first retries included), plus the size at a rate that reading and hashing any source beats.
MARKER_MIN_SECONDS = 900
MARKER_RATE_BYTES = 20 * 1024 * 1024


def marker_key(uuid: str, version: str) -> str:
    return f"{MARKER_PREFIX}{uuid}.{version}"


def _rfc3339(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _epoch(text) -> float | None:
    try:
        moment = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


@dataclasses.dataclass(frozen=True)
class Claim:
    """A background copy of one file version under way: its task, the file it writes, its deadline."""
    task_id: str
    file: dict
    deadline: float  # epoch seconds

    @classmethod
    def new(cls, task_id: str, file: dict, size: int, now: float) -> "Claim":
        return cls(task_id, file, now + MARKER_MIN_SECONDS + size / MARKER_RATE_BYTES)

    def live(self, now: float) -> bool:
        return now < self.deadline

    def encode(self, now: float) -> bytes:
        return json.dumps({"task_id": self.task_id, "file": self.file, "requested": _rfc3339(now),
                           "deadline": _rfc3339(self.deadline)}, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> "Claim | None":
        """The claim a marker holds; None for a marker that is not one (it counts as lost)."""
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("task_id"), str) \
                or not isinstance(doc.get("file"), dict):
            return None
        deadline = _epoch(doc.get("deadline"))
        return None if deadline is None else cls(doc["task_id"], doc["file"], deadline)


class BackgroundCopyClaims:
    """The claims of background copies in the main buckets of both replicas."""

    def __init__(self, replicas: Replicas, clock: Callable[[], float] = time.time):
        self.replicas = replicas
        self.clock = clock

    def claim(self, replica: str, uuid: str, doc: dict, task_id: str) -> Claim | None:
        """Claim the background copy of file ``uuid`` version ``doc["version"]`` for ``task_id``:
        None if claimed (the caller dispatches the copy), else the live claim of a copy under way.
        A claim past its deadline, or unreadable, is replaced."""
        storage = self.replicas[replica]
        key = marker_key(uuid, doc["version"])
        now = self.clock()
        claim = Claim.new(task_id, file_identity(doc), doc["size"], now)
        try:
            storage.store.put_bytes(storage.bucket, key, claim.encode(now), content_type=JSON, if_absent=True)
            return None
        except BlobAlreadyExists:
            pass
        current = self._read_claim(storage, key)
        if current is not None and current.live(now):
            return current
        # The copy that claimed it was lost. Two PUTs replacing the same lost claim at once may
        # both start a copy; the second to finish finds the file written and copies nothing.
        logger.warning("replacing the lapsed claim %s of task %s", key, current.task_id if current else "?")
        storage.store.put_bytes(storage.bucket, key, claim.encode(now), content_type=JSON)
        return None

    def release(self, replica: str, uuid: str, version: str, task_id: str) -> None:
        """Remove the claim of ``task_id`` (one that another task took over is left to it)."""
        storage = self.replicas[replica]
        key = marker_key(uuid, version)
        current = self._read_claim(storage, key)
        if current is None or current.task_id == task_id:
            storage.store.delete(storage.bucket, key)

    @staticmethod
    def _read_claim(storage: ReplicaStorage, key: str) -> Claim | None:
        try:
            return Claim.decode(storage.store.get_bytes(storage.bucket, key))
        except BlobNotFound:
            return None
