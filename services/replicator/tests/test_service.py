"""Unit tests of the replicator: the service's decisions with its dependencies mocked
(worker_factory), and its storage API over in-memory stores that record every write."""
import datetime
import json

import eventlet
import pytest
from marshmallow import ValidationError
from nameko.containers import ServiceContainer
from nameko.testing.services import worker_factory
from nameko.testing.utils import get_extension

from devtools.fakes import MemoryBlobStore
from ops import replicas
from shared import events, keys
from shared.checksums import checksum_bytes
from shared.config import Settings
from shared.exceptions import InvalidParameter, Unavailable, Unprocessable
from shared.identifiers import Keys
from shared.metrics import MetricsAPI
from shared.retry import PERMANENT_ERRORS, RetryingEventHandler
from shared.schemas import FileMetadata
from shared.storage import ReplicaStorage, Replicas

from services.replicator import exceptions as errors
from services.replicator.budget import MemoryBudget
from services.replicator.dependencies import ReplicaStore
from services.replicator.recent import RECENT_SECONDS, RecentCopies
from services.replicator.replication import Outcome, ReplicatorAPI
from services.replicator.service import ReplicatorService

UUIDS = [f"2b1e6e0a-0c55-4b5e-8f0f-1a2b3c4d{i:04x}" for i in range(200)]
VERSION = "2026-11-25T010203.000004Z"
SETTINGS = Settings.from_config({}, environ={})


# --- the service -------------------------------------------------------------------------------------

def change(**overrides):
    return {"replica": "aws", "bucket": "dss-main", "key": "files/x", "kind": "created", "size": None,
            "checksums": {}, "event_time": "2026-11-25T01:02:03+00:00", **overrides}


def test_a_change_that_needs_no_copy_is_not_replicated_nor_announced():
    service = worker_factory(ReplicatorService)
    service.replicator.ignored.return_value = "deleted"
    assert service.handle_object_changed(change(kind="deleted")) is None
    service.replicator.replicate.assert_not_called()
    service.dispatch.assert_not_called()


def test_a_replicated_change_is_announced_with_its_lag():
    service = worker_factory(ReplicatorService)
    service.replicator.ignored.return_value = None
    service.replicator.replicate.return_value = Outcome("aws", "gcp", "files/x", "file", 12, True)
    service.replicator.observe_lag.return_value = 1.5

    service.handle_object_changed(change(size=12))

    # The notification's size goes along: a blob is looked for in the destination first.
    service.replicator.replicate.assert_called_once_with("files/x", "aws", size=12)
    assert service.replicator.observe_lag.call_args[0][1] == "2026-11-25T01:02:03+00:00"
    name, payload = service.dispatch.call_args[0]
    assert name == events.OBJECT_REPLICATED
    assert payload == {"source_replica": "aws", "destination_replica": "gcp", "key": "files/x", "size": 12,
                       "copied": True, "lag_seconds": 1.5}


def test_a_malformed_change_is_permanent():
    service = worker_factory(ReplicatorService)
    with pytest.raises(ValidationError) as error:
        service.handle_object_changed(change(replica="azure"))
    assert isinstance(error.value, PERMANENT_ERRORS)


@pytest.mark.parametrize("error,permanent", [
    (errors.source_corrupt("bytes differ"), True), (Unprocessable("bad doc", "invalid_document"), True),
    (errors.illegal_key("bad key"), True), (errors.conflicting_documents("both valid"), True),
    (errors.dependency_missing("later"), False), (errors.source_missing("later"), False),
    (errors.copy_mismatch("again"), False), (ConnectionError(), False),
])
def test_only_what_another_attempt_cannot_cure_is_permanent(error, permanent):
    assert isinstance(error, PERMANENT_ERRORS) is permanent


def test_replicate_rpc_checks_its_arguments_first():
    service = worker_factory(ReplicatorService)
    with pytest.raises(InvalidParameter):
        service.replicate("blobs/x", "azure")
    service.replicator.replicate.assert_not_called()


def test_health_reports_storage_and_queues():
    service = worker_factory(ReplicatorService)
    service.replicator.health.return_value = {"aws": {"ok": True, "detail": ""}, "gcp": {"ok": True, "detail": ""}}
    service.queues.health.return_value = {"ok": True, "detail": "q: 3"}
    assert service.health()["queues"] == {"ok": True, "detail": "q: 3"}


def test_handler_queue_and_retry_delays_come_from_config():
    container = ServiceContainer(ReplicatorService, {"AMQP_URI": "memory://", "DSS_REPLICATION_RETRY_DELAYS": "2, 3"})
    handler = get_extension(container, RetryingEventHandler)
    handler.setup()
    assert handler.queue.name == replicas.HANDLER_QUEUE  # what `dss-ops replicas repair` checks for
    assert handler.delays == (2, 3)


