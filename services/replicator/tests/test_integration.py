"""The replicator on the real broker against both storage emulators, driven by ``object_changed``
events dispatched as the notification bridge does, after objects were written into a main bucket
in the real storage layout; ``object_replicated`` is received by a listener service on the bus."""
import datetime
import json
import os
import threading
import time

import eventlet
import psutil
import pytest
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ServiceRpcProxy
from nameko.testing.services import entrypoint_waiter, restrict_entrypoints
from nameko.testing.utils import get_container

from ops import replicas
from shared import events, verdicts
from shared.checksums import ChecksumPass, checksum_bytes
from shared.entrypoints import event_handler
from shared.exceptions import InvalidParameter
from shared.identifiers import Keys, new_uuid, new_version
from shared.retry import DEAD_LETTERS, RETRIES, peek_dead_letters
from shared.schemas import FileMetadata
from shared.storage import ReplicaStorage

from services.replicator.replication import IGNORED, OBJECTS
from services.replicator.service import ReplicatorService

MiB = 1024 * 1024
OTHER = {"aws": "gcp", "gcp": "aws"}


class ReplicatedListener:
    name = "replicated_listener"

    @event_handler("replicator", events.OBJECT_REPLICATED)
    def on_replicated(self, payload):
        return payload  # entrypoint_waiter hands it to the test


class Cluster:
    """The running replicator, both main buckets, and ways to announce changes and await copies."""

    def __init__(self, config, runner, settings, blobstores):
        self.config = config
        self.runner = runner
        self.replicator = get_container(runner, ReplicatorService)
        self.listener = get_container(runner, ReplicatedListener)
        self.settings = settings
        self.stores = blobstores
        self.replicas = {name: ReplicaStorage(name, blobstores[name], settings) for name in ("aws", "gcp")}
        self._dispatch = event_dispatcher(config)

    def bucket(self, replica):
        return self.settings.bucket(replica)

    def announce(self, replica, key, kind="created", bucket=None):
        self._dispatch("replicator", events.OBJECT_CHANGED, {
            "replica": replica, "bucket": bucket or self.bucket(replica), "key": key, "kind": kind, "size": None,
            "checksums": {}, "event_time": datetime.datetime.now(datetime.timezone.utc).isoformat()})

    def expect(self, key, timeout=60):
        """In a with block: wait for the ``object_replicated`` of ``key``; ``.get()`` is its payload."""
        return entrypoint_waiter(self.listener, "on_replicated", timeout=timeout,
                                 callback=lambda worker_ctx, result, exc_info: bool(result) and result["key"] == key)

    def replicate(self, replica, key, timeout=60):
        with self.expect(key, timeout) as result:
            self.announce(replica, key)
        return result.get()

    # --- writing the storage layout directly ---------------------------------------------------
    def put_blob(self, replica, data, content_type="application/octet-stream"):
        sums = checksum_bytes(data)
        self.stores[replica].put_bytes(self.bucket(replica), sums.blob_key(), data, content_type=content_type)
        return sums

    def put_file(self, replica, data, *, with_blob=True, uuid=None, version=None):
        sums = self.put_blob(replica, data) if with_blob else checksum_bytes(data)
        uuid, version = uuid or new_uuid(), version or new_version()
        doc = FileMetadata().dump({"creator_uid": 1, "version": version, "content_type": "text/plain",
                                   "size": len(data), **sums.as_api()})
        assert self.replicas[replica].write_json_once(Keys.file(uuid, version), doc) is None
        return uuid, version, doc, sums

    def put_bundle(self, replica, files):
        """``files``: (uuid, version, doc) of files already written."""
        uuid, version = new_uuid(), new_version()
        manifest = {"format": "0.0.1", "version": version, "creator_uid": 1, "files": [
            {"name": f"f{i}.txt", "uuid": file_uuid, "version": file_version, "content-type": doc["content-type"],
             "size": doc["size"], "indexed": False, "sha256": doc["sha256"], "sha1": doc["sha1"],
             "s3-etag": doc["s3-etag"], "crc32c": doc["crc32c"]}
            for i, (file_uuid, file_version, doc) in enumerate(files)]}
        assert self.replicas[replica].write_json_once(Keys.bundle(uuid, version), manifest) is None
        return uuid, version

    def get(self, replica, key):
        return self.stores[replica].get_bytes(self.bucket(replica), key)

    def has(self, replica, key):
        return self.stores[replica].exists(self.bucket(replica), key)


