"""Unit tests of the bundles service's rules: the service built with worker_factory on an
in-memory blob store (so only the cloud is faked; ReplicaStorage and the domain API are real)."""
import hashlib
import json

import pytest
from nameko.testing.services import worker_factory

from shared import events
from shared.blobstore import BlobStoreUnavailable
from shared.config import Settings
from shared.exceptions import Conflict, Forbidden, InvalidParameter, InvalidRequest, NotFound, Unauthorized, \
    Unprocessable
from shared.identifiers import Keys, new_uuid, new_version
from shared.schemas import FileMetadata
from shared.storage import ReplicaStorage, Replicas
from devtools.fakes import MemoryBlobStore, StorageSpy

from services.bundles import collection_documents, owner_index
from services.bundles.collection_documents import new_owner_cache
from services.bundles.dependencies import BundleStoreAPI
from services.bundles.documents import version_groups
from services.bundles.service import BundlesService

OWNER = {"email": "owner@example.org", "groups": ["dbio"], "is_admin": False}
OTHER = {"email": "other@example.org", "groups": ["dbio"], "is_admin": False}
ADMIN = {"email": "admin@example.org", "groups": ["dbio"], "is_admin": True}


class World:
    """Both replicas in memory and a worker of the service over them."""

    def __init__(self):
        self.settings = Settings.from_config({}, environ={})
        self.stores = {name: MemoryBlobStore(name) for name in ("aws", "gcp")}
        for name, store in self.stores.items():
            store.create_bucket(self.settings.bucket(name))
        self.replicas = Replicas({name: ReplicaStorage(name, store, self.settings)
                                  for name, store in self.stores.items()})
        self.owners = new_owner_cache()
        self.service = self.new_worker()

    def new_worker(self):
        """A fresh worker sharing the provider-level state (the owner cache), as nameko gives each call."""
        return worker_factory(BundlesService, store=BundleStoreAPI(self.replicas, self.settings, self.owners))

    def objects(self, replica="aws") -> dict:
        return self.stores[replica].buckets[self.settings.bucket(replica)]

    def read(self, key, replica="aws") -> dict:
        return json.loads(self.objects(replica)[key][0])

    def write(self, key, doc, replica="aws") -> None:
        self.objects(replica)[key] = (json.dumps(doc).encode(), "application/json", {})

    def add_file(self, replica="aws", size=3, content_type="application/json") -> dict:
        uuid, version = new_uuid(), new_version()
        digest = hashlib.sha256(uuid.encode()).hexdigest()
        self.write(Keys.file(uuid, version), FileMetadata().dump({
            "creator_uid": 7, "version": version, "content_type": content_type, "size": size, "sha256": digest,
            "sha1": digest[:40], "s3_etag": digest[:32], "crc32c": digest[:8]}), replica)
        return {"uuid": uuid, "version": version}

    def file_refs(self, count, replica="aws", prefix="f") -> list[dict]:
        return [{**self.add_file(replica), "name": f"{prefix}{i:04d}.json", "indexed": i % 2 == 0}
                for i in range(count)]

    def put_bundle(self, files, replica="aws", uuid=None, version=None, creator_uid=12):
        uuid, version = uuid or new_uuid(), version or new_version()
        result = self.service.put_bundle(replica, uuid, version, creator_uid, files, OWNER)
        return uuid, version, result


@pytest.fixture
def world():
    return World()


def dispatched(service, name):
    return [call.args[1] for call in service.dispatch.call_args_list if call.args[0] == name]


# --- put_bundle ------------------------------------------------------------------------------------

def test_put_bundle_writes_the_manifest_and_announces_it(world):
    files = world.file_refs(3)
    uuid, version, result = world.put_bundle(files)

    key = Keys.bundle(uuid, version)
    stored = world.read(key)
    assert result == {"status": "created", "version": version, "manifest": stored}
    assert stored["format"] == "0.0.1" and stored["version"] == version and stored["creator_uid"] == 12
    first = world.read(Keys.file(files[0]["uuid"], files[0]["version"]))
    assert stored["files"][0] == {
        "name": "f0000.json", "uuid": files[0]["uuid"], "version": files[0]["version"], "indexed": True,
        "content-type": "application/json", "size": 3, "crc32c": first["crc32c"], "s3-etag": first["s3-etag"],
        "sha1": first["sha1"], "sha256": first["sha256"]}
    assert [entry["name"] for entry in stored["files"]] == ["f0000.json", "f0001.json", "f0002.json"]
    assert dispatched(world.service, events.BUNDLE_CREATED) == [
        {"replica": "aws", "uuid": uuid, "version": version, "key": key, "file_count": 3}]
    world.service.metrics.object_written.assert_called_once_with("aws", "bundle")


