"""The indexer: each replica's search index and bundle event journal.

Handlers (retried on the broker with ``DSS_INDEX_RETRY_DELAYS``, acked only once the index write
is durable):

- ``bundle_created`` (bundles): index the version's document (``{uuid, manifest, files}``) in
  that replica, unless a tombstone already hides it (an index never brings a bundle back);
- ``bundle_tombstoned`` (bundles): replace the version's document, or every version's (the
  tombstone of all versions), with the tombstone fields, so searches stop returning it;
- ``object_replicated`` (replicator): a bundle manifest or tombstone copied into the other replica
  is indexed there as the two above: how one replica's index learns of what was written through
  the other;
- ``object_changed`` (replicator's notification bridge) of kind ``deleted`` for a bundle manifest:
  a version removed from a replica's main bucket outright (an operator's purge, e.g. a legal
  takedown; the API itself only tombstones) leaves that replica's index and is announced as a
  ``DELETE`` bundle event, once the bucket confirms the manifest is gone.

Each change to an index is announced: journaled (``journal.py``; GET /events) and then dispatched
as ``bundle_indexed`` with the bundle event document (the notifier matches subscriptions on it).
A repeat of an event changes nothing and announces nothing when the index already holds the
document and the announcement was made (``announced/`` marker), so a crash anywhere between the
index write and the dispatch is redone by the redelivery, and echoes of replication are silent.
"""
import logging

from marshmallow import EXCLUDE

from shared import events
from shared.bundle_documents import CREATE, DELETE, TOMBSTONE, event_document
from shared.entrypoints import EventDispatcher, rpc
from shared.exceptions import bundle_not_found
from shared.identifiers import Keys, fqid, normalize_uuid, normalize_version
from shared.metrics import Metrics
from shared.tracing import Tracing
from shared.keys import BUNDLE, TOMBSTONE as TOMBSTONE_KEY, parse_key
from shared.retry import PERMANENT_ERRORS, retrying_event_handler
from shared.schemas import (BundleCreated, BundleIndexed, BundleTombstoned, ObjectChanged, ObjectReplicated,
                            load_arguments, schema_instance)
from shared.search import is_tombstone

from services.indexer.dependencies import BundleSource, EventJournal, SearchIndexes
from services.indexer.documents import BundleVersion
from services.indexer.schemas import GetEventCall, ListEventsCall, ReplicaCall, SearchCall

logger = logging.getLogger(__name__)


def _arguments(schema_class, **values) -> dict:
    # None stands for "not given" over RPC: the schema's default applies.
    return load_arguments(schema_class(), values, none_is_default=True)