def replicator_config(service_config, **overrides):
    # Short broker delays: a retry test waits seconds, not minutes.
    return {**service_config, "DSS_REPLICATION_RETRY_DELAYS": "1,1,2", **overrides}


@pytest.fixture
def cluster(service_config, runner_factory, dss_settings, blobstores):
    config = replicator_config(service_config)
    runner = runner_factory(config, ReplicatorService, ReplicatedListener)
    # These tests drive replication with the events they dispatch themselves: the bucket
    # notification bridges are left out so that they cannot race them (tests/replication covers
    # the whole path from the notifications).
    restrict_entrypoints(get_container(runner, ReplicatorService), "handle_object_changed", "replicate",
                         "verify", "health")
    runner.start()
    return Cluster(config, runner, dss_settings, blobstores)


def counter(metric, *labels):
    return metric.labels(*labels)._value.get()


# --- blobs and files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["aws", "gcp"])
def test_file_brings_its_blob_and_a_repeat_copies_nothing(cluster, source):
    destination = OTHER[source]
    uuid, version, doc, sums = cluster.put_file(source, b"hello " + os.urandom(20))
    key = Keys.file(uuid, version)

    replicated = cluster.replicate(source, key)

    assert replicated["copied"] is True
    assert (replicated["source_replica"], replicated["destination_replica"]) == (source, destination)
    assert 0 <= replicated["lag_seconds"] < 30
    assert cluster.get(destination, sums.blob_key()) == cluster.get(source, sums.blob_key())
    assert cluster.get(destination, key) == cluster.get(source, key)

    skipped = counter(OBJECTS, source, destination, "file", "skipped")
    again = cluster.replicate(source, key)
    assert again["copied"] is False
    assert counter(OBJECTS, source, destination, "file", "skipped") == skipped + 1

    # The blob's own event (the bucket notifies it too) finds it there as well.
    assert cluster.replicate(source, sums.blob_key())["copied"] is False
    # And the echo from the destination's own notification copies nothing back.
    assert cluster.replicate(destination, key)["copied"] is False


@pytest.mark.parametrize("source", ["aws", "gcp"])
def test_multipart_blob_is_copied_in_parallel_parts(cluster, source, blobstores):
    destination = OTHER[source]
    data = os.urandom(40 * MiB + 3)  # three parts of 16 MiB
    sums = checksum_bytes(data)
    blobstores[source].put_stream(cluster.bucket(source), sums.blob_key(), iter([data]), len(data),
                                  content_type="application/x-test", part_size=64 * MiB)
    replicated = cluster.replicate(source, sums.blob_key())
    assert replicated["copied"] is True and replicated["size"] == len(data)
    info = blobstores[destination].stat(cluster.bucket(destination), sums.blob_key())
    assert (info.size, info.content_type) == (len(data), "application/x-test")
    assert cluster.get(destination, sums.blob_key()) == data
    assert not list(blobstores["gcp"].list_keys(cluster.bucket("gcp"), "tmp/compose/"))  # parts cleaned up


# --- bundles, collections, tombstones ------------------------------------------------------------