def test_identical_repeat_exists_and_announces_again_but_a_different_one_conflicts(world):
    files = world.file_refs(2)
    uuid, version, first = world.put_bundle(files)

    again = world.service.put_bundle("aws", uuid, version, 12, files, OWNER)
    assert again == {**first, "status": "exists"}
    assert len(dispatched(world.service, events.BUNDLE_CREATED)) == 2
    world.service.metrics.object_written.assert_called_once()

    with pytest.raises(Conflict) as error:
        world.service.put_bundle("aws", uuid, version, 12, files[:1], OWNER)
    assert error.value.error_code == "bundle_already_exists"
    with pytest.raises(Conflict):
        world.service.put_bundle("aws", uuid, version, 13, files, OWNER)


def test_uuids_are_lower_cased_into_the_key(world):
    uuid, version = new_uuid(), new_version()
    world.service.put_bundle("aws", uuid.upper(), version, 1, world.file_refs(1), OWNER)
    assert Keys.bundle(uuid, version) in world.objects()


@pytest.mark.parametrize("name", ["/etc/passwd", "a/../../b", "..", "./a", "a/./b", "a//b", "a/", "dir\\file",
                                  "~/.ssh/id_rsa", "", "line\nbreak"])
def test_illegal_file_names_are_refused(world, name):
    files = world.file_refs(1)
    files[0]["name"] = name
    with pytest.raises(InvalidParameter) as error:
        world.put_bundle(files)
    assert error.value.error_code == "illegal_filename"
    assert repr(name) in error.value.title
    assert not [key for key in world.objects() if key.startswith("bundles/")]


@pytest.mark.parametrize("name", ["a.json", "dir/sub/file.txt", ".hidden", "...", "a~b", "~b", "with space.txt",
                                  "ünïcödé.json"])
def test_legal_file_names_are_kept(world, name):
    files = world.file_refs(1)
    files[0]["name"] = name
    assert world.put_bundle(files)[2]["manifest"]["files"][0]["name"] == name


def test_duplicate_names_are_refused(world):
    files = world.file_refs(3)
    files[2]["name"] = files[0]["name"]
    with pytest.raises(InvalidRequest) as error:
        world.put_bundle(files)
    assert error.value.error_code == "duplicate_filename"
    assert files[0]["name"] in error.value.title


def test_files_missing_on_the_replica_are_listed(world):
    on_aws = world.file_refs(2)
    on_gcp = world.file_refs(1, replica="gcp", prefix="g")
    with pytest.raises(InvalidRequest) as error:
        world.put_bundle(on_aws + on_gcp)
    assert error.value.error_code == "file_missing"
    assert f"{on_gcp[0]['uuid']}.{on_gcp[0]['version']}" in error.value.title
    assert on_aws[0]["uuid"] not in error.value.title
    assert not dispatched(world.service, events.BUNDLE_CREATED)
    assert world.put_bundle(on_gcp, replica="gcp")[2]["status"] == "created"


@pytest.mark.parametrize("change", [{"uuid": "not-a-uuid"}, {"version": "2017-06-20"}, {"indexed": None},
                                    {"name": None}])
def test_malformed_file_references_are_refused(world, change):
    files = world.file_refs(1)
    files[0].update(change)
    with pytest.raises(InvalidParameter):
        world.put_bundle(files)


def test_unknown_replica_and_bad_creator_uid_are_refused(world):
    with pytest.raises(InvalidParameter) as error:
        world.put_bundle(world.file_refs(1), replica="azure")
    assert error.value.error_code == "unknown_replica"
    with pytest.raises(InvalidParameter):
        world.put_bundle(world.file_refs(1), creator_uid="12")


