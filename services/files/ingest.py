"""Ingesting a staged object: the source inspected (its declared checksums read from its metadata
or tags), its bytes verified against them, and stored once under their content address in the
main bucket of the source's replica."""
from __future__ import annotations

import dataclasses
import logging

from shared.blobstore import BlobAlreadyExists, BlobInfo, BlobNotFound, BlobPreconditionFailed
from shared.checksums import CHECKSUM_NAMES, Checksums, ChecksumPass, checksum_bytes
from shared.storage import Replicas

from services.files.exceptions import checksum_mismatch, source_changed, source_not_found
from services.files.sources import IngestSources

logger = logging.getLogger(__name__)

# Clients tag staged objects with either prefix (dbio-cli: `dss-`, hca-cli: `hca-dss-`).
CHECKSUM_PREFIXES = ("dss-", "hca-dss-")
DEFAULT_CONTENT_TYPE = "application/octet-stream"


@dataclasses.dataclass(frozen=True)
class Source:
    """An object in a staging bucket, as inspected before it is ingested."""
    url: str
    replica: str
    bucket: str
    key: str
    info: BlobInfo
    declared: dict[str, str]
    # The whole object, when it fit in the read that inspected it (at most DSS_STREAM_CHUNK_BYTES).
    data: bytes | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def content_type(self) -> str:
        return self.info.content_type or DEFAULT_CONTENT_TYPE

    def checksums(self) -> Checksums:
        return Checksums.parse(self.declared)


def _declared_checksums(*sources: dict[str, str]) -> dict[str, str]:
    declared: dict[str, str] = {}
    for values in sources:
        for name, value in values.items():
            name = name.lower()
            for prefix in CHECKSUM_PREFIXES:
                if name.startswith(prefix) and name[len(prefix):] in CHECKSUM_NAMES:
                    declared.setdefault(name[len(prefix):], value)
    return declared


def _check(source: Source, declared: Checksums, actual: Checksums) -> None:
    wrong = declared.mismatches(actual)
    if wrong:
        raise checksum_mismatch(source.url, wrong)


def blob_metadata(checksums: Checksums) -> dict[str, str]:
    """The metadata of a stored blob, all set by the store: its four verified checksums, named as
    staged objects name them (`dss-sha256`, ...). Nothing of the staged object's own metadata is
    kept: it would travel with the bytes into the other replica and into checkout copies, whose
    metadata the store's services read (a far-future `dss-checked-out` would keep a copy for
    good). Never empty, as a copy given empty metadata keeps its source's on some stores (a GCS
    rewrite on fake-gcs-server)."""
    return {f"{CHECKSUM_PREFIXES[0]}{name}": value for name, value in checksums.as_api().items()}


class Ingester:
    """Reads staged objects and stores their verified bytes as blobs."""

    def __init__(self, replicas: Replicas, settings, sources: IngestSources):
        self.replicas = replicas
        self.settings = settings
        self.sources = sources

    # --- sources ---------------------------------------------------------------------------------
    def inspect_source(self, url: str) -> Source:
        """The staged object at ``url``; ``source_not_allowed`` (before any storage call) outside the
        allowed staging areas, ``source_not_found`` if it does not exist."""
        replica, bucket, key = self.sources.check(url)
        store = self.replicas[replica].store
        try:
            # A small object comes whole with its properties (one request on S3): the bytes that
            # are verified and stored are those of the revision inspected.
            info, data = store.read_small(bucket, key, self.settings.stream_chunk_bytes)
            declared = _declared_checksums(info.metadata)
            if len(declared) < len(CHECKSUM_NAMES):
                declared = _declared_checksums(info.metadata, store.get_tags(bucket, key))
        except BlobNotFound:
            raise source_not_found(url) from None
        return Source(url, replica, bucket, key, info, declared, data)

    def checksum_source(self, source: Source, on_chunk=lambda count: None) -> Checksums:
        """Read the source once and compute its four checksums (bounded memory)."""
        store = self.replicas[source.replica].store
        checksum_pass = ChecksumPass(source.size)
        try:
            for chunk in store.iter_chunks(source.bucket, source.key, self.settings.stream_chunk_bytes,
                                           revision=source.info.revision):
                checksum_pass.update(chunk)
                on_chunk(len(chunk))
        except BlobNotFound:
            raise source_not_found(source.url, "disappeared while being read") from None
        except BlobPreconditionFailed:
            raise source_changed(f"source object {source.url} changed while being read") from None
        return checksum_pass.result()

    def verify_source(self, source: Source, declared: Checksums, on_chunk=lambda count: None) -> None:
        _check(source, declared, self.checksum_source(source, on_chunk))

    # --- blobs -----------------------------------------------------------------------------------
    def ingest_blob(self, source: Source, checksums: Checksums, on_chunk=lambda count: None) -> bool:
        """Verify the source's bytes against ``checksums`` and store them under their content
        address; False if those bytes were already stored.

        An object of one chunk is written from the very bytes that were verified (one read, one
        write, no window for the source to change); larger ones are streamed through the
        checksummer and then copied server-side, conditional on the verified revision.
        """
        if source.size > self.settings.stream_chunk_bytes:
            self.verify_source(source, checksums, on_chunk)
            return self._copy_blob(source, checksums)
        replica = self.replicas[source.replica]
        data = source.data if source.data is not None else self._read_whole(source)
        on_chunk(len(data))
        _check(source, checksums, checksum_bytes(data))
        try:
            replica.store.put_bytes(replica.bucket, checksums.blob_key(), data, content_type=source.content_type,
                                    metadata=blob_metadata(checksums), if_absent=True)
        except BlobAlreadyExists:
            return False
        return True

    def _read_whole(self, source: Source) -> bytes:
        store = self.replicas[source.replica].store
        try:
            return b"".join(store.iter_chunks(source.bucket, source.key, self.settings.stream_chunk_bytes,
                                              revision=source.info.revision))
        except BlobNotFound:
            raise source_not_found(source.url, "disappeared while being read") from None
        except BlobPreconditionFailed:
            raise source_changed(f"source object {source.url} changed while being read") from None

    def _copy_blob(self, source: Source, checksums: Checksums) -> bool:
        replica = self.replicas[source.replica]
        blob_key = checksums.blob_key()
        try:
            if replica.store.stat(replica.bucket, blob_key).size == source.size:
                return False
        except BlobNotFound:
            pass
        try:
            # Conditional on the revision that was verified, so a source overwritten in between
            # can never land under the checksums of the old bytes.
            replica.store.copy(source.bucket, source.key, replica.bucket, blob_key,
                               if_source_revision=source.info.revision, content_type=source.content_type,
                               metadata=blob_metadata(checksums), part_size=self.settings.copy_part_bytes)
        except BlobPreconditionFailed:
            raise source_changed(f"source object {source.url} changed while being copied") from None
        except BlobNotFound:
            raise source_not_found(source.url, "disappeared while being copied") from None
        return True
