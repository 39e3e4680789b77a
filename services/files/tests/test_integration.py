"""The files service on the real broker against both storage emulators, called over real RPC."""
import json
import time

import pytest
from nameko.events import event_handler
from nameko.standalone.rpc import ServiceRpcProxy
from nameko.testing.services import entrypoint_waiter

from shared import events
from shared.exceptions import NotFound, Unprocessable
from shared.identifiers import new_uuid, new_version
from shared.testing import stage_large_object, stage_object
from services.files.exceptions import ChecksumMismatch, FileAlreadyExists, SourceNotFound, UnknownSourceScheme
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
    with pytest.raises(FileAlreadyExists):
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
    with pytest.raises(ChecksumMismatch) as error:
        files_rpc.put_file(uuid, new_version(), source_url, 1)
    assert "sha256" in error.value.title
    assert not store.exists(dss_settings.bucket(replica), other.blob_key())
    with pytest.raises(NotFound):
        files_rpc.head_file(replica, uuid)


def test_bad_sources_get_typed_errors(files_rpc, blobstores, dss_settings):
    staging = dss_settings.bucket("aws", "staging")
    with pytest.raises(SourceNotFound):
        files_rpc.put_file(new_uuid(), new_version(), f"s3://{staging}/no/such/key", 1)
    with pytest.raises(UnknownSourceScheme):
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
