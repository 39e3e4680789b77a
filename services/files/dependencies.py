"""The files service's view of storage: staging sources, content-addressed blobs, file metadata."""
from __future__ import annotations

import dataclasses
import logging
import re
import urllib.parse

from shared.blobstore import BlobAlreadyExists, BlobInfo, BlobNotFound, BlobPreconditionFailed
from shared.checksums import CHECKSUM_NAMES, Checksums, ChecksumPass, checksum_bytes
from shared.exceptions import NotFound, Unprocessable
from shared.identifiers import Keys, Replica
from shared.schemas import FileMetadata
from shared.storage import ReplicaStorage, Replicas, StorageProvider

from services.files.exceptions import ChecksumMismatch, SourceNotFound, UnknownSourceScheme

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

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def content_type(self) -> str:
        return self.info.content_type or DEFAULT_CONTENT_TYPE

    def checksums(self) -> Checksums:
        return Checksums.parse(self.declared)


# What a bucket name may be in either cloud: S3's and GCS's rules together are narrower, and a name
# outside this cannot exist in either.
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


def parse_source_url(url: str) -> tuple[str, str, str]:
    """`s3://bucket/key` or `gs://bucket/key` -> (replica, bucket, key)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("s3", "gs"):
        raise UnknownSourceScheme(f"source_url must start with s3:// or gs://, not `{parsed.scheme or url}`")
    key = parsed.path.lstrip("/")
    if not parsed.netloc or not key:
        raise UnknownSourceScheme(f"source_url `{url}` must name a bucket and a key")
    if not _BUCKET_NAME.fullmatch(parsed.netloc):
        # No store has a bucket of that name (and the cloud clients refuse to ask for one).
        raise SourceNotFound(f"source object {url} does not exist")
    return Replica.from_scheme(parsed.scheme).value, parsed.netloc, key


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
        raise ChecksumMismatch(f"the bytes of {source.url} do not match the declared {', '.join(wrong)}")


def file_metadata_doc(version: str, creator_uid: int, content_type: str, size: int, checksums: Checksums) -> dict:
    return FileMetadata().dump({"creator_uid": creator_uid, "version": version, "content_type": content_type,
                                "size": size, **checksums.as_api()})


class FileStoreAPI:
    def __init__(self, replicas: Replicas, settings):
        self.replicas = replicas
        self.settings = settings

    def replica(self, name: str) -> ReplicaStorage:
        return self.replicas[name]

    # --- sources ---------------------------------------------------------------------------------
    def inspect_source(self, url: str) -> Source:
        replica, bucket, key = parse_source_url(url)
        store = self.replicas[replica].store
        try:
            info = store.stat(bucket, key)
            declared = _declared_checksums(info.metadata)
            if len(declared) < len(CHECKSUM_NAMES):
                declared = _declared_checksums(info.metadata, store.get_tags(bucket, key))
        except BlobNotFound:
            raise SourceNotFound(f"source object {url} does not exist") from None
        return Source(url, replica, bucket, key, info, declared)

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
            raise SourceNotFound(f"source object {source.url} disappeared while being read") from None
        except BlobPreconditionFailed:
            raise Unprocessable(f"source object {source.url} changed while being read", "source_changed") from None
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
        data = self._read_whole(source)
        on_chunk(len(data))
        _check(source, checksums, checksum_bytes(data))
        try:
            replica.store.put_bytes(replica.bucket, checksums.blob_key(), data, content_type=source.content_type,
                                    if_absent=True)
        except BlobAlreadyExists:
            return False
        return True

    def _read_whole(self, source: Source) -> bytes:
        store = self.replicas[source.replica].store
        try:
            return b"".join(store.iter_chunks(source.bucket, source.key, self.settings.stream_chunk_bytes,
                                              revision=source.info.revision))
        except BlobNotFound:
            raise SourceNotFound(f"source object {source.url} disappeared while being read") from None
        except BlobPreconditionFailed:
            raise Unprocessable(f"source object {source.url} changed while being read", "source_changed") from None

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
                               part_size=self.settings.copy_part_bytes)
        except BlobPreconditionFailed:
            raise Unprocessable(f"source object {source.url} changed while being copied", "source_changed") from None
        except BlobNotFound:
            raise SourceNotFound(f"source object {source.url} disappeared while being copied") from None
        return True

    # --- file metadata ---------------------------------------------------------------------------
    def find_file(self, replica: str, uuid: str, version: str) -> dict | None:
        return self.replicas[replica].find_json(Keys.file(uuid, version))

    def put_file(self, replica: str, uuid: str, doc: dict) -> dict | None:
        """Write `files/{uuid}.{version}` once; the document already there if there was one."""
        return self.replicas[replica].write_json_once(Keys.file(uuid, doc["version"]), doc)

    def get_file(self, replica: str, uuid: str, version: str | None = None) -> dict:
        storage = self.replicas[replica]
        if version is None:
            versions, _ = storage.versions(Keys.file_prefix(uuid))
            if not versions:
                raise NotFound(f"no file {uuid} in replica {replica}")
            version = versions[-1]
        doc = storage.find_json(Keys.file(uuid, version))
        if doc is None:
            raise NotFound(f"no file {uuid} version {version} in replica {replica}")
        return {**doc, "uuid": uuid}

    def blob_url(self, replica: str, doc: dict, directurl: bool = False,
                 content_disposition: str | None = None) -> str:
        storage = self.replicas[replica]
        key = Checksums.from_stored(doc).blob_key()
        if directurl:
            return storage.direct_url(key)
        return storage.presigned_url(key, content_disposition=content_disposition)

    def health(self) -> dict:
        return self.replicas.health()


class FileStore(StorageProvider):
    api_class = FileStoreAPI
