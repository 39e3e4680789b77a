"""Collections (``collections/{uuid}.{version}``) in the replicas' main buckets: documents owned by
the user who wrote them, their items checked to exist, new versions by patch, hidden by the
owner's tombstone; listed per owner through the owner index (``owner_index.py``), which this
keeps in line with what is written or replicated.
"""
from __future__ import annotations

import itertools
import logging

from shared.concurrency import ExpiringCache, green_map
from shared.exceptions import NotFound
from shared.identifiers import Keys, fqid, new_version
from shared.schemas import CollectionDocument, CollectionItem, Tombstone
from shared.storage import ALL_VERSIONS, Replicas

from services.bundles import exceptions as errors
from services.bundles import owner_index
from services.bundles.documents import LOOKUP_CONCURRENCY, Written, version_groups, write_once
from services.bundles.manifests import BundleManifests
from services.bundles.rules import caller_email, check_limit, check_page, dedupe, item_key, load, uuid_version

logger = logging.getLogger(__name__)

# Collection owners a process remembers (least recently used forgotten first): about 300 bytes each.
OWNER_CACHE_ENTRIES = 10_000
OWNER_TOMBSTONE_REASON = "deleted by owner"


def new_owner_cache() -> ExpiringCache:
    return ExpiringCache(max_entries=OWNER_CACHE_ENTRIES)


class CollectionDocuments:
    """The collections of both replicas; items naming bundles are checked with ``manifests``."""

    def __init__(self, replicas: Replicas, manifests: BundleManifests, owners: ExpiringCache | None = None):
        self.replicas = replicas
        self.manifests = manifests
        # (replica, collection key) -> owner, shared by the workers of one provider; collection
        # documents are immutable, so an entry never goes stale (only the size is bounded).
        self.owners = new_owner_cache() if owners is None else owners

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
        uuid, version = uuid_version(uuid, version)
        version = self.live_collection_version(replica, uuid, version)
        doc = self.replicas[replica].read_json(Keys.collection(uuid, version))
        if doc["owner"] != email:
            raise errors.not_owner(email, uuid)
        return {**doc, "uuid": uuid, "version": version}

    def put_collection(self, replica: str, uuid: str, version: str, name: str, description, details,
                       contents: list, caller: dict | None) -> Written:
        email = caller_email(caller)
        uuid, version = uuid_version(uuid, version)
        doc = load(CollectionDocument(), {"name": name, "description": description, "details": details,
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
        add = load(CollectionItem(many=True), add, "add_contents")
        removed = {item_key(item) for item in load(CollectionItem(many=True), remove, "remove_contents")}
        base = self.get_collection(replica, uuid, version, caller)
        kept = [item for item in base["contents"] if item_key(item) not in removed]
        contents = dedupe(kept + add)
        check_limit("collection items", contents)
        present = {item_key(item) for item in kept}
        self.check_links(replica, [item for item in contents if item_key(item) not in present])
        doc = {"name": base["name"], "description": base.get("description"), "details": base.get("details"),
               "contents": contents, "owner": email}
        doc.update({field: changes[field] for field in ("name", "description", "details")
                    if changes.get(field) is not None})
        doc = load(CollectionDocument(), doc, "collection")
        return self._write_collection(replica, base["uuid"], new_version(), doc)

    def put_collection_tombstone(self, replica: str, uuid: str, caller: dict | None) -> Written:
        email = caller_email(caller)
        uuid, _ = uuid_version(uuid, None)
        versions, _ = self.replicas[replica].versions(Keys.collection_prefix(uuid))
        if not versions:
            raise errors.collection_not_found(replica, uuid)
        if self.collection_owner(replica, uuid, versions[-1]) != email:
            raise errors.not_owner(email, uuid)
        key = Keys.collection_tombstone(uuid)
        doc = Tombstone().dump({"email": email, "reason": OWNER_TOMBSTONE_REASON, "details": None,
                                "admin_deleted": False})
        written = write_once(self.replicas[replica], key, uuid, None, doc,
                             lambda: errors.collection_tombstone_exists(key))
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
        uuid, _ = uuid_version(uuid, None)
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
        latest = [(uuid, versions[-1]) for uuid, versions, dead in version_groups(storage, Keys.collection_prefix())
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
                self.manifests.live_bundle_version(replica, uuid, version)
            elif kind == "collection":
                self.live_collection_version(replica, uuid, version)
            else:  # files, and any other type, name a file
                return self.replicas[replica].exists(Keys.file(uuid, version))
        except NotFound:
            return False
        return True

    def _write_collection(self, replica: str, uuid: str, version: str, doc: dict) -> Written:
        doc = CollectionDocument().dump(doc)
        written = write_once(self.replicas[replica], Keys.collection(uuid, version), uuid, version, doc,
                                   lambda: errors.collection_already_exists(uuid, version))
        self.owners.put((replica, written.key), doc["owner"])
        # After the version is durable (a marker never names a collection not yet there), and for
        # an identical repeat too: a client retrying after a failure here completes the index.
        owner_index.add(self.replicas[replica], doc["owner"], uuid)
        return written
