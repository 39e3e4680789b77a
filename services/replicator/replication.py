"""Replication: making the other replica's main bucket hold what one replica's holds, dependencies
first, each copy verified before it counts (``ReplicatorAPI.replicate``, one ``_Run`` per key);
which change events need no copy; and the comparison of one key in both replicas (``verify``).

Order is what keeps a reader of the destination from ever seeing a dangling reference: a blob
before the file document naming it, a bundle's files before its manifest, a collection's items
before the collection. Bundles and collections already present with the same bytes are taken as
proof that their dependencies are there too (they were written first), so a repeated event costs
two reads. A file document, whose one dependency is cheap to look at, is written if absent right
after its blob: a new file (the usual event) costs no read of the destination.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging

from eventlet.event import Event
from prometheus_client import Counter, Histogram

from shared.blobstore import BlobAlreadyExists, BlobInfo, BlobNotFound
from shared.checksums import ChecksumPass, Checksums, checksum_bytes
from shared.concurrency import SingleFlight, green_map
from shared.exceptions import InvalidParameter
from shared.identifiers import Keys, Replica
from shared.metrics import MetricsAPI
from shared.keys import BLOB, BUNDLE, COLLECTION, FILE, ReplicaKey, is_valid_document, load_document, parse_key
from shared.storage import ReplicaStorage, Replicas
from shared.verdicts import Comparer, blob_verdict, document_verdict, hash_object

from services.replicator import exceptions as errors
from services.replicator.budget import MemoryBudget
from services.replicator.recent import RecentCopies

logger = logging.getLogger(__name__)

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"

LAG = Histogram("dss_replication_lag_seconds", "From a write seen in one replica to its copy verified in the other.",
                ["source", "destination"],
                buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600))
OBJECTS = Counter("dss_replication_objects_total",
                  "Objects written to the other replica (copied) or found there already (skipped).",
                  ["source", "destination", "kind", "outcome"])
IGNORED = Counter("dss_replication_changes_ignored_total",
                  "Change events that need no copy: deletes, other buckets, keys outside the DSS layout.",
                  ["replica", "reason"])


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one replication did: ``copied`` if anything (the object or a dependency) was written."""
    source: str
    destination: str
    key: str
    kind: str
    size: int
    copied: bool


def _parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


