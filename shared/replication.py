"""What it means for both replicas to hold a key, shared by the replicator service and the
``dss-ops replicas verify|repair`` command.

The main buckets hold the same keys (docs/architecture.md, "Storage layout"). A blob's key names
its four checksums, so a copy can be judged against its key alone: from the store's metadata when
that says enough (GCS keeps a CRC32C; an S3 ETag is the key's ``s3_etag`` when the part layouts
agree), else by reading and hashing it. JSON documents are judged by their bytes and, when two
copies differ, by which one is a valid document of its kind (the source of truth).

``compare_replicas`` merge-walks the two sorted listings and reports what is missing or different
on either side; ``repair_event`` is the ``object_changed`` event that makes the replicator copy a
key from the replica that holds it correctly.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TextIO

import google_crc32c
from marshmallow import INCLUDE, ValidationError

from shared.blobstore import BlobInfo, BlobNotFound, BlobStore, BlobStoreError
from shared.checksums import ChecksumPass, Checksums
from shared.exceptions import InvalidParameter, Unprocessable
from shared.identifiers import REPLICAS, TOMBSTONE_SUFFIX, Replica, split_fqid
from shared.progress_bar import ProgressBar
from shared.schemas import BundleManifest, CollectionDocument, FileMetadata, ObjectChanged, Tombstone

BLOB, FILE, BUNDLE, COLLECTION, TOMBSTONE = "blob", "file", "bundle", "collection", "tombstone"
# Every DSS key lives under one of these, in listing order. Anything else in a main bucket (the
# temporary parts of a GCS composite upload) is not replicated.
PREFIXES = ("blobs/", "bundles/", "collections/", "files/")
_KIND_OF_PREFIX = {"blobs/": BLOB, "bundles/": BUNDLE, "collections/": COLLECTION, "files/": FILE}


# --- keys ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ReplicaKey:
    """A key of the main bucket and what it holds."""
    key: str
    kind: str  # BLOB, FILE, BUNDLE, COLLECTION or TOMBSTONE
    uuid: str | None = None
    version: str | None = None
    checksums: Checksums | None = None  # blobs: the checksums the key names

    @property
    def is_document(self) -> bool:
        return self.kind != BLOB


def parse_key(key: str) -> ReplicaKey | None:
    """What ``key`` holds; None outside the DSS layout. A malformed key under a DSS prefix is a
    400 ``illegal_key`` (it cannot be judged, so it cannot be replicated safely)."""
    prefix = next((p for p in PREFIXES if key.startswith(p)), None)
    if prefix is None:
        return None
    kind, name = _KIND_OF_PREFIX[prefix], key[len(prefix):]
    try:
        if kind == BLOB:
            sha256, sha1, s3_etag, crc32c = name.split(".")
            checksums = Checksums.parse({"sha256": sha256, "sha1": sha1, "s3_etag": s3_etag, "crc32c": crc32c})
            if checksums.blob_key() != key:  # upper case, stray whitespace
                raise ValueError(key)
            return ReplicaKey(key, BLOB, checksums=checksums)
        if kind in (BUNDLE, COLLECTION) and name.endswith("." + TOMBSTONE_SUFFIX):
            uuid, version = split_fqid(name[: -len(TOMBSTONE_SUFFIX) - 1])
            if kind == COLLECTION and version is not None:
                raise ValueError(key)  # collections have only the tombstone of every version
            return ReplicaKey(key, TOMBSTONE, uuid, version)
        uuid, version = split_fqid(name)
        if version is None or f"{prefix}{uuid}.{version}" != key:
            raise ValueError(key)
        return ReplicaKey(key, kind, uuid, version)
    except (ValueError, InvalidParameter, Unprocessable):
        raise InvalidParameter(f"`{key}` is not a key of the DSS storage layout", "illegal_key") from None


# --- documents -------------------------------------------------------------------------------------

_SCHEMAS = {FILE: FileMetadata, BUNDLE: BundleManifest, COLLECTION: CollectionDocument, TOMBSTONE: Tombstone}


def load_document(target: ReplicaKey, data: bytes) -> dict:
    """The JSON document at ``target`` if it is a valid one of its kind, else 422 ``invalid_document``.
    Unknown fields are allowed, so that a newer writer's documents still replicate."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        _SCHEMAS[target.kind]().load(doc, unknown=INCLUDE)
    except (ValueError, ValidationError) as error:  # json.JSONDecodeError is a ValueError
        raise Unprocessable(f"{target.key} is not a valid {target.kind} document: {error}",
                            "invalid_document") from None
    return doc


def is_valid_document(target: ReplicaKey, data: bytes) -> bool:
    try:
        load_document(target, data)
    except Unprocessable:
        return False
    return True


# --- judging a stored copy -------------------------------------------------------------------------

def blob_verdict(info: BlobInfo, expected: Checksums) -> bool | None:
    """Whether a stored blob holds the bytes its key names, judged from its metadata alone: True or
    False, or None when only reading it can tell (an S3 ETag from another part layout)."""
    if info.crc32c is not None:
        return info.crc32c == expected.crc32c
    etag = info.revision
    if etag == expected.s3_etag:
        return True
    if "-" not in etag and "-" not in expected.s3_etag:  # both the MD5 of the whole object
        return False
    return None


def document_verdict(info: BlobInfo, data: bytes) -> bool:
    """Whether a stored document holds exactly ``data``, from its metadata (written in one request,
    an S3 object's ETag is its MD5; GCS keeps a CRC32C)."""
    if info.size != len(data):
        return False
    if info.crc32c is not None:
        return info.crc32c == google_crc32c.Checksum(data).digest().hex()
    return info.revision == hashlib.md5(data).hexdigest()


