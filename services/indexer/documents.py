"""Bundle versions as the indexer reads them from a replica's main bucket, and the documents built
from them (the shapes are ``shared.bundle_documents``'s).

The handlers, ``get_event`` and the reindex job all build documents here, so a document indexed
from an event, one rebuilt by a reindex and one GET /events/{uuid} returns never differ.

A version is hidden by its own tombstone (``bundles/{uuid}.{version}.dead``) or by the tombstone of
every version (``bundles/{uuid}.dead``); when both exist its own one is what it shows, whichever
was written first, so a replay or a reindex always lands on the same document.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from typing import Iterator

from shared.concurrency import green_map
from eventlet import tpool
from marshmallow import EXCLUDE, ValidationError
from prometheus_client import Counter

from shared.blobstore import BlobNotFound
from shared.bundle_documents import CREATE, TOMBSTONE, event_document, index_document, index_key, \
    is_json_content_type
from shared.exceptions import Unavailable, Unprocessable
from shared.identifiers import Keys, fqid, is_uuid, is_version
from shared.schemas import Tombstone
from shared.storage import ReplicaStorage, Replicas, split_versions

logger = logging.getLogger(__name__)

# Concurrent blob reads of one bundle: bundles list thousands of files, each one GET.
FILE_READ_CONCURRENCY = 16
ALL_VERSIONS = "*"  # what split_versions reports for the tombstone of every version
# Parsing a few MiB of JSON takes tens of milliseconds: larger files are parsed on a native thread,
# so the green threads (other bundles, searches) go on meanwhile.
PARSE_OFF_THREAD_BYTES = 1024 * 1024

SKIPPED_FILES = Counter("dss_index_files_skipped_total",
                        "Files marked indexed that were left out of a bundle's search document.",
                        ["replica", "reason"])

_TOMBSTONE = Tombstone(unknown=EXCLUDE)


class Skipped:
    """A file left out of a document, and why (a ``dss_index_files_skipped_total`` reason)."""

    def __init__(self, reason: str):
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class BundleVersion:
    uuid: str
    version: str
    manifest: dict | None   # None: this replica holds no manifest of the version (yet)
    tombstone: dict | None  # the tombstone fields that hide it; None while it is live

    @property
    def fqid(self) -> str:
        return fqid(self.uuid, self.version)


@dataclasses.dataclass(frozen=True)
class ListedVersion:
    """A version met while walking a bucket, with the tombstones of its uuid (``*``: every version)."""
    uuid: str
    version: str
    dead: frozenset

    @property
    def fqid(self) -> str:
        return fqid(self.uuid, self.version)

    @property
    def tombstone_key(self) -> str | None:
        if self.version in self.dead:
            return Keys.bundle_tombstone(self.uuid, self.version)
        if ALL_VERSIONS in self.dead:
            return Keys.bundle_tombstone(self.uuid)
        return None


def not_readable(what: str, replica: str) -> Unavailable:
    """What an event names is not (yet) in the replica: worth another attempt later (replication
    may still be on its way), then a dead letter for an operator."""
    return Unavailable(f"{what} is not readable in replica {replica}", "bundle_not_readable")


class BundleSourceAPI:
    """Reads bundle versions from the replicas and builds their documents."""

    def __init__(self, replicas: Replicas, settings):
        self.replicas = replicas
        self.max_file_bytes = settings.index_max_file_bytes

    def health(self) -> dict:
        return self.replicas.health()

    # --- versions ------------------------------------------------------------------------------------
    def version(self, replica: str, uuid: str, version: str) -> BundleVersion:
        """The manifest of ``{uuid}.{version}`` (None if absent) and the tombstone hiding it (if any)."""
        storage = self.replicas[replica]
        versions, dead = storage.versions(Keys.bundle_prefix(uuid))
        manifest = storage.find_json(Keys.bundle(uuid, version)) if version in versions else None
        listed = ListedVersion(uuid, version, frozenset(dead))
        tombstone = self._tombstone(storage, listed.tombstone_key) if listed.tombstone_key else None
        return BundleVersion(uuid, version, manifest, tombstone)

    def tombstoned(self, replica: str, uuid: str, version: str | None) -> list[BundleVersion]:
        """The versions a tombstone hides: ``version`` (its own tombstone), or, for None (the
        tombstone of every version), every version stored. Raises ``bundle_not_readable`` when
        that tombstone is not in the replica."""
        storage = self.replicas[replica]
        versions, dead = storage.versions(Keys.bundle_prefix(uuid))
        if (version or ALL_VERSIONS) not in dead:
            raise not_readable(Keys.bundle_tombstone(uuid, version), replica)
        targets = [version] if version is not None else [v for v in versions if is_version(v)]
        tombstones: dict[str, dict] = {}

        def read(target: str) -> BundleVersion:
            key = ListedVersion(uuid, target, frozenset(dead)).tombstone_key
            if key not in tombstones:
                tombstones[key] = self._tombstone(storage, key)
            manifest = storage.find_json(Keys.bundle(uuid, target)) if target in versions else None
            return BundleVersion(uuid, target, manifest, tombstones[key])

        return [read(target) for target in targets]

    def walk(self, replica: str) -> Iterator[ListedVersion]:
        """Every version with a manifest in the replica, in key order (one listing of ``bundles/``)."""
        root = Keys.bundle_prefix()
        keys = self.replicas[replica].list_keys(root)
        for uuid, group in itertools.groupby(keys, key=lambda key: key[len(root):].partition(".")[0]):
            versions, dead = split_versions(key[len(root) + len(uuid) + 1:] for key in group)
            if not is_uuid(uuid) or uuid != uuid.lower():
                logger.warning("ignoring %s%s.*: not a bundle uuid", root, uuid)
                continue
            for version in versions:
                if is_version(version):
                    yield ListedVersion(uuid, version, frozenset(dead))

    def count(self, replica: str) -> int:
        return sum(1 for _ in self.walk(replica))

    # --- documents -------------------------------------------------------------------------------------
    def index_document(self, replica: str, bundle: BundleVersion) -> dict:
        """What the index holds for the version: its tombstone fields, or ``{uuid, manifest, files}``."""
        if bundle.tombstone is not None:
            return bundle.tombstone
        if bundle.manifest is None:
            raise not_readable(Keys.bundle(bundle.uuid, bundle.version), replica)
        return index_document(bundle.uuid, bundle.manifest, self.indexed_files(replica, bundle.manifest))

    def listed_document(self, replica: str, listed: ListedVersion) -> dict:
        """``index_document`` of a version met by ``walk`` (the reindex): no second listing."""
        storage = self.replicas[replica]
        if listed.tombstone_key is not None:
            return self._tombstone(storage, listed.tombstone_key)
        manifest = storage.find_json(Keys.bundle(listed.uuid, listed.version))
        if manifest is None:
            raise not_readable(Keys.bundle(listed.uuid, listed.version), replica)
        return index_document(listed.uuid, manifest, self.indexed_files(replica, manifest))

    def event_document(self, replica: str, bundle: BundleVersion) -> dict:
        """The bundle event document of the version as the bucket has it: TOMBSTONE if hidden,
        else CREATE, with the manifest and the indexed files (empty if the manifest is absent)."""
        files = self.indexed_files(replica, bundle.manifest) if bundle.manifest is not None else {}
        event_type = TOMBSTONE if bundle.tombstone is not None else CREATE
        return event_document(event_type, bundle.uuid, bundle.version, bundle.manifest, files)

    def indexed_files(self, replica: str, manifest: dict) -> dict[str, list]:
        """The parsed JSON of every file marked ``indexed`` with a JSON content type, grouped by
        ``index_key`` (a list per key, in manifest order). Files that are too large, unparseable
        or not a JSON object or array are left out, with a warning and a count."""
        storage = self.replicas[replica]
        entries = [entry for entry in manifest.get("files", ())
                   if entry.get("indexed") is True and is_json_content_type(entry.get("content-type"))]
        contents = green_map(lambda entry: self._file_json(storage, entry), entries, FILE_READ_CONCURRENCY)
        files: dict[str, list] = {}
        for entry, content in zip(entries, contents):
            if isinstance(content, Skipped):
                SKIPPED_FILES.labels(replica, content.reason).inc()
                logger.warning("not indexing %s (file %s.%s) of a bundle in %s: %s", entry["name"], entry["uuid"],
                               entry["version"], replica, content.reason.replace("_", " "))
                continue
            files.setdefault(index_key(entry["name"]), []).append(content)
        return files

    def _file_json(self, storage: ReplicaStorage, entry: dict):
        size = entry.get("size")
        if not isinstance(size, int) or size > self.max_file_bytes:
            return Skipped("too_large")
        key = Keys.blob(entry["sha256"], entry["sha1"], entry["s3-etag"], entry["crc32c"])
        try:
            data = storage.store.get_bytes(storage.bucket, key)
        except BlobNotFound:
            raise not_readable(f"{key} (file {entry['name']})", storage.replica) from None
        if len(data) > self.max_file_bytes:  # the manifest said otherwise: trust the bytes
            return Skipped("too_large")
        try:
            content = tpool.execute(json.loads, data) if len(data) > PARSE_OFF_THREAD_BYTES else json.loads(data)
        except ValueError:  # also a UnicodeDecodeError
            return Skipped("unparseable")
        if not isinstance(content, (dict, list)):
            return Skipped("not_object")
        return content

    # --- reading -----------------------------------------------------------------------------------------
    @staticmethod
    def _tombstone(storage: ReplicaStorage, key: str) -> dict:
        """The four tombstone fields (``admin_deleted`` included, which marks an index document
        as a tombstone for the search backends)."""
        doc = storage.find_json(key)
        if doc is None:
            raise not_readable(key, storage.replica)
        try:
            return _TOMBSTONE.dump(_TOMBSTONE.load(doc))
        except ValidationError as error:
            raise Unprocessable(f"{key} is not a valid tombstone: {error.messages}", "invalid_document") from None
