"""Unit tests of the files service's decisions (storage replaced by mocks via worker_factory)."""
from unittest import mock

import pytest
from nameko.testing.services import worker_factory

from shared import events
from shared.checksums import checksum_bytes
from shared.exceptions import Conflict, Forbidden, InvalidParameter, Unavailable, Unprocessable
from services.files.claims import Claim
from services.files.exceptions import checksum_mismatch, source_not_allowed
from services.files.ingest import Source, _declared_checksums
from services.files.metadata import file_identity, file_metadata_doc
from services.files.service import PERMANENT_COPY_ERRORS, FilesService
from services.files.sources import Area, IngestSources, parse_source_url

UUID = "2b1e6e0a-0c55-4b5e-8f0f-1a2b3c4d5e6f"
VERSION = "2026-11-25T010203.000004Z"
DATA = b"some bytes"
SUMS = checksum_bytes(DATA)


def make_source(size=len(DATA), declared=None):
    info = mock.Mock(size=size, content_type="text/plain", revision="rev1", metadata={})
    return Source("s3://dss-staging/x", "aws", "dss-staging", "x", info, declared or SUMS.as_api())


def make_service(source):
    service = worker_factory(FilesService)
    service.store.ingest.inspect_source.return_value = source
    service.store.settings.async_copy_threshold = 64 * 1024 * 1024
    service.store.settings.stream_chunk_bytes = 8 * 1024 * 1024
    service.store.files.find.return_value = None
    service.store.files.put.return_value = None
    service.store.ingest.ingest_blob.return_value = True
    service.store.claims.claim.return_value = None
    return service


def test_small_file_is_verified_copied_and_announced():
    service = make_service(make_source())
    result = service.put_file(UUID, VERSION, "s3://dss-staging/x", 7)
    assert result == {"status": "created", "version": VERSION}
    service.store.ingest.ingest_blob.assert_called_once()
    doc = service.store.files.put.call_args[0][2]
    assert doc["sha256"] == SUMS.sha256 and doc["s3-etag"] == SUMS.s3_etag and doc["creator_uid"] == 7
    name, payload = service.dispatch.call_args[0]
    assert name == events.FILE_CREATED
    assert payload["key"] == f"files/{UUID}.{VERSION}" and payload["blob_key"] == SUMS.blob_key()


def test_identical_repeat_is_200_and_reannounced():
    service = make_service(make_source())
    service.store.files.put.return_value = file_metadata_doc(VERSION, 7, "text/plain", len(DATA), SUMS)
    assert service.put_file(UUID, VERSION, "s3://dss-staging/x", 7)["status"] == "exists"
    assert service.dispatch.call_args[0][0] == events.FILE_CREATED


def test_different_content_under_same_version_is_409():
    service = make_service(make_source())
    service.store.files.put.return_value = file_metadata_doc(VERSION, 8, "text/plain", len(DATA), SUMS)
    with pytest.raises(Conflict, match="^file_already_exists: "):
        service.put_file(UUID, VERSION, "s3://dss-staging/x", 7)
    service.dispatch.assert_not_called()


def test_large_repeat_is_answered_without_a_second_background_copy():
    service = make_service(make_source(size=65 * 1024 * 1024))
    service.store.files.find.return_value = file_metadata_doc(VERSION, 7, "text/plain", 65 * 1024 * 1024, SUMS)
    assert service.put_file(UUID, VERSION, "s3://dss-staging/x", 7)["status"] == "exists"
    assert service.dispatch.call_args[0][0] == events.FILE_CREATED


def test_large_file_is_accepted_with_a_stable_task_id():
    service = make_service(make_source(size=65 * 1024 * 1024))
    first = service.put_file(UUID, VERSION, "s3://dss-staging/x", 7)
    second = service.put_file(UUID, VERSION, "s3://dss-staging/x", 7)
    assert first["status"] == "accepted" and first["task_id"] == second["task_id"]
    name, payload = service.dispatch.call_args[0]
    assert name == events.FILE_UPLOAD_ACCEPTED and payload["checksums"] == SUMS.as_api()
    service.store.ingest.ingest_blob.assert_not_called()