def test_storage_outage_propagates_as_unavailable(world):
    files = world.file_refs(1)
    world.stores["aws"].unavailable = True
    with pytest.raises(BlobStoreUnavailable):
        world.put_bundle(files)
    assert world.service.health()["aws"]["ok"] is False and world.service.health()["gcp"]["ok"] is True


# --- get_bundle ------------------------------------------------------------------------------------

def test_get_bundle_pages_files_in_api_form(world):
    files = world.file_refs(25)
    uuid, version, _ = world.put_bundle(files)

    pages, start_at = [], 0
    while start_at is not None:
        answer = world.service.get_bundle("aws", uuid, version, start_at=start_at, per_page=10)
        pages.append(answer["bundle"]["files"])
        start_at = answer["next_start_at"]
    assert [len(page) for page in pages] == [10, 10, 5]
    assert answer["bundle"]["uuid"] == uuid and answer["bundle"]["version"] == version
    assert answer["bundle"]["creator_uid"] == 12
    first = pages[0][0]
    stored = world.read(Keys.file(files[0]["uuid"], files[0]["version"]))
    assert first == {"name": "f0000.json", "uuid": files[0]["uuid"], "version": files[0]["version"],
                     "indexed": True, "content-type": "application/json", "size": 3, "s3_etag": stored["s3-etag"],
                     "crc32c": stored["crc32c"], "sha1": stored["sha1"], "sha256": stored["sha256"]}
    assert [f["name"] for page in pages for f in page] == [f["name"] for f in files]

    whole = world.service.get_bundle("aws", uuid)
    assert len(whole["bundle"]["files"]) == 25 and whole["next_start_at"] is None
    assert world.service.get_bundle("aws", uuid, start_at=30, per_page=10)["bundle"]["files"] == []
    with pytest.raises(InvalidParameter):
        world.service.get_bundle("aws", uuid, start_at=-1)
    with pytest.raises(InvalidParameter):
        world.service.get_bundle("aws", uuid, per_page=0)


def test_latest_live_version_is_served_and_tombstones_hide(world):
    uuid = new_uuid()
    old, new = "2020-01-01T000000.000000Z", "2021-01-01T000000.000000Z"
    world.put_bundle(world.file_refs(1), uuid=uuid, version=old)
    world.put_bundle(world.file_refs(2), uuid=uuid, version=new)
    assert world.service.get_bundle("aws", uuid)["bundle"]["version"] == new

    world.write(Keys.bundle_tombstone(uuid, new), {"email": "a", "reason": "r"})
    assert world.service.get_bundle("aws", uuid)["bundle"]["version"] == old
    with pytest.raises(NotFound):
        world.service.get_bundle("aws", uuid, new)

    world.write(Keys.bundle_tombstone(uuid), {"email": "a", "reason": "r"})
    for version in (None, old):
        with pytest.raises(NotFound):
            world.service.get_bundle("aws", uuid, version)


def test_missing_bundles_are_not_found(world):
    uuid, version, _ = world.put_bundle(world.file_refs(1))
    with pytest.raises(NotFound):
        world.service.get_bundle("aws", new_uuid())
    with pytest.raises(NotFound):
        world.service.get_bundle("aws", uuid, new_version())
    with pytest.raises(NotFound):
        world.service.get_bundle("gcp", uuid, version)


# --- patch_bundle ----------------------------------------------------------------------------------

def test_patch_removes_on_name_uuid_and_version_and_adds_resolved_files(world):
    files = world.file_refs(3)
    uuid, version, _ = world.put_bundle(files)
    added = world.file_refs(1, prefix="new")
    remove = [{k: files[0][k] for k in ("name", "uuid", "version")},
              {**{k: files[1][k] for k in ("name", "uuid")}, "version": new_version()}]  # version differs: kept

    result = world.service.patch_bundle("aws", uuid, version, added, remove, OWNER)

    assert result["uuid"] == uuid and result["version"] > version
    patched = world.read(Keys.bundle(uuid, result["version"]))
    assert [entry["name"] for entry in patched["files"]] == ["f0001.json", "f0002.json", "new0000.json"]
    assert patched["creator_uid"] == 12
    assert world.read(Keys.bundle(uuid, version))["files"][0]["name"] == "f0000.json"  # base untouched
    assert dispatched(world.service, events.BUNDLE_CREATED)[-1] == {
        "replica": "aws", "uuid": uuid, "version": result["version"], "key": Keys.bundle(uuid, result["version"]),
        "file_count": 3}
    assert world.service.get_bundle("aws", uuid)["bundle"]["version"] == result["version"]


