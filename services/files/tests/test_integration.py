"""The files service on the real broker against both storage emulators, called over real RPC."""
import json
import os
import time

import pytest
from nameko.events import event_handler
from nameko.standalone.rpc import ServiceRpcProxy
from nameko.testing.services import entrypoint_waiter
from prometheus_client import REGISTRY

from shared import events
from shared.exceptions import Conflict, Forbidden, InvalidParameter, NotFound, Unprocessable
from shared.identifiers import new_uuid, new_version
from devtools.fakes import stage_large_object, stage_object
from devtools.waiting import queue_state, wait_until
from services.files.claims import MARKER_MIN_SECONDS, Claim, marker_key
from services.files.metadata import file_identity, file_metadata_doc
from services.files.service import FilesService

MiB = 1024 * 1024


class EventListener:
    name = "file_event_listener"

    @event_handler("files", events.FILE_CREATED)
    def handle_file_created(self, payload):
        return payload  # entrypoint_waiter hands the result to the test


@pytest.fixture
def files_config(service_config):
    return {**service_config, "DSS_ASYNC_COPY_THRESHOLD": 2 * MiB}


@pytest.fixture
def files_rpc(files_config, runner_factory):
    runner = runner_factory(files_config, FilesService)
    runner.start()
    with ServiceRpcProxy("files", files_config, timeout=60) as proxy:
        yield proxy


@pytest.mark.parametrize("replica", ["aws", "gcp"])
def test_put_head_get_and_idempotent_repeat(replica, files_rpc, blobstores, dss_settings):
    store = blobstores[replica]
    source_url, sums = stage_object(store, dss_settings.bucket(replica, "staging"), b'{"a": 1}',
                                    content_type="application/json")
    uuid, version = new_uuid(), new_version()

    assert files_rpc.put_file(uuid, version, source_url, 42) == {"status": "created", "version": version}
    main = dss_settings.bucket(replica)
    assert store.get_bytes(main, sums.blob_key()) == b'{"a": 1}'
    stored = json.loads(store.get_bytes(main, f"files/{uuid}.{version}"))
    assert stored == {"format": "0.0.1", "creator_uid": 42, "version": version, "content-type": "application/json",
                      "size": 8, "sha256": sums.sha256, "sha1": sums.sha1, "s3-etag": sums.s3_etag,
                      "crc32c": sums.crc32c}

    head = files_rpc.head_file(replica, uuid)
    assert head["uuid"] == uuid and head["version"] == version and head["size"] == 8
    got = files_rpc.get_file(replica, uuid, version, content_disposition="attachment; filename=a.json")
    assert got["url"].startswith("http")
    assert files_rpc.get_file(replica, uuid, directurl=True)["url"] == f"{store.scheme}://{main}/{sums.blob_key()}"

    assert files_rpc.put_file(uuid, version, source_url, 42)["status"] == "exists"
    with pytest.raises(Conflict, match="^file_already_exists: "):
        files_rpc.put_file(uuid, version, source_url, 43)
    with pytest.raises(NotFound):
        files_rpc.head_file("gcp" if replica == "aws" else "aws", uuid)


def test_latest_version_is_served_when_none_is_named(files_rpc, blobstores, dss_settings):
    store = blobstores["aws"]
    uuid = new_uuid()
    for content in (b"one", b"two"):
        source_url, _ = stage_object(store, dss_settings.bucket("aws", "staging"), content)
        files_rpc.put_file(uuid, new_version(), source_url, 1)
    assert files_rpc.head_file("aws", uuid)["size"] == 3
    latest = files_rpc.get_file("aws", uuid)
    assert store.get_bytes(dss_settings.bucket("aws"), f"blobs/{latest['sha256']}.{latest['sha1']}."
                           f"{latest['s3-etag']}.{latest['crc32c']}") == b"two"


def test_hca_prefixed_tags_are_accepted(files_rpc, blobstores, dss_settings):
    source_url, _ = stage_object(blobstores["aws"], dss_settings.bucket("aws", "staging"), b"tagged",
                                 prefix="hca-dss-", as_tags=True)
    assert files_rpc.put_file(new_uuid(), new_version(), source_url, 1)["status"] == "created"


