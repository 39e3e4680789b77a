"""The bundles service's domain API over the replicas' main buckets: bundle manifests, collection
documents and their tombstones (layout in docs/architecture.md, "Storage layout").

Every object is written once and never changed, which is what makes the rules here simple: a
repeat write with the same content is a no-op, with different content a conflict; a tombstone
hides what it names without deleting it; anything read can be cached forever.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Iterator

from marshmallow import EXCLUDE, Schema, ValidationError

from shared.concurrency import ExpiringCache, green_map
from shared.identifiers import Keys, fqid, is_version, new_version, normalize_uuid, normalize_version, split_fqid
from shared.exceptions import InvalidParameter, NotFound, bundle_not_found
from shared.schemas import BundleManifest, CollectionDocument, CollectionItem, FileMetadata, ManifestFile, Tombstone
from shared.storage import ALL_VERSIONS, ReplicaStorage, Replicas, StorageProvider, split_versions

from services.bundles import exceptions as errors
from services.bundles import owner_index
from services.bundles.schemas import MAX_ITEMS, BundleFileId, BundleFileRef, BundleFileView

logger = logging.getLogger(__name__)

# Parallel storage reads per request: a bundle may list thousands of files, each one GET.
LOOKUP_CONCURRENCY = 32
# Collection owners a process remembers (least recently used forgotten first): about 300 bytes each.
OWNER_CACHE_ENTRIES = 10_000

CREATED, EXISTS = "created", "exists"
OWNER_TOMBSTONE_REASON = "deleted by owner"

_FILE_METADATA = FileMetadata(unknown=EXCLUDE)
_MANIFEST = BundleManifest()
_MANIFEST_FILES = ManifestFile(many=True)
_FILE_VIEW = BundleFileView(many=True)
_CHECKSUMMED_FIELDS = ("content_type", "size", "crc32c", "s3_etag", "sha1", "sha256")


@dataclasses.dataclass(frozen=True)
class Written:
    """The outcome of a write-once: ``status`` is "created", or "exists" for an identical repeat."""
    status: str
    key: str
    uuid: str
    version: str | None
    doc: dict

    @property
    def created(self) -> bool:
        return self.status == CREATED


def _load(schema: Schema, data, what: str):
    try:
        return schema.load(data)
    except ValidationError as error:
        detail = str(error.messages)
        # A thousand bad entries would make an unreadable title: the first few say enough.
        raise errors.illegal_arguments(f"invalid {what}: {detail[:300]}{'...' if len(detail) > 300 else ''}") from None


def _uuid_version(uuid: str, version: str | None) -> tuple[str, str | None]:
    # Re-checked here although the gateway validated them: they become storage keys.
    return normalize_uuid(uuid), (None if version is None else normalize_version(version))


def check_file_name(name: str) -> None:
    """Bundle file names are relative paths that stay inside the bundle when checked out."""
    if not name:
        raise errors.illegal_filename(name, "it is empty")
    if name.startswith("/"):
        raise errors.illegal_filename(name, "it must be relative, not start with /")
    if name.startswith("~/"):
        raise errors.illegal_filename(name, "it must not start with ~/")
    if "\\" in name:
        raise errors.illegal_filename(name, "it must not contain a backslash")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise errors.illegal_filename(name, "it must not contain control characters")
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            raise errors.illegal_filename(name, "it must not contain empty, . or .. path segments")


def check_unique_names(names) -> None:
    seen: set[str] = set()
    repeated = [name for name in names if name in seen or seen.add(name)]
    if repeated:
        raise errors.duplicate_filename(sorted(set(repeated)))


def check_limit(what: str, items: list) -> None:
    if len(items) > MAX_ITEMS:
        raise errors.too_many(what, len(items), MAX_ITEMS)


def check_page(start_at, per_page) -> None:
    if not isinstance(start_at, int) or isinstance(start_at, bool) or start_at < 0:
        raise errors.illegal_arguments(f"start_at must be a non-negative integer, not {start_at!r}")
    if not isinstance(per_page, int) or isinstance(per_page, bool) or per_page < 1:
        raise errors.illegal_arguments(f"per_page must be a positive integer, not {per_page!r}")


def caller_email(caller: dict | None) -> str:
    if not caller or not caller.get("email"):
        raise errors.authentication_required()
    return caller["email"]


def _item_key(item: dict) -> tuple:
    return tuple(sorted(item.items()))


def dedupe(items: list[dict]) -> list[dict]:
    """Drop repeated collection items, keeping the first of each in order."""
    seen: set[tuple] = set()
    unique = []
    for item in items:
        key = _item_key(item)
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique


def _groups(storage: ReplicaStorage, root: str, prefix: str = "", start_after: str | None = None
            ) -> Iterator[tuple[str, list[str], set[str]]]:
    """(uuid, versions, tombstoned versions) for each uuid under ``root`` (``bundles/`` or
    ``collections/``), in key order. A uuid's keys are contiguous and its tombstones sort after
    the versions they cover, so each uuid is judged only once all its keys have been seen."""
    keys = storage.list_keys(root + prefix, start_after)
    for uuid, group in itertools.groupby(keys, key=lambda key: key[len(root):].partition(".")[0]):
        versions, dead = split_versions(key[len(root) + len(uuid) + 1:] for key in group)
        yield uuid, [version for version in versions if is_version(version)], dead


def new_owner_cache() -> ExpiringCache:
    return ExpiringCache(max_entries=OWNER_CACHE_ENTRIES)


class BundleStoreAPI:
    def __init__(self, replicas: Replicas, settings, owners: ExpiringCache | None = None):
        self.replicas = replicas
        self.settings = settings
        # (replica, collection key) -> owner, shared by the workers of one provider; collection
        # documents are immutable, so an entry never goes stale (only the size is bounded).
        self.owners = new_owner_cache() if owners is None else owners

    def health(self) -> dict:
        return self.replicas.health()

    # --- bundles -----------------------------------------------------------------------------------
    def put_manifest(self, replica: str, uuid: str, version: str, creator_uid: int, files: list) -> Written:
        """Resolve ``files`` on ``replica`` and write the manifest of ``{uuid}.{version}`` once."""
        uuid, version = _uuid_version(uuid, version)
        if not isinstance(creator_uid, int) or isinstance(creator_uid, bool):
            raise errors.illegal_arguments(f"creator_uid must be an integer, not {creator_uid!r}")
        refs = _load(BundleFileRef(many=True), files, "files")
        manifest = _MANIFEST.dump({"version": version, "creator_uid": creator_uid,
                                   "files": self.resolve_files(replica, refs)})
        return self._write_once(replica, Keys.bundle(uuid, version), uuid, version, manifest,
                                lambda: errors.bundle_already_exists(uuid, version))

    def resolve_files(self, replica: str, refs: list[dict]) -> list[dict]:
        """Manifest entries for file references: names checked, every file looked up concurrently."""
        for ref in refs:
            check_file_name(ref["name"])
        check_unique_names(ref["name"] for ref in refs)
        storage = self.replicas[replica]
        docs = green_map(lambda ref: storage.find_json(Keys.file(ref["uuid"], ref["version"])), refs, LOOKUP_CONCURRENCY)
        missing = [fqid(ref["uuid"], ref["version"]) for ref, doc in zip(refs, docs) if doc is None]
        if missing:
            raise errors.file_missing(replica, missing)
        entries = []
        for ref, doc in zip(refs, docs):
            metadata = _FILE_METADATA.load(doc)
            entries.append({**ref, **{field: metadata[field] for field in _CHECKSUMMED_FIELDS}})
        return entries

    def live_bundle_version(self, replica: str, uuid: str, version: str | None = None) -> str:
        """``version`` (or the latest one if None) if its manifest exists and no tombstone hides it."""
        live = self.replicas[replica].live_version(Keys.bundle_prefix(uuid), version)
        if live is None:
            raise bundle_not_found(replica, uuid, version)
        return live

    def get_manifest(self, replica: str, uuid: str, version: str | None = None) -> tuple[str, dict]:
        uuid, version = _uuid_version(uuid, version)
        version = self.live_bundle_version(replica, uuid, version)
        return version, self.replicas[replica].read_json(Keys.bundle(uuid, version))

    def get_bundle_page(self, replica: str, uuid: str, version: str | None, start_at: int, per_page: int) -> dict:
        check_page(start_at, per_page)
        uuid, _ = _uuid_version(uuid, None)
        version, manifest = self.get_manifest(replica, uuid, version)
        files = manifest["files"]
        end = start_at + per_page
        page = _FILE_VIEW.dump(_MANIFEST_FILES.load(files[start_at:end]))
        return {"bundle": {"uuid": uuid, "version": version, "creator_uid": manifest["creator_uid"], "files": page},
                "next_start_at": end if end < len(files) else None}

    def patch_manifest(self, replica: str, uuid: str, version: str | None, add_files: list | None,
                       remove_files: list | None) -> Written:
        """A new version of the bundle: the base version's files minus ``remove_files`` (matched on
        name, uuid and version) plus ``add_files`` (resolved like a PUT)."""
        add_files, remove_files = add_files or [], remove_files or []
        check_limit("add_files", add_files)
        check_limit("remove_files", remove_files)
        adds = _load(BundleFileRef(many=True), add_files, "add_files")
        removed = {(ref["name"], ref["uuid"], ref["version"])
                   for ref in _load(BundleFileId(many=True), remove_files, "remove_files")}
        uuid, _ = _uuid_version(uuid, None)
        base_version, base = self.get_manifest(replica, uuid, version)
        kept = [entry for entry in _MANIFEST.load(base)["files"]
                if (entry["name"], entry["uuid"], entry["version"]) not in removed]
        files = kept + self.resolve_files(replica, adds)
        check_unique_names(entry["name"] for entry in files)
        new = new_version()
        manifest = _MANIFEST.dump({"version": new, "creator_uid": base["creator_uid"], "files": files})
        logger.info("bundle %s patched from %s to %s (-%d +%d files)", uuid, base_version, new,
                    len(base["files"]) - len(kept), len(adds))
        return self._write_once(replica, Keys.bundle(uuid, new), uuid, new, manifest,
                                lambda: errors.bundle_already_exists(uuid, new))

    def put_bundle_tombstone(self, replica: str, uuid: str, version: str | None, reason: str, details,
                             caller: dict | None) -> Written:
        """Tombstone one version, or every version if ``version`` is None (administrators only)."""
        email = caller_email(caller)
        if not caller.get("is_admin"):
            raise errors.not_admin(email)
        if not isinstance(reason, str) or not reason.strip():
            raise errors.illegal_arguments("a reason is required to delete a bundle")
        uuid, version = _uuid_version(uuid, version)
        versions, _ = self.replicas[replica].versions(Keys.bundle_prefix(uuid))
        if not versions or (version is not None and version not in versions):
            raise bundle_not_found(replica, uuid, version)
        key = Keys.bundle_tombstone(uuid, version)
        doc = Tombstone().dump({"email": email, "reason": reason, "details": details, "admin_deleted": True})
        return self._write_once(replica, key, uuid, version, doc, lambda: errors.bundle_tombstone_exists(key))

    def list_live_bundles(self, replica: str, prefix: str, per_page: int, search_after: str | None) -> dict:
        """A page of live ``{uuid, version}`` in key order; the cursor is the last fqid returned."""
        check_page(0, per_page)
        prefix = (prefix or "").lower()
        if any(char not in "0123456789abcdef-" for char in prefix):
            raise errors.illegal_arguments(f"prefix {prefix!r} is not the beginning of a uuid")
        start_after = None
        if search_after:
            try:
                cursor_uuid, cursor_version = split_fqid(search_after)
            except InvalidParameter:
                cursor_version = None
            if cursor_version is None:
                raise InvalidParameter(f"search_after {search_after!r} is not a cursor this API returned",
                                       "illegal_search_after")
            start_after = Keys.bundle(cursor_uuid, cursor_version)
        live = ({"uuid": uuid, "version": version}
                for uuid, versions, dead in _groups(self.replicas[replica], Keys.bundle_prefix(), prefix, start_after)
                if ALL_VERSIONS not in dead
                for version in versions if version not in dead)
        # One more than a page tells whether another page exists, so the last page has no cursor.
        found = list(itertools.islice(live, per_page + 1))
        page = found[:per_page]
        more = len(found) > per_page
        return {"bundles": page, "search_after": fqid(page[-1]["uuid"], page[-1]["version"]) if more else None}

    # --- collections -------------------------------------------------------------------------------
    def live_collection_version(self, replica: str, uuid: str, version: str | None = None) -> str:
        versions, dead = self.replicas[replica].versions(Keys.collection_prefix(uuid))
        if ALL_VERSIONS not in dead and versions:
            if version is None:
                return versions[-1]
            if version in versions:
                return version
        raise errors.collection_not_found(replica, uuid, version)

    def get_collection(self, replica: str, uuid: str, version: str | None, caller: dict | None) -> dict:
        """The collection document plus uuid and version; its owner only."""
        email = caller_email(caller)
        uuid, version = _uuid_version(uuid, version)
        version = self.live_collection_version(replica, uuid, version)
        doc = self.replicas[replica].read_json(Keys.collection(uuid, version))
        if doc["owner"] != email:
            raise errors.not_owner(email, uuid)
        return {**doc, "uuid": uuid, "version": version}

    def put_collection(self, replica: str, uuid: str, version: str, name: str, description, details,
                       contents: list, caller: dict | None) -> Written:
        email = caller_email(caller)
        uuid, version = _uuid_version(uuid, version)
        doc = _load(CollectionDocument(), {"name": name, "description": description, "details": details,
                                           "contents": contents, "owner": email}, "collection")
        doc["contents"] = dedupe(doc["contents"])
        check_limit("collection items", doc["contents"])
        # A new version of someone else's collection would take it over: refuse it.
        versions, _ = self.replicas[replica].versions(Keys.collection_prefix(uuid))
        if versions and self.collection_owner(replica, uuid, versions[-1]) != email:
            raise errors.not_owner(email, uuid)
        self.check_links(replica, doc["contents"])
        return self._write_collection(replica, uuid, version, doc)

    def patch_collection(self, replica: str, uuid: str, version: str | None, changes: dict,
                         caller: dict | None) -> Written:
        """A new version: the base's items minus ``remove_contents`` plus ``add_contents``, and
        ``name``/``description``/``details`` replaced where given (not None)."""
        email = caller_email(caller)
        changes = changes or {}
        add, remove = changes.get("add_contents") or [], changes.get("remove_contents") or []
        check_limit("add_contents", add)
        check_limit("remove_contents", remove)
        add = _load(CollectionItem(many=True), add, "add_contents")
        removed = {_item_key(item) for item in _load(CollectionItem(many=True), remove, "remove_contents")}
        base = self.get_collection(replica, uuid, version, caller)
        kept = [item for item in base["contents"] if _item_key(item) not in removed]
        contents = dedupe(kept + add)
        check_limit("collection items", contents)
        present = {_item_key(item) for item in kept}
        self.check_links(replica, [item for item in contents if _item_key(item) not in present])
        doc = {"name": base["name"], "description": base.get("description"), "details": base.get("details"),
               "contents": contents, "owner": email}
        doc.update({field: changes[field] for field in ("name", "description", "details")
                    if changes.get(field) is not None})
        doc = _load(CollectionDocument(), doc, "collection")
        return self._write_collection(replica, base["uuid"], new_version(), doc)

    def put_collection_tombstone(self, replica: str, uuid: str, caller: dict | None) -> Written:
        email = caller_email(caller)
        uuid, _ = _uuid_version(uuid, None)
        versions, _ = self.replicas[replica].versions(Keys.collection_prefix(uuid))
        if not versions:
            raise errors.collection_not_found(replica, uuid)
        if self.collection_owner(replica, uuid, versions[-1]) != email:
            raise errors.not_owner(email, uuid)
        key = Keys.collection_tombstone(uuid)
        doc = Tombstone().dump({"email": email, "reason": OWNER_TOMBSTONE_REASON, "details": None,
                                "admin_deleted": False})
        written = self._write_once(replica, key, uuid, None, doc, lambda: errors.collection_tombstone_exists(key))
        owner_index.remove(self.replicas[replica], email, uuid)  # also for a repeat: a retry after a failure here
        return written

    def list_owned_collections(self, replica: str, caller: dict | None, per_page: int, start_at: int) -> dict:
        """The caller's live collections (latest version of each) in uuid order, paged by index.

        Only the caller's own collections are looked at, through the owner index, and only as many
        as the page needs (``start_at + per_page`` and one more, to tell whether a page follows)."""
        email = caller_email(caller)
        check_page(start_at, per_page)
        uuids = owner_index.indexed_uuids(self.replicas[replica], email)
        wanted = start_at + per_page + 1
        owned: list[dict] = []
        while len(owned) < wanted:
            batch = list(itertools.islice(uuids, min(LOOKUP_CONCURRENCY, wanted - len(owned))))
            if not batch:
                break
            versions = green_map(lambda uuid: self.owned_version(replica, uuid, email), batch, LOOKUP_CONCURRENCY)
            owned += [{"uuid": uuid, "version": version} for uuid, version in zip(batch, versions) if version]
        end = start_at + per_page
        return {"collections": owned[start_at:end], "next_start_at": end if end < len(owned) else None}

    def owned_version(self, replica: str, uuid: str, owner: str) -> str | None:
        """The latest version of collection ``uuid`` if it is live and that version is ``owner``'s."""
        versions, dead = self.replicas[replica].versions(Keys.collection_prefix(uuid))
        if not versions or ALL_VERSIONS in dead:
            return None
        return versions[-1] if self.collection_owner(replica, uuid, versions[-1]) == owner else None

    def collection_owner(self, replica: str, uuid: str, version: str) -> str:
        key = Keys.collection(uuid, version)
        owner = self.owners.get((replica, key))
        if owner is None:
            owner = self.replicas[replica].read_json(key)["owner"]
            self.owners.put((replica, key), owner)
        return owner

    def index_collection(self, replica: str, uuid: str) -> str | None:
        """Bring the owner index of ``replica`` in line with collection ``uuid`` as stored there
        (a collection version or tombstone the replicator copied in): "added" under the owner of
        its latest version if it is live, "removed" if it is tombstoned, None if it has no version."""
        storage = self.replicas[replica]
        uuid, _ = _uuid_version(uuid, None)
        versions, dead = storage.versions(Keys.collection_prefix(uuid))
        if not versions:
            return None
        owner = self.collection_owner(replica, uuid, versions[-1])
        if ALL_VERSIONS in dead:
            owner_index.remove(storage, owner, uuid)
            return "removed"
        owner_index.add(storage, owner, uuid)
        return "added"

    def rebuild_owner_index(self, replica: str) -> dict:
        """Index every live collection of ``replica`` under its owner and remove the markers that
        name no live collection of theirs: one pass over the replica's collections, for stores
        written before the index existed (``dss-ops collections index``). Safe while the services
        run: a marker is removed only once its collection is seen not to be its owner's."""
        storage = self.replicas[replica]
        latest = [(uuid, versions[-1]) for uuid, versions, dead in _groups(storage, Keys.collection_prefix())
                  if versions and ALL_VERSIONS not in dead]
        owners = green_map(lambda item: self.collection_owner(replica, *item), latest, LOOKUP_CONCURRENCY)
        owned = [(uuid, owner) for (uuid, _), owner in zip(latest, owners)]
        green_map(lambda item: owner_index.add(storage, item[1], item[0]), owned, LOOKUP_CONCURRENCY)
        live = {uuid: owner_index.owner_hash(owner) for uuid, owner in owned}
        suspects = [(key, uuid) for key, digest, uuid in owner_index.markers(storage) if live.get(uuid) != digest]

        def stale(suspect) -> bool:
            key, uuid = suspect
            owner = (storage.find_json(key) or {}).get("owner")
            if isinstance(owner, str) and self.owned_version(replica, uuid, owner):
                return False  # written since the walk above
            storage.delete(key)
            return True

        return {"indexed": len(latest), "removed": sum(green_map(stale, suspects, LOOKUP_CONCURRENCY))}

    def check_links(self, replica: str, items: list[dict]) -> None:
        """Every item must name an object of its type that exists on ``replica`` and is not tombstoned."""
        resolved = green_map(lambda item: self._resolves(replica, item), items, LOOKUP_CONCURRENCY)
        unresolved = [item for item, ok in zip(items, resolved) if not ok]
        if unresolved:
            raise errors.invalid_link(replica, [f"{item['type']} {fqid(item['uuid'], item['version'])}"
                                                for item in unresolved])

    def _resolves(self, replica: str, item: dict) -> bool:
        kind, uuid, version = item["type"], item["uuid"], item["version"]
        try:
            if kind == "bundle":
                self.live_bundle_version(replica, uuid, version)
            elif kind == "collection":
                self.live_collection_version(replica, uuid, version)
            else:  # files, and any other type, name a file
                return self.replicas[replica].exists(Keys.file(uuid, version))
        except NotFound:
            return False
        return True

    def _write_collection(self, replica: str, uuid: str, version: str, doc: dict) -> Written:
        doc = CollectionDocument().dump(doc)
        written = self._write_once(replica, Keys.collection(uuid, version), uuid, version, doc,
                                   lambda: errors.collection_already_exists(uuid, version))
        self.owners.put((replica, written.key), doc["owner"])
        # After the version is durable (a marker never names a collection not yet there), and for
        # an identical repeat too: a client retrying after a failure here completes the index.
        owner_index.add(self.replicas[replica], doc["owner"], uuid)
        return written

    # --- write once ---------------------------------------------------------------------------------
    def _write_once(self, replica: str, key: str, uuid: str, version: str | None, doc: dict, conflict) -> Written:
        existing = self.replicas[replica].write_json_once(key, doc)
        if existing is None:
            logger.info("wrote %s to replica %s", key, replica)
            return Written(CREATED, key, uuid, version, doc)
        if existing != doc:
            raise conflict()
        return Written(EXISTS, key, uuid, version, existing)


class BundleStore(StorageProvider):
    """Injects a ``BundleStoreAPI`` over both replicas, sharing one (bounded) collection-owner cache."""

    api_class = BundleStoreAPI

    def setup(self):
        super().setup()
        self.owners = new_owner_cache()

    def get_dependency(self, worker_ctx):
        return self.api_class(self.replicas, self.settings, self.owners)
