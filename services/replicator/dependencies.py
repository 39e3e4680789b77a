"""The replicator's view of storage: copies from one replica's main bucket to the other's,
dependencies first, each verified before it counts; and the depth of its own queues.

Order is what keeps a reader of the destination from ever seeing a dangling reference: a blob
before the file document naming it, a bundle's files before its manifest, a collection's items
before the collection. Documents already present with the same bytes are taken as proof that
their dependencies are there too (they were written first), so a repeated event costs two reads.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import logging

import eventlet
from eventlet.event import Event
from kombu import Connection
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.events import EventHandler
from nameko.extensions import DependencyProvider
from prometheus_client import Counter, Gauge, Histogram

from shared.blobstore import BlobAlreadyExists, BlobInfo, BlobNotFound
from shared.checksums import ChecksumPass, Checksums
from shared.concurrency import ExpiringCache
from shared.exceptions import InvalidParameter, Unprocessable
from shared.identifiers import Keys, Replica
from shared.metrics import MetricsAPI
from shared.keys import BLOB, BUNDLE, COLLECTION, FILE, ReplicaKey, is_valid_document, load_document, parse_key
from shared.verdicts import Comparer, blob_verdict, document_verdict, hash_object
from shared.retry import DEAD_SUFFIX
from shared.storage import ReplicaStorage, Replicas, StorageProvider

from services.replicator.exceptions import (ConflictingDocuments, CopyMismatch, DependencyMissing, SourceCorrupt,
                                            SourceMissing)

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
QUEUE_DEPTH = Gauge("dss_replication_queue_depth", "Messages waiting in the replicator's queues.", ["queue"])

# How long this process trusts what it wrote or verified in a replica without looking again: long
# enough for the destination's notification of a copy to come back, short against an operator's
# purge (`dss-ops replicas verify` finds what such a purge breaks at any time).
RECENT_SECONDS = 300.0
RECENT_ENTRIES = 100_000


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one replication did: ``copied`` if anything (the object or a dependency) was written."""
    source: str
    destination: str
    key: str
    kind: str
    size: int
    copied: bool