@pytest.mark.parametrize("replica", ["aws", "gcp"])
def test_bytes_that_do_not_match_their_declared_checksums_are_refused(replica, files_rpc, blobstores, dss_settings):
    store = blobstores[replica]
    _, other = stage_object(store, dss_settings.bucket(replica, "staging"), b"the declared bytes")
    source_url, _ = stage_object(store, dss_settings.bucket(replica, "staging"), b"other bytes!",
                                 declared=other.as_api())
    uuid = new_uuid()
    with pytest.raises(Unprocessable, match="^checksum_mismatch: ") as error:
        files_rpc.put_file(uuid, new_version(), source_url, 1)
    assert "sha256" in error.value.title
    assert not store.exists(dss_settings.bucket(replica), other.blob_key())
    with pytest.raises(NotFound):
        files_rpc.head_file(replica, uuid)


def test_bad_sources_get_typed_errors(files_rpc, blobstores, dss_settings):
    staging = dss_settings.bucket("aws", "staging")
    with pytest.raises(Unprocessable, match="^source_not_found: "):
        files_rpc.put_file(new_uuid(), new_version(), f"s3://{staging}/no/such/key", 1)
    with pytest.raises(InvalidParameter, match="^unknown_source_scheme: "):
        files_rpc.put_file(new_uuid(), new_version(), "ftp://host/key", 1)
    bare_key = "staging/unlabelled"
    blobstores["aws"].put_bytes(staging, bare_key, b"x")
    with pytest.raises(Unprocessable) as missing:
        files_rpc.put_file(new_uuid(), new_version(), f"s3://{staging}/{bare_key}", 1)
    assert missing.value.error_code == "missing_checksum"
    source_url, sums = stage_object(blobstores["aws"], staging, b"y", declared={
        **{"sha256": "0" * 64, "sha1": "0" * 40, "crc32c": "0" * 8}, "s3_etag": "nope"})
    with pytest.raises(Unprocessable) as invalid:
        files_rpc.put_file(new_uuid(), new_version(), source_url, 1)
    assert invalid.value.error_code == "invalid_checksum"


def test_identical_bytes_are_stored_once(files_rpc, blobstores, dss_settings):
    store = blobstores["gcp"]
    staging = dss_settings.bucket("gcp", "staging")
    first, sums = stage_object(store, staging, b"shared content")
    second, _ = stage_object(store, staging, b"shared content")
    files_rpc.put_file(new_uuid(), new_version(), first, 1)
    revision = store.stat(dss_settings.bucket("gcp"), sums.blob_key()).revision
    files_rpc.put_file(new_uuid(), new_version(), second, 1)
    assert store.stat(dss_settings.bucket("gcp"), sums.blob_key()).revision == revision


@pytest.mark.parametrize("replica", ["aws", "gcp"])
def test_large_copies_finish_in_the_background(replica, files_rpc, files_config, blobstores, dss_settings):
    store = blobstores[replica]
    source_url, sums = stage_large_object(store, dss_settings.bucket(replica, "staging"), 6 * MiB + 3)
    uuid, version = new_uuid(), new_version()
    answer = files_rpc.put_file(uuid, version, source_url, 5)
    assert answer["status"] == "accepted" and answer["version"] == version and answer["task_id"]
    deadline = time.monotonic() + 30
    while True:
        try:
            head = files_rpc.head_file(replica, uuid, version)
            break
        except NotFound:
            assert time.monotonic() < deadline, "background copy did not finish"
            time.sleep(0.1)
    assert head["size"] == 6 * MiB + 3 and head["sha256"] == sums.sha256
    assert store.stat(dss_settings.bucket(replica), sums.blob_key()).size == 6 * MiB + 3
    # a retried PUT of a finished copy is an idempotent 200, not a second task
    assert files_rpc.put_file(uuid, version, source_url, 5)["status"] == "exists"


