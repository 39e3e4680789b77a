"""One behaviour for every blob store: each test of the interface runs against moto (S3),
fake-gcs-server (GCS) and the in-memory store the unit tests use (``devtools.fakes.MemoryBlobStore``,
as each replica), so that a unit test cannot pass on behaviour no real store has. What only a real
store can show (presigned URLs fetched over HTTP, paging of the clients, unreachable endpoints,
memory while streaming) runs on the real ones (``real_store``)."""
import hashlib
import os
import threading
import time
import urllib.parse
import uuid

import boto3
import eventlet
import google_crc32c
import psutil
import pytest
import requests

from devtools import local_cloud
from devtools.fakes import MemoryBlobStore
from shared.blobstore import (BlobAlreadyExists, BlobNotFound, BlobPreconditionFailed, BlobStoreError,
                              BlobStoreUnavailable, open_blobstore)
from shared.blobstore.gcs import COMPOSE_PREFIX, GCSBlobStore
from shared.config import Settings

KiB = 1024
MiB = 1024 * KiB
BUCKET = "dss-main"
# Smallest multipart parts each store accepts: S3 needs 5 MiB (but the last), GCS 256 KiB multiples.
SMALL_PART = {"aws": 5 * MiB, "gcp": 1 * MiB}


@pytest.fixture(params=["aws", "gcp"])
def replica(request):
    return request.param


@pytest.fixture
def real_store(blobstores, replica):
    return blobstores[replica]


@pytest.fixture(params=["s3", "gcs", "memory-aws", "memory-gcp"])
def kind(request):
    """Which store: the real ones on their emulators, or the in-memory one as either replica."""
    return request.param


@pytest.fixture
def store(blobstores, kind):
    if kind.startswith("memory-"):
        memory = MemoryBlobStore(kind.removeprefix("memory-"))
        for bucket in (BUCKET, "dss-checkout"):
            memory.create_bucket(bucket)
        return memory
    return blobstores[{"s3": "aws", "gcs": "gcp"}[kind]]


@pytest.fixture
def prefix():
    return f"conformance/{uuid.uuid4().hex}/"


