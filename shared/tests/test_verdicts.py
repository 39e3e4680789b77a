"""Verdicts on a stored blob copy from its metadata alone (shared.verdicts); the comparison of whole
keys in both replicas is tested through ops.replicas (ops/tests/test_replicas.py)."""
import pytest

from shared import verdicts
from shared.blobstore import BlobInfo
from shared.checksums import checksum_bytes

SUMS = checksum_bytes(b"some bytes")


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