def test_patch_without_version_starts_from_the_latest(world):
    uuid, _, _ = world.put_bundle(world.file_refs(1))
    first = world.service.patch_bundle("aws", uuid, None, world.file_refs(1, prefix="a"), [], OWNER)
    second = world.service.patch_bundle("aws", uuid, None, world.file_refs(1, prefix="b"), [], OWNER)
    names = [f["name"] for f in world.read(Keys.bundle(uuid, second["version"]))["files"]]
    assert first["version"] < second["version"] and names == ["f0000.json", "a0000.json", "b0000.json"]


def test_patch_rules(world):
    files = world.file_refs(2)
    uuid, version, _ = world.put_bundle(files)
    clash = world.file_refs(1)
    clash[0]["name"] = files[0]["name"]
    with pytest.raises(InvalidRequest) as error:
        world.service.patch_bundle("aws", uuid, version, clash, [], OWNER)
    assert error.value.error_code == "duplicate_filename"

    missing = world.file_refs(1, replica="gcp", prefix="m")
    with pytest.raises(InvalidRequest) as error:
        world.service.patch_bundle("aws", uuid, version, missing, [], OWNER)
    assert error.value.error_code == "file_missing"

    bad = world.file_refs(1, prefix="../")
    with pytest.raises(InvalidParameter) as error:
        world.service.patch_bundle("aws", uuid, version, bad, [], OWNER)
    assert error.value.error_code == "illegal_filename"

    with pytest.raises(InvalidRequest) as error:
        world.service.patch_bundle("aws", uuid, version, [], [files[0]] * 1001, OWNER)
    assert error.value.error_code == "too_many_items"

    with pytest.raises(NotFound):
        world.service.patch_bundle("aws", new_uuid(), None, clash, [], OWNER)
    assert not dispatched(world.service, events.BUNDLE_CREATED)[1:]


# --- delete_bundle ---------------------------------------------------------------------------------

def test_only_admins_delete_and_only_what_exists(world):
    uuid, version, _ = world.put_bundle(world.file_refs(1))
    with pytest.raises(Forbidden):
        world.service.delete_bundle("aws", uuid, version, "why", None, OWNER)
    with pytest.raises(Unauthorized):
        world.service.delete_bundle("aws", uuid, version, "why", None, None)
    with pytest.raises(NotFound):
        world.service.delete_bundle("aws", new_uuid(), None, "why", None, ADMIN)
    with pytest.raises(NotFound):
        world.service.delete_bundle("aws", uuid, new_version(), "why", None, ADMIN)
    with pytest.raises(InvalidParameter):
        world.service.delete_bundle("aws", uuid, version, "", None, ADMIN)
    assert not [key for key in world.objects() if key.endswith(".dead")]


def test_versioned_tombstone_then_identical_repeat_then_a_different_one(world):
    uuid, version, _ = world.put_bundle(world.file_refs(1))
    details = {"ticket": 42}

    assert world.service.delete_bundle("aws", uuid, version, "bad data", details, ADMIN) == {"status": "created"}
    key = Keys.bundle_tombstone(uuid, version)
    assert world.read(key) == {"email": ADMIN["email"], "reason": "bad data", "details": details,
                               "admin_deleted": True}
    assert world.service.delete_bundle("aws", uuid, version, "bad data", details, ADMIN) == {"status": "exists"}
    with pytest.raises(Conflict) as error:
        world.service.delete_bundle("aws", uuid, version, "another reason", details, ADMIN)
    assert error.value.error_code == "bundle_tombstone_exists"

    payload = {"replica": "aws", "uuid": uuid, "version": version, "key": key, "reason": "bad data"}
    assert dispatched(world.service, events.BUNDLE_TOMBSTONED) == [payload, payload]
    with pytest.raises(NotFound):
        world.service.get_bundle("aws", uuid, version)


