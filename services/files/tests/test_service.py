"""Unit tests of the files service's decisions (storage replaced by mocks via worker_factory)."""
from unittest import mock

import pytest
from nameko.testing.services import worker_factory

from shared import events
from shared.checksums import checksum_bytes
from shared.exceptions import Unavailable
from services.files.dependencies import Source, _declared_checksums, file_metadata_doc, parse_source_url
from services.files.exceptions import ChecksumMismatch, FileAlreadyExists, SourceNotFound, UnknownSourceScheme
from services.files.service import PERMANENT_ERRORS, FilesService

UUID = "2b1e6e0a-0c55-4b5e-8f0f-1a2b3c4d5e6f"
VERSION = "2026-11-25T010203.000004Z"
DATA = b"some bytes"
SUMS = checksum_bytes(DATA)


def make_source(size=len(DATA), declared=None):
    info = mock.Mock(size=size, content_type="text/plain", revision="rev1", metadata={})
    return Source("s3://dss-staging/x", "aws", "dss-staging", "x", info, declared or SUMS.as_api())


def make_service(source):
    service = worker_factory(FilesService)
    service.store.inspect_source.return_value = source
    service.store.settings.async_copy_threshold = 64 * 1024 * 1024
    service.store.settings.stream_chunk_bytes = 8 * 1024 * 1024
    service.store.find_file.return_value = None
    service.store.put_file.return_value = None
    service.store.ingest_blob.return_value = True
    return service


def test_small_file_is_verified_copied_and_announced():
    service = make_service(make_source())
    result = service.put_file(UUID, VERSION, "s3://dss-staging/x", 7)
    assert result == {"status": "created", "version": VERSION}
    service.store.ingest_blob.assert_called_once()
    doc = service.store.put_file.call_args[0][2]
    assert doc["sha256"] == SUMS.sha256 and doc["s3-etag"] == SUMS.s3_etag and doc["creator_uid"] == 7
    name, payload = service.dispatch.call_args[0]
    assert name == events.FILE_CREATED
    assert payload["key"] == f"files/{UUID}.{VERSION}" and payload["blob_key"] == SUMS.blob_key()


def test_identical_repeat_is_200_and_reannounced():
    service = make_service(make_source())
    service.store.put_file.return_value = file_metadata_doc(VERSION, 7, "text/plain", len(DATA), SUMS)
    assert service.put_file(UUID, VERSION, "s3://dss-staging/x", 7)["status"] == "exists"
    assert service.dispatch.call_args[0][0] == events.FILE_CREATED


def test_different_content_under_same_version_is_409():
    service = make_service(make_source())
    service.store.put_file.return_value = file_metadata_doc(VERSION, 8, "text/plain", len(DATA), SUMS)
    with pytest.raises(FileAlreadyExists):
        service.put_file(UUID, VERSION, "s3://dss-staging/x", 7)
    service.dispatch.assert_not_called()


def test_large_repeat_is_answered_without_a_second_background_copy():
    service = make_service(make_source(size=65 * 1024 * 1024))
    service.store.find_file.return_value = file_metadata_doc(VERSION, 7, "text/plain", 65 * 1024 * 1024, SUMS)
    assert service.put_file(UUID, VERSION, "s3://dss-staging/x", 7)["status"] == "exists"
    assert service.dispatch.call_args[0][0] == events.FILE_CREATED


def test_large_file_is_accepted_with_a_stable_task_id():
    service = make_service(make_source(size=65 * 1024 * 1024))
    first = service.put_file(UUID, VERSION, "s3://dss-staging/x", 7)
    second = service.put_file(UUID, VERSION, "s3://dss-staging/x", 7)
    assert first["status"] == "accepted" and first["task_id"] == second["task_id"]
    name, payload = service.dispatch.call_args[0]
    assert name == events.FILE_UPLOAD_ACCEPTED and payload["checksums"] == SUMS.as_api()
    service.store.ingest_blob.assert_not_called()


def test_background_copy_finishes_an_accepted_upload_and_raises_on_failure():
    service = make_service(make_source())
    payload = {"uuid": UUID, "version": VERSION, "source_url": "s3://dss-staging/x", "creator_uid": 7,
               "task_id": "t", "checksums": SUMS.as_api()}
    service.handle_file_upload_accepted(payload)
    service.store.put_file.assert_called_once()
    # failures propagate to the retrying handler, which retries or dead-letters them
    service.store.ingest_blob.side_effect = ChecksumMismatch("bytes differ")
    with pytest.raises(ChecksumMismatch):
        service.handle_file_upload_accepted(payload)
    assert issubclass(ChecksumMismatch, PERMANENT_ERRORS) and not issubclass(Unavailable, PERMANENT_ERRORS)


def test_source_urls():
    assert parse_source_url("s3://bucket/a/b.json") == ("aws", "bucket", "a/b.json")
    assert parse_source_url("gs://bucket/k") == ("gcp", "bucket", "k")
    for bad in ("http://bucket/k", "s3://bucket", "s3:///k", "bucket/k"):
        with pytest.raises(UnknownSourceScheme):
            parse_source_url(bad)
    # A bucket no cloud can have (the GCS and S3 clients raise ValueError on such names: a 500 before).
    for nowhere in ("gs://-bucket-/k", "s3://Bucket/k", "gs://b\u00e9/k", "s3://user@bucket/k", "gs://ab/k"):
        with pytest.raises(SourceNotFound):
            parse_source_url(nowhere)


def test_checksums_are_read_from_either_prefix_and_metadata_wins_over_tags():
    metadata = {"hca-dss-sha256": "a" * 64, "DSS-SHA1": "b" * 40, "unrelated": "x"}
    tags = {"dss-sha256": "c" * 64, "dss-crc32c": "d" * 8, "dss-s3_etag": "e" * 32}
    assert _declared_checksums(metadata, tags) == {"sha256": "a" * 64, "sha1": "b" * 40, "crc32c": "d" * 8,
                                                   "s3_etag": "e" * 32}
