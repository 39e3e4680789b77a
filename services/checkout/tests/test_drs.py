"""Unit tests of GA4GH DRS 1.4 (service-info, objects, access) on in-memory buckets; every answer is
checked against the DRS schemas of ``drs_spec``."""
import hashlib
import json
import re

import pytest

from shared import events
from shared.exceptions import InvalidParameter, NotFound
from shared.identifiers import Keys, new_uuid

from services.checkout.file_reads import drs
from services.checkout.file_reads.blobs import Blob
from services.checkout.tests.drs_spec import assert_valid, is_uri, violations
from services.checkout.tests.file_reads_world import KiB, FileWorld

BASE_URL = "https://dss.example.org"


@pytest.fixture
def world():
    return FileWorld()


def test_service_info_is_a_ga4gh_service_of_type_drs_1_4(world):
    info = world.service.drs_service_info(BASE_URL)
    assert_valid("service_info", info)
    assert info["type"] == {"group": "org.ga4gh", "artifact": "drs", "version": "1.4.0"}
    assert info["organization"]["name"] and info["version"] == "0.1.0"
    with pytest.raises(InvalidParameter):
        world.service.drs_service_info("not a url")


def test_a_file_object_in_both_replicas(world):
    doc = world.add_file(b"drs bytes", content_type="text/plain")
    world.add_file(b"drs bytes", replica="gcp", uuid=doc["uuid"], version=doc["version"], content_type="text/plain")
    obj = world.service.drs_object("aws", doc["uuid"], base_url=BASE_URL)
    assert_valid("object", obj)
    fqid = f"{doc['uuid']}.{doc['version']}"
    assert obj["id"] == fqid and obj["self_uri"] == f"drs://dss.example.org/{fqid}"
    assert obj["size"] == 9 and obj["mime_type"] == "text/plain" and obj["version"] == doc["version"]
    assert obj["created_time"] == obj["updated_time"] == drs.rfc3339_of_version(doc["version"])
    assert obj["checksums"] == [{"type": "sha-256", "checksum": doc["sha256"]},
                                {"type": "sha1", "checksum": doc["sha1"]},
                                {"type": "crc32c", "checksum": doc["crc32c"]},
                                {"type": "etag", "checksum": doc["s3-etag"]}]
    assert obj["access_methods"] == [
        {"type": "s3", "access_id": f"aws.{doc['version']}", "region": "us-east-1"},
        {"type": "gs", "access_id": f"gcp.{doc['version']}"}]
    # Asked through gcp, gcp's method comes first; the fqid and the version parameter name the same object.
    from_gcp = world.service.drs_object("gcp", fqid, base_url=BASE_URL)
    assert [method["type"] for method in from_gcp["access_methods"]] == ["gs", "s3"]
    assert world.service.drs_object("aws", doc["uuid"], doc["version"], base_url=BASE_URL) == obj


def test_a_file_with_a_fresh_copy_has_its_access_url_and_one_in_a_single_replica_one_method(world):
    doc = world.add_file(b"only in aws")
    world.service.get_file("aws", doc["uuid"])
    obj = world.new_worker().drs_object("aws", doc["uuid"], base_url="http://127.0.0.1:8080")
    assert_valid("object", obj)
    assert obj["self_uri"].startswith("drs://127.0.0.1:8080/")
    [method] = obj["access_methods"]
    assert method["access_url"] == {"url": f"memory://dss-checkout/{Blob.of_file(doc).key}?expires_in=3600"}
    assert method["access_id"] == f"aws.{doc['version']}"


def test_access_serves_a_url_of_the_checkout_copy(world):
    doc = world.add_file(b"access me")
    world.add_file(b"access me", replica="gcp", uuid=doc["uuid"], version=doc["version"])
    for method in world.service.drs_object("aws", doc["uuid"], base_url=BASE_URL)["access_methods"]:
        replica = "aws" if method["type"] == "s3" else "gcp"
        answer = world.new_worker().drs_access("aws", doc["uuid"], method["access_id"])
        assert answer == {"status": "ready", "url": f"memory://dss-checkout/{Blob.of_file(doc).key}?expires_in=3600"}
        assert_valid("access_url", {key: value for key, value in answer.items() if key != "status"})
        assert world.checkout(replica)[Blob.of_file(doc).key][0] == b"access me"


