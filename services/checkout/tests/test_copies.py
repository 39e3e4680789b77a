"""``copies``: server-side copies into a checkout bucket (or a bundle checkout's destination) are
judged against the blob's checksums, and one that does not hold the right bytes is removed; over the
in-memory store."""
import pytest

from shared.checksums import ChecksumPass
from shared.exceptions import Unavailable
from devtools.fakes import MemoryBlobStore

from services.checkout.copies import copy_verified, verify_copy


PROPS = {"content_type": "application/octet-stream", "metadata": {"dss-checked-out": "2027-01-15T08:00:00Z"}}


def checksums_of(data):
    checksum_pass = ChecksumPass(len(data))
    checksum_pass.update(data)
    return checksum_pass.result()


@pytest.fixture
def store():
    store = MemoryBlobStore("aws")
    store.create_bucket("main")
    store.create_bucket("checkout")
    return store


def test_a_copy_that_holds_the_bytes_is_kept(store):
    data = b"verified bytes" * 100
    expected = checksums_of(data)
    store.put_bytes("main", expected.blob_key(), data)
    info = copy_verified(store, "main", expected.blob_key(), "checkout", "copy", expected, len(data),
                         content_type="text/plain", metadata={"dss-copied": "yes"})
    assert info.size == len(data) and store.get_bytes("checkout", "copy") == data
    assert store.stat("checkout", "copy").metadata == {"dss-copied": "yes"}


def test_a_copy_never_inherits_its_sources_metadata(store):
    data = b"staged by someone"
    expected = checksums_of(data)
    store.put_bytes("main", expected.blob_key(), data, content_type="text/html",
                    metadata={"dss-checked-out": "2999-01-01T00:00:00Z", "owner": "mallory"})
    with pytest.raises(TypeError):  # the copy's properties are always the caller's to give
        copy_verified(store, "main", expected.blob_key(), "checkout", "copy", expected, len(data))
    copy_verified(store, "main", expected.blob_key(), "checkout", "copy", expected, len(data),
                  content_type="text/plain", metadata={"dss-copied": "yes"})
    info = store.stat("checkout", "copy")
    assert (info.content_type, info.metadata) == ("text/plain", {"dss-copied": "yes"})


def test_a_copy_of_other_bytes_is_removed_and_retryable(store):
    data, other = b"the right bytes", b"the wrong bytes"
    expected = checksums_of(data)
    store.put_bytes("main", expected.blob_key(), other)  # a source that does not match its key
    with pytest.raises(Unavailable) as raised:
        copy_verified(store, "main", expected.blob_key(), "checkout", "copy", expected, len(data), **PROPS)
    assert raised.value.error_code == "copy_not_verified"
    assert not store.exists("checkout", "copy")


def test_verify_reads_when_the_metadata_cannot_tell(store):
    data = b"x" * 1000
    expected = checksums_of(data)
    multipart = type(expected)(**{**expected.as_api(), "s3_etag": expected.s3_etag + "-2"})
    store.put_bytes("checkout", "copy", data)
    # The stored ETag (single-part MD5) says nothing about a "-2" layout: the bytes are hashed.
    assert verify_copy(store, "checkout", "copy", multipart, len(data)) is False  # s3_etag differs after hashing
    assert verify_copy(store, "checkout", "copy", expected, len(data)) is True
    assert verify_copy(store, "checkout", "copy", expected, len(data) + 1) is False


def test_the_part_size_of_a_copy_is_the_callers(store):
    data = b"parted" * 1000
    expected = checksums_of(data)
    store.put_bytes("main", expected.blob_key(), data)
    seen = []
    copy = store.copy
    store.copy = lambda *args, **kwargs: seen.append(kwargs.get("part_size")) or copy(*args, **kwargs)
    copy_verified(store, "main", expected.blob_key(), "checkout", "a", expected, len(data), **PROPS)
    copy_verified(store, "main", expected.blob_key(), "checkout", "b", expected, len(data), part_size=512,
                  **PROPS)
    assert seen == [None, 512]


def test_a_single_part_copy_with_the_sources_etag_is_not_read(store):
    data = b"y" * 3000
    # The blob's s3_etag of another part layout than the copy's: the metadata cannot tell.
    expected = type(checksums_of(data))(**{**checksums_of(data).as_api(), "s3_etag": "0" * 32 + "-2"})
    store.put_bytes("main", expected.blob_key(), data)
    copy_verified(store, "main", expected.blob_key(), "checkout", "copy", expected, len(data), **PROPS)
    assert store.calls["iter_chunks"] == 0 and store.get_bytes("checkout", "copy") == data
    assert verify_copy(store, "checkout", "copy", expected, len(data), source=("main", expected.blob_key()))
    assert store.calls["iter_chunks"] == 0


def test_a_copy_whose_etag_is_not_the_sources_is_read_and_removed_when_wrong(store):
    data = b"z" * 3000
    expected = type(checksums_of(data))(**{**checksums_of(data).as_api(), "s3_etag": "0" * 32 + "-2"})
    store.put_bytes("main", expected.blob_key(), data)
    copy = store.copy

    def damaging_copy(*args, **kwargs):  # the store wrote other bytes than the source's
        copy(*args, **kwargs)
        store.put_bytes("checkout", "copy", b"Z" + data[1:])
        return store.stat("checkout", "copy")
    store.copy = damaging_copy
    with pytest.raises(Unavailable):
        copy_verified(store, "main", expected.blob_key(), "checkout", "copy", expected, len(data), **PROPS)
    assert store.calls["iter_chunks"] == 1 and not store.exists("checkout", "copy")


def test_a_copy_judged_from_the_stores_answer_costs_no_other_request(store):
    data = b"answered" * 100
    expected = checksums_of(data)
    store.put_bytes("main", expected.blob_key(), data)
    store.calls.clear()
    copy_verified(store, "main", expected.blob_key(), "checkout", "copy", expected, len(data),
                  content_type="text/plain", metadata={})
    assert dict(store.calls) == {"copy": 1}


def test_an_answer_that_cannot_tell_is_followed_by_a_stat_that_can(store):
    data = b"multipart" * 100
    sums = checksums_of(data)
    expected = type(sums)(**{**sums.as_api(), "s3_etag": "0" * 32 + "-2"})  # another part layout
    store.put_bytes("main", expected.blob_key(), data)
    stat = store.stat

    def stat_with_crc32c(bucket, key):  # as S3 reports a full-object CRC32C only when asked
        info = stat(bucket, key)
        return info if bucket != "checkout" else type(info)(**{**info.__dict__, "crc32c": sums.crc32c})
    store.stat = stat_with_crc32c
    store.calls.clear()
    copy_verified(store, "main", expected.blob_key(), "checkout", "copy", expected, len(data), **PROPS)
    assert dict(store.calls) == {"copy": 1, "stat": 1}  # the copy's stat; no read, no look at the source