def test_file_created_is_dispatched_after_the_write(files_config, runner_factory, blobstores, dss_settings):
    runner = runner_factory(files_config, FilesService, EventListener)
    runner.start()
    listener = next(c for c in runner.containers if c.service_name == EventListener.name)
    source_url, sums = stage_object(blobstores["aws"], dss_settings.bucket("aws", "staging"), b"evented")
    uuid, version = new_uuid(), new_version()
    with entrypoint_waiter(listener, "handle_file_created", timeout=30) as waiter:
        with ServiceRpcProxy("files", files_config) as files_rpc:
            files_rpc.put_file(uuid, version, source_url, 3)
    payload = waiter.get()
    stored = json.loads(blobstores["aws"].get_bytes(dss_settings.bucket("aws"), f"files/{uuid}.{version}"))
    assert payload == {"replica": "aws", "uuid": uuid, "version": version, "key": f"files/{uuid}.{version}",
                       "blob_key": sums.blob_key(), "size": 7, "content_type": "application/octet-stream",
                       "metadata": stored}
    assert stored["sha256"] == sums.sha256 and stored["version"] == version


# --- sources only from staging areas ------------------------------------------------------------------

def test_sources_outside_the_staging_areas_are_refused_alike(files_rpc, blobstores, dss_settings):
    store = blobstores["aws"]
    source_url, sums = stage_object(store, dss_settings.bucket("aws", "staging"), b"stored once")
    uuid, version = new_uuid(), new_version()
    files_rpc.put_file(uuid, version, source_url, 1)
    main = dss_settings.bucket("aws")
    titles = set()
    for url in (f"s3://{main}/files/{uuid}.{version}", f"s3://{main}/{sums.blob_key()}",
                f"s3://{main}/files/{new_uuid()}.{new_version()}"):
        with pytest.raises(Forbidden, match="^source_not_allowed: ") as refused:
            files_rpc.put_file(new_uuid(), new_version(), url, 1)
        titles.add(refused.value.title)
    assert len(titles) == 1


# --- one background copy per file version at a time ---------------------------------------------------

@pytest.fixture
def accepted_events(files_config):
    """``accepted_events()`` -> how many `file_upload_accepted` events the files service dispatched
    since the test began: they pile up in a queue of the test's own that nothing consumes."""
    from kombu import Connection, Queue
    from nameko.standalone.events import get_event_exchange

    name = "test-file-upload-accepted"
    with Connection(files_config["AMQP_URI"], connect_timeout=5) as connection:
        Queue(name, exchange=get_event_exchange("files", files_config), routing_key=events.FILE_UPLOAD_ACCEPTED,
              durable=False, auto_delete=False)(connection.channel()).declare()
    return lambda: queue_state(files_config["AMQP_URI"], name)[0]


def wait_for_file(files_rpc, replica, uuid, version, timeout=60):
    def stored():
        try:
            return files_rpc.head_file(replica, uuid, version)
        except NotFound:
            return None
    return wait_until(stored, timeout, f"file {uuid} version {version} stored")


def hashed_bytes(replica):
    return REGISTRY.get_sample_value("dss_bytes_checksummed_total", {"service": "files", "replica": replica}) or 0


@pytest.mark.parametrize("replica", ["aws", "gcp"])
def test_two_puts_of_a_large_file_make_one_copy(replica, files_config, runner_factory, accepted_events,
                                                blobstores, dss_settings):
    # two files processes, as when the service is scaled out: the claim lives in the bucket
    for _ in range(2):
        runner_factory(files_config, FilesService).start()
    store, size = blobstores[replica], 24 * MiB + 5
    source_url, sums = stage_large_object(store, dss_settings.bucket(replica, "staging"), size)
    uuid, version = new_uuid(), new_version()
    hashed_before = hashed_bytes(replica)
    with ServiceRpcProxy("files", files_config, timeout=60) as files_rpc:
        first = files_rpc.put_file(uuid, version, source_url, 5)
        second = files_rpc.put_file(uuid, version, source_url, 5)
        assert first["status"] == "accepted"
        # still copying: the same task; already copied: 200 as for any finished file
        assert second in ({"status": "accepted", "version": version, "task_id": first["task_id"]},
                          {"status": "exists", "version": version})
        assert accepted_events() == 1
        head = wait_for_file(files_rpc, replica, uuid, version)
        assert head["sha256"] == sums.sha256 and head["size"] == size
        assert files_rpc.put_file(uuid, version, source_url, 5) == {"status": "exists", "version": version}
    assert accepted_events() == 1
    assert hashed_bytes(replica) - hashed_before == size  # read and hashed once
    wait_until(lambda: not store.exists(dss_settings.bucket(replica), marker_key(uuid, version)), 10,
               "the claim released")