class IndexerService:
    name = "indexer"

    bundles = BundleSource()
    journal = EventJournal()
    indexes = SearchIndexes()
    metrics = Metrics()
    tracing = Tracing()
    dispatch = EventDispatcher()

    # --- events (payloads loaded leniently: a newer sender's extra fields are no reason to fail) ---
    @retrying_event_handler("bundles", events.BUNDLE_CREATED, give_up_on=PERMANENT_ERRORS,
                            delays_setting="index_retry_delays")
    def handle_bundle_created(self, payload):
        created = BundleCreated(unknown=EXCLUDE).load(payload)
        return self._index_version(created["replica"], created["uuid"], created["version"])

    @retrying_event_handler("bundles", events.BUNDLE_TOMBSTONED, give_up_on=PERMANENT_ERRORS,
                            delays_setting="index_retry_delays")
    def handle_bundle_tombstoned(self, payload):
        tombstoned = BundleTombstoned(unknown=EXCLUDE).load(payload)
        return self._tombstone(tombstoned["replica"], tombstoned["uuid"], tombstoned["version"])

    # Only bundles concern the index: the broker routes no other key's event here (others, published
    # without a folder, are settled without a worker).
    @retrying_event_handler("replicator", events.OBJECT_REPLICATED, give_up_on=PERMANENT_ERRORS,
                            delays_setting="index_retry_delays", key_prefixes=(Keys.bundle_prefix(),))
    def handle_object_replicated(self, payload):
        replicated = schema_instance(ObjectReplicated).load(payload, unknown=EXCLUDE)
        key, replica = replicated["key"], replicated["destination_replica"]
        if not key.startswith(Keys.bundle_prefix()):
            return []
        target = parse_key(key)
        if target.kind == BUNDLE:
            return self._index_version(replica, target.uuid, target.version)
        if target.kind == TOMBSTONE_KEY:
            return self._tombstone(replica, target.uuid, target.version)
        return []

    @retrying_event_handler("replicator", events.OBJECT_CHANGED, give_up_on=PERMANENT_ERRORS,
                            delays_setting="index_retry_delays", key_prefixes=(Keys.bundle_prefix(),))
    def handle_object_changed(self, payload):
        changed = schema_instance(ObjectChanged).load(payload, unknown=EXCLUDE)
        if changed["kind"] != "deleted" or not changed["key"].startswith(Keys.bundle_prefix()):
            return []
        target = parse_key(changed["key"])
        if target.kind != BUNDLE:
            return []
        return self._delete(changed["replica"], target.uuid, target.version)

    # --- search ------------------------------------------------------------------------------------
    @rpc
    def search(self, replica, es_query, output_format="summary", per_page=100, search_after=None):
        """``{results: [{bundle_fqid, search_score, metadata (raw only)}], total_hits, search_after}``;
        ``search_after`` is the cursor of the next page, None on the last."""
        call = _arguments(SearchCall, replica=replica, es_query=es_query, output_format=output_format,
                          per_page=per_page, search_after=search_after)
        raw = call["output_format"] == "raw"
        page = self.indexes.search(call["replica"], call["es_query"], call["per_page"], call["search_after"], raw)
        results = []
        for hit in page["hits"]:
            result = {"bundle_fqid": hit["id"], "search_score": hit["score"]}
            if raw:
                result["metadata"] = hit["source"]
            results.append(result)
        return {"results": results, "total_hits": page["total"], "search_after": page["next"]}

    # --- the bundle event journal ------------------------------------------------------------------
    @rpc
    def list_events(self, replica, from_date=None, to_date=None, per_page=100, token=None):
        """``{event_streams: [{event_id, event_type, event_timestamp, bundle_fqid, document}], token}``
        in time order, ``from_date`` inclusive, ``to_date`` exclusive; ``token`` None at the end."""
        call = _arguments(ListEventsCall, replica=replica, from_date=from_date, to_date=to_date,
                          per_page=per_page, token=token)
        return self.journal.page(call["replica"], call["from_date"], call["to_date"], call["per_page"],
                                 call["token"])

    @rpc
    def get_event(self, replica, uuid, version):
        """The bundle event document of a version as the bucket has it (TOMBSTONE if hidden)."""
        call = _arguments(GetEventCall, replica=replica, uuid=uuid, version=version)
        bundle = self.bundles.version(call["replica"], call["uuid"], call["version"])
        if bundle.manifest is None:
            raise bundle_not_found(call["replica"], call["uuid"], call["version"])
        return self.bundles.event_document(call["replica"], bundle)

    # --- reindexing --------------------------------------------------------------------------------
    @rpc
    def start_reindex(self, replica):
        """Rebuild ``replica``'s index into a new generation in the background, then make it live;
        the job's status plus ``started`` (False: one was running already, that one is reported)."""
        call = _arguments(ReplicaCall, replica=replica)
        return self.indexes.start_reindex(call["replica"], self.bundles)

    @rpc
    def reindex_status(self, replica):
        """``{replica, state: idle|running|succeeded|failed, done, total, generation, error?, ...}``"""
        call = _arguments(ReplicaCall, replica=replica)
        return self.indexes.reindex_status(call["replica"])

    @rpc
    def health(self):
        indexes, buckets = self.indexes.health(), self.bundles.health()
        report = {replica: {"ok": indexes[replica]["ok"] and buckets[replica]["ok"], "index": indexes[replica],
                            "bucket": buckets[replica]} for replica in indexes}
        return {"ok": all(part["ok"] for part in report.values()), **report}

    # --- indexing ----------------------------------------------------------------------------------
    def _index_version(self, replica: str, uuid: str, version: str) -> list[dict]:
        uuid, version = normalize_uuid(uuid), normalize_version(version)
        with self.indexes.serialized(replica, uuid):
            bundle = self.bundles.version(replica, uuid, version)
            if bundle.tombstone is not None:
                logger.info("%s.%s is tombstoned in %s: not indexed as a live bundle", uuid, version, replica)
                return []
            document, left_out = self.bundles.build_document(replica, bundle)
            announced = self._store(replica, bundle, CREATE, document, lambda stored: event_document(
                CREATE, uuid, version, bundle.manifest, document["files"]), left_out)
        return [announced] if announced else []

    def _tombstone(self, replica: str, uuid: str, version: str | None) -> list[dict]:
        uuid = normalize_uuid(uuid)
        version = None if version is None else normalize_version(version)
        announced = []
        with self.indexes.serialized(replica, uuid):
            for bundle in self.bundles.tombstoned(replica, uuid, version):
                payload = self._store(replica, bundle, TOMBSTONE, bundle.tombstone,
                                      lambda stored, bundle=bundle: self._tombstone_event(replica, bundle, stored))
                if payload:
                    announced.append(payload)
        return announced

    def _tombstone_event(self, replica: str, bundle: BundleVersion, stored: dict | None) -> dict:
        """The TOMBSTONE event document carries what the version had when indexed; if the index
        never had it live, what the bucket has."""
        if stored is not None and not is_tombstone(stored):
            return event_document(TOMBSTONE, bundle.uuid, bundle.version, stored.get("manifest"), stored.get("files"))
        return self.bundles.event_document(replica, bundle)

    def _delete(self, replica: str, uuid: str, version: str) -> list[dict]:
        """Take a version whose manifest left the bucket out of the index, and announce it once.
        A notification of a manifest still there (stale, or written back by a repair) changes
        nothing, and neither does one of a version this replica never indexed."""
        uuid, version = normalize_uuid(uuid), normalize_version(version)
        doc_id = fqid(uuid, version)
        with self.indexes.serialized(replica, uuid):
            if self.bundles.version(replica, uuid, version).manifest is not None:
                logger.info("%s is still in %s's bucket: a deletion notice of it is ignored", doc_id, replica)
                return []
            stored = self.indexes.get(replica, doc_id)
            # Removed even when the live index lacks it: a running reindex may have read it already.
            self.indexes.remove(replica, doc_id)
            if stored is None:
                if self.journal.announced(replica, uuid, version, DELETE):
                    logger.debug("%s in %s: already deleted and announced", doc_id, replica)
                    return []
                if not any(self.journal.announced(replica, uuid, version, kind) for kind in (CREATE, TOMBSTONE)):
                    logger.info("%s was never indexed in %s: its deletion is not announced", doc_id, replica)
                    return []
            # What the version was when indexed (nothing of it is left in the bucket to read).
            live = stored is not None and not is_tombstone(stored)
            document = event_document(DELETE, uuid, version, stored.get("manifest") if live else None,
                                      stored.get("files") if live else None)
            return [self._announce(replica, uuid, version, DELETE, document)]

    def _store(self, replica: str, bundle: BundleVersion, event_type: str, document: dict, describe,
               files_left_out: dict[str, int] | None = None) -> dict | None:
        """Write ``document`` unless the index holds it already, then announce the change. Returns
        the ``bundle_indexed`` payload, or None when there was nothing to announce."""
        doc_id = fqid(bundle.uuid, bundle.version)
        stored = self.indexes.get(replica, doc_id)
        if stored == document:
            if self.journal.announced(replica, bundle.uuid, bundle.version, event_type):
                logger.debug("%s in %s: already indexed and announced", doc_id, replica)
                return None
        else:
            self.indexes.write(replica, doc_id, document)
        return self._announce(replica, bundle.uuid, bundle.version, event_type, describe(stored), files_left_out)

    def _announce(self, replica: str, uuid: str, version: str, event_type: str, document: dict,
                  files_left_out: dict[str, int] | None = None) -> dict:
        """Journal first, dispatch next, then mark it announced (a crash in between is redone by the
        redelivery); the ``bundle_indexed`` payload."""
        entry = self.journal.append(replica, event_type, uuid, version, document, files_left_out)
        payload = BundleIndexed().dump({
            "replica": replica, "uuid": uuid, "version": version, "event_type": event_type,
            "event_timestamp": entry["event_timestamp"], "document": entry["document"]})
        self.dispatch(events.BUNDLE_INDEXED, payload)
        self.journal.mark_announced(replica, uuid, version, event_type, entry["event_id"])
        logger.info("indexed %s %s in %s", event_type, fqid(uuid, version), replica)
        return payload