def test_tombstone_of_every_version(world):
    uuid, _, _ = world.put_bundle(world.file_refs(1))
    world.put_bundle(world.file_refs(1), uuid=uuid)
    world.service.delete_bundle("aws", uuid, None, "withdrawn", None, ADMIN)
    assert dispatched(world.service, events.BUNDLE_TOMBSTONED) == [
        {"replica": "aws", "uuid": uuid, "version": None, "key": f"bundles/{uuid}.dead", "reason": "withdrawn"}]
    with pytest.raises(NotFound):
        world.service.get_bundle("aws", uuid)


# --- list_bundles ----------------------------------------------------------------------------------

def test_list_pages_every_live_version_in_key_order_skipping_tombstoned_ones(world):
    files = world.file_refs(1)
    versions = ["2020-01-01T000000.000000Z", "2020-01-02T000000.000000Z", "2020-01-03T000000.000000Z"]
    uuids = sorted(new_uuid() for _ in range(6))
    for uuid in uuids:
        for version in versions:
            world.put_bundle(files, uuid=uuid, version=version)
    world.write(Keys.bundle_tombstone(uuids[1]), {"email": "a", "reason": "r"})            # all of uuid 1
    world.write(Keys.bundle_tombstone(uuids[2], versions[1]), {"email": "a", "reason": "r"})  # one of uuid 2
    for version in versions:                                                                 # each of uuid 4
        world.write(Keys.bundle_tombstone(uuids[4], version), {"email": "a", "reason": "r"})
    expected = [{"uuid": uuid, "version": version} for uuid in uuids for version in versions
                if uuid not in (uuids[1], uuids[4]) and (uuid, version) != (uuids[2], versions[1])]

    listed, cursor, pages = [], None, 0
    while True:
        page = world.service.list_bundles("aws", "", 4, cursor)
        listed += page["bundles"]
        pages += 1
        cursor = page["search_after"]
        if cursor is None:
            break
        assert len(page["bundles"]) == 4
    assert listed == expected and pages == 3  # 11 live bundles: 4 + 4 + 3, the last page has no cursor

    exact = world.service.list_bundles("aws", "", len(expected), None)
    assert exact["bundles"] == expected and exact["search_after"] is None


def test_list_filters_by_uuid_prefix_and_checks_its_arguments(world):
    uuid, version, _ = world.put_bundle(world.file_refs(1))
    world.put_bundle(world.file_refs(1))
    listed = world.service.list_bundles("aws", uuid[:8].upper(), 10, None)
    assert listed == {"bundles": [{"uuid": uuid, "version": version}], "search_after": None}
    assert world.service.list_bundles("gcp", "", 10, None) == {"bundles": [], "search_after": None}
    with pytest.raises(InvalidParameter):
        world.service.list_bundles("aws", "../", 10, None)
    with pytest.raises(InvalidParameter) as error:
        world.service.list_bundles("aws", "", 10, "bundles/whatever")
    assert error.value.error_code == "illegal_search_after"


# --- collections -----------------------------------------------------------------------------------

def put_collection(world, contents, caller=OWNER, uuid=None, version=None, name="my collection", replica="aws"):
    uuid, version = uuid or new_uuid(), version or new_version()
    result = world.service.put_collection(replica, uuid, version, name, "about it", {"k": [1]}, contents, caller)
    return uuid, version, result