def test_a_copy_in_flight_elsewhere_is_answered_not_repeated(files_rpc, accepted_events, blobstores,
                                                              dss_settings):
    store, size = blobstores["aws"], 3 * MiB
    source_url, sums = stage_large_object(store, dss_settings.bucket("aws", "staging"), size)
    uuid, version = new_uuid(), new_version()
    main, key = dss_settings.bucket("aws"), marker_key(uuid, version)
    # the claim another process made for this very file a moment ago
    doc = file_metadata_doc(version, 5, "application/octet-stream", size, sums)
    now = time.time()
    store.put_bytes(main, key, Claim.new("task-elsewhere", file_identity(doc), size, now).encode(now))
    assert files_rpc.put_file(uuid, version, source_url, 5) == {"status": "accepted", "version": version,
                                                                "task_id": "task-elsewhere"}
    with pytest.raises(Conflict, match="^file_already_exists: "):  # other content for the version being written
        files_rpc.put_file(uuid, version, source_url, 6)
    assert accepted_events() == 0
    with pytest.raises(NotFound):
        files_rpc.head_file("aws", uuid, version)

    # that process crashed: past its deadline, the claim no longer holds the file back
    lapsed = Claim("task-elsewhere", file_identity(doc), now - 1)
    store.put_bytes(main, key, lapsed.encode(now - MARKER_MIN_SECONDS))
    answer = files_rpc.put_file(uuid, version, source_url, 5)
    assert answer["status"] == "accepted" and answer["task_id"] != "task-elsewhere"
    assert accepted_events() == 1
    assert wait_for_file(files_rpc, "aws", uuid, version)["sha256"] == sums.sha256
    wait_until(lambda: not store.exists(main, key), 10, "the claim released")


# --- stored blobs carry only the store's own metadata -------------------------------------------------

@pytest.fixture
def copying_files_rpc(service_config, runner_factory):
    """The files service copying objects above 1 MiB server-side, in parts above 5 MiB (S3's least)."""
    config = {**service_config, "DSS_STREAM_CHUNK_BYTES": MiB, "DSS_COPY_PART_BYTES": 5 * MiB}
    runner_factory(config, FilesService).start()
    with ServiceRpcProxy("files", config, timeout=60) as proxy:
        yield proxy


STAGED_METADATA = {"dss-checked-out": "2999-01-01T00:00:00.000000Z", "x-evil": "yes"}


@pytest.mark.parametrize("replica", ["aws", "gcp"])
@pytest.mark.parametrize("size", [1000, 3 * MiB, 11 * MiB], ids=["written", "copied", "copied-in-parts"])
def test_stored_blobs_carry_none_of_the_staged_metadata(replica, size, copying_files_rpc, blobstores,
                                                        dss_settings):
    store = blobstores[replica]
    staging = dss_settings.bucket(replica, "staging")
    if size < MiB:
        source_url, sums = stage_object(store, staging, os.urandom(size), content_type="text/plain",
                                        metadata=STAGED_METADATA)
    else:
        source_url, sums = stage_large_object(store, staging, size, metadata=STAGED_METADATA)
    staged = store.stat(staging, source_url.split("/", 3)[3]).metadata
    assert staged["dss-checked-out"] == STAGED_METADATA["dss-checked-out"] and staged["x-evil"] == "yes"

    assert copying_files_rpc.put_file(new_uuid(), new_version(), source_url, 1)["status"] == "created"
    blob = store.stat(dss_settings.bucket(replica), sums.blob_key())
    assert blob.size == size and blob.metadata == {f"dss-{name}": value for name, value in sums.as_api().items()}
    assert blob.content_type == ("text/plain" if size < MiB else "application/octet-stream")
