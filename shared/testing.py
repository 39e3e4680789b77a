"""Helpers for the project's tests (the one place they live), in the spirit of nameko.testing."""
from __future__ import annotations

import os
import uuid as uuid_module

from shared.checksums import Checksums, checksum_bytes


def stage_object(store, bucket: str, data: bytes, *, key: str | None = None, prefix: str = "dss-",
                 as_tags: bool = False, content_type: str = "application/octet-stream",
                 declared: dict | None = None) -> tuple[str, Checksums]:
    """Upload ``data`` to a staging bucket the way the DSS clients do, with its four checksums
    as metadata (or S3 tags) named ``{prefix}{name}``. ``declared`` overrides what is declared.
    Returns (source_url, true checksums)."""
    key = key or f"staging/{uuid_module.uuid4()}/{os.urandom(3).hex()}.bin"
    checksums = checksum_bytes(data)
    labels = {f"{prefix}{name}": value for name, value in (declared or checksums.as_api()).items()}
    store.put_bytes(bucket, key, data, content_type=content_type, metadata=None if as_tags else labels)
    if as_tags:
        client = store.client
        client.put_object_tagging(Bucket=bucket, Key=key,
                                  Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in labels.items()]})
    return f"{store.scheme}://{bucket}/{key}", checksums


def stage_large_object(store, bucket: str, size: int, *, chunk: int = 8 * 1024 * 1024, seed: bytes = b"",
                       key: str | None = None) -> tuple[str, Checksums]:
    """Stream ``size`` pseudo-random bytes to a staging object without holding them in memory."""
    from shared.checksums import ChecksumPass
    key = key or f"staging/{uuid_module.uuid4()}/large.bin"
    block = (seed or os.urandom(16)) * (chunk // 16)

    def chunks():
        remaining = size
        while remaining:
            piece = block[: min(chunk, remaining)]
            remaining -= len(piece)
            yield piece

    checksum_pass = ChecksumPass(size)
    for piece in chunks():
        checksum_pass.update(piece)
    checksums = checksum_pass.result()
    metadata = {f"dss-{name}": value for name, value in checksums.as_api().items()}
    store.put_stream(bucket, key, chunks(), size, metadata=metadata)
    return f"{store.scheme}://{bucket}/{key}", checksums
