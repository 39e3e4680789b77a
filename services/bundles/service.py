"""The bundles service: bundle manifests (versions, paging, tombstones) and collections.

The rules live in ``manifests.py``, ``collection_documents.py`` and ``rules.py``; the entrypoints here count the objects
written and announce them. Events are dispatched after the write, and again for an identical
repeat, so a client retrying after a lost answer still gets its event out (at-least-once).

``handle_object_replicated`` keeps each replica's owner index of collections (owner_index.py) in
line with the collections the replicator copies into it (retried on the broker; idempotent).
"""
import logging

from marshmallow import EXCLUDE, ValidationError

from shared import events
from shared.entrypoints import EventDispatcher, rpc
from shared.exceptions import InvalidParameter
from shared.identifiers import Keys
from shared.metrics import Metrics
from shared.tracing import Tracing
from shared.keys import parse_key
from shared.retry import retrying_event_handler
from shared.schemas import (BundleCreated, BundleTombstoned, CollectionCreated, CollectionTombstoned, ObjectReplicated,
                            schema_instance)

from services.bundles.dependencies import BundleStore

logger = logging.getLogger(__name__)

# list_collections has no replica parameter (GET /collections names none): it reads this one.
COLLECTIONS_REPLICA = "aws"


class BundlesService:
    name = "bundles"

    store = BundleStore()
    metrics = Metrics()
    tracing = Tracing()
    dispatch = EventDispatcher()

    # --- bundles -----------------------------------------------------------------------------------
    @rpc
    def put_bundle(self, replica, uuid, version, creator_uid, files, caller=None):
        written = self.store.bundles.put_manifest(replica, uuid, version, creator_uid, files)
        self._bundle_created(replica, written)
        return {"status": written.status, "version": written.version, "manifest": written.doc}

    @rpc
    def get_bundle(self, replica, uuid, version=None, start_at=0, per_page=500):
        return self.store.bundles.get_bundle_page(replica, uuid, version, start_at, per_page)

    @rpc
    def patch_bundle(self, replica, uuid, version, add_files=None, remove_files=None, caller=None):
        written = self.store.bundles.patch_manifest(replica, uuid, version, add_files, remove_files)
        self._bundle_created(replica, written)
        return {"uuid": written.uuid, "version": written.version}

    @rpc
    def delete_bundle(self, replica, uuid, version=None, reason=None, details=None, caller=None):
        written = self.store.bundles.put_bundle_tombstone(replica, uuid, version, reason, details, caller)
        self._count(replica, "bundle_tombstone", written)
        self.dispatch(events.BUNDLE_TOMBSTONED, BundleTombstoned().dump({
            "replica": replica, "uuid": written.uuid, "version": written.version, "key": written.key,
            "reason": written.doc["reason"]}))
        return {"status": written.status}

    @rpc
    def list_bundles(self, replica, prefix="", per_page=100, search_after=None):
        return self.store.bundles.list_live_bundles(replica, prefix, per_page, search_after)

    # --- collections -------------------------------------------------------------------------------
    @rpc
    def put_collection(self, replica, uuid, version, name, description, details, contents, caller=None):
        written = self.store.collections.put_collection(replica, uuid, version, name, description, details, contents,
                                                        caller)
        self._collection_created(replica, written)
        return {"uuid": written.uuid, "version": written.version}

    @rpc
    def get_collection(self, replica, uuid, version=None, caller=None):
        return self.store.collections.get_collection(replica, uuid, version, caller)

    @rpc
    def list_collections(self, caller, per_page=100, start_at=0, replica=COLLECTIONS_REPLICA):
        return self.store.collections.list_owned_collections(replica, caller, per_page, start_at)

    @rpc
    def patch_collection(self, replica, uuid, version, changes, caller=None):
        written = self.store.collections.patch_collection(replica, uuid, version, changes, caller)
        self._collection_created(replica, written)
        return {"uuid": written.uuid, "version": written.version}

    @rpc
    def delete_collection(self, replica, uuid, caller=None):
        written = self.store.collections.put_collection_tombstone(replica, uuid, caller)
        self._count(replica, "collection_tombstone", written)
        self.dispatch(events.COLLECTION_TOMBSTONED, CollectionTombstoned().dump({
            "replica": replica, "uuid": written.uuid, "key": written.key, "owner": written.doc["email"]}))
        return {"status": written.status}

    # Only collections concern the owner index: the broker routes no other key's event here.
    @retrying_event_handler("replicator", events.OBJECT_REPLICATED, give_up_on=(InvalidParameter, ValidationError),
                            key_prefixes=(Keys.collection_prefix(),))
    def handle_object_replicated(self, payload):
        replicated = schema_instance(ObjectReplicated).load(payload, unknown=EXCLUDE)
        key = replicated["key"]
        if not key.startswith(Keys.collection_prefix()):
            return None
        return self.store.collections.index_collection(replicated["destination_replica"], parse_key(key).uuid)

    @rpc
    def health(self):
        return self.store.health()

    # --- helpers -----------------------------------------------------------------------------------
    def _count(self, replica, kind, written):
        if written.created:
            self.metrics.object_written(replica, kind)

    def _bundle_created(self, replica, written):
        self._count(replica, "bundle", written)
        self.dispatch(events.BUNDLE_CREATED, BundleCreated().dump({
            "replica": replica, "uuid": written.uuid, "version": written.version, "key": written.key,
            "file_count": len(written.doc["files"])}))

    def _collection_created(self, replica, written):
        self._count(replica, "collection", written)
        self.dispatch(events.COLLECTION_CREATED, CollectionCreated().dump({
            "replica": replica, "uuid": written.uuid, "version": written.version, "key": written.key,
            "owner": written.doc["owner"]}))

