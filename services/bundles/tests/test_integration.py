"""The bundles service on the real broker against both storage emulators, called over real RPC,
with its events received by a listener service on the same bus."""
import json
import logging
import os
import pathlib
import subprocess
import sys
import time

import eventlet
import pytest
from nameko.events import event_handler
from nameko.standalone.rpc import ServiceRpcProxy
from nameko.testing.services import entrypoint_waiter
from nameko.testing.utils import get_container

from shared import events
from shared.exceptions import Conflict, Forbidden, InvalidParameter, InvalidRequest, NotFound, Unprocessable
from shared.identifiers import Keys, new_uuid, new_version
from shared.schemas import FileMetadata
from shared.checksums import checksum_bytes
from devtools.fakes import StorageSpy

from services.bundles import owner_index
from services.bundles.collection_documents import new_owner_cache
from services.bundles.dependencies import BundleStore
from services.bundles.service import BundlesService

logger = logging.getLogger(__name__)

ROOT = pathlib.Path(__file__).resolve().parents[3]

OWNER = {"email": "owner@example.org", "groups": ["dbio"], "is_admin": False}
STRANGER = {"email": "stranger@example.org", "groups": ["dbio"], "is_admin": False}
ADMIN = {"email": "admin@example.org", "groups": ["dbio"], "is_admin": True}


class EventListener:
    name = "bundle_event_listener"

    # Each handler returns its payload so that entrypoint_waiter hands it to the test.
    @event_handler("bundles", events.BUNDLE_CREATED)
    def on_bundle_created(self, payload):
        return payload

    @event_handler("bundles", events.BUNDLE_TOMBSTONED)
    def on_bundle_tombstoned(self, payload):
        return payload

    @event_handler("bundles", events.COLLECTION_CREATED)
    def on_collection_created(self, payload):
        return payload

    @event_handler("bundles", events.COLLECTION_TOMBSTONED)
    def on_collection_tombstoned(self, payload):
        return payload


class Bus:
    def __init__(self, proxy, listener, service):
        self.rpc = proxy
        self.listener = listener
        self.service = service  # the bundles service's container

    @property
    def store(self) -> BundleStore:
        return next(dep for dep in self.service.dependencies if isinstance(dep, BundleStore))

    def expect(self, handler, uuid):
        """Wait (in a with block) for ``handler`` to receive the event of ``uuid``; ``.get()`` is its payload."""
        return entrypoint_waiter(self.listener, handler, timeout=30,
                                 callback=lambda worker_ctx, result, exc_info: result and result["uuid"] == uuid)


@pytest.fixture
def bus(service_config, runner_factory):
    runner = runner_factory(service_config, BundlesService, EventListener)
    runner.start()
    with ServiceRpcProxy("bundles", service_config, timeout=120) as proxy:
        yield Bus(proxy, get_container(runner, EventListener), get_container(runner, BundlesService))


def add_files(blobstores, settings, replica, count, data=b'{"sample": 1}'):
    """Files as the files service stores them (one blob, ``count`` metadata documents), written
    straight to the replica's bucket; returns bundle file references named f0000.json, ..."""
    store, bucket = blobstores[replica], settings.bucket(replica)
    sums = checksum_bytes(data)
    store.put_bytes(bucket, sums.blob_key(), data)
    refs = [{"uuid": new_uuid(), "version": new_version(), "name": f"f{i:04d}.json", "indexed": True}
            for i in range(count)]

    def write(ref):
        doc = FileMetadata().dump({"creator_uid": 3, "version": ref["version"], "content_type": "application/json",
                                   "size": len(data), **sums.as_api()})
        store.put_bytes(bucket, Keys.file(ref["uuid"], ref["version"]), json.dumps(doc).encode(),
                        content_type="application/json")

    list(eventlet.GreenPool(32).imap(write, refs))
    return refs, sums


def uuid_with_prefix(prefix: str) -> str:
    return prefix + new_uuid()[len(prefix):]