def test_access_to_a_large_file_is_pending_while_the_copy_runs(world):
    doc = world.add_file(b"B" * (100 * KiB))
    access_id = f"aws.{doc['version']}"
    worker = world.new_worker()
    assert worker.drs_access("aws", f"{doc['uuid']}.{doc['version']}", access_id) == {"status": "pending",
                                                                                       "retry_after": 10}
    [request] = world.dispatched(worker, events.FILE_CHECKOUT_REQUESTED)
    again = world.new_worker()
    assert again.drs_access("aws", doc["uuid"], access_id)["status"] == "pending"
    assert world.dispatched(again, events.FILE_CHECKOUT_REQUESTED) == []
    world.new_worker().handle_file_checkout_requested(request)
    assert world.new_worker().drs_access("aws", doc["uuid"], access_id)["status"] == "ready"


def test_unknown_access_ids_are_404(world):
    doc = world.add_file(b"abc")
    for access_id in ("aws", "azure." + doc["version"], "aws.yesterday", f"gcp.{doc['version']}",
                      "aws.2001-01-01T000000.000000Z"):
        with pytest.raises(NotFound):
            world.service.drs_access("aws", doc["uuid"], access_id)
    with pytest.raises(NotFound):  # the object names another version than the access id
        world.service.drs_access("aws", f"{doc['uuid']}.2001-01-01T000000.000000Z", f"aws.{doc['version']}")


def test_a_bundle_is_a_drs_bundle_of_its_files(world):
    files = [world.add_file(b"first"), world.add_file(b"second", content_type="application/json")]
    uuid, version, manifest = world.add_bundle(files)
    obj = world.service.drs_object("aws", uuid, base_url=BASE_URL, expand=True)
    assert_valid("object", obj)
    assert obj["id"] == f"{uuid}.{version}" and "access_methods" not in obj
    assert obj["size"] == 11
    expected = hashlib.sha256("".join(sorted(doc["sha256"] for doc in files)).encode()).hexdigest()
    assert obj["checksums"] == [{"type": "sha-256", "checksum": expected}]
    assert obj["contents"] == [
        {"name": entry["name"], "id": f"{entry['uuid']}.{entry['version']}",
         "drs_uri": [f"drs://dss.example.org/{entry['uuid']}.{entry['version']}"]} for entry in manifest["files"]]
    # Each content resolves to its file, version pinned.
    content = obj["contents"][1]
    file_obj = world.service.drs_object("aws", content["id"], base_url=BASE_URL)
    assert file_obj["id"] == content["id"] and file_obj["mime_type"] == "application/json"


def named_bundle(world, names: list[str]) -> tuple[str, dict]:
    """A bundle of one small file per name, stored as the bundles service stores manifests."""
    files = [world.add_file(name.encode()) for name in names]
    uuid, version, manifest = world.add_bundle(files)
    for entry, name in zip(manifest["files"], names):
        entry["name"] = name
    world.main()[Keys.bundle(uuid, version)] = (json.dumps(manifest).encode(), "application/json", {})
    return uuid, {entry["name"]: f"{entry['uuid']}.{entry['version']}" for entry in manifest["files"]}


def file_content(object_id: str, name: str) -> dict:
    return {"name": name, "id": object_id, "drs_uri": [f"drs://dss.example.org/{object_id}"]}


def test_bundle_paths_become_nested_contents_objects_sorted_at_every_level(world):
    uuid, ids = named_bundle(world, ["z.json", "dir/sub/x.json", "dir/b.json", "a.json", "dir/sub/w.bin"])
    obj = world.service.drs_object("aws", uuid, base_url=BASE_URL)
    assert_valid("object", obj)
    assert obj["contents"] == [
        file_content(ids["a.json"], "a.json"),
        {"name": "dir", "contents": [
            file_content(ids["dir/b.json"], "b.json"),
            {"name": "sub", "contents": [file_content(ids["dir/sub/w.bin"], "w.bin"),
                                         file_content(ids["dir/sub/x.json"], "x.json")]}]},
        file_content(ids["z.json"], "z.json")]
    # Directories are not DRS objects (nothing to expand): the same tree either way.
    assert world.service.drs_object("aws", uuid, base_url=BASE_URL, expand=True)["contents"] == obj["contents"]