def test_put_collection_dedupes_resolves_and_records_the_owner(world):
    file = world.add_file()
    b_uuid, b_version, _ = world.put_bundle(world.file_refs(1))
    c_uuid, c_version, _ = put_collection(world, [{"type": "file", **file}])
    contents = [{"type": "file", **file, "path": "/a"}, {"type": "file", **file, "path": "/a"},
                {"type": "bundle", "uuid": b_uuid, "version": b_version},
                {"type": "collection", "uuid": c_uuid, "version": c_version},
                {"type": "biomaterial", **file, "fragment": "/x"}]

    uuid, version, result = put_collection(world, contents)

    assert result == {"uuid": uuid, "version": version}
    key = Keys.collection(uuid, version)
    assert world.read(key) == {"name": "my collection", "description": "about it", "details": {"k": [1]},
                               "contents": [contents[0]] + contents[2:], "owner": OWNER["email"]}
    assert dispatched(world.service, events.COLLECTION_CREATED)[-1] == {
        "replica": "aws", "uuid": uuid, "version": version, "key": key, "owner": OWNER["email"]}
    assert world.service.get_collection("aws", uuid, None, OWNER) == {**world.read(key), "uuid": uuid,
                                                                       "version": version}

    assert put_collection(world, contents, uuid=uuid, version=version)[2] == result  # identical repeat
    with pytest.raises(Conflict) as error:
        put_collection(world, contents[:1], uuid=uuid, version=version)
    assert error.value.error_code == "collection_already_exists"


def test_collection_items_must_resolve(world):
    b_uuid, b_version, _ = world.put_bundle(world.file_refs(1))
    world.service.delete_bundle("aws", b_uuid, b_version, "gone", None, ADMIN)
    dead_bundle = {"type": "bundle", "uuid": b_uuid, "version": b_version}
    c_uuid, c_version, _ = put_collection(world, [{"type": "file", **world.add_file()}])
    world.service.delete_collection("aws", c_uuid, OWNER)
    for item in (dead_bundle,
                 {"type": "collection", "uuid": c_uuid, "version": c_version},
                 {"type": "file", **world.add_file(replica="gcp")},
                 {"type": "anything", **world.add_file(replica="gcp")},
                 {"type": "bundle", **world.add_file()}):
        with pytest.raises(Unprocessable) as error:
            put_collection(world, [item])
        assert error.value.error_code == "invalid_link" and item["uuid"] in error.value.title


def test_collection_size_and_shape_limits(world):
    file = world.add_file()
    with pytest.raises(InvalidRequest) as error:
        put_collection(world, [{"type": "file", **file, "path": str(i)} for i in range(1001)])
    assert error.value.error_code == "too_many_items"
    put_collection(world, [{"type": "file", **file, "path": "same"}] * 1001)  # 1 item once de-duplicated
    with pytest.raises(InvalidParameter):
        put_collection(world, [{"type": "file", "uuid": "nope", "version": file["version"]}])
    with pytest.raises(Unauthorized):
        put_collection(world, [], caller=None)


def test_collections_are_their_owners_alone(world):
    uuid, version, _ = put_collection(world, [{"type": "file", **world.add_file()}])
    with pytest.raises(Forbidden):
        world.service.get_collection("aws", uuid, version, OTHER)
    with pytest.raises(Unauthorized):
        world.service.get_collection("aws", uuid, version, None)
    with pytest.raises(Forbidden):
        world.service.patch_collection("aws", uuid, version, {"name": "mine"}, OTHER)
    with pytest.raises(Forbidden):
        world.service.delete_collection("aws", uuid, OTHER)
    with pytest.raises(Forbidden):  # a new version would take it over
        put_collection(world, [], caller=OTHER, uuid=uuid)
    with pytest.raises(NotFound):
        world.service.get_collection("aws", new_uuid(), None, OWNER)


def test_patch_collection_writes_a_new_version(world):
    one, two, three = ({"type": "file", **world.add_file()} for _ in range(3))
    uuid, version, _ = put_collection(world, [one, two])

    result = world.service.patch_collection("aws", uuid, version, {
        "add_contents": [three, one], "remove_contents": [two], "name": "renamed", "description": None}, OWNER)

    assert result["uuid"] == uuid and result["version"] > version
    patched = world.service.get_collection("aws", uuid, None, OWNER)
    assert patched["version"] == result["version"] and patched["name"] == "renamed"
    assert patched["description"] == "about it" and patched["contents"] == [one, three]
    assert world.service.get_collection("aws", uuid, version, OWNER)["contents"] == [one, two]
    assert dispatched(world.service, events.COLLECTION_CREATED)[-1]["version"] == result["version"]
    with pytest.raises(Unprocessable):
        world.service.patch_collection("aws", uuid, None, {"add_contents": [{"type": "file", "uuid": new_uuid(),
                                                                              "version": new_version()}]}, OWNER)