def test_bundle_of_100_files_brings_every_file_and_blob_first(cluster):
    pool = eventlet.GreenPool(16)
    files = list(pool.imap(lambda i: cluster.put_file("aws", f"file {i} ".encode() + os.urandom(16))[:3], range(100)))
    uuid, version = cluster.put_bundle("aws", files)
    key = Keys.bundle(uuid, version)
    copied_files = counter(OBJECTS, "aws", "gcp", "file", "copied")
    copied_blobs = counter(OBJECTS, "aws", "gcp", "blob", "copied")

    replicated = cluster.replicate("aws", key)  # only the bundle is announced

    assert replicated["copied"] is True
    assert counter(OBJECTS, "aws", "gcp", "file", "copied") == copied_files + 100
    assert counter(OBJECTS, "aws", "gcp", "blob", "copied") == copied_blobs + 100
    gcp, bucket = cluster.stores["gcp"], cluster.bucket("gcp")
    manifest_written = gcp.stat(bucket, key).last_modified
    for file_uuid, file_version, doc in files:
        file_key = Keys.file(file_uuid, file_version)
        assert cluster.get("gcp", file_key) == cluster.get("aws", file_key)
        blob_key = f"blobs/{doc['sha256']}.{doc['sha1']}.{doc['s3-etag']}.{doc['crc32c']}"
        # Written in dependency order: blob, then the file naming it, then the manifest.
        assert gcp.stat(bucket, blob_key).last_modified <= gcp.stat(bucket, file_key).last_modified <= manifest_written
    assert cluster.get("gcp", key) == cluster.get("aws", key)
    assert cluster.replicate("aws", key)["copied"] is False


def test_collection_brings_its_files_bundles_and_collections(cluster):
    loose = cluster.put_file("gcp", b"loose file")
    in_bundle = cluster.put_file("gcp", b"file in a bundle")
    bundle_uuid, bundle_version = cluster.put_bundle("gcp", [in_bundle[:3]])
    odd_type = cluster.put_file("gcp", b"named by an item of an unknown type")

    def collection(contents):
        uuid, version = new_uuid(), new_version()
        doc = {"name": "c", "description": None, "details": {}, "owner": "owner@example.org", "contents": contents}
        assert cluster.replicas["gcp"].write_json_once(Keys.collection(uuid, version), doc) is None
        return uuid, version

    inner = collection([{"type": "file", "uuid": loose[0], "version": loose[1]}])
    outer = collection([
        {"type": "file", "uuid": loose[0], "version": loose[1]},
        {"type": "bundle", "uuid": bundle_uuid, "version": bundle_version},
        {"type": "collection", "uuid": inner[0], "version": inner[1]},
        {"type": "notebook", "uuid": odd_type[0], "version": odd_type[1]},
    ])

    assert cluster.replicate("gcp", Keys.collection(*outer))["copied"] is True

    for key in (Keys.collection(*outer), Keys.collection(*inner), Keys.bundle(bundle_uuid, bundle_version),
                Keys.file(*loose[:2]), Keys.file(*in_bundle[:2]), Keys.file(*odd_type[:2]),
                loose[3].blob_key(), in_bundle[3].blob_key(), odd_type[3].blob_key()):
        assert cluster.get("aws", key) == cluster.get("gcp", key), key


def test_tombstones_are_copied_as_they_are(cluster):
    uuid, version = new_uuid(), new_version()
    tombstone = {"email": "admin@example.org", "reason": "withdrawn", "details": None, "admin_deleted": True}
    keys = [Keys.bundle_tombstone(uuid, version), Keys.bundle_tombstone(uuid), Keys.collection_tombstone(uuid)]
    for key in keys:
        cluster.replicas["aws"].write_json_once(key, tombstone)
    for key in keys:
        assert cluster.replicate("aws", key)["copied"] is True
        assert json.loads(cluster.get("gcp", key)) == tombstone
    assert not cluster.has("gcp", Keys.bundle(uuid, version))  # nothing else was needed


# --- what differs is overwritten, what is broken is not spread -------------------------------------

