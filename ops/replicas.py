"""`dss-ops replicas verify|repair`: compare the replicas' main buckets key by key, and have the
replicator copy what differs from the replica that holds it correctly.

``compare_replicas`` merge-walks the two sorted listings and reports what is missing or different
on either side (each key judged by ``shared.verdicts.Comparer``); ``repair_event`` is the
``object_changed`` event that makes the replicator copy a key from the replica that holds it
correctly.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, TextIO

from shared.blobstore import BlobStore, BlobStoreError
from shared.events import OBJECT_CHANGED
from shared.identifiers import REPLICAS
from shared.keys import PREFIXES
from shared.progress_bar import ProgressBar
from shared.schemas import ObjectChanged
from shared.verdicts import Comparer, Finding


@dataclasses.dataclass
class Summary:
    compared: int = 0
    missing_in_aws: int = 0
    missing_in_gcp: int = 0
    different: int = 0
    unverified: int = 0  # blobs whose S3 ETag cannot be checked against the key without --deep

    @property
    def differences(self) -> int:
        return self.missing_in_aws + self.missing_in_gcp + self.different

    def count(self, finding: Finding) -> None:
        setattr(self, finding.status, getattr(self, finding.status) + 1)

    def __str__(self) -> str:
        text = (f"{self.compared} keys compared: {self.missing_in_aws} missing in aws, "
                f"{self.missing_in_gcp} missing in gcp, {self.different} different")
        if self.unverified:
            text += f"; {self.unverified} blobs checked by size only (--deep reads them)"
        return text


def merge_walk(aws: Iterable[str], gcp: Iterable[str]) -> Iterator[tuple[str, bool, bool]]:
    """(key, in aws, in gcp) over two sorted listings, in order, holding one key of each."""
    sentinel = object()
    aws, gcp = iter(aws), iter(gcp)
    left, right = next(aws, sentinel), next(gcp, sentinel)
    while left is not sentinel or right is not sentinel:
        if right is sentinel or (left is not sentinel and left < right):
            yield left, True, False
            left = next(aws, sentinel)
        elif left is sentinel or right < left:
            yield right, False, True
            right = next(gcp, sentinel)
        else:
            yield left, True, True
            left, right = next(aws, sentinel), next(gcp, sentinel)


def walk_prefixes(prefix: str = "") -> tuple[str, ...]:
    """The listing prefixes that cover the DSS keys under ``prefix``."""
    inside = tuple(p for p in PREFIXES if p.startswith(prefix))
    return inside or (prefix,)


def compare_replicas(stores: dict[str, BlobStore], buckets: dict[str, str], prefix: str = "", *,
                     deep: bool = False, chunk_size: int = 8 * 1024 * 1024, workers: int = 16,
                     progress: "Progress | None" = None, summary: Summary | None = None) -> Iterator[Finding]:
    """Findings for the keys under ``prefix`` in either main bucket, in key order. Keys are judged
    ``workers`` at a time in batches, so memory stays bounded whatever the bucket size."""
    comparer = Comparer(stores, buckets, chunk_size, deep)
    summary = summary if summary is not None else Summary()
    batch_size = workers * 8
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="compare") as pool:
        for listing_prefix in walk_prefixes(prefix):
            walk = merge_walk(stores["aws"].list_keys(buckets["aws"], listing_prefix),
                              stores["gcp"].list_keys(buckets["gcp"], listing_prefix))
            while True:
                batch = [(key, {"aws": in_aws, "gcp": in_gcp}) for key, in_aws, in_gcp in _take(walk, batch_size)]
                if not batch:
                    break
                for (key, _), (finding, unverified) in zip(batch, pool.map(lambda item: comparer.compare(*item),
                                                                            batch)):
                    summary.compared += 1
                    summary.unverified += bool(unverified)
                    if finding is not None:
                        summary.count(finding)
                        yield finding
                    if progress is not None:
                        progress.update(key, summary)
    if progress is not None:
        progress.done(summary)


def recheck(stores: dict[str, BlobStore], buckets: dict[str, str], keys: Iterable[str], *, deep: bool = False,
            chunk_size: int = 8 * 1024 * 1024) -> list[Finding]:
    """The findings that remain for ``keys``."""
    comparer = Comparer(stores, buckets, chunk_size, deep)
    remaining = []
    for key in keys:
        present = {name: stores[name].exists(buckets[name], key) for name in REPLICAS}
        if not any(present.values()):
            continue
        finding, _ = comparer.compare(key, present)
        if finding is not None:
            remaining.append(finding)
    return remaining


def _take(iterator: Iterator, count: int) -> list:
    taken = []
    for item in iterator:
        taken.append(item)
        if len(taken) == count:
            break
    return taken


def repair_event(finding: Finding, buckets: dict[str, str]) -> dict:
    """The ``object_changed`` payload that has the replicator copy the key from its correct replica."""
    return ObjectChanged().dump({"replica": finding.source, "bucket": buckets[finding.source], "key": finding.key,
                                 "kind": "created", "size": None, "checksums": {}, "event_time": None})


# --- progress --------------------------------------------------------------------------------------

def key_fraction(key: str) -> tuple[int, float] | None:
    """Where ``key`` lies in the DSS key space: the index of its prefix and how far through that
    prefix it is, from the first hex digits after it (uniform: sha256 and uuid4 values)."""
    for index, prefix in enumerate(PREFIXES):
        if key.startswith(prefix):
            digits = key[len(prefix):len(prefix) + 4]
            try:
                within = int(digits, 16) / 16 ** len(digits) if digits else 0.0
            except ValueError:
                within = 0.0
            return index, within
    return None


class Progress:
    """Progress of a comparison of whole buckets: where the walk is in the key space, and counts."""

    def __init__(self, stream: TextIO | None = None, prefixes: tuple[str, ...] = PREFIXES,
                 interval: float | None = None):
        self.bar = ProgressBar(stream or sys.stderr, interval)
        self.bar.last = self.bar.started  # the first line after one interval, not at once
        self.prefixes = prefixes

    def fraction(self, key: str) -> float | None:
        position = key_fraction(key)
        if position is None:
            return None
        index, within = position
        walked = [p for p in self.prefixes if p in PREFIXES]
        if PREFIXES[index] not in walked:
            return None
        return (walked.index(PREFIXES[index]) + within) / len(walked)

    def update(self, key: str, summary: Summary) -> None:
        if self.bar.due():
            self._write(self.fraction(key), summary, key)

    def done(self, summary: Summary) -> None:
        self._write(1.0, summary, "")
        self.bar.close()

    def _write(self, fraction: float | None, summary: Summary, key: str) -> None:
        rate = summary.compared / self.bar.elapsed()
        self.bar.draw(fraction, f"{summary.compared} keys, {summary.differences} differences, "
                                f"{rate:.0f} keys/s {key[:40]}")


# --- the `dss-ops replicas` command ----------------------------------------------------------------

# Repairs are object_changed events as the replicator's bridge entrypoints dispatch them (as the
# service named REPLICATOR), consumed by its handle_object_changed. Repair events published while
# that handler's queue does not exist would be dropped, so repair checks for it first; nameko names
# the queue `evt-{source}-{event}--{service}.{method}`.
REPLICATOR = "replicator"
HANDLER_QUEUE = f"evt-{REPLICATOR}-{OBJECT_CHANGED}--{REPLICATOR}.handle_object_changed"


def _handler_queue_exists(amqp_uri: str) -> bool:
    from amqp.exceptions import NotFound as QueueNotFound
    from kombu import Connection

    with Connection(amqp_uri, connect_timeout=5) as connection:
        channel = connection.channel()
        try:
            channel.queue_declare(queue=HANDLER_QUEUE, passive=True)
        except QueueNotFound:
            return False
        channel.close()
    return True


def run_command(action: str, settings, amqp_uri: str, prefix: str = "", deep: bool = False, wait: float = 0,
                out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``verify``: print every difference (``status<TAB>key<TAB>detail``) and a summary; exit 1 if
    there are any (3 if a store failed on the way). ``repair``: also dispatch an ``object_changed``
    event for each from the replica holding the correct copy, and with ``wait`` re-check those
    keys until they match (or time out)."""
    from nameko.standalone.events import event_dispatcher

    from shared.blobstore import open_blobstore

    if action not in ("verify", "repair"):
        raise ValueError(action)
    out, err = out or sys.stdout, err or sys.stderr
    stores = {name: open_blobstore(name, settings) for name in REPLICAS}
    buckets = {name: settings.bucket(name) for name in REPLICAS}
    dispatch = None
    if action == "repair":
        if not _handler_queue_exists(amqp_uri):
            err.write(f"the replicator's queue {HANDLER_QUEUE} does not exist: start the replicator once "
                      "(make up) so that repairs are not dropped\n")
            return 2
        dispatch = event_dispatcher({"AMQP_URI": amqp_uri})
    summary, queued, stuck = Summary(), [], 0
    progress = Progress(err, walk_prefixes(prefix))
    try:
        for finding in compare_replicas(stores, buckets, prefix, deep=deep, chunk_size=settings.stream_chunk_bytes,
                                        progress=progress, summary=summary):
            out.write(f"{finding.status}\t{finding.key}\t{finding.detail}\n")
            if dispatch is None:
                continue
            if finding.source is None:
                stuck += 1
                continue
            if finding.remove is not None:
                stores[finding.remove].delete(buckets[finding.remove], finding.key)
                err.write(f"removed the damaged {finding.remove} copy of {finding.key}\n")
            dispatch(REPLICATOR, OBJECT_CHANGED, repair_event(finding, buckets))
            queued.append(finding.key)
    except BlobStoreError as error:  # an operator needs the reason, not a traceback
        out.flush()
        err.write(f"\nstopped after {summary.compared} keys: {error}\n{summary}\n")
        return 3
    out.flush()
    err.write(f"{summary}\n")
    if action == "verify":
        return 1 if summary.differences else 0
    err.write(f"re-enqueued {len(queued)} keys from their correct replica"
              + (f"; {stuck} cannot be repaired automatically" if stuck else "") + "\n")
    remaining = queued
    deadline = time.monotonic() + wait
    while remaining and wait:
        remaining = [f.key for f in recheck(stores, buckets, remaining, deep=deep,
                                            chunk_size=settings.stream_chunk_bytes)]
        if not remaining or time.monotonic() >= deadline:
            break
        time.sleep(1)
    if wait:
        for key in remaining:
            out.write(f"not_repaired\t{key}\tstill differs after {wait:g}s\n")
        err.write(f"{len(queued) - len(remaining)} of {len(queued)} repaired\n")
    return 1 if stuck or (wait and remaining) else 0
