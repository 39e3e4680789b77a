"""The keys of a main bucket and what each holds (docs/architecture.md, "Storage layout"): a key's
kind, uuid, version and, for a blob, the four checksums it names; and the JSON documents under
them, valid or not as their kind. The replicator, indexer, bundles and checkout services and
`dss-ops replicas` judge keys by this one model.
"""
from __future__ import annotations

import dataclasses
import json

from marshmallow import INCLUDE, ValidationError

from shared.checksums import Checksums
from shared.exceptions import InvalidParameter, Unprocessable
from shared.identifiers import TOMBSTONE_SUFFIX, split_fqid
from shared.schemas import BundleManifest, CollectionDocument, FileMetadata, Tombstone, schema_instance

BLOB, FILE, BUNDLE, COLLECTION, TOMBSTONE = "blob", "file", "bundle", "collection", "tombstone"
# Every DSS key lives under one of these, in listing order. Anything else in a main bucket (the
# temporary parts of a GCS composite upload) is not replicated.
PREFIXES = ("blobs/", "bundles/", "collections/", "files/")
_KIND_OF_PREFIX = {"blobs/": BLOB, "bundles/": BUNDLE, "collections/": COLLECTION, "files/": FILE}

# --- keys ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ReplicaKey:
    """A key of the main bucket and what it holds."""
    key: str
    kind: str  # BLOB, FILE, BUNDLE, COLLECTION or TOMBSTONE
    uuid: str | None = None
    version: str | None = None
    checksums: Checksums | None = None  # blobs: the checksums the key names

    @property
    def is_document(self) -> bool:
        return self.kind != BLOB


def parse_key(key: str) -> ReplicaKey | None:
    """What ``key`` holds; None outside the DSS layout. A malformed key under a DSS prefix is a
    400 ``illegal_key`` (it cannot be judged, so it cannot be replicated safely)."""
    prefix = next((p for p in PREFIXES if key.startswith(p)), None)
    if prefix is None:
        return None
    kind, name = _KIND_OF_PREFIX[prefix], key[len(prefix):]
    try:
        if kind == BLOB:
            sha256, sha1, s3_etag, crc32c = name.split(".")
            checksums = Checksums.parse({"sha256": sha256, "sha1": sha1, "s3_etag": s3_etag, "crc32c": crc32c})
            if checksums.blob_key() != key:  # upper case, stray whitespace
                raise ValueError(key)
            return ReplicaKey(key, BLOB, checksums=checksums)
        if kind in (BUNDLE, COLLECTION) and name.endswith("." + TOMBSTONE_SUFFIX):
            uuid, version = split_fqid(name[: -len(TOMBSTONE_SUFFIX) - 1])
            if kind == COLLECTION and version is not None:
                raise ValueError(key)  # collections have only the tombstone of every version
            return ReplicaKey(key, TOMBSTONE, uuid, version)
        uuid, version = split_fqid(name)
        if version is None or f"{prefix}{uuid}.{version}" != key:
            raise ValueError(key)
        return ReplicaKey(key, kind, uuid, version)
    except (ValueError, InvalidParameter, Unprocessable):
        raise InvalidParameter(f"`{key}` is not a key of the DSS storage layout", "illegal_key") from None


# --- documents -------------------------------------------------------------------------------------

_SCHEMAS = {FILE: FileMetadata, BUNDLE: BundleManifest, COLLECTION: CollectionDocument, TOMBSTONE: Tombstone}


def load_document(target: ReplicaKey, data: bytes) -> dict:
    """The JSON document at ``target`` if it is a valid one of its kind, else 422 ``invalid_document``.
    Unknown fields are allowed, so that a newer writer's documents still replicate."""
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        schema_instance(_SCHEMAS[target.kind]).load(doc, unknown=INCLUDE)
    except (ValueError, ValidationError) as error:  # json.JSONDecodeError is a ValueError
        raise Unprocessable(f"{target.key} is not a valid {target.kind} document: {error}",
                            "invalid_document") from None
    return doc


def is_valid_document(target: ReplicaKey, data: bytes) -> bool:
    try:
        load_document(target, data)
    except Unprocessable:
        return False
    return True
