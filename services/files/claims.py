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
