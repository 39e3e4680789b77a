"""File metadata documents (``files/{uuid}.{version}``): built from an ingested source, written
once, read back, and the URL of the blob one names."""
from __future__ import annotations

from shared.checksums import Checksums
from shared.exceptions import NotFound
from shared.identifiers import Keys
from shared.schemas import FileMetadata, schema_instance
from shared.storage import Replicas

# Fields that make two PUTs of one uuid+version the same file.
IDENTITY_FIELDS = ("creator_uid", "content-type", "size", "sha256", "sha1", "s3-etag", "crc32c")


def file_metadata_doc(version: str, creator_uid: int, content_type: str, size: int, checksums: Checksums) -> dict:
    return schema_instance(FileMetadata).dump({"creator_uid": creator_uid, "version": version,
                                               "content_type": content_type, "size": size, **checksums.as_api()})


def file_identity(doc: dict) -> dict:
    return {field: doc.get(field) for field in IDENTITY_FIELDS}


class FileDocuments:
    """The file metadata documents of both replicas."""

    def __init__(self, replicas: Replicas):
        self.replicas = replicas

    def find(self, replica: str, uuid: str, version: str) -> dict | None:
        return self.replicas[replica].find_json(Keys.file(uuid, version))

    def put(self, replica: str, uuid: str, doc: dict) -> dict | None:
        """Write `files/{uuid}.{version}` once; the document already there if there was one."""
        return self.replicas[replica].write_json_once(Keys.file(uuid, doc["version"]), doc)

    def get(self, replica: str, uuid: str, version: str | None = None) -> dict:
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