class _Run:
    """One replication of one key, with everything it needs: each object is handled once even
    when several parents name it (two files with the same bytes share a blob)."""

    def __init__(self, api: "ReplicatorAPI", source: ReplicaStorage, destination: ReplicaStorage, deep: bool):
        self.api = api
        self.source = source
        self.destination = destination
        self.deep = deep
        self.handled: dict[str, Event] = {}
        self.writes = 0

    # --- bookkeeping -------------------------------------------------------------------------------
    def once(self, key: str, handle):
        event = self.handled.get(key)
        if event is not None:
            return event.wait()  # another green thread of this run has it, or had it
        event = self.handled[key] = Event()
        try:
            result = handle()
        except Exception as error:
            event.send_exception(error)
            raise
        event.send(result)
        return result

    def counted(self, target: ReplicaKey, copied: bool) -> None:
        self.writes += copied
        OBJECTS.labels(self.source.replica, self.destination.replica, target.kind,
                       "copied" if copied else "skipped").inc()

    def missing(self, key: str, dependency: bool) -> Exception:
        where = f"{key} is not in {self.source.replica}"
        if dependency:
            return errors.dependency_missing(f"{where} (needed in {self.destination.replica})")
        return errors.source_missing(where)

    def each(self, function, items: list) -> None:
        """``function`` over ``items``, ``DSS_REPLICATION_FANOUT`` at a time; the first error is
        raised here, once all have finished (none is left running behind the caller's back)."""
        green_map(function, items, self.api.settings.replication_fanout)

    # --- any key -----------------------------------------------------------------------------------
    def object(self, target: ReplicaKey, size: int | None = None) -> int:
        """Make the destination hold ``target`` as the source does; returns its size."""
        if target.kind == BLOB:
            return self.blob(target, dependency=False, size=size)
        return self.document(target, dependency=False)

    # --- blobs -------------------------------------------------------------------------------------
    def blob(self, target: ReplicaKey, dependency: bool, size: int | None = None) -> int:
        flight = (self.destination.replica, target.key)
        return self.once(target.key, lambda: self.api.blob_copies.run(
            flight, lambda: self._blob(target, dependency, size)))

    def _blob(self, target: ReplicaKey, dependency: bool, size: int | None) -> int:
        """``size``: the blob's size as its file document or notification says; with it a small
        blob is copied in two requests (read, write if absent), and a larger one is looked for in
        the destination first, not touching the source when the copy is there."""
        same, judged = None, None
        if dependency and not self.deep:
            # Blobs never change: one seen intact lately still is. (A blob's own event always looks:
            # it may be a repair of a copy this process wrote before.)
            known = self.api.recent.intact_size(self.destination.replica, target.key)
            if known is not None and size in (None, known):
                self.counted(target, False)
                return known
        if not self.deep and size is not None and size <= self.api.settings.replication_part_bytes:
            # A small blob not seen lately is most likely new (its own event usually comes before
            # its file document's): read it and write it if absent, rather than look first.
            copied = self.api.copy_small_blob(self.source, self.destination, target, size,
                                              lambda: self.missing(target.key, dependency))
            self.counted(target, copied)
            return size
        if not self.deep and size is not None:
            same, judged = self.api.blob_present(self.destination, target, size, deep=False), size
            if same:
                self.counted(target, False)
                return size
        try:
            # A small blob is read whole with its properties, in one request.
            info, data = self.source.store.read_small(self.source.bucket, target.key,
                                                      self.api.settings.replication_part_bytes)
        except BlobNotFound:
            raise self.missing(target.key, dependency) from None
        if judged != info.size:
            # An S3 copy whose ETag cannot be judged is taken on its size, unless asked to read it:
            # repeated events would otherwise re-read large blobs each time, doubling the transfer.
            # `dss-ops replicas verify --deep` finds such damage.
            same = self.api.blob_present(self.destination, target, info.size, deep=self.deep and not dependency)
            if same:
                self.counted(target, False)
                return info.size
        if same is False:
            logger.warning("replacing %s in %s: it does not match its key", target.key, self.destination.replica)
        self.api.copy_blob(self.source, self.destination, target, info, data)
        self.counted(target, True)
        return info.size

    # --- documents ---------------------------------------------------------------------------------
    def document(self, target: ReplicaKey, dependency: bool, ancestors: frozenset = frozenset()) -> int:
        return self.once(target.key, lambda: self._document(target, dependency, ancestors))

    def _document(self, target: ReplicaKey, dependency: bool, ancestors: frozenset) -> int:
        try:
            data = self.source.store.get_bytes(self.source.bucket, target.key)
        except BlobNotFound:
            raise self.missing(target.key, dependency) from None
        doc = load_document(target, data)  # the source is the truth only if it is a valid document
        if target.kind == FILE:
            # One dependency, looked at cheaply (its size is in the document): no read of the
            # destination first; a write-if-absent finds a document already there.
            self.dependencies(target, doc, ancestors | {target.key})
            self.counted(target, self.api.write_document(self.destination, target, data, replace=False))
            return len(data)
        try:
            existing = self.destination.store.get_bytes(self.destination.bucket, target.key)
        except BlobNotFound:
            existing = None
        if existing == data:
            self.counted(target, False)
            return len(data)
        if existing is not None:
            self.api.check_replaceable(self.source, self.destination, target, existing)
        self.dependencies(target, doc, ancestors | {target.key})
        self.counted(target, self.api.write_document(self.destination, target, data, replace=existing is not None))
        return len(data)

    def dependencies(self, target: ReplicaKey, doc: dict, ancestors: frozenset) -> None:
        if target.kind == FILE:
            blob_key = Checksums.from_stored(doc).blob_key()
            self.blob(parse_key(blob_key), dependency=True, size=_size(doc))
        elif target.kind == BUNDLE:
            files = [_child(Keys.file(entry["uuid"], entry["version"]), target) for entry in doc["files"]]
            self.each(lambda child: self.document(child, dependency=True), files)
        elif target.kind == COLLECTION:
            items = [_child(_item_key(item), target) for item in doc["contents"]]
            # Only collections can name each other; a cycle would otherwise wait on itself.
            items = [item for item in items if item.key not in ancestors]
            self.each(lambda child: self.document(child, dependency=True, ancestors=ancestors), items)
        # Tombstones need nothing: a reader finds the versions they cover, or nothing to hide.


