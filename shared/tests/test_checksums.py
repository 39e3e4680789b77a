import hashlib
import os

import google_crc32c
import pytest

from shared.checksums import ChecksumPass, Checksums, MiB, checksum_bytes, checksum_chunks, s3_part_size
from shared.exceptions import Unprocessable


def test_single_part_values_match_the_reference_algorithms():
    data = os.urandom(300_000)
    sums = checksum_bytes(data)
    assert sums.sha256 == hashlib.sha256(data).hexdigest()
    assert sums.sha1 == hashlib.sha1(data).hexdigest()
    assert sums.s3_etag == hashlib.md5(data).hexdigest()
    assert sums.crc32c == "%08x" % google_crc32c.value(data)


def test_multipart_etag_splits_on_64_mib_parts_whatever_the_chunking():
    size = 64 * MiB + 5
    block = os.urandom(MiB)
    data_chunks = [block] * 64 + [b"tail!"]
    expected = hashlib.md5(hashlib.md5(b"".join([block] * 64)).digest()
                           + hashlib.md5(b"tail!").digest()).hexdigest() + "-2"
    # odd chunk sizes crossing the part boundary
    joined = b"".join(data_chunks)
    odd = [joined[i:i + 3_000_001] for i in range(0, len(joined), 3_000_001)]
    sums, count = checksum_chunks(odd, size)
    assert count == size
    assert sums.s3_etag == expected
    assert sums.sha256 == hashlib.sha256(joined).hexdigest()


def test_part_size_grows_in_whole_mib_past_10000_parts():
    assert s3_part_size(1) == 64 * MiB
    assert s3_part_size(10000 * 64 * MiB) == 64 * MiB
    grown = s3_part_size(10000 * 64 * MiB + 1)
    assert grown % MiB == 0 and grown * 10000 >= 10000 * 64 * MiB + 1 and grown == 65 * MiB


def test_empty_object():
    sums = ChecksumPass(0).result()
    assert sums.sha256 == hashlib.sha256(b"").hexdigest() and sums.s3_etag == hashlib.md5(b"").hexdigest()


def test_declared_checksums_are_validated():
    good = checksum_bytes(b"x").as_api()
    assert Checksums.parse({k: v.upper() for k, v in good.items()}) == Checksums(**good)
    with pytest.raises(Unprocessable) as missing:
        Checksums.parse({k: v for k, v in good.items() if k != "crc32c"})
    assert missing.value.error_code == "missing_checksum" and "crc32c" in missing.value.title
    for name, bad in [("sha256", "z" * 64), ("crc32c", "123"), ("s3_etag", "a" * 32 + "-1"), ("sha1", "")]:
        with pytest.raises(Unprocessable) as invalid:
            Checksums.parse({**good, name: bad})
        assert invalid.value.error_code in ("invalid_checksum", "missing_checksum")
    assert Checksums.parse({**good, "s3_etag": "a" * 32 + "-2"}).s3_etag.endswith("-2")


def test_mismatches_and_stored_form_round_trip():
    a, b = checksum_bytes(b"a"), checksum_bytes(b"b")
    assert a.mismatches(b) == ["sha256", "sha1", "s3_etag", "crc32c"]
    assert Checksums.from_stored(a.as_stored()) == a
    assert a.blob_key() == f"blobs/{a.sha256}.{a.sha1}.{a.s3_etag}.{a.crc32c}"