class MemoryBudget:
    """Bytes of blob data all the copies of one process may hold; a copy waits for its share, in
    arrival order (so a large copy is not starved by a stream of small ones)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.free = limit
        self._waiting: collections.deque[tuple[int, Event]] = collections.deque()

    @contextlib.contextmanager
    def hold(self, amount: int):
        amount = min(amount, self.limit)  # a copy larger than the budget runs alone
        if self._waiting or self.free < amount:
            turn = Event()
            self._waiting.append((amount, turn))
            turn.wait()  # the release that made room took our share for us
        else:
            self.free -= amount
        try:
            yield
        finally:
            self.free += amount
            while self._waiting and self._waiting[0][0] <= self.free:
                share, turn = self._waiting.popleft()
                self.free -= share
                turn.send()


def _parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


class SingleFlight:
    """Concurrent calls for one key within a process share the first call's work. A blob's own
    event and its file's event arrive together and would otherwise both copy it across clouds
    (bench/replication.py saw every large blob copied twice)."""

    def __init__(self):
        self._running: dict = {}

    def run(self, key, work):
        running = self._running.get(key)
        if running is not None:
            try:
                return running.wait()
            except Exception:  # the first call failed: this one tries for itself
                pass
        event = self._running[key] = Event()
        try:
            result = work()
        except Exception as error:
            event.send_exception(error)
            raise
        else:
            event.send(result)
            return result
        finally:
            if self._running.get(key) is event:
                del self._running[key]


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
            return DependencyMissing(f"{where} (needed in {self.destination.replica})")
        return SourceMissing(where)

    def each(self, function, items: list) -> None:
        """``function`` over ``items``, ``DSS_REPLICATION_FANOUT`` at a time; the first error is
        raised here, once all have finished (none is left running behind the caller's back)."""
        errors = []

        def attempt(item):
            try:
                function(item)
            except Exception as error:  # noqa: BLE001 - re-raised below
                errors.append(error)

        pool = eventlet.GreenPool(self.api.settings.replication_fanout)
        for item in items:
            pool.spawn_n(attempt, item)
        pool.waitall()
        if errors:
            raise errors[0]

    # --- any key -----------------------------------------------------------------------------------
    def object(self, target: ReplicaKey) -> int:
        """Make the destination hold ``target`` as the source does; returns its size."""
        if target.kind == BLOB:
            return self.blob(target, dependency=False)
        return self.document(target, dependency=False)

    # --- blobs -------------------------------------------------------------------------------------
    def blob(self, target: ReplicaKey, dependency: bool) -> int:
        flight = (self.destination.replica, target.key)
        return self.once(target.key, lambda: self.api.blob_copies.run(flight, lambda: self._blob(target, dependency)))

    def _blob(self, target: ReplicaKey, dependency: bool) -> int:
        if dependency and not self.deep:  # blobs never change: one seen intact lately still is
            size = self.api.recently_intact(self.destination, target.key)
            if size is not None:
                self.counted(target, False)
                return size
        try:
            info = self.source.store.stat(self.source.bucket, target.key)
        except BlobNotFound:
            raise self.missing(target.key, dependency) from None
        # An S3 copy whose ETag cannot be judged is taken on its size, unless asked to read it:
        # repeated events would otherwise re-read large blobs each time, doubling the transfer.
        # `dss-ops replicas verify --deep` finds such damage.
        same = self.api.blob_present(self.destination, target, info.size, deep=self.deep and not dependency)
        if same:
            self.counted(target, False)
            return info.size
        if same is False:
            logger.warning("replacing %s in %s: it does not match its key", target.key, self.destination.replica)
        self.api.copy_blob(self.source, self.destination, target, info)
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
            self.blob(parse_key(blob_key), dependency=True)
        elif target.kind == BUNDLE:
            files = [_child(Keys.file(entry["uuid"], entry["version"]), target) for entry in doc["files"]]
            self.each(lambda child: self.document(child, dependency=True), files)
        elif target.kind == COLLECTION:
            items = [_child(_item_key(item), target) for item in doc["contents"]]
            # Only collections can name each other; a cycle would otherwise wait on itself.
            items = [item for item in items if item.key not in ancestors]
            self.each(lambda child: self.document(child, dependency=True, ancestors=ancestors), items)
        # Tombstones need nothing: a reader finds the versions they cover, or nothing to hide.


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
        raise Unprocessable(f"{parent.key} names `{key}`, not a key of the DSS layout", "invalid_document")
    return child


class ReplicatorAPI:
    def __init__(self, replicas: Replicas, settings, budget: MemoryBudget, metrics: MetricsAPI,
                 blob_copies: SingleFlight | None = None, recent: ExpiringCache | None = None):
        self.replicas = replicas
        self.settings = settings
        self.budget = budget
        self.metrics = metrics
        self.blob_copies = blob_copies or SingleFlight()
        # (replica, key) -> (revision, size) of an object this process wrote there or found intact
        self.recent = recent if recent is not None else ExpiringCache(max_entries=RECENT_ENTRIES)

    # --- what this process wrote or verified lately ----------------------------------------------
    def remember(self, replica: ReplicaStorage, info: BlobInfo) -> None:
        self.recent.put((replica.replica, info.key), (info.revision, info.size),
                        until=self.recent.clock() + RECENT_SECONDS)

    def recently_intact(self, replica: ReplicaStorage, key: str) -> int | None:
        """The size of ``key`` if this process wrote or verified it in ``replica`` lately."""
        known = self.recent.get((replica.replica, key))
        return None if known is None else known[1]

    def own_write(self, change: dict) -> bool:
        """Whether a change notification reports an object as this process wrote it: the echo of a
        copy, whose source holds the same (the revision is the GCS generation or the S3 ETag)."""
        known = self.recent.get((change["replica"], change["key"]))
        if known is None or change["kind"] != "created":
            return False
        revision = change["checksums"].get("generation" if change["replica"] == "gcp" else "etag")
        return revision is not None and revision.lower() == str(known[0]).lower()

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
        elif self.own_write(change):
            reason = "own_copy"
        if reason is not None:
            IGNORED.labels(replica, reason).inc()
            logger.debug("ignoring %s of %s in %s/%s: %s", change["kind"], key, replica, change["bucket"], reason)
        return reason

    def replicate(self, key: str, source_replica: str, deep: bool = False) -> Outcome:
        """Make the other replica hold ``key`` as ``source_replica`` does, dependencies first.
        ``deep``: a blob already there whose metadata cannot vouch for it is read and hashed."""
        target = parse_key(key)
        if target is None:
            raise InvalidParameter(f"`{key}` is not a key of the DSS storage layout", "illegal_key")
        source = self.replicas[source_replica]
        destination = self.replicas[Replica(source_replica).other.value]
        run = _Run(self, source, destination, deep)
        size = run.object(target)
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
            self.remember(replica, info)
        return verdict

    def verify_blob(self, replica: ReplicaStorage, target: ReplicaKey) -> bool:
        """Read the blob and hash it: whether its bytes are those its key names."""
        chunk = self.settings.replication_part_bytes
        with self.budget.hold(2 * chunk):
            actual, _ = hash_object(replica.store, replica.bucket, target.key, chunk,
                                    on_chunk=lambda count: self.metrics.bytes_hashed(replica.replica, count))
        return actual == target.checksums

    def copy_blob(self, source: ReplicaStorage, destination: ReplicaStorage, target: ReplicaKey,
                  info: BlobInfo) -> None:
        """Stream the blob across clouds in parallel parts, hashing it on the way; the destination
        object becomes visible only if the bytes match the key (``before_commit``), and its size
        and checksum are checked once it is."""
        part, concurrency = self.settings.replication_part_bytes, self.settings.replication_concurrency
        size = info.size
        # Parts in flight, the one being read and the one being hashed; a small blob is one read.
        need = 2 * size if size <= part else (concurrency + 2) * part
        checksum_pass = ChecksumPass(size)

        def chunks():
            # Reads of exactly one part: the upload sends each chunk as it is, without a copy.
            for chunk in source.store.iter_chunks(source.bucket, target.key, part, revision=info.revision):
                checksum_pass.update(chunk)
                self.metrics.bytes_hashed(source.replica, len(chunk))
                yield chunk

        def before_commit():
            wrong = target.checksums.mismatches(checksum_pass.result())
            if wrong:
                raise SourceCorrupt(f"the bytes of {target.key} in {source.replica} do not match its "
                                    f"{', '.join(wrong)}; not copied to {destination.replica}")

        with self.budget.hold(need), self.metrics.copy_in_progress():
            try:
                destination.store.put_stream(destination.bucket, target.key, chunks(), size,
                                             content_type=info.content_type or OCTET_STREAM, metadata=info.metadata,
                                             part_size=part, concurrency=concurrency, before_commit=before_commit)
            except BlobNotFound:
                raise SourceMissing(f"{target.key} vanished from {source.replica} while being copied") from None
        written = destination.store.stat(destination.bucket, target.key)
        if written.size != size or blob_verdict(written, target.checksums) is False:
            raise CopyMismatch(f"{target.key} in {destination.replica} does not match what was sent "
                               f"({written.size} of {size} bytes)")
        self.remember(destination, written)
        self.metrics.bytes_copied(destination.replica, BLOB, size)

    # --- documents ---------------------------------------------------------------------------------
    def write_document(self, replica: ReplicaStorage, target: ReplicaKey, data: bytes, replace: bool) -> bool:
        """Write a (valid) document; with ``replace``, over a damaged one already there. False if an
        identical one appeared meanwhile."""
        store, bucket = replica.store, replica.bucket
        try:
            store.put_bytes(bucket, target.key, data, content_type=JSON, if_absent=not replace)
        except BlobAlreadyExists:  # a concurrent write won
            existing = store.get_bytes(bucket, target.key)
            if existing == data:
                return False
            self.check_replaceable(None, replica, target, existing)
            replace = True
            store.put_bytes(bucket, target.key, data, content_type=JSON)
        if replace:
            logger.warning("replaced %s in %s: it was not a valid document", target.key, replica.replica)
        written = store.stat(bucket, target.key)
        if not document_verdict(written, data):
            raise CopyMismatch(f"{target.key} in {replica.replica} does not hold what was written")
        self.remember(replica, written)
        self.metrics.bytes_copied(replica.replica, target.kind, len(data))
        return True

    @staticmethod
    def check_replaceable(source: ReplicaStorage | None, destination: ReplicaStorage, target: ReplicaKey,
                          existing: bytes) -> None:
        """A (valid) source replaces a different destination document only if that one is damaged."""
        if is_valid_document(target, existing):
            where = f"{source.replica} and {destination.replica}" if source else "the two replicas"
            raise ConflictingDocuments(f"{target.key} differs between {where}, and both are valid documents")

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


class ReplicaStore(StorageProvider):
    """Injects a ``ReplicatorAPI`` over both replicas, sharing one memory budget among workers."""

    api_class = ReplicatorAPI

    def setup(self):
        super().setup()
        self.budget = MemoryBudget(self.settings.replication_memory_bytes)
        self.metrics = MetricsAPI(self.container.service_name)
        self.blob_copies = SingleFlight()  # shared by all workers of the process
        self.recent = ExpiringCache(max_entries=RECENT_ENTRIES)

    def get_dependency(self, worker_ctx):
        return self.api_class(self.replicas, self.settings, self.budget, self.metrics, self.blob_copies,
                              self.recent)


# --- queue depth -------------------------------------------------------------------------------------

class QueueDepths:
    """The last depths polled, for health()."""

    def __init__(self, depths: dict[str, int], error: str | None):
        self.depths = depths
        self.error = error

    def health(self) -> dict:
        if self.error is not None:
            return {"ok": False, "detail": f"broker unreachable: {self.error}"}
        if not self.depths:
            return {"ok": True, "detail": "not polled yet"}
        return {"ok": True, "detail": ", ".join(f"{name}: {count}" for name, count in sorted(self.depths.items()))}


class QueueMonitor(DependencyProvider):
    """Polls the message count of the service's event-handler queues and their dead letters every
    ``interval`` seconds (a passive declare: one cheap round trip each) into
    ``dss_replication_queue_depth``. A broker outage only pauses it."""

    interval = 5.0

    def setup(self):
        self.amqp_uri = self.container.config[AMQP_URI_CONFIG_KEY]
        self.depths: dict[str, int] = {}
        self.error: str | None = None

    def start(self):
        self.container.spawn_managed_thread(self._run, identifier="queue_monitor")

    def queue_names(self) -> list[str]:
        names = []
        for entrypoint in self.container.entrypoints:
            if isinstance(entrypoint, EventHandler):
                names += [entrypoint.queue.name, entrypoint.queue.name + DEAD_SUFFIX]
        return names

    def _run(self):
        names = self.queue_names()
        while True:
            try:
                with Connection(self.amqp_uri, connect_timeout=5) as connection:
                    while True:
                        for name in names:
                            self._poll(connection, name)
                        self.error = None
                        eventlet.sleep(self.interval)
            except Exception as error:  # noqa: BLE001 - the broker is away; try again later
                if self.error is None:
                    logger.warning("cannot poll queue depths: %s", error)
                self.error = str(error) or type(error).__name__
                eventlet.sleep(self.interval)

    def _poll(self, connection: Connection, name: str) -> None:
        from amqp.exceptions import NotFound as QueueNotFound

        channel = connection.channel()
        try:
            _, count, _ = channel.queue_declare(queue=name, passive=True)
        except QueueNotFound:  # the broker closed the channel; a dead-letter queue appears on first use
            count = 0
        else:
            channel.close()
        self.depths[name] = count
        QUEUE_DEPTH.labels(name).set(count)

    def get_dependency(self, worker_ctx):
        return QueueDepths(dict(self.depths), self.error)