def test_a_different_destination_document_is_replaced_by_the_valid_source(cluster):
    uuid, version, doc, _ = cluster.put_file("aws", b"the truth")
    key = Keys.file(uuid, version)
    cluster.stores["gcp"].put_bytes(cluster.bucket("gcp"), key, b'{"damaged": true}', content_type="application/json")

    assert cluster.replicate("aws", key)["copied"] is True
    assert cluster.get("gcp", key) == cluster.get("aws", key)


def test_a_corrupt_destination_blob_is_replaced(cluster):
    sums = cluster.put_blob("aws", b"x" * 1000)
    cluster.stores["gcp"].put_bytes(cluster.bucket("gcp"), sums.blob_key(), b"y" * 1000)  # same size

    assert cluster.replicate("aws", sums.blob_key())["copied"] is True
    assert cluster.get("gcp", sums.blob_key()) == b"x" * 1000


def dead_letter_of(cluster, key, timeout=10):
    queue = replicas.HANDLER_QUEUE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for letter in peek_dead_letters(cluster.config["AMQP_URI"], queue, limit=100):
            if letter["payload"]["key"] == key:
                return letter
        time.sleep(0.2)
    raise AssertionError(f"no dead letter for {key}")


def test_an_invalid_source_document_is_dead_lettered_at_once(cluster):
    key = Keys.file(new_uuid(), new_version())
    cluster.stores["aws"].put_bytes(cluster.bucket("aws"), key, b"not json", content_type="application/json")
    cluster.stores["gcp"].put_bytes(cluster.bucket("gcp"), key, b"{}", content_type="application/json")

    with entrypoint_waiter(cluster.replicator, "handle_object_changed") as result:
        cluster.announce("aws", key)
    with pytest.raises(Exception, match="invalid_document"):
        result.get()
    letter = dead_letter_of(cluster, key)
    assert letter["attempts"] == 1 and "invalid_document" in letter["error"]
    assert cluster.get("gcp", key) == b"{}"  # the destination is left as it was


def test_a_corrupt_source_blob_is_never_made_visible(cluster):
    data = os.urandom(40 * MiB)
    sums = checksum_bytes(data)
    wrong = data[:-1] + bytes([data[-1] ^ 1])  # the last byte differs: seen only after every part was sent
    cluster.stores["aws"].put_stream(cluster.bucket("aws"), sums.blob_key(), iter([wrong]), len(wrong),
                                     part_size=64 * MiB)
    dead = counter(DEAD_LETTERS, replicas.HANDLER_QUEUE)

    with entrypoint_waiter(cluster.replicator, "handle_object_changed") as result:
        cluster.announce("aws", sums.blob_key())
    with pytest.raises(Exception, match="source_corrupt"):
        result.get()
    assert not cluster.has("gcp", sums.blob_key())
    assert not list(cluster.stores["gcp"].list_keys(cluster.bucket("gcp"), "tmp/compose/"))
    dead_letter_of(cluster, sums.blob_key())
    assert counter(DEAD_LETTERS, replicas.HANDLER_QUEUE) == dead + 1


# --- retries -------------------------------------------------------------------------------------------

def test_a_missing_dependency_is_retried_on_the_broker_until_it_arrives(cluster):
    data = b"the blob arrives late " + os.urandom(8)
    uuid, version, doc, sums = cluster.put_file("aws", data, with_blob=False)
    key = Keys.file(uuid, version)
    retries = counter(RETRIES, replicas.HANDLER_QUEUE)

    with cluster.expect(key, timeout=30) as replicated:
        with entrypoint_waiter(cluster.replicator, "handle_object_changed") as first:
            cluster.announce("aws", key)
        with pytest.raises(Exception, match="dependency_missing"):
            first.get()
        assert not cluster.has("gcp", key)  # nothing is written before its blob
        cluster.put_blob("aws", data)  # meanwhile, the delay queue holds the event for a second

    assert replicated.get()["copied"] is True
    assert counter(RETRIES, replicas.HANDLER_QUEUE) >= retries + 1
    assert cluster.get("gcp", sums.blob_key()) == data
    assert cluster.has("gcp", key)


