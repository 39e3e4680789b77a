"""Unit tests of the key model (shared.keys), the verdicts (shared.verdicts) and ops.replicas: keys, verdicts on stored copies, the merge-walk comparison of
two replicas and its progress line (over the recording in-memory stores of test_service)."""
import io
import json

import pytest

from ops import replicas
from shared import keys, verdicts
from shared.blobstore import BlobInfo
from shared.checksums import checksum_bytes
from shared.exceptions import InvalidParameter, Unprocessable
from shared.identifiers import Keys

from services.replicator.tests.test_service import UUIDS, VERSION, World

SUMS = checksum_bytes(b"some bytes")


@pytest.mark.parametrize("key,kind,uuid,version", [
    (SUMS.blob_key(), "blob", None, None),
    (Keys.file(UUIDS[0], VERSION), "file", UUIDS[0], VERSION),
    (Keys.bundle(UUIDS[0], VERSION), "bundle", UUIDS[0], VERSION),
    (Keys.bundle_tombstone(UUIDS[0], VERSION), "tombstone", UUIDS[0], VERSION),
    (Keys.bundle_tombstone(UUIDS[0]), "tombstone", UUIDS[0], None),
    (Keys.collection(UUIDS[0], VERSION), "collection", UUIDS[0], VERSION),
    (Keys.collection_tombstone(UUIDS[0]), "tombstone", UUIDS[0], None),
])
def test_keys_of_the_layout(key, kind, uuid, version):
    target = keys.parse_key(key)
    assert (target.key, target.kind, target.uuid, target.version) == (key, kind, uuid, version)
    assert (target.checksums == SUMS) is (kind == "blob")


@pytest.mark.parametrize("key", [
    "blobs/abc", SUMS.blob_key().upper().replace("BLOBS/", "blobs/"), SUMS.blob_key() + ".x",
    f"files/{UUIDS[0]}", f"files/{UUIDS[0]}.yesterday", f"files/{UUIDS[0].upper()}.{VERSION}",
    f"bundles/{UUIDS[0]}.{VERSION}.x", f"collections/{UUIDS[0]}.{VERSION}.dead", "files/",
])
def test_malformed_keys_under_the_layout_are_illegal(key):
    with pytest.raises(InvalidParameter) as error:
        keys.parse_key(key)
    assert error.value.error_code == "illegal_key"


@pytest.mark.parametrize("key", ["tmp/compose/abc/00001", "README", "blobsx/abc", ""])
def test_keys_outside_the_layout_are_none(key):
    assert keys.parse_key(key) is None


def info(revision="etag", crc32c=None, size=10):
    return BlobInfo("k", size, None, {}, revision, crc32c, None)


@pytest.mark.parametrize("stored,verdict", [
    (info(crc32c=SUMS.crc32c), True),
    (info(crc32c="00000000"), False),
    (info(revision=SUMS.s3_etag), True),
    (info(revision="0" * 32), False),  # both the MD5 of the whole object
    (info(revision="0" * 32 + "-2"), None),  # uploaded in parts: only reading tells
])
def test_blob_verdict(stored, verdict):
    assert verdicts.blob_verdict(stored, SUMS) is verdict


def test_blob_verdict_of_a_multipart_key():
    multipart = SUMS.__class__(SUMS.sha256, SUMS.sha1, "0" * 32 + "-3", SUMS.crc32c)
    assert verdicts.blob_verdict(info(revision="1" * 32), multipart) is None
    assert verdicts.blob_verdict(info(revision=multipart.s3_etag), multipart) is True


def test_load_document():
    target = keys.parse_key(Keys.bundle_tombstone(UUIDS[0]))
    doc = {"email": "a@example.org", "reason": "gone", "details": None, "admin_deleted": True, "new_field": 1}
    assert keys.load_document(target, json.dumps(doc).encode()) == doc  # unknown fields pass
    for bad in (b"[1]", b"{", b'{"email": "a@example.org"}', b"\xff"):
        with pytest.raises(Unprocessable):
            keys.load_document(target, bad)
        assert not keys.is_valid_document(target, bad)