def test_delete_collection_tombstones_it(world):
    uuid, version, _ = put_collection(world, [])
    assert world.service.delete_collection("aws", uuid, OWNER) == {"status": "created"}
    assert world.read(Keys.collection_tombstone(uuid))["email"] == OWNER["email"]
    assert world.service.delete_collection("aws", uuid, OWNER) == {"status": "exists"}
    payload = {"replica": "aws", "uuid": uuid, "key": Keys.collection_tombstone(uuid), "owner": OWNER["email"]}
    assert dispatched(world.service, events.COLLECTION_TOMBSTONED) == [payload, payload]
    with pytest.raises(NotFound):
        world.service.get_collection("aws", uuid, version, OWNER)
    with pytest.raises(NotFound):
        world.service.delete_collection("aws", new_uuid(), OWNER)


def test_list_collections_shows_the_callers_live_collections_with_a_cached_owner_lookup(world):
    mine = sorted(put_collection(world, [])[0] for _ in range(5))
    theirs = put_collection(world, [], caller=OTHER)[0]
    latest = world.service.patch_collection("aws", mine[0], None, {"name": "v2"}, OWNER)["version"]
    world.service.delete_collection("aws", mine[4], OWNER)
    world.owners = new_owner_cache()  # as if a new process: owners must be read from storage
    store = world.stores["aws"]

    listed, start_at = [], 0
    while start_at is not None:
        page = world.new_worker().list_collections(OWNER, per_page=2, start_at=start_at)
        listed += page["collections"]
        start_at = page["next_start_at"]
    assert [item["uuid"] for item in listed] == mine[:4]
    assert listed[0]["version"] == latest
    assert theirs not in [item["uuid"] for item in listed]
    assert world.new_worker().list_collections(OTHER, 10, 0)["collections"][0]["uuid"] == theirs

    store.calls.clear()
    world.new_worker().list_collections(OWNER, 10, 0)
    # The owner's index, then the versions of each of their 4 live collections; every owner came from the cache.
    assert store.calls == {"list_keys": 1 + 4}
    with pytest.raises(Unauthorized):
        world.service.list_collections(None, 10, 0)


def test_listing_reads_only_the_callers_collections(world, monkeypatch):
    mine = sorted(put_collection(world, [])[0] for _ in range(3))
    others = [put_collection(world, [], caller={**OTHER, "email": f"other{i}@example.org"})[0] for i in range(40)]
    world.owners = new_owner_cache()  # a new process: nothing cached
    spy = StorageSpy(monkeypatch, world.stores["aws"])

    listed = world.new_worker().list_collections(OWNER, 100, 0)

    assert [item["uuid"] for item in listed["collections"]] == mine and listed["next_start_at"] is None
    assert Keys.collection_prefix() not in spy.listed  # never the whole replica
    assert spy.listed == [owner_index.owner_prefix(OWNER["email"])] + [Keys.collection_prefix(u) for u in mine]
    assert sorted(key.split("/")[1].partition(".")[0] for key in spy.read) == mine
    assert not [key for key in spy.read if any(uuid in key for uuid in others)]


def test_a_page_reads_only_what_it_needs(world, monkeypatch):
    mine = sorted(put_collection(world, [])[0] for _ in range(10))
    world.owners = new_owner_cache()
    spy = StorageSpy(monkeypatch, world.stores["aws"])

    page = world.new_worker().list_collections(OWNER, per_page=2, start_at=0)
    assert [item["uuid"] for item in page["collections"]] == mine[:2] and page["next_start_at"] == 2
    assert len(spy.read) == 3  # the page and one more, which tells that another page follows

    spy.clear()
    page = world.new_worker().list_collections(OWNER, per_page=4, start_at=8)
    assert [item["uuid"] for item in page["collections"]] == mine[8:] and page["next_start_at"] is None
    assert len(spy.read) == 7  # all 10 looked at (the page starts at 8), the first 3 owners cached