def pieces(data: bytes, size: int):
    """``data`` in pieces of ``size`` bytes, deliberately not aligned with any part size."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


def s3_client(settings):
    """A plain boto3 client on the emulator, for what the interface does not do (tags, uploads)."""
    return boto3.client("s3", endpoint_url=settings.s3_endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def test_put_and_get_bytes_with_metadata_and_content_type(store, prefix):
    key = prefix + "doc.json"
    store.put_bytes(BUCKET, key, b'{"a": 1}', content_type="application/json", metadata={"Sha256": "abc"})

    assert store.get_bytes(BUCKET, key) == b'{"a": 1}'
    assert store.exists(BUCKET, key)
    info = store.stat(BUCKET, key)
    assert (info.key, info.size, info.content_type) == (key, 8, "application/json")
    assert info.metadata == {"sha256": "abc"}
    assert info.revision and info.last_modified is not None
    if store.replica == "gcp":
        assert info.crc32c == google_crc32c.Checksum(b'{"a": 1}').digest().hex()
    else:
        assert info.crc32c is None  # put without an S3 CRC32C checksum
    store.put_bytes(BUCKET, key, b'{"a": 2}', content_type="application/json")
    assert store.stat(BUCKET, key).revision != info.revision  # every write a new revision


def test_put_if_absent_refuses_to_overwrite(store, prefix):
    key = prefix + "once"
    store.put_bytes(BUCKET, key, b"first", if_absent=True)
    with pytest.raises(BlobAlreadyExists):
        store.put_bytes(BUCKET, key, b"second", if_absent=True)
    assert store.get_bytes(BUCKET, key) == b"first"
    store.put_bytes(BUCKET, key, b"third")  # unconditional writes overwrite
    assert store.get_bytes(BUCKET, key) == b"third"


def test_missing_objects_raise_not_found(store, prefix):
    key = prefix + "missing"
    for call in (store.stat, store.get_bytes, store.get_tags):
        with pytest.raises(BlobNotFound):
            call(BUCKET, key)
    with pytest.raises(BlobNotFound):
        store.iter_chunks(BUCKET, key, MiB)  # at once, not on the first chunk
    with pytest.raises(BlobNotFound):
        store.copy(BUCKET, key, BUCKET, prefix + "copy")
    assert not store.exists(BUCKET, key)


def test_get_tags(store, kind, prefix, dss_settings):
    key = prefix + "tagged"
    store.put_bytes(BUCKET, key, b"x")
    if kind != "s3":
        assert store.get_tags(BUCKET, key) == {}  # GCS has no tags, nor does the memory store
        return
    tags = {"TagSet": [{"Key": "hca-dss-sha256", "Value": "abc"}]}
    s3_client(dss_settings).put_object_tagging(Bucket=BUCKET, Key=key, Tagging=tags)
    assert store.get_tags(BUCKET, key) == {"hca-dss-sha256": "abc"}


def test_list_keys_orders_filters_and_pages(store, kind, prefix, dss_settings):
    # The real stores' clients page their listings: pages of 7 show the joins.
    paged = store if kind.startswith("memory-") else type(store).from_settings(dss_settings, list_page_size=7)
    names = [f"k{i:03d}" for i in range(25)] + ["k010.dead", "k010.x", "a", "z"]
    keys = sorted(prefix + "items/" + name for name in names)
    outside = [prefix + "itemsx", prefix + "item"]
    pool = eventlet.GreenPool(16)
    list(pool.imap(lambda key: store.put_bytes(BUCKET, key, b""), keys + outside))

    assert list(paged.list_keys(BUCKET, prefix + "items/")) == keys
    after = prefix + "items/k010"
    assert list(paged.list_keys(BUCKET, prefix + "items/", start_after=after)) == [k for k in keys if k > after]
    between = prefix + "items/k0105"  # not a key itself
    assert list(paged.list_keys(BUCKET, prefix + "items/", start_after=between)) == [k for k in keys if k > between]
    assert list(paged.list_keys(BUCKET, prefix + "items/", start_after=keys[-1])) == []
    assert list(paged.list_keys(BUCKET, prefix + "nothing/")) == []
    assert list(store.list_keys(BUCKET, prefix)) == sorted(keys + outside)


def test_iter_chunks_reassembles_the_object(store, prefix):
    key = prefix + "blob"
    data = os.urandom(MiB + 17)
    store.put_bytes(BUCKET, key, data)

    chunks = list(store.iter_chunks(BUCKET, key, 256 * KiB))
    assert b"".join(chunks) == data
    assert [len(c) for c in chunks] == [256 * KiB] * 4 + [17]
    assert b"".join(store.iter_chunks(BUCKET, key, 10 * MiB, revision=store.stat(BUCKET, key).revision)) == data

    store.put_bytes(BUCKET, prefix + "empty", b"")
    assert list(store.iter_chunks(BUCKET, prefix + "empty", MiB)) == []


@pytest.mark.parametrize("size", [0, 1, 4 * KiB, 64 * KiB, 64 * KiB + 1, MiB])
def test_read_small_answers_the_properties_and_a_small_object_whole(store, prefix, size):
    key = prefix + "blob"
    data = os.urandom(size)
    store.put_bytes(BUCKET, key, data, content_type="text/plain", metadata={"Dss-Sha1": "abc"})
    stat = store.stat(BUCKET, key)

    info, content = store.read_small(BUCKET, key, 64 * KiB)

    assert (info.key, info.size, info.content_type, info.metadata, info.revision) == \
        (key, size, "text/plain", {"dss-sha1": "abc"}, stat.revision)
    assert content == (data if size <= 64 * KiB else None)
    with pytest.raises(BlobNotFound):
        store.read_small(BUCKET, prefix + "missing", 64 * KiB)


@pytest.mark.parametrize("size", [0, 4 * KiB])
def test_a_write_answers_what_a_stat_of_the_object_says(store, prefix, size):
    data = os.urandom(size)
    for key, written in (
            (prefix + "bytes", lambda key: store.put_bytes(BUCKET, key, data, content_type="text/csv",
                                                           metadata={"k": "v"}, if_absent=True)),
            (prefix + "stream", lambda key: store.put_stream(BUCKET, key, pieces(data, 1000), size,
                                                             content_type="text/csv", metadata={"k": "v"}))):
        answered = written(key)
        stat = store.stat(BUCKET, key)
        # A store may answer nothing (None); what it answers is what a stat says.
        if answered is not None:
            assert (answered.key, answered.size, answered.revision, answered.content_type, answered.metadata) == \
                (stat.key, stat.size, stat.revision, stat.content_type, stat.metadata)
            assert answered.crc32c in (None, stat.crc32c)
        if store.replica == "gcp":  # GCS answers the object resource, CRC32C included
            assert answered is not None and answered.crc32c == stat.crc32c


def test_revision_conditions_fail_once_the_object_changed(store, prefix):
    key = prefix + "changing"
    store.put_bytes(BUCKET, key, b"one" * 1000)
    old = store.stat(BUCKET, key).revision
    store.put_bytes(BUCKET, key, b"two" * 1000)
    new = store.stat(BUCKET, key).revision
    assert new != old

    with pytest.raises(BlobPreconditionFailed):
        store.iter_chunks(BUCKET, key, 100, revision=old)
    with pytest.raises(BlobPreconditionFailed):
        store.copy(BUCKET, key, BUCKET, prefix + "copy", if_source_revision=old)
    with pytest.raises(BlobPreconditionFailed):
        store.copy(BUCKET, key, BUCKET, prefix + "copy", if_source_revision=old, content_type="text/plain")
    assert not store.exists(BUCKET, prefix + "copy")

    store.copy(BUCKET, key, BUCKET, prefix + "copy", if_source_revision=new)
    assert store.get_bytes(BUCKET, prefix + "copy") == b"two" * 1000

    # Replaced between two chunks of one read: the read either fails or delivers the revision it
    # started with, whole (S3 streams one response); it never mixes two contents.
    chunks = store.iter_chunks(BUCKET, key, 1000, revision=new)
    first = next(chunks)
    assert first == b"two" * 333 + b"t"
    store.put_bytes(BUCKET, key, b"six" * 1000)
    try:
        assert first + b"".join(chunks) == b"two" * 1000
    except BlobPreconditionFailed:
        pass


def test_put_stream_multipart_matches_byte_for_byte(store, prefix):
    key = prefix + "big"
    data = os.urandom(12 * MiB + 123)  # above GCS's 8 MiB single-request limit: resumable
    part = SMALL_PART[store.replica]
    store.put_stream(BUCKET, key, pieces(data, MiB + 7), len(data), content_type="application/x-test",
                     metadata={"Part": "yes"}, part_size=part)

    info = store.stat(BUCKET, key)
    assert (info.size, info.content_type, info.metadata) == (len(data), "application/x-test", {"part": "yes"})
    assert store.get_bytes(BUCKET, key) == data
    if store.replica == "aws":  # S3's ETag, which the memory store makes as S3 does
        assert info.revision.endswith(f"-{-(-len(data) // part)}")  # really uploaded in parts


@pytest.mark.parametrize("size", [0, 1000])
def test_put_stream_single_request(store, prefix, size):
    key = prefix + "small"
    data = os.urandom(size)
    store.put_stream(BUCKET, key, pieces(data, 300), size, content_type="text/plain", metadata={"a": "b"})
    assert store.get_bytes(BUCKET, key) == data
    info = store.stat(BUCKET, key)
    assert (info.size, info.content_type, info.metadata) == (size, "text/plain", {"a": "b"})


@pytest.mark.parametrize("actual,announced", [(10 * MiB, 10 * MiB + 1), (10 * MiB + 1, 10 * MiB),
                                               (1000, 1001), (1001, 1000)])
def test_put_stream_of_the_wrong_size_writes_nothing(store, kind, prefix, actual, announced, dss_settings):
    key = prefix + "wrong"
    with pytest.raises(BlobStoreError):
        store.put_stream(BUCKET, key, pieces(b"x" * actual, MiB), announced, part_size=SMALL_PART[store.replica])
    assert not store.exists(BUCKET, key)
    if kind == "s3":  # the multipart upload was aborted, not left behind
        assert "Uploads" not in s3_client(dss_settings).list_multipart_uploads(Bucket=BUCKET, Prefix=key)


def leftovers(store, kind, dss_settings, key):
    """What an interrupted upload could leave behind: S3 multipart uploads, GCS composite parts (and
    anything the memory store would have put there)."""
    if kind == "s3":
        return s3_client(dss_settings).list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", [])
    return list(store.list_keys(BUCKET, COMPOSE_PREFIX))


@pytest.mark.parametrize("size", [12 * MiB + 123, 40 * MiB + 5])  # GCS: one compose, then rounds of 32
def test_put_stream_in_parallel_parts(store, kind, prefix, size, dss_settings):
    key = prefix + "parallel"
    data = os.urandom(size)
    part = SMALL_PART[store.replica]
    seen = []

    def chunks():
        for piece in pieces(data, MiB + 7):
            seen.append(len(piece))
            yield piece

    committed = []
    store.put_stream(BUCKET, key, chunks(), size, content_type="application/x-test", metadata={"Part": "yes"},
                     part_size=part, concurrency=3, before_commit=lambda: committed.append(sum(seen)))

    assert committed == [size]  # once, after every byte was read
    info = store.stat(BUCKET, key)
    assert (info.size, info.content_type, info.metadata) == (size, "application/x-test", {"part": "yes"})
    assert store.get_bytes(BUCKET, key) == data
    if store.replica == "aws":
        assert info.revision.endswith(f"-{-(-size // part)}")
    if store.replica == "gcp":
        assert info.crc32c == google_crc32c.Checksum(data).digest().hex()
    assert leftovers(store, kind, dss_settings, key) == []


@pytest.mark.parametrize("concurrency", [1, 3])
@pytest.mark.parametrize("size", [1000, 12 * MiB + 1])
def test_put_stream_refused_before_commit_writes_nothing(store, kind, prefix, size, concurrency, dss_settings):
    key = prefix + "refused"

    def refuse():
        raise ValueError("checksum mismatch")

    with pytest.raises(ValueError):
        store.put_stream(BUCKET, key, pieces(os.urandom(size), MiB), size, part_size=SMALL_PART[store.replica],
                         concurrency=concurrency, before_commit=refuse)
    assert not store.exists(BUCKET, key)
    assert leftovers(store, kind, dss_settings, key) == []


def test_put_stream_failing_source_in_parallel_writes_nothing(store, kind, prefix, dss_settings):
    key = prefix + "broken"

    def chunks():
        yield os.urandom(11 * MiB)
        raise BlobStoreUnavailable("the source went away")

    with pytest.raises(BlobStoreUnavailable):
        store.put_stream(BUCKET, key, chunks(), 20 * MiB, part_size=SMALL_PART[store.replica], concurrency=3)
    assert not store.exists(BUCKET, key)
    assert leftovers(store, kind, dss_settings, key) == []


def test_copy_small_keeps_content_type_and_metadata(store, prefix):
    store.put_bytes(BUCKET, prefix + "src", b"payload", content_type="text/csv", metadata={"k": "v"})
    store.copy(BUCKET, prefix + "src", "dss-checkout", prefix + "dst")

    assert store.get_bytes("dss-checkout", prefix + "dst") == b"payload"
    info = store.stat("dss-checkout", prefix + "dst")
    assert (info.content_type, info.metadata) == ("text/csv", {"k": "v"})


def test_copy_multipart(store, prefix):
    data = os.urandom(11 * MiB)
    store.put_stream(BUCKET, prefix + "src", pieces(data, 4 * MiB), len(data), content_type="text/csv",
                     metadata={"k": "v"}, part_size=SMALL_PART[store.replica])
    store.copy(BUCKET, prefix + "src", BUCKET, prefix + "dst", part_size=5 * MiB,
               if_source_revision=store.stat(BUCKET, prefix + "src").revision)

    assert store.get_bytes(BUCKET, prefix + "dst") == data
    info = store.stat(BUCKET, prefix + "dst")
    assert (info.size, info.content_type, info.metadata) == (len(data), "text/csv", {"k": "v"})
    if store.replica == "aws":
        assert info.revision.endswith("-3")  # copied in three parts


@pytest.mark.parametrize("size", [10, 6 * MiB])  # single copy and (on S3) multipart copy
def test_copy_replaces_content_type_and_metadata_when_given(store, prefix, size):
    data = os.urandom(size)
    store.put_bytes(BUCKET, prefix + "src", data, content_type="text/csv", metadata={"old": "1"})

    store.copy(BUCKET, prefix + "src", BUCKET, prefix + "both", content_type="application/json",
               metadata={"New": "2"}, part_size=5 * MiB)
    store.copy(BUCKET, prefix + "src", BUCKET, prefix + "type", content_type="application/json", part_size=5 * MiB)
    store.copy(BUCKET, prefix + "src", BUCKET, prefix + "meta", metadata={"new": "3"}, part_size=5 * MiB)

    def described(name):
        info = store.stat(BUCKET, prefix + name)
        return info.content_type, info.metadata

    assert described("both") == ("application/json", {"new": "2"})
    assert described("type") == ("application/json", {"old": "1"})
    assert described("meta") == ("text/csv", {"new": "3"})
    assert store.get_bytes(BUCKET, prefix + "both") == data


@pytest.mark.parametrize("size", [10, 6 * MiB])  # single copy and (on S3) multipart copy
def test_copy_answers_what_a_stat_of_the_copy_says(store, prefix, size):
    store.put_bytes(BUCKET, prefix + "src", os.urandom(size), content_type="text/csv", metadata={"k": "v"})
    for name, changes in (("kept", {}), ("replaced", {"content_type": "application/json", "metadata": {"N": "1"}})):
        answered = store.copy(BUCKET, prefix + "src", "dss-checkout", prefix + name, part_size=5 * MiB, **changes)
        stat = store.stat("dss-checkout", prefix + name)
        assert (answered.key, answered.size, answered.revision, answered.content_type, answered.metadata) == \
            (stat.key, stat.size, stat.revision, stat.content_type, stat.metadata)
        assert answered.crc32c in (None, stat.crc32c)  # S3 answers no CRC32C; GCS the one it keeps
        if store.replica == "gcp":
            assert answered.crc32c is not None


def test_a_copy_of_known_size_with_new_properties_does_not_look_at_its_source_first(store, kind, prefix,
                                                                                    monkeypatch):
    data = os.urandom(3 * KiB)
    store.put_bytes(BUCKET, prefix + "src", data, content_type="text/csv", metadata={"k": "v"})

    def no_look(*args, **kwargs):
        raise AssertionError("looked at the source")

    monkeypatch.setattr(store, "stat", no_look)
    if kind == "s3":
        monkeypatch.setattr(store, "_head", no_look)
    answered = store.copy(BUCKET, prefix + "src", "dss-checkout", prefix + "dst", content_type="text/plain",
                          metadata={"made": "now"}, source_size=len(data))
    monkeypatch.undo()
    assert store.get_bytes("dss-checkout", prefix + "dst") == data
    stat = store.stat("dss-checkout", prefix + "dst")
    assert (stat.content_type, stat.metadata, stat.revision) == ("text/plain", {"made": "now"}, answered.revision)
    with pytest.raises(BlobNotFound):  # nothing to copy is still an error, found by the copy itself
        store.copy(BUCKET, prefix + "absent", "dss-checkout", prefix + "none", content_type="text/plain",
                   metadata={}, source_size=1)


def test_delete_is_idempotent(store, prefix):
    key = prefix + "gone"
    store.put_bytes(BUCKET, key, b"x")
    store.delete(BUCKET, key)
    assert not store.exists(BUCKET, key)
    store.delete(BUCKET, key)


def test_presigned_url_downloads_with_plain_requests(real_store, prefix):
    store = real_store
    key = prefix + "needs quoting/ä+b.txt"
    store.put_bytes(BUCKET, key, b"presigned bytes", content_type="text/plain")

    response = requests.get(store.presigned_url(BUCKET, key, 60), timeout=10)
    assert response.status_code == 200 and response.content == b"presigned bytes"

    disposition = 'attachment; filename="x.txt"'
    response = requests.get(store.presigned_url(BUCKET, key, 60, content_disposition=disposition), timeout=10)
    assert response.status_code == 200 and response.content == b"presigned bytes"
    if store.replica == "aws":  # fake-gcs-server ignores response-content-disposition
        assert response.headers["Content-Disposition"] == disposition


def test_direct_url(store):
    assert store.direct_url(BUCKET, "blobs/a.b") == f"{store.scheme}://{BUCKET}/blobs/a.b"
    assert store.scheme == {"aws": "s3", "gcp": "gs"}[store.replica]


def test_buckets(store):
    assert store.bucket_exists(BUCKET)
    name = f"dss-conformance-{uuid.uuid4().hex[:12]}"
    assert not store.bucket_exists(name)
    store.create_bucket(name)
    store.create_bucket(name)  # idempotent
    assert store.bucket_exists(name)
    with pytest.raises(BlobNotFound):
        store.stat(f"dss-missing-{uuid.uuid4().hex[:12]}", "key")


def test_unreachable_endpoint_is_unavailable_quickly(replica, local_cloud_settings):
    closed = f"http://127.0.0.1:{local_cloud.free_port()}"
    settings = Settings.from_config({**local_cloud_settings, "DSS_S3_ENDPOINT": closed, "DSS_GCS_ENDPOINT": closed},
                                    environ={})
    store = open_blobstore(replica, settings)
    for call in (lambda: store.stat(BUCKET, "key"), lambda: store.bucket_exists(BUCKET)):
        started = time.monotonic()
        with pytest.raises(BlobStoreUnavailable):
            call()
        assert time.monotonic() - started < 10


def assert_v4_signed(url: str, public_key) -> None:
    """Check a GCS V4 signed URL (query-string authentication) as GCS does: the canonical request
    rebuilt from the URL, its string to sign verified with the service account's public key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    parts = urllib.parse.urlsplit(url)
    query, _, signature = parts.query.rpartition("&X-Goog-Signature=")  # the signature comes last
    params = dict(urllib.parse.parse_qsl(query))
    assert params["X-Goog-SignedHeaders"] == "host"
    canonical_request = "\n".join(["GET", parts.path, query, f"host:{parts.netloc}", "", "host", "UNSIGNED-PAYLOAD"])
    scope = params["X-Goog-Credential"].split("/", 1)[1]
    string_to_sign = "\n".join(["GOOG4-RSA-SHA256", params["X-Goog-Date"], scope,
                                hashlib.sha256(canonical_request.encode()).hexdigest()])
    public_key.verify(bytes.fromhex(signature), string_to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())


