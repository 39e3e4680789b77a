"""What a file read checks out: the blob of a file version (key, checksums, size, content type),
and which file version a key of the main bucket names.

A blob's checkout copy lives under the blob's own key in the replica's checkout bucket
(``blobs/{sha256}.{sha1}.{s3_etag}.{crc32c}``): content-addressed, so one copy serves every file
version with those bytes.
"""
from __future__ import annotations

import dataclasses
import re

from shared.checksums import Checksums
from shared.exceptions import Unprocessable
from shared.identifiers import is_uuid, is_version

_BLOB_KEY = re.compile(r"^blobs/([^./]+)\.([^./]+)\.([^./]+)\.([^./]+)$")


@dataclasses.dataclass(frozen=True)
class Blob:
    """A blob of the main bucket as its checkout needs it: key, checksums, size, content type."""
    key: str
    checksums: Checksums
    size: int
    content_type: str

    @classmethod
    def of_file(cls, metadata: dict) -> "Blob":
        """The blob of a file metadata document (``files/{uuid}.{version}``)."""
        checksums = Checksums.from_stored(metadata)
        return cls(checksums.blob_key(), checksums, int(metadata["size"]), metadata["content-type"])

    @classmethod
    def from_key(cls, key: str, size: int, content_type: str) -> "Blob":
        """The blob under ``key``; ``Unprocessable`` (``invalid_blob_key``) if it is no blob key."""
        match = _BLOB_KEY.match(key)
        if not match:
            raise Unprocessable(f"`{key[:200]}` is not a blob key", "invalid_blob_key")
        checksums = Checksums.parse(dict(zip(("sha256", "sha1", "s3_etag", "crc32c"), match.groups())))
        if checksums.blob_key() != key:  # upper-case hex, say: not the key the files service writes
            raise Unprocessable(f"`{key[:200]}` is not a blob key", "invalid_blob_key")
        return cls(key, checksums, size, content_type)


def file_version_of_key(key: str) -> tuple[str, str] | None:
    """(uuid, version) of a file metadata key ``files/{uuid}.{version}``; None for any other key."""
    if not key.startswith("files/"):
        return None
    uuid, _, version = key[len("files/"):].partition(".")
    return (uuid, version) if is_uuid(uuid) and is_version(version) else None