def test_merge_walk():
    walked = list(replicas.merge_walk(["a", "c", "d", "f"], ["b", "c", "e", "f", "g"]))
    assert walked == [("a", True, False), ("b", False, True), ("c", True, True), ("d", True, False),
                      ("e", False, True), ("f", True, True), ("g", False, True)]
    assert list(replicas.merge_walk([], [])) == []
    assert list(replicas.merge_walk(["a"], [])) == [("a", True, False)]


def test_compare_replicas_reports_each_difference_with_its_correct_side():
    world = World()
    stores, buckets = world.stores, {"aws": "dss-main", "gcp": "dss-main"}
    same = checksum_bytes(b"same")
    bad_in_gcp = checksum_bytes(b"good")
    for replica in ("aws", "gcp"):
        world.put(replica, same.blob_key(), b"same")
        world.put_file(replica, UUIDS[0], b"same")
    world.put("aws", bad_in_gcp.blob_key(), b"good")
    world.put("gcp", bad_in_gcp.blob_key(), b"evil")  # same size: GCS's crc32c tells
    world.put_file("aws", UUIDS[1], b"only aws")
    world.put("gcp", Keys.bundle_tombstone(UUIDS[2]), b'{"email": "a@example.org", "reason": "r"}')
    doc = Keys.file(UUIDS[3], VERSION)
    world.put_file("aws", UUIDS[3], b"doc", blob=False)
    world.put("gcp", doc, world.contents("aws")[doc].replace(b'"size": 3', b'"size": 4'))  # same length
    world.put("aws", "tmp/compose/x/00001", b"not walked")

    summary = replicas.Summary()
    findings = {f.key: f for f in replicas.compare_replicas(stores, buckets, summary=summary, workers=4)}

    assert {key: (f.status, f.source) for key, f in findings.items()} == {
        bad_in_gcp.blob_key(): ("different", "aws"),
        Keys.file(UUIDS[1], VERSION): ("missing_in_gcp", "aws"),
        checksum_bytes(b"only aws").blob_key(): ("missing_in_gcp", "aws"),
        Keys.bundle_tombstone(UUIDS[2]): ("missing_in_aws", "gcp"),
    }
    assert (summary.compared, summary.differences) == (7, 4)
    assert findings[bad_in_gcp.blob_key()].remove is None  # the replicator sees it is damaged
    # Same-length documents are compared byte for byte only when deep; both are valid here.
    deep = {f.key: f for f in replicas.compare_replicas(stores, buckets, "files/", deep=True)}
    assert deep[doc].status == "different" and deep[doc].source is None
    assert replicas.recheck(stores, buckets, [same.blob_key(), doc]) == []


def test_progress_line():
    stream = io.StringIO()
    progress = replicas.Progress(stream, replicas.walk_prefixes(""), interval=0)
    summary = replicas.Summary(compared=10, different=1)
    progress.update("bundles/8" + "0" * 7, summary)  # half way through the second of four prefixes
    progress.done(summary)
    first, last = stream.getvalue().splitlines()
    assert first.startswith("[" + "#" * 11 + "." * 19 + "]  38%") and "10 keys, 1 differences" in first
    assert last.startswith("[" + "#" * 30 + "] 100%")
    assert replicas.walk_prefixes("b") == ("blobs/", "bundles/")
    assert replicas.walk_prefixes("files/ab") == ("files/ab",)


def test_damage_only_reading_shows_is_marked_for_removal():
    world = World()
    stores, buckets = world.stores, {"aws": "dss-main", "gcp": "dss-main"}
    sums = checksum_bytes(b"good")
    world.put("gcp", sums.blob_key(), b"good")
    world.put("aws", sums.blob_key(), b"evil")
    stores["aws"].etags[sums.blob_key()] = "0" * 32 + "-2"  # uploaded in parts: says nothing

    summary = replicas.Summary()
    assert list(replicas.compare_replicas(stores, buckets, "blobs/", summary=summary)) == []
    assert summary.unverified == 1
    (finding,) = replicas.compare_replicas(stores, buckets, "blobs/", deep=True)
    assert (finding.status, finding.source, finding.remove) == ("different", "gcp", "aws")
