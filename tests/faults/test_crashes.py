"""Crashes of the services that write (issue 17 item 5): the files service killed with ``kill -9``
during a large background copy, the indexer killed while bundles are being indexed. Each runs as a
real ``nameko run`` process on the real broker against both emulators, beside the replicator
(whose bucket notifications carry every write to the other replica); the killed one is started
again as an operator would, and the test then requires that nothing was lost and nothing was done
twice where the contract says once.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import time

import eventlet
from nameko.standalone.rpc import ServiceRpcProxy

from devtools.fakes import stage_large_object
from devtools.waiting import wait_until
from ops import replicas
from services.files.claims import marker_key
from shared import events
from shared.checksums import checksum_bytes
from shared.identifiers import Keys, new_uuid, new_version
from shared.schemas import FileMetadata
from shared.storage import ReplicaStorage

from tests.faults.conftest import (INDEXER_QUEUES, RETRY_DELAYS, dead_letters, handler_queue, journal_creates,
                                   search_fqids)

MiB = 1024 * 1024
FILES_QUEUE = handler_queue("files", events.FILE_UPLOAD_ACCEPTED, "files", "handle_file_upload_accepted")
RPC_TIMEOUT = 60
# Large enough that the copy takes seconds (checksummed while read, then copied server-side), so
# that the kill falls in the middle of it on any machine; small enough for the emulators' pace.
LARGE_BYTES = 96 * MiB
ASYNC_THRESHOLD = 1 * MiB
BUNDLES = 60


def rpc(service: str, amqp_uri: str) -> ServiceRpcProxy:
    return ServiceRpcProxy(service, {"AMQP_URI": amqp_uri}, timeout=RPC_TIMEOUT)


def sha256_of(store, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in store.iter_chunks(bucket, key, 8 * MiB):
        digest.update(chunk)
    return digest.hexdigest()


def half_written(blobstores, buckets, file_key: str, blob_key: str, size: int) -> list[str]:
    """Where a replica shows the file while its blob is missing or not whole (what a client must
    never see): the ``files/`` document is the file's visibility."""
    found = []
    for replica, store in blobstores.items():
        if not store.exists(buckets[replica], file_key):
            continue
        try:
            blob = store.stat(buckets[replica], blob_key)
        except Exception as error:  # noqa: BLE001 (reported: anything but a whole blob is the finding)
            found.append(f"{replica}: {file_key} is visible but its blob is not ({error!r})")
            continue
        if blob.size != size:
            found.append(f"{replica}: {file_key} is visible but its blob has {blob.size} of {size} bytes")
    return found


def test_files_service_killed_during_a_large_background_copy_then_restarted_loses_nothing(
        service_factory, replicator, blobstores, dss_settings):
    env = {"DSS_ASYNC_COPY_THRESHOLD": ASYNC_THRESHOLD, "DSS_FILES_RETRY_DELAYS": RETRY_DELAYS}
    files = service_factory("files", FILES_QUEUE, **env)
    buckets = {replica: dss_settings.bucket(replica) for replica in ("aws", "gcp")}
    source_url, sums = stage_large_object(blobstores["aws"], dss_settings.bucket("aws", "staging"), LARGE_BYTES)
    uuid, version = new_uuid(), new_version()
    file_key, blob_key = Keys.file(uuid, version), sums.blob_key()
    started = time.monotonic()

    with rpc("files", files.amqp_uri) as client:
        answer = client.put_file(uuid, version, source_url, 7)
    assert answer["status"] == "accepted", answer

    # The background copy is under way once the worker logs its progress through the source.
    wait_until(lambda: files.count(f"checksumming {source_url}") > 0, 60, "the background copy under way",
               interval=0.05, on_timeout=files.process.tail)
    files.process.kill()  # SIGKILL: the copy abandoned, its message unacknowledged
    killed_at = time.monotonic() - started
    assert not blobstores["aws"].exists(buckets["aws"], file_key), \
        f"the copy was done before the kill ({killed_at:.1f}s): make LARGE_BYTES larger"
    assert blobstores["aws"].exists(buckets["aws"], marker_key(uuid, version)), "no claim of the copy under way"
    assert half_written(blobstores, buckets, file_key, blob_key, LARGE_BYTES) == []

    files.start()  # the broker delivers the unacknowledged copy to the new process

    def written_everywhere():
        seen = half_written(blobstores, buckets, file_key, blob_key, LARGE_BYTES)
        assert not seen, seen  # checked all along the recovery, not only at its end
        return all(store.exists(buckets[replica], file_key) for replica, store in blobstores.items())

    wait_until(written_everywhere, 180, "the file written in aws and replicated to gcp", interval=0.25,
               on_timeout=lambda: f"--- files ---\n{files.process.tail()}\n--- replicator ---\n"
                                  f"{replicator.process.tail()}")
    took = time.monotonic() - started

    # Complete and verified in both replicas: the metadata as the store answers it, the bytes by
    # our hash, and `dss-ops replicas verify --deep`'s comparison of the two replicas.
    with rpc("files", files.amqp_uri) as client:
        heads = {replica: client.head_file(replica, uuid, version) for replica in ("aws", "gcp")}
    assert heads["aws"] == heads["gcp"]
    assert (heads["aws"]["size"], heads["aws"]["sha256"], heads["aws"]["crc32c"]) == \
        (LARGE_BYTES, sums.sha256, sums.crc32c)
    for replica, store in blobstores.items():
        assert sha256_of(store, buckets[replica], blob_key) == sums.sha256, replica
    assert replicas.recheck(blobstores, buckets, [blob_key, file_key], deep=True) == []

    # The claim is released once the copy is done (after the file is written), nothing dead-lettered.
    wait_until(lambda: not blobstores["aws"].exists(buckets["aws"], marker_key(uuid, version)), 30,
               "the claim of the copy released")
    assert dead_letters(files.amqp_uri, FILES_QUEUE) == 0, files.process.tail()
    assert dead_letters(replicator.amqp_uri) == 0, replicator.process.tail()
    files.assert_alive("after the copy")
    print(f"files service killed {killed_at:.1f}s into a {LARGE_BYTES // MiB} MiB background copy; complete and "
          f"verified in both replicas {took:.1f}s after the PUT")


