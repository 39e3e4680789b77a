"""The one blob-store interface that every replica's storage implements.

Implementations: ``S3BlobStore`` (boto3; S3 or an S3 emulator) and ``GCSBlobStore``
(google-cloud-storage; GCS or fake-gcs-server). Both are checked by the conformance suite in
``tests/conformance/test_blobstore.py``, and so is the unit tests' in-memory store. All transfers stream: memory stays bounded by the part
size whatever the object size.
"""
from __future__ import annotations

import abc
import dataclasses
import datetime
from typing import Callable, Iterable, Iterator, Mapping

from nameko.exceptions import deserialize_to_instance

from shared.exceptions import Unavailable


class BlobStoreError(Exception):
    """A storage call failed for a reason other than those below."""


class BlobNotFound(BlobStoreError):
    """The bucket or key does not exist."""


class BlobAlreadyExists(BlobStoreError):
    """A write with ``if_absent=True`` found the key already present."""


class BlobPreconditionFailed(BlobStoreError):
    """A conditional read or copy found the object changed since it was inspected."""


@deserialize_to_instance
class BlobStoreUnavailable(Unavailable, BlobStoreError):
    """The storage endpoint could not be reached (connection refused, timeout, 5xx).

    A ``shared.exceptions.Unavailable``, so it reaches clients as a 503 with Retry-After."""

    code = "storage_unavailable"


@dataclasses.dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    content_type: str | None
    # User metadata (S3 `x-amz-meta-*`, GCS object metadata), keys lower-cased.
    metadata: Mapping[str, str]
    # Identifies this exact content for conditional operations: the S3 ETag or the GCS generation.
    revision: str
    # CRC32C as 8 lower-case hex digits when the store keeps it (GCS), else None.
    crc32c: str | None
    last_modified: datetime.datetime | None


class BlobStore(abc.ABC):
    """A bucket-and-key object store of one replica."""

    replica: str  # "aws" or "gcp"
    scheme: str   # "s3" or "gs"

    # --- reading -----------------------------------------------------------------------------
    @abc.abstractmethod
    def stat(self, bucket: str, key: str) -> BlobInfo:
        """Size, content type, metadata and revision; raises BlobNotFound."""

    @abc.abstractmethod
    def get_tags(self, bucket: str, key: str) -> dict[str, str]:
        """Object tags (S3 tagging). Stores without tags return {}. Raises BlobNotFound."""

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.stat(bucket, key)
        except BlobNotFound:
            return False
        return True

    @abc.abstractmethod
    def get_bytes(self, bucket: str, key: str) -> bytes:
        """The whole object; for small objects (metadata JSON). Raises BlobNotFound."""

    def read_small(self, bucket: str, key: str, limit: int) -> tuple[BlobInfo, bytes | None]:
        """The object's BlobInfo and, when it has at most ``limit`` bytes, its content (of that
        revision); None for the content of a larger one. Stores that can answer both at once (S3:
        one ranged GET) do so. Raises BlobNotFound."""
        info = self.stat(bucket, key)
        if info.size > limit:
            return info, None
        return info, b"".join(self.iter_chunks(bucket, key, max(1, limit), revision=info.revision))

    @abc.abstractmethod
    def iter_chunks(self, bucket: str, key: str, chunk_size: int, revision: str | None = None) -> Iterator[bytes]:
        """Stream the object in chunks of at most ``chunk_size`` bytes, all of one revision.

        With ``revision``, fail with BlobPreconditionFailed if the object is no longer that revision.
        Raises BlobNotFound / BlobPreconditionFailed at once (not on the first chunk). An object
        replaced mid-stream either fails (BlobPreconditionFailed) or is delivered whole as the
        revision the read began with; two contents are never mixed.
        """

    @abc.abstractmethod
    def list_keys(self, bucket: str, prefix: str = "", start_after: str | None = None) -> Iterator[str]:
        """Keys under ``prefix`` in lexicographic order, strictly after ``start_after`` if given."""

    # --- writing -----------------------------------------------------------------------------
    @abc.abstractmethod
    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream",
                  metadata: Mapping[str, str] | None = None, if_absent: bool = False) -> BlobInfo | None:
        """Write a small object. With ``if_absent``, raise BlobAlreadyExists rather than overwrite.
        Returns the written object as the store's answer describes it (revision, and the CRC32C
        where the store keeps one), so that it can be judged without a stat; None when the answer
        does not tell."""

    @abc.abstractmethod
    def put_stream(self, bucket: str, key: str, chunks: Iterable[bytes], size: int,
                   content_type: str = "application/octet-stream",
                   metadata: Mapping[str, str] | None = None, part_size: int = 64 * 1024 * 1024, *,
                   concurrency: int = 1, before_commit: Callable[[], None] | None = None) -> BlobInfo | None:
        """Write ``size`` bytes from an iterable of chunks (multipart / resumable above ``part_size``);
        the written object as ``put_bytes`` returns it, or None.

        ``concurrency`` > 1 uploads that many parts in parallel (S3 multipart parts; GCS parts
        composed into the object), holding up to ``concurrency + 1`` parts in memory.
        ``before_commit`` is called once every byte has been taken from ``chunks`` and before the
        object can become visible; if it raises, nothing is written (the error propagates).
        """

    @abc.abstractmethod
    def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str, *,
             if_source_revision: str | None = None, content_type: str | None = None,
             metadata: Mapping[str, str] | None = None, part_size: int = 64 * 1024 * 1024,
             source_size: int | None = None) -> BlobInfo:
        """Server-side copy within this store (multipart / rewrite for large objects); the copy as
        the store's answer describes it (size, revision, CRC32C where the store keeps one, content
        type and metadata), so that it can be judged without another request.

        ``if_source_revision``: copy only if the source is still that revision (BlobPreconditionFailed
        otherwise). ``content_type``/``metadata`` replace the source's when given. ``source_size``:
        the source's size, known to a caller copying an object that never changes (a blob); with
        ``content_type`` and ``metadata`` given too, the source need not be looked at first.
        """

    @abc.abstractmethod
    def delete(self, bucket: str, key: str) -> None:
        """Remove the key; removing an absent key is not an error."""

    # --- addressing --------------------------------------------------------------------------
    @abc.abstractmethod
    def presigned_url(self, bucket: str, key: str, expires_in: int,
                      content_disposition: str | None = None) -> str:
        """An https URL anyone can GET the bytes from until it expires."""

    def direct_url(self, bucket: str, key: str) -> str:
        return f"{self.scheme}://{bucket}/{key}"

    # --- buckets (used by `make up`, the tests and health checks) ------------------------------
    @abc.abstractmethod
    def bucket_exists(self, bucket: str) -> bool:
        """True if the bucket exists; raises BlobStoreUnavailable if the store cannot be reached."""

    @abc.abstractmethod
    def create_bucket(self, bucket: str) -> None:
        """Create the bucket if it does not exist (idempotent)."""


