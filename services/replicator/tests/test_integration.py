"""The replicator on the real broker against both storage emulators, driven by ``object_changed``
events dispatched as the notification bridge does, after objects were written into a main bucket
in the real storage layout; ``object_replicated`` is received by a listener service on the bus."""
import datetime
import io
import json
import os
import threading
import time

import eventlet
import psutil
import pytest
from nameko.events import event_handler
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ServiceRpcProxy
from nameko.testing.services import entrypoint_waiter
from nameko.testing.utils import get_container

from shared import events, replication
from shared.checksums import ChecksumPass, checksum_bytes
from shared.config import Settings
from shared.exceptions import InvalidParameter
from shared.identifiers import Keys, new_uuid, new_version
from shared.retry import DEAD_LETTERS, RETRIES, peek_dead_letters
from shared.schemas import FileMetadata
from shared.storage import ReplicaStorage

from services.replicator.dependencies import IGNORED, OBJECTS
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