def test_a_repeat_while_the_copy_runs_answers_its_task_and_starts_nothing():
    size = 65 * 1024 * 1024
    service = make_service(make_source(size=size))
    first = service.put_file(UUID, VERSION, "s3://dss-staging/x", 7)
    service.store.claims.claim.assert_called_once()
    claimed_doc, task_id = service.store.claims.claim.call_args[0][2:]
    assert task_id == first["task_id"]
    # the claim is now in the bucket: every later PUT, from any process, finds it
    live = Claim.new("the-running-task", file_identity(claimed_doc), size, 0.0)
    service.store.claims.claim.return_value = live
    service.dispatch.reset_mock()
    again = service.put_file(UUID, VERSION, "s3://dss-staging/x", 7)
    assert again == {"status": "accepted", "version": VERSION, "task_id": "the-running-task"}
    service.dispatch.assert_not_called()
    service.store.ingest.ingest_blob.assert_not_called()
    service.store.ingest.checksum_source.assert_not_called()
    # other content under the version being written: 409 at once, still nothing started
    with pytest.raises(Conflict, match="^file_already_exists: "):
        service.put_file(UUID, VERSION, "s3://dss-staging/x", 8)
    service.dispatch.assert_not_called()


def test_a_copy_that_could_not_be_dispatched_gives_its_claim_back():
    service = make_service(make_source(size=65 * 1024 * 1024))
    service.dispatch.side_effect = Unavailable("broker gone")
    with pytest.raises(Unavailable):
        service.put_file(UUID, VERSION, "s3://dss-staging/x", 7)
    task_id = service.store.claims.claim.call_args[0][3]
    service.store.claims.release.assert_called_once_with("aws", UUID, VERSION, task_id)


def test_background_copy_finishes_an_accepted_upload_and_raises_on_failure():
    service = make_service(make_source())
    payload = {"uuid": UUID, "version": VERSION, "source_url": "s3://dss-staging/x", "creator_uid": 7,
               "task_id": "t", "checksums": SUMS.as_api()}
    service.handle_file_upload_accepted(payload)
    service.store.files.put.assert_called_once()
    service.store.claims.release.assert_called_once_with("aws", UUID, VERSION, "t")
    # failures propagate to the retrying handler, which retries or dead-letters them; the claim is
    # given back when the copy is given up, kept while a retry is due
    service.store.claims.release.reset_mock()
    service.store.ingest.ingest_blob.side_effect = checksum_mismatch("s3://dss-staging/x", ["sha256"])
    with pytest.raises(Unprocessable, match="^checksum_mismatch: "):
        service.handle_file_upload_accepted(payload)
    service.store.claims.release.assert_called_once_with("aws", UUID, VERSION, "t")
    service.store.claims.release.reset_mock()
    service.store.ingest.ingest_blob.side_effect = Unavailable("storage unreachable")
    with pytest.raises(Unavailable):
        service.handle_file_upload_accepted(payload)
    service.store.claims.release.assert_not_called()
    assert isinstance(checksum_mismatch("s3://dss-staging/x", ["sha256"]), PERMANENT_COPY_ERRORS)
    assert not issubclass(Unavailable, PERMANENT_COPY_ERRORS)
    assert isinstance(source_not_allowed("outside every staging area"), PERMANENT_COPY_ERRORS)


def test_source_urls():
    assert parse_source_url("s3://bucket/a/b.json") == ("aws", "bucket", "a/b.json")
    assert parse_source_url("gs://bucket/k") == ("gcp", "bucket", "k")
    # the key is what follows the bucket, verbatim: a `?` or `#` is part of it
    assert parse_source_url("s3://bucket/a?b#c") == ("aws", "bucket", "a?b#c")
    for bad in ("http://bucket/k", "s3://bucket", "s3:///k", "bucket/k"):
        with pytest.raises(InvalidParameter, match="^unknown_source_scheme: "):
            parse_source_url(bad)
    # A bucket no cloud can have (the GCS and S3 clients raise ValueError on such names: a 500 once)
    # is never asked for: it is no staging area.
    sources = IngestSources((Area.parse("s3://dss-staging"), Area.parse("gs://dss-staging")))
    for nowhere in ("gs://-bucket-/k", "s3://Bucket/k", "gs://b\u00e9/k", "s3://user@bucket/k", "gs://ab/k"):
        with pytest.raises(Forbidden, match="^source_not_allowed: "):
            sources.check(nowhere)


def test_checksums_are_read_from_either_prefix_and_metadata_wins_over_tags():
    metadata = {"hca-dss-sha256": "a" * 64, "DSS-SHA1": "b" * 40, "unrelated": "x"}
    tags = {"dss-sha256": "c" * 64, "dss-crc32c": "d" * 8, "dss-s3_etag": "e" * 32}
    assert _declared_checksums(metadata, tags) == {"sha256": "a" * 64, "sha1": "b" * 40, "crc32c": "d" * 8,
                                                   "s3_etag": "e" * 32}