# --- the indexer ------------------------------------------------------------------------------------------

def write_file(storage: ReplicaStorage, store, bucket: str, document: dict) -> tuple[str, str]:
    """A JSON file written into the main bucket as the files service writes it (blob, then ``files/``)."""
    data = json.dumps(document).encode()
    sums = checksum_bytes(data)
    store.put_bytes(bucket, sums.blob_key(), data, content_type="application/json", if_absent=False)
    uuid, version = new_uuid(), new_version()
    doc = FileMetadata().dump({"creator_uid": 7, "version": version, "content_type": "application/json",
                               "size": len(data), **sums.as_api()})
    assert storage.write_json_once(Keys.file(uuid, version), doc) is None
    return uuid, version


def indexer_lines(indexer, fqid: str) -> str:
    """The lines of the indexer's log (every start of it) about ``fqid``: where a repeat came from."""
    lines = [line for line in indexer.process.log().splitlines() if fqid in line or line.startswith("=== ")]
    return f"\n  indexer log on {fqid}:\n    " + "\n    ".join(lines)


def test_indexer_killed_while_indexing_then_restarted_indexes_every_bundle_once(
        service_factory, replicator, blobstores, dss_settings, tmp_path):
    index_env = {"DSS_INDEX_DIR": tmp_path / "index", "DSS_INDEX_RETRY_DELAYS": RETRY_DELAYS}
    indexer = service_factory("indexer", INDEXER_QUEUES[0], **index_env)
    bundles = service_factory("bundles", "rpc-bundles")
    since, tag = new_version(), new_uuid()
    bucket = dss_settings.bucket("aws")
    storage = ReplicaStorage("aws", blobstores["aws"], dss_settings)
    written: list[str] = []

    def write_bundles():
        # Through the bundles service, whose bundle_created events the indexer takes in aws; the
        # replicator's copies of them (object_replicated) are what it indexes in gcp.
        with rpc("bundles", bundles.amqp_uri) as client:
            for index in range(BUNDLES):
                file_uuid, file_version = write_file(storage, blobstores["aws"], bucket,
                                                     {"tag": tag, "bundle": index, "pad": os.urandom(64).hex()})
                uuid, version = new_uuid(), new_version()
                answer = client.put_bundle("aws", uuid, version, 7, [
                    {"uuid": file_uuid, "version": file_version, "name": "sample_0.json", "indexed": True}])
                assert answer["status"] == "created", answer
                written.append(f"{uuid}.{version}")

    started = time.monotonic()
    writer = eventlet.spawn(write_bundles)
    total = 2 * BUNDLES  # indexed in each replica

    def indexed() -> int:
        return indexer.count("indexed CREATE")

    wait_until(lambda: indexed() >= total // 4 or writer.dead, 120, "a quarter of the bundles indexed",
               interval=0.05, on_timeout=indexer.process.tail)
    indexer.process.kill()  # SIGKILL mid-indexing: index writes, journal entries and dispatches cut anywhere
    at_kill = indexed()
    assert at_kill < total, f"every bundle was indexed before the kill ({at_kill}): make BUNDLES larger"
    indexer.start()
    with eventlet.Timeout(120, AssertionError("writing the bundles took more than 120s")):
        writer.wait()
    expected = sorted(written)
    assert len(expected) == BUNDLES

    problems = []
    with rpc("indexer", indexer.amqp_uri) as client:
        for replica in ("aws", "gcp"):
            wait_until(lambda: set(search_fqids(client, replica, tag)) >= set(expected), 180,
                       f"every bundle searchable in {replica}",
                       on_timeout=lambda: f"{len(set(search_fqids(client, replica, tag)))} of {BUNDLES}\n"
                                          f"--- indexer ---\n{indexer.process.tail()}")
            found = sorted(search_fqids(client, replica, tag))
            if found != expected:
                twice = {fqid: n for fqid, n in collections.Counter(found).items() if n > 1}
                problems.append(f"search in {replica}: found more than once {twice}, "
                                f"not written {sorted(set(found) - set(expected))}")
        took = time.monotonic() - started
        # Each version's CREATE event is journaled once per replica, whatever the kill interrupted.
        for replica in ("aws", "gcp"):
            creates = journal_creates(client, replica, since)
            missing = [fqid for fqid in expected if creates[fqid] == 0]
            repeated = {fqid: n for fqid, n in creates.items() if n > 1}
            if missing or repeated:
                problems.append(f"the {replica} journal (GET /events): {len(missing)} versions without a CREATE "
                                f"event, these with more than one: {repeated}" + "".join(
                                    indexer_lines(indexer, fqid) for fqid in repeated))
    dead = {queue: dead_letters(indexer.amqp_uri, queue) for queue in INDEXER_QUEUES}
    if any(dead.values()):
        problems.append(f"dead letters: {dead}")
    if dead_letters(replicator.amqp_uri):
        problems.append("dead letters in the replicator's queue")
    indexer.assert_alive("after indexing")
    print(f"indexer killed after {at_kill} of {total} CREATEs; all {BUNDLES} bundles searchable in both replicas "
          f"{took:.1f}s after the first write")
    assert not problems, "\n".join(problems)
