"""Server-side copies of a blob within one replica's cloud (main bucket to a checkout or a user's
bucket), verified before they count.

The store copies the bytes itself (S3 CopyObject / UploadPartCopy, GCS rewrite; pinned to the
source's revision when it looked at the source first), so nothing passes through this process.
The copy is then judged from the metadata in the store's answer (no second request) against the
checksums its blob key names (``shared.verdicts.blob_verdict``: GCS CRC32C, S3 ETag). When that
cannot tell (an S3 ETag of another part layout), an S3 copy made in one request whose ETag is the
source's single-part ETag holds the source's bytes (both are the MD5 of the whole object), and the
source is the blob, verified when it was written; only otherwise is the copy read and hashed. A
copy that does not hold the right bytes is deleted and ``Unavailable`` (``copy_not_verified``:
503, worth retrying) raised: a wrong copy is never left where a reader would find it.
"""
from __future__ import annotations

import logging
from typing import Mapping

from shared.blobstore import BlobInfo, BlobStore
from shared.checksums import Checksums
from shared.exceptions import Unavailable
from shared.verdicts import blob_verdict, hash_object

logger = logging.getLogger(__name__)

HASH_CHUNK_BYTES = 8 * 1024 * 1024


def same_single_part_content(copy: BlobInfo, source: BlobInfo) -> bool:
    """Whether two S3 objects' ETags say they hold the same bytes: both the MD5 of the whole object
    (a multipart ETag, or an encrypted object's, says nothing of the content; GCS has no ETags here)."""
    return (copy.crc32c is None and copy.size == source.size and copy.revision == source.revision
            and "-" not in copy.revision)


def verify_copy(store: BlobStore, bucket: str, key: str, expected: Checksums, size: int,
                info: BlobInfo | None = None, source: tuple[str, str] | None = None) -> bool:
    """Whether ``bucket/key`` holds the ``size`` bytes ``expected`` names: by its metadata, else by
    the single-part ETag of ``source`` (bucket, key of the blob it was copied from), else by a read."""
    info = info or store.stat(bucket, key)
    if info.size != size:
        return False
    verdict = blob_verdict(info, expected)
    if verdict is None and source is not None and same_single_part_content(info, store.stat(*source)):
        verdict = True
    if verdict is None:
        actual, _ = hash_object(store, bucket, key, HASH_CHUNK_BYTES)
        verdict = actual == expected
    return verdict


def copy_verified(store: BlobStore, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str,
                  expected: Checksums, size: int, *, content_type: str, metadata: Mapping[str, str],
                  part_size: int | None = None) -> BlobInfo:
    """Copy ``src_key`` to ``dst_bucket/dst_key`` in ``store`` and verify the copy; its BlobInfo.
    ``content_type`` and ``metadata`` are the copy's, whatever the source carries: a copy never
    inherits its source's user metadata (which may have come from whoever staged the bytes).
    ``part_size``: S3 copies larger than this go in parts (``DSS_COPY_PART_BYTES``; the store's
    default when None)."""
    parts = {} if part_size is None else {"part_size": part_size}
    # A blob never changes and ``size`` is its size: given the copy's properties too, the store
    # need not look at the source first. The copy is judged from the store's answer.
    info = store.copy(src_bucket, src_key, dst_bucket, dst_key, content_type=content_type, metadata=metadata,
                      source_size=size, **parts)
    if blob_verdict(info, expected) is None:  # e.g. an S3 multipart copy: a stat may give its CRC32C
        info = store.stat(dst_bucket, dst_key)
    if not verify_copy(store, dst_bucket, dst_key, expected, size, info, source=(src_bucket, src_key)):
        store.delete(dst_bucket, dst_key)
        logger.error("the copy of %s/%s at %s/%s does not hold the bytes its checksums name; removed",
                     src_bucket, src_key, dst_bucket, dst_key)
        raise Unavailable("a copy did not hold the bytes it should and was removed; retry later",
                          "copy_not_verified")
    return info