# --- the storage API over recording in-memory stores ---------------------------------------------------

class RecordingStore(MemoryBlobStore):
    """A replica's main bucket in ``devtools.fakes.MemoryBlobStore`` (held to the blob-store
    conformance suite: S3 ETags, GCS CRC32Cs, metadata as written) that logs every write and lets
    concurrent copies interleave, as real requests would."""

    def __init__(self, replica, log):
        super().__init__(replica)
        self.bucket = SETTINGS.bucket(replica)
        self.create_bucket(self.bucket)
        self.log = log

    @property
    def objects(self) -> dict:
        """key -> (bytes, content type, metadata) of the main bucket."""
        return self.buckets[self.bucket]

    def _store(self, bucket, key, data, content_type, metadata, part_size=None):
        eventlet.sleep(0)
        info = super()._store(bucket, key, data, content_type, metadata, part_size)
        self.log.append((self.replica, key))
        return info


class World:
    def __init__(self, clock=None):
        self.log = []
        self.stores = {name: RecordingStore(name, self.log) for name in ("aws", "gcp")}
        recent = RecentCopies(clock) if clock else None
        self.api = ReplicatorAPI(Replicas({name: ReplicaStorage(name, store, SETTINGS)
                                           for name, store in self.stores.items()}),
                                 SETTINGS, MemoryBudget(SETTINGS.replication_memory_bytes), MetricsAPI("replicator"),
                                 recent=recent)

    def put(self, replica, key, data):
        self.stores[replica].objects[key] = (data, "application/octet-stream", {})  # not a write: not logged

    def put_file(self, replica, uuid, content, blob=True):
        sums = checksum_bytes(content)
        if blob:
            self.put(replica, sums.blob_key(), content)
        doc = FileMetadata().dump({"creator_uid": 1, "version": VERSION, "content_type": "text/plain",
                                   "size": len(content), **sums.as_api()})
        self.put(replica, Keys.file(uuid, VERSION), json.dumps(doc).encode())
        return doc, sums

    def contents(self, replica):
        return {key: data for key, (data, _, _) in self.stores[replica].objects.items()}

    def writes(self, replica):
        return [key for name, key in self.log if name == replica]


def manifest(entries):
    return json.dumps({"format": "0.0.1", "version": VERSION, "creator_uid": 1, "files": [
        {"name": f"f{i}", "uuid": uuid, "version": VERSION, "content-type": "text/plain", "size": doc["size"],
         "indexed": False, "sha256": doc["sha256"], "sha1": doc["sha1"], "s3-etag": doc["s3-etag"],
         "crc32c": doc["crc32c"]} for i, (uuid, doc) in enumerate(entries)]}).encode()


def test_a_bundle_is_written_after_its_files_and_each_file_after_its_blob():
    world = World()
    entries = [(uuid, world.put_file("aws", uuid, f"content {i % 90}".encode())[0])
               for i, uuid in enumerate(UUIDS[:100])]  # ten blobs are shared by two files
    bundle_key = Keys.bundle(UUIDS[150], VERSION)
    world.put("aws", bundle_key, manifest(entries))

    outcome = world.api.replicate(bundle_key, "aws")

    assert (outcome.copied, outcome.destination) == (True, "gcp")
    order = world.writes("gcp")
    assert order[-1] == bundle_key
    for uuid, doc in entries:
        blob = keys.parse_key(f"blobs/{doc['sha256']}.{doc['sha1']}.{doc['s3-etag']}.{doc['crc32c']}")
        assert order.index(blob.key) < order.index(Keys.file(uuid, VERSION))
    assert len(order) == len(set(order)) == 100 + 90 + 1  # each shared blob copied once
    assert world.contents("gcp") == world.contents("aws")

    world.log.clear()
    assert world.api.replicate(bundle_key, "aws").copied is False
    assert world.log == []


def test_a_missing_dependency_writes_nothing():
    world = World()
    world.put_file("aws", UUIDS[0], b"no blob", blob=False)
    with pytest.raises(Unavailable, match="^dependency_missing: "):
        world.api.replicate(Keys.file(UUIDS[0], VERSION), "aws")
    assert world.log == []
    with pytest.raises(Unavailable, match="^source_missing: "):
        world.api.replicate(Keys.file(UUIDS[1], VERSION), "aws")