@pytest.mark.parametrize("replica", ["aws", "gcp"])
def test_bundle_lifecycle(replica, bus, blobstores, dss_settings):
    files, sums = add_files(blobstores, dss_settings, replica, 25)
    uuid, version = new_uuid(), new_version()

    with bus.expect("on_bundle_created", uuid) as created_event:
        created = bus.rpc.put_bundle(replica, uuid, version, 17, files, OWNER)
    key = Keys.bundle(uuid, version)
    assert created_event.get() == {"replica": replica, "uuid": uuid, "version": version, "key": key,
                                   "file_count": 25}
    assert created["status"] == "created" and created["version"] == version
    stored = json.loads(blobstores[replica].get_bytes(dss_settings.bucket(replica), key))
    assert created["manifest"] == stored
    assert stored["files"][0] == {"name": "f0000.json", "uuid": files[0]["uuid"], "version": files[0]["version"],
                                  "indexed": True, "content-type": "application/json", "size": 13,
                                  "sha256": sums.sha256, "sha1": sums.sha1, "s3-etag": sums.s3_etag,
                                  "crc32c": sums.crc32c}
    assert bus.rpc.put_bundle(replica, uuid, version, 17, files, OWNER)["status"] == "exists"
    with pytest.raises(Conflict):
        bus.rpc.put_bundle(replica, uuid, version, 18, files, OWNER)

    names, start_at = [], 0
    while start_at is not None:
        page = bus.rpc.get_bundle(replica, uuid, None, start_at, 10)
        assert page["bundle"]["uuid"] == uuid and page["bundle"]["version"] == version
        names += [f["name"] for f in page["bundle"]["files"]]
        start_at = page["next_start_at"]
    assert names == [f["name"] for f in files]
    assert page["bundle"]["files"][-1]["s3_etag"] == sums.s3_etag

    with bus.expect("on_bundle_created", uuid) as patched_event:
        patched = bus.rpc.patch_bundle(replica, uuid, version, [], files[:5], OWNER)
    assert patched_event.get()["version"] == patched["version"] and patched_event.get()["file_count"] == 20
    assert bus.rpc.get_bundle(replica, uuid)["bundle"]["version"] == patched["version"]
    listed = bus.rpc.list_bundles(replica, uuid, 10, None)
    assert listed == {"bundles": [{"uuid": uuid, "version": version}, {"uuid": uuid, "version": patched["version"]}],
                      "search_after": None}

    with pytest.raises(Forbidden):
        bus.rpc.delete_bundle(replica, uuid, None, "no", None, OWNER)
    with bus.expect("on_bundle_tombstoned", uuid) as tombstoned_event:
        assert bus.rpc.delete_bundle(replica, uuid, patched["version"], "bad patch", None, ADMIN) == {
            "status": "created"}
    assert tombstoned_event.get() == {"replica": replica, "uuid": uuid, "version": patched["version"],
                                      "key": Keys.bundle_tombstone(uuid, patched["version"]), "reason": "bad patch"}
    assert bus.rpc.get_bundle(replica, uuid)["bundle"]["version"] == version
    assert bus.rpc.list_bundles(replica, uuid, 10, None)["bundles"] == [{"uuid": uuid, "version": version}]

    with bus.expect("on_bundle_tombstoned", uuid) as all_event:
        bus.rpc.delete_bundle(replica, uuid, None, "withdrawn", {"by": "curator"}, ADMIN)
    assert all_event.get()["version"] is None and all_event.get()["key"] == f"bundles/{uuid}.dead"
    with pytest.raises(NotFound):
        bus.rpc.get_bundle(replica, uuid)
    with pytest.raises(NotFound):
        bus.rpc.get_bundle(replica, uuid, version)
    assert bus.rpc.list_bundles(replica, uuid, 10, None)["bundles"] == []
    assert bus.rpc.delete_bundle(replica, uuid, None, "withdrawn", {"by": "curator"}, ADMIN) == {"status": "exists"}


def test_typed_errors_cross_the_bus(bus, blobstores, dss_settings):
    files, _ = add_files(blobstores, dss_settings, "aws", 2)
    uuid, version = new_uuid(), new_version()
    with pytest.raises(InvalidRequest) as error:
        bus.rpc.put_bundle("aws", uuid, version, 1, [files[0], dict(files[1], name=files[0]["name"])], OWNER)
    assert error.value.error_code == "duplicate_filename"
    with pytest.raises(InvalidParameter) as error:
        bus.rpc.put_bundle("aws", uuid, version, 1, [dict(files[0], name="a/../../b")], OWNER)
    assert error.value.error_code == "illegal_filename"
    with pytest.raises(InvalidRequest) as error:
        bus.rpc.put_bundle("gcp", uuid, version, 1, files, OWNER)  # the files are on aws only
    assert error.value.error_code == "file_missing"
    with pytest.raises(InvalidParameter) as error:
        bus.rpc.get_bundle("azure", uuid)
    assert error.value.error_code == "unknown_replica"
    assert bus.rpc.health() == {"aws": {"ok": True, "detail": f"bucket {dss_settings.bucket('aws')}"},
                                "gcp": {"ok": True, "detail": f"bucket {dss_settings.bucket('gcp')}"}}