def test_a_directory_named_like_a_file_beside_it_gets_an_escaped_slash(world):
    uuid, ids = named_bundle(world, ["a/b", "a", "a_2F", "c/a/d", "c/a"])
    obj = world.service.drs_object("aws", uuid, base_url=BASE_URL)
    assert_valid("object", obj)  # names unique among siblings
    assert obj["contents"] == [
        file_content(ids["a"], "a"),
        {"name": "a_2F", "contents": [file_content(ids["a/b"], "b")]},
        file_content(ids["a_2F"], "a_5F2F"),
        {"name": "c", "contents": [file_content(ids["c/a"], "a"),
                                   {"name": "a_2F", "contents": [file_content(ids["c/a/d"], "d")]}]}]


def decoded_contents_name(name: str) -> str:
    """The inverse of ``drs.contents_name``: ``_XX`` (uppercase hex) is a byte, anything else itself."""
    return re.sub(rb"_([0-9A-F]{2})", lambda match: bytes([int(match[1], 16)]),
                  name.encode("ascii")).decode("utf-8", "surrogatepass")


@pytest.mark.parametrize("segment, name", [
    ("plain-name_1.json", "plain-name_1.json"),
    ("my file.json", "my_20file.json"),
    ("50%.txt", "50_25.txt"),
    ("run_2024.csv", "run_5F2024.csv"),      # `_20` would read as an escaped space
    ("run_2x", "run_2x"), ("end_", "end_"), ("_ab", "_ab"),  # lowercase hex is no escape
    ("café", "caf_C3_A9"),
    ("a:b+c~d", "a_3Ab_2Bc_7Ed"),
    (".", "_2E"), ("..", "_2E_2E"), (".hidden", ".hidden"),
    ("\ud800", "_ED_A0_80"),
])
def test_contents_names_escape_what_drs_forbids_reversibly(segment, name):
    assert drs.contents_name(segment) == name
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name)
    assert decoded_contents_name(name) == segment


def test_a_bundle_of_awkward_names_is_valid_drs_and_keeps_distinct_names_distinct(world):
    names = ["my data/a b.json", "my_20data/a_20b.json", "x/../y", "//lead", "ünï/çödé"]
    uuid, ids = named_bundle(world, names)
    obj = world.service.drs_object("aws", uuid, base_url=BASE_URL)
    assert_valid("object", obj)

    def file_paths(contents, prefix=""):
        for item in contents:
            if "contents" in item:
                yield from file_paths(item["contents"], f"{prefix}{item['name']}/")
            else:
                yield f"{prefix}{item['name']}", item["id"]
    served = dict(file_paths(obj["contents"]))
    assert served == {"my_20data/a_20b.json": ids["my data/a b.json"],
                      "my_5F20data/a_5F20b.json": ids["my_20data/a_20b.json"],
                      "x/_2E_2E/y": ids["x/../y"], "lead": ids["//lead"],
                      "_C3_BCn_C3_AF/_C3_A7_C3_B6d_C3_A9": ids["ünï/çödé"]}


def test_the_latest_live_bundle_version_is_served_and_tombstones_hide_bundles(world):
    files = [world.add_file(b"content")]
    uuid, old, _ = world.add_bundle(files, version="2020-01-01T000000.000000Z")
    world.add_bundle(files, uuid=uuid, version="2021-01-01T000000.000000Z")
    world.main()[Keys.bundle_tombstone(uuid, "2021-01-01T000000.000000Z")] = (b"{}", "application/json", {})
    assert world.service.drs_object("aws", uuid, base_url=BASE_URL)["version"] == old
    with pytest.raises(NotFound):
        world.service.drs_object("aws", f"{uuid}.2021-01-01T000000.000000Z", base_url=BASE_URL)
    world.main()[Keys.bundle_tombstone(uuid)] = (b"{}", "application/json", {})
    with pytest.raises(NotFound):
        world.service.drs_object("aws", uuid, base_url=BASE_URL)


@pytest.mark.parametrize("object_id", ["nope", "../etc", f"{new_uuid()}.yesterday", f"{new_uuid()}.",
                                       new_uuid().upper() + "x"])
def test_malformed_object_ids_are_400(world, object_id):
    with pytest.raises(InvalidParameter) as raised:
        world.service.drs_object("aws", object_id, base_url=BASE_URL)
    assert raised.value.error_code in ("illegal_object_id", "illegal_arguments")


def test_an_object_id_and_a_version_parameter_that_disagree_are_400_and_unknown_ids_404(world):
    doc = world.add_file(b"x")
    with pytest.raises(InvalidParameter) as raised:
        world.service.drs_object("aws", f"{doc['uuid']}.{doc['version']}", "2001-01-01T000000.000000Z",
                                 base_url=BASE_URL)
    assert raised.value.error_code == "illegal_object_id"
    with pytest.raises(NotFound):
        world.service.drs_object("aws", new_uuid(), base_url=BASE_URL)