def _size(doc: dict) -> int | None:
    size = doc.get("size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None


def _item_key(item: dict) -> str:
    """The key a collection item names; an unknown type names a file, as the bundles service reads it."""
    kind = item.get("type")
    if kind == "bundle":
        return Keys.bundle(item["uuid"], item["version"])
    if kind == "collection":
        return Keys.collection(item["uuid"], item["version"])
    return Keys.file(item["uuid"], item["version"])


def _child(key: str, parent: ReplicaKey) -> ReplicaKey:
    try:
        child = parse_key(key)
    except InvalidParameter:
        child = None
    if child is None:
        raise errors.foreign_reference(parent.key, key)
    return child


class ReplicatorAPI:
    """What the replicator's workers do with both replicas (injected by ``dependencies.ReplicaStore``,
    whose budget, blob-copy flights and recent copies every worker of the process shares)."""

    def __init__(self, replicas: Replicas, settings, budget: MemoryBudget, metrics: MetricsAPI,
                 blob_copies: SingleFlight | None = None, recent: RecentCopies | None = None):
        self.replicas = replicas
        self.settings = settings
        self.budget = budget
        self.metrics = metrics
        self.blob_copies = blob_copies or SingleFlight(share_failures=False)
        self.recent = recent if recent is not None else RecentCopies()

    # --- events ------------------------------------------------------------------------------------
    def ignored(self, change: dict) -> str | None:
        """Why a change needs no copy (counted and logged), or None if it does."""
        replica, key = change["replica"], change["key"]
        reason = None
        if change["bucket"] != self.replicas[replica].bucket:
            reason = "other_bucket"
        elif change["kind"] == "deleted":
            reason = "deleted"
            if parse_key_quietly(key) is not None:  # the DSS never deletes from a main bucket
                logger.warning("%s was deleted from %s; not propagated (`dss-ops replicas verify` reports it)",
                               key, replica)
        elif parse_key(key) is None:  # a malformed DSS key raises: dead-lettered for an operator
            reason = "not_dss_key"
        elif self.recent.is_own_write(change):
            reason = "own_copy"
        if reason is not None:
            IGNORED.labels(replica, reason).inc()
            logger.debug("ignoring %s of %s in %s/%s: %s", change["kind"], key, replica, change["bucket"], reason)
        return reason

    def replicate(self, key: str, source_replica: str, deep: bool = False, size: int | None = None) -> Outcome:
        """Make the other replica hold ``key`` as ``source_replica`` does, dependencies first.
        ``deep``: a blob already there whose metadata cannot vouch for it is read and hashed.
        ``size``: the object's size as its change notification gave it, so that a blob is looked
        for in the destination before the source is read."""
        target = parse_key(key)
        if target is None:
            raise errors.illegal_key(key)
        source = self.replicas[source_replica]
        destination = self.replicas[Replica(source_replica).other.value]
        run = _Run(self, source, destination, deep)
        size = run.object(target, size)
        return Outcome(source.replica, destination.replica, key, target.kind, size, run.writes > 0)

    def observe_lag(self, outcome: Outcome, event_time: str | None) -> float | None:
        seen = _parse_time(event_time)
        if seen is None:
            return None
        lag = max(0.0, (datetime.datetime.now(datetime.timezone.utc) - seen).total_seconds())
        LAG.labels(outcome.source, outcome.destination).observe(lag)
        return lag

    # --- blobs -------------------------------------------------------------------------------------
    def blob_present(self, replica: ReplicaStorage, target: ReplicaKey, size: int, deep: bool) -> bool | None:
        """True if ``replica`` holds the blob intact, False if it holds something else, None if absent."""
        try:
            info = replica.store.stat(replica.bucket, target.key)
        except BlobNotFound:
            return None
        if info.size != size:
            return False
        verdict = blob_verdict(info, target.checksums)
        if verdict is None:
            verdict = self.verify_blob(replica, target) if deep else True
        if verdict:
            self.recent.remember(replica.replica, info)
        return verdict

    def verify_blob(self, replica: ReplicaStorage, target: ReplicaKey) -> bool:
        """Read the blob and hash it: whether its bytes are those its key names."""
        chunk = self.settings.replication_part_bytes
        with self.budget.hold(2 * chunk):
            actual, _ = hash_object(replica.store, replica.bucket, target.key, chunk,
                                    on_chunk=lambda count: self.metrics.bytes_hashed(replica.replica, count))
        return actual == target.checksums

    def copy_small_blob(self, source: ReplicaStorage, destination: ReplicaStorage, target: ReplicaKey, size: int,
                        missing) -> bool:
        """Copy a blob of at most one part read whole, written only if absent: whether it was
        written. One already there is judged (replaced if it does not match its key); ``missing()``
        is the error to raise when the source has no such blob."""
        try:
            info, data = source.store.read_small(source.bucket, target.key, self.settings.replication_part_bytes)
        except BlobNotFound:
            raise missing() from None
        if data is None:  # larger than its document said: the general path judges it
            same = self.blob_present(destination, target, info.size, deep=False)
            if same:
                return False
            self.copy_blob(source, destination, target, info)
            return True
        self.metrics.bytes_hashed(source.replica, len(data))
        wrong = target.checksums.mismatches(checksum_bytes(data))
        if wrong:
            raise errors.source_corrupt(f"the bytes of {target.key} in {source.replica} do not match its "
                                        f"{', '.join(wrong)}; not copied to {destination.replica}")
        store, bucket = destination.store, destination.bucket
        properties = {"content_type": info.content_type or OCTET_STREAM, "metadata": info.metadata}
        try:
            written = store.put_bytes(bucket, target.key, data, if_absent=True, **properties)
        except BlobAlreadyExists:
            same = self.blob_present(destination, target, len(data), deep=False)
            if same:
                return False
            logger.warning("replacing %s in %s: it does not match its key", target.key, destination.replica)
            written = store.put_bytes(bucket, target.key, data, **properties)
        written = written or store.stat(bucket, target.key)
        if written.size != len(data) or blob_verdict(written, target.checksums) is False:
            raise errors.copy_mismatch(f"{target.key} in {destination.replica} does not match what was sent "
                                       f"({written.size} of {len(data)} bytes)")
        self.recent.remember(destination.replica, written)
        self.metrics.bytes_copied(destination.replica, BLOB, len(data))
        return True

    def copy_blob(self, source: ReplicaStorage, destination: ReplicaStorage, target: ReplicaKey,
                  info: BlobInfo, data: bytes | None = None) -> None:
        """Stream the blob across clouds in parallel parts, hashing it on the way; the destination
        object becomes visible only if the bytes match the key (``before_commit``), and its size
        and checksum are checked once it is (from the store's answer to the write when it tells
        them). ``data``: the whole blob, when it was read already."""
        part, concurrency = self.settings.replication_part_bytes, self.settings.replication_concurrency
        size = info.size
        # Parts in flight, the one being read and the one being hashed; a small blob is one read.
        need = 2 * size if size <= part else (concurrency + 2) * part
        checksum_pass = ChecksumPass(size)

        def chunks():
            # Reads of exactly one part: the upload sends each chunk as it is, without a copy.
            read = [data] if data is not None else source.store.iter_chunks(source.bucket, target.key, part,
                                                                              revision=info.revision)
            for chunk in read:
                checksum_pass.update(chunk)
                self.metrics.bytes_hashed(source.replica, len(chunk))
                yield chunk

        def before_commit():
            wrong = target.checksums.mismatches(checksum_pass.result())
            if wrong:
                raise errors.source_corrupt(f"the bytes of {target.key} in {source.replica} do not match its "
                                    f"{', '.join(wrong)}; not copied to {destination.replica}")

        with self.budget.hold(need), self.metrics.copy_in_progress():
            try:
                written = destination.store.put_stream(
                    destination.bucket, target.key, chunks(), size, content_type=info.content_type or OCTET_STREAM,
                    metadata=info.metadata, part_size=part, concurrency=concurrency, before_commit=before_commit)
            except BlobNotFound:
                raise errors.source_missing(f"{target.key} vanished from {source.replica} while being copied") from None
        written = written or destination.store.stat(destination.bucket, target.key)
        if written.size != size or blob_verdict(written, target.checksums) is False:
            raise errors.copy_mismatch(f"{target.key} in {destination.replica} does not match what was sent "
                               f"({written.size} of {size} bytes)")
        self.recent.remember(destination.replica, written)
        self.metrics.bytes_copied(destination.replica, BLOB, size)

    # --- documents ---------------------------------------------------------------------------------
    def write_document(self, replica: ReplicaStorage, target: ReplicaKey, data: bytes, replace: bool) -> bool:
        """Write a (valid) document; with ``replace``, over a damaged one already there. False if an
        identical one appeared meanwhile."""
        store, bucket = replica.store, replica.bucket
        try:
            written = store.put_bytes(bucket, target.key, data, content_type=JSON, if_absent=not replace)
        except BlobAlreadyExists:  # a concurrent write won
            existing = store.get_bytes(bucket, target.key)
            if existing == data:
                return False
            self.check_replaceable(None, replica, target, existing)
            replace = True
            written = store.put_bytes(bucket, target.key, data, content_type=JSON)
        if replace:
            logger.warning("replaced %s in %s: it was not a valid document", target.key, replica.replica)
        # Judged from the write's answer when it describes the object, else from a stat.
        written = written or store.stat(bucket, target.key)
        if not document_verdict(written, data):
            raise errors.copy_mismatch(f"{target.key} in {replica.replica} does not hold what was written")
        self.recent.remember(replica.replica, written)
        self.metrics.bytes_copied(replica.replica, target.kind, len(data))
        return True

    @staticmethod
    def check_replaceable(source: ReplicaStorage | None, destination: ReplicaStorage, target: ReplicaKey,
                          existing: bytes) -> None:
        """A (valid) source replaces a different destination document only if that one is damaged."""
        if is_valid_document(target, existing):
            where = f"{source.replica} and {destination.replica}" if source else "the two replicas"
            raise errors.conflicting_documents(f"{target.key} differs between {where}, and both are valid documents")

    # --- checks ------------------------------------------------------------------------------------
    def verify(self, key: str, deep: bool = False) -> dict:
        """Compare ``key`` in both replicas: ``{key, status, source, detail}``, status ``same`` when
        they agree (by metadata; ``deep`` hashes blobs and compares documents byte for byte)."""
        stores = {name: replica.store for name, replica in self.replicas.items()}
        buckets = {name: replica.bucket for name, replica in self.replicas.items()}
        present = {name: stores[name].exists(buckets[name], key) for name in stores}
        if not any(present.values()):
            return {"key": key, "status": "absent", "source": None, "detail": "in neither replica"}
        finding, _ = Comparer(stores, buckets, self.settings.stream_chunk_bytes, deep).compare(key, present)
        if finding is None:
            return {"key": key, "status": "same", "source": None, "detail": ""}
        return dataclasses.asdict(finding)

    def health(self) -> dict:
        return self.replicas.health()


def parse_key_quietly(key: str) -> ReplicaKey | None:
    try:
        return parse_key(key)
    except InvalidParameter:
        return None