@pytest.mark.parametrize("destination_has", [None, b"y" * 9])
def test_bytes_that_do_not_match_their_key_are_never_written(destination_has):
    world = World()
    sums = checksum_bytes(b"x" * 9)
    world.put("gcp", sums.blob_key(), b"z" * 9)  # corrupt at the source
    if destination_has is not None:
        world.put("aws", sums.blob_key(), destination_has)
    with pytest.raises(Unprocessable, match="^source_corrupt: "):
        world.api.replicate(sums.blob_key(), "gcp")
    assert world.log == []


def test_a_corrupt_destination_blob_is_replaced_and_an_intact_one_kept():
    world = World()
    sums = checksum_bytes(b"x" * 9)
    world.put("gcp", sums.blob_key(), b"x" * 9)
    world.put("aws", sums.blob_key(), b"y" * 9)  # S3's MD5 ETag shows it
    assert world.api.replicate(sums.blob_key(), "gcp").copied is True
    assert world.stores["aws"].objects[sums.blob_key()][0] == b"x" * 9
    assert world.api.replicate(sums.blob_key(), "gcp").copied is False


def test_damage_that_s3_metadata_cannot_show_is_read_only_when_asked():
    world = World()
    sums = checksum_bytes(b"x" * 9)
    world.put("gcp", sums.blob_key(), b"x" * 9)
    aws = world.stores["aws"]
    aws.put_stream(aws.bucket, sums.blob_key(), [b"y" * 9], 9, part_size=4)  # in parts: an ETag that is no MD5
    assert aws.stat(aws.bucket, sums.blob_key()).revision.endswith("-3")
    assert world.api.replicate(sums.blob_key(), "gcp").copied is False  # an event: judged by size
    assert world.api.replicate(sums.blob_key(), "gcp", deep=True).copied is True
    assert world.contents("aws")[sums.blob_key()] == b"x" * 9


def test_documents_invalid_at_the_source_are_refused_and_valid_ones_replace_what_differs():
    world = World()
    key = Keys.file(UUIDS[0], VERSION)
    world.put("aws", key, b"{not json")
    with pytest.raises(Unprocessable):
        world.api.replicate(key, "aws")
    assert world.log == []

    doc, _ = world.put_file("gcp", UUIDS[1], b"right")
    other = Keys.file(UUIDS[1], VERSION)
    world.put("aws", other, b'{"format": "0.0.1"}')
    world.put("aws", checksum_bytes(b"right").blob_key(), b"right")
    assert world.api.replicate(other, "gcp").copied is True
    assert world.contents("aws")[other] == world.contents("gcp")[other]
    assert world.writes("aws") == [other]  # the blob was already there


def test_two_valid_documents_that_differ_are_a_conflict_for_an_operator():
    world = World()
    world.put_file("aws", UUIDS[0], b"one")
    world.put_file("gcp", UUIDS[0], b"two")  # the same uuid and version written in each replica
    with pytest.raises(Unprocessable, match="^conflicting_documents: ") as error:
        world.api.replicate(Keys.file(UUIDS[0], VERSION), "aws")
    assert isinstance(error.value, PERMANENT_ERRORS)  # else the two replicas' events would flip it forever
    # Neither document was replaced. (The blob the aws one names was copied first, as a file's blob
    # always is before its document is tried: content-addressed, it is right wherever it lands.)
    assert world.log == [("gcp", checksum_bytes(b"one").blob_key())]
    assert world.contents("gcp")[Keys.file(UUIDS[0], VERSION)] != world.contents("aws")[Keys.file(UUIDS[0], VERSION)]


def test_collections_naming_each_other_terminate():
    world = World()
    first, second = Keys.collection(UUIDS[0], VERSION), Keys.collection(UUIDS[1], VERSION)

    def collection(other_uuid):
        return json.dumps({"name": "c", "owner": "o@example.org", "contents": [
            {"type": "collection", "uuid": other_uuid, "version": VERSION}]}).encode()

    world.put("aws", first, collection(UUIDS[1]))
    world.put("aws", second, collection(UUIDS[0]))
    assert world.api.replicate(first, "aws").copied is True
    assert world.writes("gcp") == [second, first]


def test_observed_lag():
    world = World()
    outcome = Outcome("aws", "gcp", "k", "blob", 1, True)
    seen = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=3)).isoformat()
    assert 3 <= world.api.observe_lag(outcome, seen) < 10
    assert world.api.observe_lag(outcome, "2026-11-25T01:02:03.000Z") > 0  # S3's format
    assert world.api.observe_lag(outcome, None) is None
    assert world.api.observe_lag(outcome, "yesterday") is None


@pytest.mark.parametrize("payload,reason", [
    (change(bucket="dss-staging"), "other_bucket"),
    (change(kind="deleted", key="files/not-a-key"), "deleted"),
    (change(key="tmp/compose/abc/00001"), "not_dss_key"),
    (change(key=Keys.file(UUIDS[0], VERSION)), None),
])
def test_ignored(payload, reason):
    assert World().api.ignored(payload) == reason


