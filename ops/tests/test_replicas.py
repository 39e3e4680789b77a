"""ops.replicas (`dss-ops replicas`): the merge-walk comparison of two replicas, its findings and
its progress line, over the recording in-memory stores of the replicator's unit tests."""
import io

from ops import replicas
from shared.checksums import checksum_bytes
from shared.identifiers import Keys

from services.replicator.tests.test_service import UUIDS, VERSION, World


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
    # Uploaded in parts: its ETag ("<md5 of the parts' md5s>-2") says nothing of the content.
    stores["aws"].put_stream("dss-main", sums.blob_key(), [b"evil"], 4, part_size=2)
    assert stores["aws"].stat("dss-main", sums.blob_key()).revision.endswith("-2")

    summary = replicas.Summary()
    assert list(replicas.compare_replicas(stores, buckets, "blobs/", summary=summary)) == []
    assert summary.unverified == 1
    (finding,) = replicas.compare_replicas(stores, buckets, "blobs/", deep=True)
    assert (finding.status, finding.source, finding.remove) == ("different", "gcp", "aws")
