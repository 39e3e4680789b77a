"""Bundle versions as the indexer reads them from a replica's main bucket, and the documents built
from them (the shapes are ``shared.bundle_documents``'s).

The handlers, ``get_event`` and the reindex job all build documents here, so a document indexed
from an event, one rebuilt by a reindex and one GET /events/{uuid} returns never differ.

A document's indexed JSON is bounded (``DSS_INDEX_MAX_DOCUMENT_BYTES``, counted once per name
listing a file, as the document, the journal and the bus carry it once per name): the files are
taken in manifest order while they fit, and the rest is left out and counted. Each distinct file
(by its blob key) is read and parsed once, however many names list it.

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
from shared.identifiers import Keys, fqid, is_uuid, is_version
from shared.schemas import Tombstone
from shared.storage import ReplicaStorage, Replicas, split_versions

from services.indexer.exceptions import invalid_tombstone, not_readable

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


class BundleSourceAPI:
    """Reads bundle versions from the replicas and builds their documents."""

    def __init__(self, replicas: Replicas, settings):
        self.replicas = replicas
        self.max_file_bytes = settings.index_max_file_bytes
        self.max_document_bytes = settings.index_max_document_bytes

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
        return self.build_document(replica, bundle)[0]

    def build_document(self, replica: str, bundle: BundleVersion) -> tuple[dict, dict[str, int]]:
        """``index_document`` and how many files were left out of it, by reason."""
        if bundle.tombstone is not None:
            return bundle.tombstone, {}
        if bundle.manifest is None:
            raise not_readable(Keys.bundle(bundle.uuid, bundle.version), replica)
        left_out: dict[str, int] = {}
        files = self.indexed_files(replica, bundle.manifest, left_out)
        return index_document(bundle.uuid, bundle.manifest, files), left_out

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

    def indexed_files(self, replica: str, manifest: dict, left_out: dict[str, int] | None = None) -> dict[str, list]:
        """The parsed JSON of every file marked ``indexed`` with a JSON content type, grouped by
        ``index_key`` (a list per key, in manifest order). Files that are too large, beyond the
        document's cap, unparseable or not a JSON object or array are left out, with a warning and
        a count (in ``left_out`` too, by reason, when given)."""
        storage = self.replicas[replica]
        entries = [entry for entry in manifest.get("files", ())
                   if entry.get("indexed") is True and is_json_content_type(entry.get("content-type"))]
        # What to read, from the sizes the manifest gives: each distinct file once.
        planned = self._fit(entries, lambda entry: entry.get("size"))
        blobs = {_blob_key(entry): entry for entry, fits in zip(entries, planned) if fits is True}
        read = green_map(lambda key: self._file_json(storage, blobs[key]), list(blobs), FILE_READ_CONCURRENCY)
        contents = dict(zip(blobs, read))
        # The sizes read are the ones that count (a manifest could understate one).
        outcome = self._fit(entries, lambda entry: contents[_blob_key(entry)][1], planned)
        files: dict[str, list] = {}
        for entry, fits in zip(entries, outcome):
            if isinstance(fits, Skipped):
                SKIPPED_FILES.labels(replica, fits.reason).inc()
                if left_out is not None:
                    left_out[fits.reason] = left_out.get(fits.reason, 0) + 1
                logger.warning("not indexing %s (file %s.%s) of a bundle in %s: %s", entry["name"], entry["uuid"],
                               entry["version"], replica, fits.reason.replace("_", " "))
                continue
            files.setdefault(index_key(entry["name"]), []).append(contents[_blob_key(entry)][0])
        return files

    def _fit(self, entries: list[dict], size_of, before: list | None = None) -> list:
        """Per entry, True (taken) or why it is left out: in manifest order, each entry whose size
        fits what is left of the document's cap (a later, smaller one may fit where one did not).
        ``before``: an earlier outcome whose left-out entries stay out (``size_of`` is only asked
        of the others)."""
        outcome, total = [], 0
        for index, entry in enumerate(entries):
            if before is not None and isinstance(before[index], Skipped):
                outcome.append(before[index])
                continue
            size = size_of(entry)
            if isinstance(size, Skipped):
                outcome.append(size)
            elif not isinstance(size, int) or isinstance(size, bool) or size > self.max_file_bytes:
                outcome.append(Skipped("too_large"))
            elif total + size > self.max_document_bytes:
                outcome.append(Skipped("document_cap"))
            else:
                total += size
                outcome.append(True)
        return outcome

    def _file_json(self, storage: ReplicaStorage, entry: dict) -> tuple[object, int | Skipped]:
        """(the parsed content, its size in bytes), or (None, why it is left out)."""
        key = _blob_key(entry)
        try:
            data = storage.store.get_bytes(storage.bucket, key)
        except BlobNotFound:
            raise not_readable(f"{key} (file {entry['name']})", storage.replica) from None
        if len(data) > self.max_file_bytes:  # the manifest said otherwise: trust the bytes
            return None, Skipped("too_large")
        try:
            content = tpool.execute(json.loads, data) if len(data) > PARSE_OFF_THREAD_BYTES else json.loads(data)
        except ValueError:  # also a UnicodeDecodeError
            return None, Skipped("unparseable")
        if not isinstance(content, (dict, list)):
            return None, Skipped("not_object")
        return content, len(data)

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
            raise invalid_tombstone(key, error.messages) from None


def _blob_key(entry: dict) -> str:
    return Keys.blob(entry["sha256"], entry["sha1"], entry["s3-etag"], entry["crc32c"])