# --- what is ignored -------------------------------------------------------------------------------------

@pytest.mark.parametrize("change,reason", [
    ({"kind": "deleted"}, "deleted"),
    ({"bucket": "dss-staging"}, "other_bucket"),
    ({"key": "tmp/compose/0123/00001"}, "not_dss_key"),
])
def test_changes_that_need_no_copy_are_ignored(cluster, change, reason):
    sums = cluster.put_blob("aws", os.urandom(100))
    before = counter(IGNORED, "aws", reason)
    with entrypoint_waiter(cluster.replicator, "handle_object_changed") as result:
        cluster.announce("aws", change.get("key", sums.blob_key()), kind=change.get("kind", "created"),
                         bucket=change.get("bucket"))
    assert result.get() is None
    assert counter(IGNORED, "aws", reason) == before + 1
    assert not cluster.has("gcp", sums.blob_key())


# --- RPC -----------------------------------------------------------------------------------------------

def test_replicate_verify_and_health_over_rpc(cluster):
    sums = cluster.put_blob("gcp", os.urandom(5000))
    with ServiceRpcProxy("replicator", cluster.config, timeout=60) as rpc:
        assert rpc.verify(sums.blob_key())["status"] == "missing_in_aws"
        with cluster.expect(sums.blob_key()):
            result = rpc.replicate(sums.blob_key(), "gcp")
        assert result["copied"] is True and result["destination_replica"] == "aws" and result["size"] == 5000
        assert rpc.verify(sums.blob_key(), deep=True)["status"] == "same"
        with pytest.raises(InvalidParameter):
            rpc.replicate("tmp/compose/x", "gcp")
        with pytest.raises(InvalidParameter):
            rpc.replicate(sums.blob_key(), "azure")
        health = rpc.health()
    assert health["aws"]["ok"] and health["gcp"]["ok"] and health["queues"]["ok"]
    assert f"{replicas.HANDLER_QUEUE}: " in health["queues"]["detail"]  # polled at start


# --- dss-ops replicas verify | repair ------------------------------------------------------------------

@pytest.fixture
def dss_ops(cluster, local_cloud_settings, monkeypatch, capsys):
    """``dss_ops(*args)`` -> (exit code, stdout lines): the command as an operator runs it, against the
    emulators and the test's broker vhost."""
    from ops import cli

    for name, value in local_cloud_settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AMQP_URI", cluster.config["AMQP_URI"])

    def run(*args):
        capsys.readouterr()
        code = cli.main(["replicas", *args])
        out, err = capsys.readouterr()
        return code, [line.split("\t") for line in out.splitlines()], err
    return run


def test_verify_finds_a_same_size_corruption_only_deep_and_repair_fixes_it(cluster, dss_ops, blobstores):
    data = os.urandom(20 * MiB)
    sums = cluster.put_blob("gcp", data)
    key = sums.blob_key()
    assert cluster.replicate("gcp", key)["copied"] is True
    # The S3 copy went up in 16 MiB parts: its ETag cannot be checked against the key's single-part
    # s3_etag. Damage it with other bytes of the same size, the same way.
    damaged = data[:MiB] + os.urandom(MiB) + data[2 * MiB:]
    blobstores["aws"].put_stream(cluster.bucket("aws"), key, iter([damaged]), len(damaged), part_size=16 * MiB)

    code, lines, err = dss_ops("verify", "--prefix", key)
    assert (code, lines) == (0, [])
    assert "1 keys compared" in err and "1 blobs checked by size only" in err

    code, lines, err = dss_ops("verify", "--prefix", key, "--deep")
    assert code == 1
    assert [line[:2] for line in lines] == [["different", key]] and "aws does not match" in lines[0][2]

    code, lines, err = dss_ops("repair", "--prefix", key, "--deep", "--wait", "30")
    assert code == 0, err
    assert f"removed the damaged aws copy of {key}" in err  # else its size and ETag would pass
    assert "re-enqueued 1 keys" in err and "1 of 1 repaired" in err
    assert cluster.get("aws", key) == data
    assert dss_ops("verify", "--prefix", key, "--deep")[0] == 0