class ChunkReader:
    """A read-only stream over an iterable of chunks that must add up to exactly ``size`` bytes.

    Uploads read it a part at a time, so it holds no more than one part plus one incoming chunk.
    A chunk that is exactly the size asked for is handed on without a copy. Too few or too many
    bytes raise BlobStoreError before the last part is sent, so a bad stream never completes an
    object.
    """

    def __init__(self, chunks: Iterable[bytes], size: int, before_last: Callable[[], None] | None = None):
        self._chunks = iter(chunks)
        self._size = size
        self._position = 0
        self._pending = memoryview(b"")
        # Called when the last byte has been read, before it is handed to the upload that would
        # commit the object: raising there keeps the object from ever becoming visible.
        self._before_last = before_last

    def tell(self) -> int:
        return self._position

    def read(self, n: int = -1) -> bytes:
        remaining = self._size - self._position
        n = remaining if n is None or n < 0 else min(n, remaining)
        pieces: list[memoryview] = []
        end = self._position + n
        while self._position < end:
            if not self._pending:
                self._pending = memoryview(self._next_chunk())
            piece, self._pending = self._pending[:end - self._position], self._pending[end - self._position:]
            if not self._pending:
                self._pending = memoryview(b"")  # an empty slice would still keep the whole chunk alive
            pieces.append(piece)
            self._position += len(piece)
        if self._position == self._size:
            self.finish()
        if len(pieces) == 1 and isinstance(pieces[0].obj, bytes) and len(pieces[0].obj) == n:
            return pieces[0].obj
        return b"".join(pieces)

    def _next_chunk(self) -> bytes:
        for chunk in self._chunks:
            if chunk:
                return chunk
        raise BlobStoreError(f"the stream ended after {self._position} of {self._size} bytes")

    def finish(self) -> None:
        """Check that the stream held exactly the bytes announced, then run ``before_last`` (once)."""
        if self._position != self._size:
            raise BlobStoreError(f"only {self._position} of the {self._size} bytes were sent")
        if self._pending or any(len(chunk) for chunk in self._chunks):
            raise BlobStoreError(f"the stream has more than the {self._size} bytes announced")
        callback, self._before_last = self._before_last, None
        if callback is not None:
            callback()