def test_the_validator_catches_what_the_spec_forbids():
    good = {"id": "abc", "self_uri": "drs://host/abc", "size": 1, "created_time": "2024-01-01T00:00:00Z",
            "checksums": [{"type": "sha-256", "checksum": "00"}], "access_methods": [{"type": "s3", "access_id": "a"}]}
    assert violations("object", good) == []
    assert violations("object", {k: v for k, v in good.items() if k != "checksums"})
    assert violations("object", {**good, "checksums": []})
    assert violations("object", {**good, "checksums": [{"type": "sha256", "checksum": "00"}]})  # IANA: sha-256
    assert violations("object", {**good, "created_time": "yesterday"})
    assert violations("object", {**good, "access_methods": [{"type": "s3"}]})  # neither url nor id
    assert violations("object", {**good, "access_methods": [{"type": "azure", "access_id": "a"}]})
    assert violations("object", {k: v for k, v in good.items() if k != "access_methods"})  # a blob needs them
    assert violations("object", {**good, "self_uri": "https://host/abc"})
    assert violations("object", {**good, "size": "1"})
    assert violations("access_url", {"headers": []})
    assert violations("access_url", {"url": "no scheme here"})
    assert violations("error", {"msg": "nope", "status_code": 404}) == []
    assert violations("error", {"msg": 1, "status_code": "404"})
    assert violations("error", {"msg": "no status"}) and violations("error", {"status_code": 404})
    assert violations("error", {"msg": "fine", "status_code": 200})  # an error is 4xx or 5xx
    assert violations("service_info", {"id": "x"})


def test_the_validator_checks_contents_names_and_their_uniqueness():
    bundle = {"id": "b", "self_uri": "drs://host/b", "size": 2, "created_time": "2024-01-01T00:00:00Z",
              "checksums": [{"type": "sha-256", "checksum": "00"}],
              "contents": [{"name": "a.json", "id": "x", "drs_uri": ["drs://host/x"]},
                           {"name": "dir", "contents": [{"name": "b_20c.json", "id": "y"}]}]}
    assert violations("object", bundle) == []
    for bad_name in ("dir/b.json", "a b", "", "café"):
        assert violations("object", {**bundle, "contents": [{"name": bad_name, "id": "x"}]}), bad_name
    nested_twice = {"name": "dir", "contents": [{"name": "b", "id": "y"}, {"name": "b", "id": "z"}]}
    assert violations("object", {**bundle, "contents": [nested_twice]}) == [
        "contents/0/contents/1/name: 'b' is not unique among its siblings"]
    assert violations("object", {**bundle, "contents": [{"name": "a", "id": "x"}, {"name": "a", "contents": []}]})
    assert violations("object", {**bundle, "contents": [{"name": "a", "drs_uri": ["drs://bad host/x"]}]})


@pytest.mark.parametrize("uri", ["https://dss.example.org/v1/swagger.json", "http://127.0.0.1:8080/x?a=b&c=%2F",
                                 "drs://dss.example.org/abc", "memory://dss-checkout/blob?expires_in=3600",
                                 "mailto:someone@example.org", "urn:isbn:0451450523", "s3://bucket/key"])
def test_absolute_uris_are_uris(uri):
    assert is_uri(uri)


@pytest.mark.parametrize("uri", ["not a url", "/relative/path", "//example.org/x", "example.org", "",
                                 "http://", "https:///x", "http://host:99999/", "http://host:port/",
                                 "http://[::1/", "http://host/a b", "http://host/%zz", "http://host/<x>",
                                 "http://hôst/", "1http://host/", "http://host/\\x"])
def test_what_is_not_an_absolute_uri(uri):
    assert not is_uri(uri)
    assert violations("service_info", {**drs.service_info("https://dss.example.org", "1"), "contactUrl": uri})


def test_an_unreachable_other_replica_is_left_out_and_the_base_url_defaults_to_the_public_url(world):
    world = FileWorld(DSS_PUBLIC_URL="https://data.example.org")
    doc = world.add_file(b"one replica reachable")
    world.stores["gcp"].unavailable = True
    obj = world.service.drs_object("aws", doc["uuid"])
    assert_valid("object", obj)
    assert obj["self_uri"].startswith("drs://data.example.org/")
    assert [method["type"] for method in obj["access_methods"]] == ["s3"]