def test_list_bundles_pages_across_tombstones(bus, blobstores, dss_settings):
    files, _ = add_files(blobstores, dss_settings, "aws", 1)
    prefix = new_uuid()[:8]  # a prefix of our own: the emulators' buckets are shared by the session
    uuids = sorted(uuid_with_prefix(prefix) for _ in range(5))
    versions = {uuid: [] for uuid in uuids}
    for uuid in uuids:
        for _ in range(2):
            versions[uuid].append(bus.rpc.put_bundle("aws", uuid, new_version(), 1, files, OWNER)["version"])
    bus.rpc.delete_bundle("aws", uuids[0], None, "all of it", None, ADMIN)
    bus.rpc.delete_bundle("aws", uuids[2], versions[uuids[2]][1], "the second", None, ADMIN)
    expected = [{"uuid": uuid, "version": version} for uuid in uuids[1:] for version in versions[uuid]
                if version != versions[uuids[2]][1]]

    listed, cursor, pages = [], None, 0
    while True:
        page = bus.rpc.list_bundles("aws", prefix, 3, cursor)
        listed += page["bundles"]
        pages += 1
        cursor = page["search_after"]
        if cursor is None:
            break
    assert listed == expected and pages == 3


@pytest.mark.parametrize("replica", ["aws", "gcp"])
def test_collection_lifecycle(replica, bus, blobstores, dss_settings):
    files, _ = add_files(blobstores, dss_settings, replica, 2)
    bundle_uuid, bundle_version = new_uuid(), new_version()
    bus.rpc.put_bundle(replica, bundle_uuid, bundle_version, 1, files, OWNER)
    file_item = {"type": "file", "uuid": files[0]["uuid"], "version": files[0]["version"]}
    bundle_item = {"type": "bundle", "uuid": bundle_uuid, "version": bundle_version, "fragment": "/files/0"}
    uuid, version = new_uuid(), new_version()

    with bus.expect("on_collection_created", uuid) as created_event:
        assert bus.rpc.put_collection(replica, uuid, version, "cells", "some cells", {"lab": "x"},
                                      [file_item, bundle_item, file_item], OWNER) == {"uuid": uuid, "version": version}
    assert created_event.get() == {"replica": replica, "uuid": uuid, "version": version,
                                   "key": Keys.collection(uuid, version), "owner": OWNER["email"]}
    got = bus.rpc.get_collection(replica, uuid, None, OWNER)
    assert got == {"uuid": uuid, "version": version, "name": "cells", "description": "some cells",
                   "details": {"lab": "x"}, "contents": [file_item, bundle_item], "owner": OWNER["email"]}
    with pytest.raises(Forbidden):
        bus.rpc.get_collection(replica, uuid, None, STRANGER)
    with pytest.raises(Unprocessable) as error:
        bus.rpc.put_collection(replica, new_uuid(), new_version(), "x", None, None,
                               [{"type": "collection", "uuid": new_uuid(), "version": new_version()}], OWNER)
    assert error.value.error_code == "invalid_link"

    mine = bus.rpc.list_collections(OWNER, 500, 0, replica=replica)["collections"]
    assert {"uuid": uuid, "version": version} in mine
    assert uuid not in [c["uuid"] for c in bus.rpc.list_collections(STRANGER, 500, 0, replica=replica)["collections"]]

    with bus.expect("on_collection_created", uuid) as patched_event:
        patched = bus.rpc.patch_collection(replica, uuid, version, {"name": "more cells",
                                                                    "remove_contents": [bundle_item]}, OWNER)
    assert patched_event.get()["version"] == patched["version"] > version
    got = bus.rpc.get_collection(replica, uuid, None, OWNER)
    assert got["name"] == "more cells" and got["contents"] == [file_item] and got["version"] == patched["version"]
    assert {"uuid": uuid, "version": patched["version"]} in bus.rpc.list_collections(OWNER, 500, 0, replica=replica)[
        "collections"]

    with pytest.raises(Forbidden):
        bus.rpc.delete_collection(replica, uuid, STRANGER)
    with bus.expect("on_collection_tombstoned", uuid) as tombstoned_event:
        assert bus.rpc.delete_collection(replica, uuid, OWNER) == {"status": "created"}
    assert tombstoned_event.get() == {"replica": replica, "uuid": uuid, "key": Keys.collection_tombstone(uuid),
                                      "owner": OWNER["email"]}
    with pytest.raises(NotFound):
        bus.rpc.get_collection(replica, uuid, None, OWNER)
    assert uuid not in [c["uuid"] for c in bus.rpc.list_collections(OWNER, 500, 0, replica=replica)["collections"]]