def test_stale_markers_are_skipped(world):
    kept = put_collection(world, [])[0]
    tombstoned = put_collection(world, [])[0]
    world.service.delete_collection("aws", tombstoned, OWNER)
    theirs = put_collection(world, [], caller=OTHER)[0]
    storage = world.replicas["aws"]
    # Markers left behind by a crash, or naming what is not the caller's: the collections' own keys decide.
    for uuid in (tombstoned, theirs, new_uuid()):
        owner_index.add(storage, OWNER["email"], uuid)

    listed = world.service.list_collections(OWNER, 100, 0)
    assert [item["uuid"] for item in listed["collections"]] == [kept]


def test_tombstone_removes_the_marker(world):
    uuid = put_collection(world, [])[0]
    key = owner_index.marker_key(OWNER["email"], uuid)
    assert world.read(key) == {"owner": OWNER["email"]}
    world.service.delete_collection("aws", uuid, OWNER)
    assert key not in world.objects()
    world.service.delete_collection("aws", uuid, OWNER)  # an identical repeat
    assert key not in world.objects()


def replicated(world, key, source="aws"):
    """Copy ``key`` to the other replica as the replicator does, and hand its event to the service."""
    destination = "gcp" if source == "aws" else "aws"
    world.objects(destination)[key] = world.objects(source)[key]
    return world.service.handle_object_replicated({"source_replica": source, "destination_replica": destination,
                                                   "key": key, "size": 1, "copied": True, "lag_seconds": 0.1})


def test_collections_replicated_in_are_indexed_and_tombstones_unindexed(world):
    uuid, version, _ = put_collection(world, [])
    assert world.service.list_collections(OWNER, 10, 0, replica="gcp")["collections"] == []

    assert replicated(world, Keys.collection(uuid, version)) == "added"
    assert world.service.list_collections(OWNER, 10, 0, replica="gcp")["collections"] == [
        {"uuid": uuid, "version": version}]
    assert replicated(world, Keys.collection(uuid, version)) == "added"  # a repeat changes nothing

    world.service.delete_collection("aws", uuid, OWNER)
    assert replicated(world, Keys.collection_tombstone(uuid)) == "removed"
    assert owner_index.marker_key(OWNER["email"], uuid) not in world.objects("gcp")
    assert world.service.list_collections(OWNER, 10, 0, replica="gcp")["collections"] == []
    b_uuid, b_version, _ = world.put_bundle(world.file_refs(1))
    assert replicated(world, Keys.bundle(b_uuid, b_version)) is None  # not a collection: nothing to do


def test_rebuild_indexes_collections_written_before_the_index(world):
    mine = sorted(put_collection(world, [])[0] for _ in range(3))
    theirs = put_collection(world, [], caller=OTHER)[0]
    dead = put_collection(world, [])[0]
    world.service.delete_collection("aws", dead, OWNER)
    stale = owner_index.marker_key(OWNER["email"], dead)
    world.objects()[stale] = world.objects()[owner_index.marker_key(OWNER["email"], mine[0])]
    for key in [key for key in world.objects() if key.startswith(owner_index.PREFIX) and key != stale]:
        del world.objects()[key]  # as a store written before the index: no markers
    assert world.service.list_collections(OWNER, 10, 0)["collections"] == []

    assert world.new_worker().store.collections.rebuild_owner_index("aws") == {"indexed": 4, "removed": 1}

    assert [item["uuid"] for item in world.service.list_collections(OWNER, 10, 0)["collections"]] == mine
    assert [item["uuid"] for item in world.service.list_collections(OWNER | {"email": OTHER["email"]}, 10, 0)[
        "collections"]] == [theirs]
    assert stale not in world.objects()
    assert world.new_worker().store.collections.rebuild_owner_index("aws") == {"indexed": 4, "removed": 0}


def test_the_owner_cache_is_bounded(world, monkeypatch):
    monkeypatch.setattr(collection_documents, "OWNER_CACHE_ENTRIES", 3)
    store = BundleStoreAPI(world.replicas, world.settings).collections
    for _ in range(5):
        put_collection(world, [])
    for uuid, versions, _ in version_groups(world.replicas["aws"], Keys.collection_prefix()):
        assert store.collection_owner("aws", uuid, versions[-1]) == OWNER["email"]
    assert len(store.owners) == 3