@pytest.mark.parametrize("source,destination,revision_field", [("aws", "gcp", "generation"), ("gcp", "aws", "etag")])
def test_the_notification_of_a_copy_this_process_made_is_ignored_and_any_other_revision_is_not(
        source, destination, revision_field):
    world = World()
    _, sums = world.put_file(source, UUIDS[0], b"echoed")
    file_key = Keys.file(UUIDS[0], VERSION)
    assert world.api.replicate(file_key, source).copied is True
    for key in (sums.blob_key(), file_key):
        written = world.stores[destination].stat("dss-main", key).revision
        echo = change(replica=destination, key=key, checksums={revision_field: written})
        assert world.api.ignored(echo) == "own_copy"
        assert world.api.ignored({**echo, "checksums": {revision_field: "1" + written}}) is None
        assert world.api.ignored({**echo, "checksums": {}}) is None
        # The dependency provider answers the notification bridge the same (it drops echoes
        # before any worker runs).
        provider = ReplicaStore()
        provider.recent = world.api.recent
        assert provider.is_echo(echo) is True
        assert provider.is_echo({**echo, "checksums": {revision_field: "1" + written}}) is False
        assert provider.is_echo({**echo, "kind": "deleted"}) is False
        assert world.api.ignored({**echo, "kind": "deleted"}) == "deleted"
    # Its source's own notifications are no echo.
    source_revision = world.stores[source].stat("dss-main", file_key).revision
    assert world.api.ignored(change(replica=source, key=file_key, checksums={revision_field: source_revision})) is None


def test_a_blob_this_process_saw_intact_lately_is_not_looked_at_again_as_a_dependency():
    now = [1000.0]
    world = World(clock=lambda: now[0])
    _, sums = world.put_file("aws", UUIDS[0], b"seen")
    stats = []
    for store in world.stores.values():
        store.stat = (lambda original, name: lambda bucket, key: stats.append((name, key)) or original(bucket, key))(
            store.stat, store.replica)

    def looked_at(key):
        return {replica for replica, seen in stats if seen == key}

    world.api.replicate(sums.blob_key(), "aws")  # the blob's own event: copied
    stats.clear()
    assert world.api.replicate(Keys.file(UUIDS[0], VERSION), "aws").copied is True
    assert looked_at(sums.blob_key()) == set()
    assert world.writes("gcp") == [sums.blob_key(), Keys.file(UUIDS[0], VERSION)]

    other = Keys.file(UUIDS[1], VERSION)  # a second file of the same bytes, once the memory aged out
    world.put("aws", other, world.contents("aws")[Keys.file(UUIDS[0], VERSION)])
    now[0] += RECENT_SECONDS
    stats.clear()
    written = len(world.writes("gcp"))
    assert world.api.replicate(other, "aws").copied is True
    # Looked at again: a small blob is read and written if absent; the write finds the copy there,
    # which is judged intact and kept.
    assert looked_at(sums.blob_key()) == {"aws", "gcp"}
    assert world.writes("gcp")[written:] == [other]
    # A deep run always looks, in both replicas (the blob was just seen again).
    world.stores["gcp"].delete("dss-main", other)
    stats.clear()
    assert world.api.replicate(other, "aws", deep=True).copied is True
    assert looked_at(sums.blob_key()) == {"aws", "gcp"}


def test_a_malformed_dss_key_is_an_error_not_ignored():
    with pytest.raises(InvalidParameter):
        World().api.ignored(change(key="blobs/not-four-checksums"))


def test_memory_budget_is_shared_in_arrival_order():
    budget = MemoryBudget(100)
    order = []

    def copy(name, amount, hold_for):
        with budget.hold(amount):
            order.append(("start", name))
            eventlet.sleep(hold_for)
        order.append(("end", name))

    pool = eventlet.GreenPool()
    pool.spawn(copy, "a", 60, 0.05)
    eventlet.sleep(0)
    pool.spawn(copy, "big", 80, 0)    # waits for a
    eventlet.sleep(0)
    pool.spawn(copy, "small", 10, 0)  # would fit now, but waits its turn behind big
    eventlet.sleep(0)
    pool.spawn(copy, "huge", 500, 0)  # more than the budget: runs alone
    pool.waitall()
    assert [step for step in order if step[0] == "start"] == [
        ("start", "a"), ("start", "big"), ("start", "small"), ("start", "huge")]
    assert order.index(("end", "a")) < order.index(("start", "big"))
    assert budget.free == 100