def test_a_thousand_file_bundle(bus, blobstores, dss_settings):
    files, _ = add_files(blobstores, dss_settings, "aws", 1000)
    uuid, version = new_uuid(), new_version()

    began = time.perf_counter()
    assert bus.rpc.put_bundle("aws", uuid, version, 1, files, OWNER)["status"] == "created"
    put_seconds = time.perf_counter() - began
    began = time.perf_counter()
    first = bus.rpc.get_bundle("aws", uuid, version, 0, 500)
    second = bus.rpc.get_bundle("aws", uuid, version, first["next_start_at"], 500)
    get_seconds = time.perf_counter() - began

    assert second["next_start_at"] is None
    assert [f["name"] for f in first["bundle"]["files"] + second["bundle"]["files"]] == [f["name"] for f in files]
    logger.warning("1000-file bundle: put %.2fs, get (2 pages of 500) %.2fs", put_seconds, get_seconds)
    print(f"\n1000-file bundle: put {put_seconds:.2f}s, get (2 pages of 500) {get_seconds:.2f}s")
    assert put_seconds < 30 and get_seconds < 10


@pytest.mark.parametrize("replica", ["aws", "gcp"])
def test_listing_collections_reads_only_the_callers(replica, bus, monkeypatch):
    caller = {**OWNER, "email": f"{new_uuid()}@example.org"}  # the session's buckets hold other tests' too

    def put(who):
        return bus.rpc.put_collection(replica, new_uuid(), new_version(), "c", None, None, [], who)["uuid"]

    mine = sorted(put(caller) for _ in range(3))
    others = [put({**OWNER, "email": f"{new_uuid()}@example.org"}) for _ in range(30)]
    bus.store.owners = new_owner_cache()  # as a new process: owners are read from the bucket
    spy = StorageSpy(monkeypatch, bus.store.replicas[replica].store)

    listed = bus.rpc.list_collections(caller, 100, 0, replica=replica)

    assert [item["uuid"] for item in listed["collections"]] == mine
    assert spy.listed == [owner_index.owner_prefix(caller["email"])] + [Keys.collection_prefix(u) for u in mine]
    assert sorted(key.split("/")[1].partition(".")[0] for key in spy.read) == mine
    assert not [key for key in spy.read if any(uuid in key for uuid in others)]


def test_the_index_command_indexes_collections_written_before_the_index(bus, local_cloud_settings, dss_settings,
                                                                        blobstores):
    """`dss-ops collections index` (ops.cli) against the emulators: collections stored without
    markers, as before the index, are listed once it has run; a second run changes nothing."""
    caller = {**OWNER, "email": f"{new_uuid()}@example.org"}
    legacy = sorted(new_uuid() for _ in range(2))
    bucket = dss_settings.bucket("aws")
    for uuid in legacy:
        doc = {"name": "old", "description": None, "details": None, "contents": [], "owner": caller["email"]}
        blobstores["aws"].put_bytes(bucket, Keys.collection(uuid, new_version()), json.dumps(doc).encode(),
                                    content_type="application/json")
    assert bus.rpc.list_collections(caller, 100, 0, replica="aws")["collections"] == []

    env = {name: value for name, value in os.environ.items() if not name.startswith("DSS_")}
    env.update({name: str(value) for name, value in local_cloud_settings.items()})
    runs = [subprocess.run([sys.executable, "-m", "ops.cli", "collections", "index", "--replica", "aws"],
                           env=env, cwd=ROOT, capture_output=True, text=True, timeout=120) for _ in range(2)]
    assert [run.returncode for run in runs] == [0, 0], [run.stderr for run in runs]
    assert runs[0].stdout.startswith("aws: ") and runs[1].stdout.endswith(" 0 stale marker(s) removed\n")

    assert [item["uuid"] for item in bus.rpc.list_collections(caller, 100, 0, replica="aws")["collections"]] == legacy