def test_verify_reports_missing_and_cheaply_detectable_differences(cluster, dss_ops):
    uuid, version, _, _ = cluster.put_file("aws", b"only in aws")
    file_key = Keys.file(uuid, version)
    sums = cluster.put_blob("aws", b"a" * 64)
    cluster.stores["gcp"].put_bytes(cluster.bucket("gcp"), sums.blob_key(), b"b" * 64)  # GCS's crc32c tells

    code, lines, _ = dss_ops("verify", "--prefix", file_key)
    assert code == 1 and [line[:2] for line in lines] == [["missing_in_gcp", file_key]]
    code, lines, _ = dss_ops("verify", "--prefix", sums.blob_key())
    assert code == 1 and [line[:2] for line in lines] == [["different", sums.blob_key()]]
    assert "gcp does not match" in lines[0][2]

    for prefix in (file_key, sums.blob_key()):
        assert dss_ops("repair", "--prefix", prefix, "--wait", "30")[0] == 0
    assert cluster.get("gcp", file_key) == cluster.get("aws", file_key)
    assert cluster.get("gcp", sums.blob_key()) == b"a" * 64


# --- large blobs: bounded memory ---------------------------------------------------------------------

def put_large_blob(store, bucket, size, block=16 * MiB):
    """Stream ``size`` pseudo-random bytes to their blob key (hashed first, then uploaded)."""
    pattern = os.urandom(block)

    def chunks():
        for start in range(0, size, block):
            yield pattern[: min(block, size - start)]

    checksum_pass = ChecksumPass(size)
    for chunk in chunks():
        checksum_pass.update(chunk)
    sums = checksum_pass.result()
    store.put_stream(bucket, sums.blob_key(), chunks(), size, part_size=64 * MiB)
    return sums


class PeakRss:
    """The peak RSS growth of this process (the replicator runs in it) while the block runs."""

    def __init__(self):
        self.process = psutil.Process()
        self.peak = self.baseline = 0

    def __enter__(self):
        self.baseline = self.peak = self.process.memory_info().rss
        self.done = threading.Event()
        self.sampler = eventlet.spawn(self._sample)
        return self

    def _sample(self):
        while not self.done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            eventlet.sleep(0.01)

    def __exit__(self, *exc_info):
        self.done.set()
        self.sampler.wait()

    @property
    def growth_mib(self):
        return (self.peak - self.baseline) / MiB


@pytest.mark.slow
def test_512_mib_blob_both_ways_in_bounded_memory(cluster, blobstores):
    size = 512 * MiB
    sums = put_large_blob(blobstores["aws"], cluster.bucket("aws"), size)
    key = sums.blob_key()

    for source in ("aws", "gcp"):
        destination = OTHER[source]
        started = time.monotonic()
        with PeakRss() as rss:
            replicated = cluster.replicate(source, key, timeout=120)
        took = time.monotonic() - started
        print(f"{source} -> {destination}: {size / MiB / took:.0f} MiB/s, RSS +{rss.growth_mib:.0f} MiB")
        assert replicated["copied"] is True and replicated["size"] == size
        assert rss.growth_mib < 200, f"RSS grew by {rss.growth_mib:.0f} MiB"
        actual, copied = verdicts.hash_object(blobstores[destination], cluster.bucket(destination), key, 16 * MiB)
        assert (actual, copied) == (sums, size)
        if source == "aws":  # the way back starts from the copy alone
            blobstores["aws"].delete(cluster.bucket("aws"), key)