def hash_object(store: BlobStore, bucket: str, key: str, chunk_size: int,
                on_chunk: Callable[[int], None] = lambda count: None) -> tuple[Checksums, int]:
    """Read ``key`` once and compute its four checksums (bounded memory, hashing on threads)."""
    info = store.stat(bucket, key)
    checksum_pass = ChecksumPass(info.size)
    for chunk in store.iter_chunks(bucket, key, chunk_size, revision=info.revision):
        checksum_pass.update(chunk)
        on_chunk(len(chunk))
    return checksum_pass.result(), checksum_pass.size


# --- comparing the replicas ------------------------------------------------------------------------

MISSING = {"aws": "missing_in_aws", "gcp": "missing_in_gcp"}
DIFFERENT = "different"


@dataclasses.dataclass(frozen=True)
class Finding:
    """A key that is not the same in both replicas. ``source`` is the replica holding the correct
    copy (None: neither can be trusted, an operator must look). ``remove`` names a damaged blob
    copy that only reading reveals: the replicator judges a copy by its metadata, so a repair
    deletes that one before asking for it again."""
    key: str
    status: str  # missing_in_aws, missing_in_gcp or different
    source: str | None
    detail: str = ""
    remove: str | None = None


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


class Comparer:
    """Judges one key present in both replicas (``stores`` and ``buckets`` by replica name)."""

    def __init__(self, stores: dict[str, BlobStore], buckets: dict[str, str], chunk_size: int, deep: bool = False):
        self.stores, self.buckets = stores, buckets
        self.chunk_size, self.deep = chunk_size, deep

    def compare(self, key: str, present: dict[str, bool]) -> tuple[Finding | None, bool]:
        """(the finding or None, whether the key could be checked only by size)."""
        missing = [name for name in REPLICAS if not present[name]]
        if missing:
            other = Replica(missing[0]).other.value
            return Finding(key, MISSING[missing[0]], other, f"only in {other}"), False
        try:
            target = parse_key(key)
        except InvalidParameter:
            target = None  # judged as an opaque object
        try:
            infos = {name: self.stores[name].stat(self.buckets[name], key) for name in REPLICAS}
        except BlobNotFound:  # written or never there after all: the next run sees it settled
            return None, False
        if target is None:
            if infos["aws"].size != infos["gcp"].size:
                return Finding(key, DIFFERENT, None, "sizes differ; not a DSS key, not repaired"), False
            return None, False
        if target.kind == BLOB:
            return self._compare_blob(target, infos)
        return self._compare_document(target, infos), False

    def _hash_verdict(self, name: str, target: ReplicaKey) -> bool:
        actual, _ = hash_object(self.stores[name], self.buckets[name], target.key, self.chunk_size)
        return actual == target.checksums

    def _compare_blob(self, target: ReplicaKey, infos: dict[str, BlobInfo]) -> tuple[Finding | None, bool]:
        cheap = {name: blob_verdict(info, target.checksums) for name, info in infos.items()}
        if self.deep:
            verdicts = {name: self._hash_verdict(name, target) for name in REPLICAS}
        else:
            verdicts = cheap
        same_size = infos["aws"].size == infos["gcp"].size
        if same_size and False not in verdicts.values():
            return None, None in verdicts.values()
        # Which copy is right decides which way a repair goes: read whatever metadata cannot judge.
        verdicts = {name: self._hash_verdict(name, target) if verdict is None else verdict
                    for name, verdict in verdicts.items()}
        good = [name for name in REPLICAS if verdicts[name]]
        bad = [name for name in REPLICAS if not verdicts[name]]
        if not bad:  # both hash right yet sizes differ: impossible for real stores; report it
            return Finding(target.key, DIFFERENT, None, "sizes differ, checksums match"), False
        detail = ", ".join(f"{name} does not match the key ({infos[name].size} bytes)" for name in bad)
        if not good:
            return Finding(target.key, DIFFERENT, None, detail), False
        hidden = same_size and cheap[bad[0]] is not False  # its size and metadata look right
        return Finding(target.key, DIFFERENT, good[0], detail, remove=bad[0] if hidden else None), False

    def _compare_document(self, target: ReplicaKey, infos: dict[str, BlobInfo]) -> Finding | None:
        if infos["aws"].size == infos["gcp"].size and not self.deep:
            return None  # documents are written once; --deep compares their bytes
        data = {name: self.stores[name].get_bytes(self.buckets[name], target.key) for name in REPLICAS}
        if data["aws"] == data["gcp"]:
            return None
        valid = [name for name in REPLICAS if is_valid_document(target, data[name])]
        if len(valid) == 1:
            invalid = Replica(valid[0]).other.value
            return Finding(target.key, DIFFERENT, valid[0], f"the {invalid} copy is not a valid {target.kind}")
        detail = "both copies are valid documents" if valid else "neither copy is a valid document"
        return Finding(target.key, DIFFERENT, None, f"{detail}; an operator must choose")


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

# The replicator's queue for object_changed (nameko names it `evt-{source}-{event}--{service}.{method}`);
# repair events published while it does not exist would be dropped, so repair checks first.
HANDLER_QUEUE = "evt-replicator-object_changed--replicator.handle_object_changed"


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
    from shared.events import OBJECT_CHANGED

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
            dispatch("replicator", OBJECT_CHANGED, repair_event(finding, buckets))
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