def test_gcs_presigned_url_with_real_gcs_is_a_v4_signature():
    """Without an emulator endpoint the URL is signed with the credentials' key (offline)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.cloud import storage
    from google.oauth2 import service_account

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    credentials = service_account.Credentials.from_service_account_info({
        "type": "service_account", "client_email": "dss@project.iam.gserviceaccount.com", "private_key": pem,
        "private_key_id": "1", "token_uri": "https://oauth2.googleapis.com/token", "project_id": "project"})
    store = GCSBlobStore(storage.Client(project="project", credentials=credentials))

    disposition = 'attachment; filename="a b.json"'
    url = store.presigned_url(BUCKET, "blobs/a b", 600, content_disposition=disposition)
    assert url.startswith("https://storage.googleapis.com/dss-main/blobs/a%20b?")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert (query["X-Goog-Algorithm"], query["X-Goog-Expires"]) == ("GOOG4-RSA-SHA256", "600")
    # GCS answers with the Content-Disposition the URL asks for, and the key's signature covers it:
    # a reader cannot change it without invalidating the URL.
    assert query["response-content-disposition"] == disposition
    assert_v4_signed(url, key.public_key())
    from cryptography.exceptions import InvalidSignature
    asked = "response-content-disposition=" + urllib.parse.quote(disposition, safe="")
    assert asked in url
    with pytest.raises(InvalidSignature):  # the check is real: another disposition breaks it
        assert_v4_signed(url.replace(asked, "response-content-disposition=inline"), key.public_key())


def test_s3_presigned_url_with_real_aws_is_virtual_hosted():
    """Without an endpoint the store addresses AWS itself (presigning needs no network)."""
    settings = Settings.from_config({"DSS_S3_ENDPOINT": "", "DSS_S3_ACCESS_KEY_ID": "AKIDEXAMPLE",
                                     "DSS_S3_SECRET_ACCESS_KEY": "secret"}, environ={})
    url = open_blobstore("aws", settings).presigned_url(BUCKET, "blobs/a b", 600, content_disposition="attachment")
    assert url.startswith("https://dss-main.s3.amazonaws.com/blobs/a%20b?")
    assert "X-Amz-Expires=600" in url and "response-content-disposition=attachment" in url


def test_streaming_256_mib_keeps_memory_bounded(real_store, prefix):
    """put_stream and iter_chunks of a 256 MiB object hold a few chunks, never the object."""
    store = real_store
    chunk, size = 16 * MiB, 256 * MiB
    key = prefix + "huge"
    process = psutil.Process()
    peak = baseline = process.memory_info().rss
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            eventlet.sleep(0.005)

    def produce(digest):
        for _ in range(size // chunk):
            data = os.urandom(chunk)
            digest.update(data)
            yield data

    sampler = eventlet.spawn(sample)
    try:
        sent, received = hashlib.sha256(), hashlib.sha256()
        store.put_stream(BUCKET, key, produce(sent), size, part_size=chunk)
        for data in store.iter_chunks(BUCKET, key, chunk):
            received.update(data)
            peak = max(peak, process.memory_info().rss)
    finally:
        done.set()
        sampler.wait()
        store.delete(BUCKET, key)

    assert received.digest() == sent.digest()
    assert peak - baseline < 3 * chunk, f"RSS grew by {(peak - baseline) / MiB:.0f} MiB"
