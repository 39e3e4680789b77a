"""The notifier's external systems behind small domain APIs: the subscription store (each replica's
main bucket, and that replica's search index for the percolation of Elasticsearch subscriptions)
and the webhook sender.

Storage: ``subscriptions/{uuid}`` in each replica's main bucket, one JSON document
(``schemas.StoredSubscription``) per subscription. Keys outside the DSS layout are neither
replicated nor compared by ``dss-ops replicas``, so each replica keeps its own subscriptions. A
subscription is written once and never changed (PUT always makes a new uuid), so a document read
can be cached for good; only the set of current subscriptions changes, and a listing tells it.
Matching reuses a replica's listing for ``DSS_NOTIFY_SUBSCRIPTION_CACHE_SECONDS``; the owner's
RPCs and every delivery look at the bucket itself, so a deleted subscription is never delivered.

An Elasticsearch subscription is also registered with the replica's index backend
(``put_subscription``) so that percolation finds it. Order keeps the two consistent enough: a
percolator entry is written before its document (and removed again if the document cannot be
written) and removed before it (so a crash in between leaves a document whose retried delete
finishes the job); a percolator entry without a document is skipped when matching.
"""
from __future__ import annotations

import datetime
import logging
import time
import uuid as uuid_module
from typing import Any, Callable

from marshmallow import ValidationError
from nameko.extensions import DependencyProvider
from prometheus_client import Counter, Histogram

from shared.concurrency import green_map
from shared.bundle_documents import CREATE, index_document_of
from shared.config import Settings
from shared.identifiers import REPLICAS, bundle_url, is_uuid, new_uuid, normalize_uuid
from shared.search import open_index_backend, parse_search
from shared.storage import Replicas, StorageProvider
from shared.subscriptions import build_payload, jmespath_matches, matched_bundle
from shared.webhooks import (DeliveryResult, PermanentDeliveryError, RetryableDeliveryError, deliver, retry_schedule,
                             validate_subscription)

from services.notifier import exceptions as errors
from services.notifier.schemas import (DEFAULT_ENCODING, DEFAULT_METHOD, ELASTICSEARCH, JMESPATH, SECRET_FIELDS,
                                       StoredSubscription)

logger = logging.getLogger(__name__)

SUBSCRIPTIONS_PREFIX = "subscriptions/"
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8080"  # the gateway of `make up`, when DSS_PUBLIC_URL is empty
LOAD_CONCURRENCY = 16  # parallel reads of subscription documents not cached yet
# Fixed for good: a transaction id must come out the same for the same match in any release.
TRANSACTION_NAMESPACE = uuid_module.UUID("0b6f3c52-8a0e-4d4e-9b8e-3f7d3c2a9e61")

MATCHES = Counter("dss_subscription_matches_total", "Bundle events that matched a subscription.",
                  ["replica", "kind"])
NOTIFICATIONS = Counter("dss_notifications_total",
                        "Notification delivery attempts by outcome: delivered, retrying, dead_lettered, or dropped "
                        "(the subscription was deleted meanwhile).", ["replica", "outcome"])
NOTIFICATION_LAG = Histogram("dss_notification_lag_seconds",
                             "From a bundle event (its indexing) to its notification accepted by the subscriber.",
                             ["replica"],
                             buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 6 * 3600, 86400, 7 * 86400))

_STORED = StoredSubscription()


# --- pure helpers ----------------------------------------------------------------------------------

def subscription_key(uuid: str) -> str:
    return f"{SUBSCRIPTIONS_PREFIX}{uuid}"


def subscription_type(subscription: dict) -> str:
    return ELASTICSEARCH if subscription.get("es_query") is not None else JMESPATH


def without_secrets(subscription: dict) -> dict:
    return {name: value for name, value in subscription.items() if name not in SECRET_FIELDS}


def transaction_id(subscription_id: str, replica: str, bundle_uuid: str, bundle_version: str, event_type: str) -> str:
    """The same for every delivery of one match, so that a redelivered bundle event (or a retried
    webhook) carries the id a subscriber may have seen already."""
    name = "|".join((subscription_id, replica, f"{bundle_uuid}.{bundle_version}", event_type))
    return str(uuid_module.uuid5(TRANSACTION_NAMESPACE, name))


def notification_bundle_url(settings: Settings, replica: str, uuid: str, version: str) -> str:
    """The ``bundle_url`` a notification names: the gateway's public URL of that bundle version."""
    return bundle_url(settings.public_url or DEFAULT_PUBLIC_URL, uuid, version, replica)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- the cache the workers of one process share ----------------------------------------------------

class SubscriptionCache:
    """Documents by (replica, uuid), kept for good (a subscription never changes), and each
    replica's listing of subscription uuids, reused for ``ttl`` seconds."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self.documents: dict[tuple[str, str], dict] = {}
        self._listings: dict[str, tuple[float, list[str]]] = {}
        self._changes: dict[str, int] = {}  # per replica, bumped by every forget_listing

    def listing(self, replica: str) -> list[str] | None:
        entry = self._listings.get(replica)
        if entry is None or self.clock() - entry[0] >= self.ttl:
            return None
        return entry[1]

    def changes(self, replica: str) -> int:
        return self._changes.get(replica, 0)

    def remember_listing(self, replica: str, uuids: list[str], started: float, changes: int) -> None:
        # A listing that began before this process changed the set may miss the change: not kept.
        if self.changes(replica) == changes:
            self._listings[replica] = (started, uuids)

    def forget_listing(self, replica: str) -> None:
        self._changes[replica] = self.changes(replica) + 1
        self._listings.pop(replica, None)


# --- the subscription store ------------------------------------------------------------------------

class SubscriptionStoreAPI:
    def __init__(self, replicas: Replicas, indexes: dict, settings: Settings, cache: SubscriptionCache):
        self.replicas = replicas
        self.indexes = indexes
        self.settings = settings
        self.cache = cache

    def health(self) -> dict:
        replicas = self.replicas.health()
        return {"ok": all(state["ok"] for state in replicas.values()), **replicas}

    # --- the owner's calls (answers never carry the secret key) ---------------------------------
    def create(self, replica: str, fields: dict, owner: str) -> dict:
        """Validate and store a new subscription of ``owner``; the stored document, without secrets."""
        storage = self.replicas[replica]
        es_query, jmespath_query = fields.get("es_query"), fields.get("jmespath_query")
        if es_query is not None and jmespath_query is not None:
            raise errors.conflicting_queries()
        validate_subscription(fields, self.settings)  # callback URL (SSRF rules), options, JMESPath, attachments
        if es_query is not None:
            parse_search(es_query)  # ElasticsearchBadRequest (400) before anything is written
        limit = self.settings.notify_max_subscriptions
        owned = sum(doc["owner"] == owner for doc in self._documents(replica, self._listing(replica, fresh=True)))
        if owned >= limit:
            raise errors.too_many_subscriptions(owner, replica, limit)
        uuid = new_uuid()
        doc = {"uuid": uuid, "owner": owner, "replica": replica, "created": utc_now(),
               "callback_url": fields["callback_url"], "method": fields.get("method") or DEFAULT_METHOD,
               "encoding": fields.get("encoding") or DEFAULT_ENCODING,
               **{name: fields.get(name) for name in ("form_fields", "payload_form_field", "hmac_key_id",
                                                        "attachments")}}
        if fields.get("hmac_secret_key") is not None:
            doc["hmac_secret_key"] = fields["hmac_secret_key"]
        if es_query is not None:
            doc["es_query"] = es_query
        else:
            doc["jmespath_query"] = jmespath_query
        try:
            doc = _STORED.dump(_STORED.load(doc))
        except ValidationError as error:  # a shape the validators above let through: still a 400
            raise errors.illegal_arguments(f"invalid subscription: {str(error.messages)[:300]}") from None
        if es_query is not None:
            self.indexes[replica].put_subscription(uuid, es_query)
        try:
            if storage.write_json_once(subscription_key(uuid), doc) is not None:
                raise RuntimeError(f"a fresh uuid {uuid} is taken in replica {replica}")
        except Exception:
            if es_query is not None:
                self._forget_percolation(replica, uuid)
            raise
        self.cache.documents[(replica, uuid)] = doc
        self.cache.forget_listing(replica)  # takes effect at once in this process
        logger.info("subscription %s (%s) of %s created in %s", uuid, subscription_type(doc), owner, replica)
        return without_secrets(doc)

    def get_owned(self, replica: str, uuid: str, owner: str) -> dict:
        return without_secrets(self._owned(replica, uuid, owner))

    def list_owned(self, replica: str, owner: str, kind: str) -> list[dict]:
        """The owner's subscriptions of ``kind`` (jmespath or elasticsearch), oldest first."""
        docs = self._documents(replica, self._listing(replica, fresh=True))
        owned = [without_secrets(doc) for doc in docs if doc["owner"] == owner and subscription_type(doc) == kind]
        return sorted(owned, key=lambda doc: (doc["created"], doc["uuid"]))

    def delete_owned(self, replica: str, uuid: str, owner: str) -> str:
        """Delete the owner's subscription; the time it was deleted. Safe to retry after a failure
        halfway: each step succeeds when there is nothing left for it to remove."""
        doc = self._owned(replica, uuid, owner)
        uuid = doc["uuid"]
        if subscription_type(doc) == ELASTICSEARCH:
            self.indexes[replica].delete_subscription(uuid)
        self.replicas[replica].delete(subscription_key(uuid))
        self.cache.documents.pop((replica, uuid), None)
        self.cache.forget_listing(replica)
        logger.info("subscription %s of %s deleted in %s", uuid, owner, replica)
        return utc_now()

    # --- matching and delivery -----------------------------------------------------------------
    def notifications(self, event: dict) -> list[dict]:
        """The ``subscription_matched`` payloads of a ``bundle_indexed`` event: one per matching
        subscription of its replica, with a transaction id of that match."""
        replica, event_type, document = event["replica"], event["event_type"], event["document"]
        try:
            bundle = matched_bundle(document)
        except ValueError as error:
            raise errors.unusable_event(str(error)) from None
        if bundle != (event["uuid"], event["version"]) or document.get("event_type", event_type) != event_type:
            raise errors.unusable_event(f"the event document does not describe the {event_type} of "
                                        f"{event['uuid']}.{event['version']}")
        url = notification_bundle_url(self.settings, replica, event["uuid"], event["version"])
        notifications = []
        for subscription in self.match(replica, event_type, document):
            transaction = transaction_id(subscription["uuid"], replica, event["uuid"], event["version"], event_type)
            notifications.append({
                "replica": replica, "subscription_id": subscription["uuid"], "transaction_id": transaction,
                "payload": build_payload(subscription, document, transaction, event["event_timestamp"], url)})
        return notifications

    def match(self, replica: str, event_type: str, document: dict) -> list[dict]:
        """The subscriptions of ``replica`` a bundle event document matches: JMESPath ones whose
        query is truthy on it (every event when they have none), and, for a CREATE, the
        Elasticsearch ones percolation finds for its index document."""
        matched = [doc for doc in self._documents(replica, self._listing(replica, fresh=False))
                   if subscription_type(doc) == JMESPATH and jmespath_matches(doc.get("jmespath_query"), document)]
        if event_type == CREATE:
            for uuid in self.indexes[replica].percolate(index_document_of(document)):
                doc = self._document(replica, uuid)
                if doc is None:  # deleted since, or a crash between the two writes of a create
                    logger.info("percolator entry %s of %s has no subscription document; skipped", uuid, replica)
                elif subscription_type(doc) == ELASTICSEARCH:
                    matched.append(doc)
        for doc in matched:
            MATCHES.labels(replica, subscription_type(doc)).inc()
        return sorted(matched, key=lambda doc: doc["uuid"])

    def for_delivery(self, replica: str, uuid: str) -> dict | None:
        """The stored subscription, read from the bucket now (not the cache): None once deleted."""
        uuid = normalize_uuid(uuid)
        doc = self.replicas[replica].find_json(subscription_key(uuid))
        if doc is None:
            self.cache.documents.pop((replica, uuid), None)
        else:
            self.cache.documents[(replica, uuid)] = doc
        return doc

    # --- reading -----------------------------------------------------------------------------------
    def _owned(self, replica: str, uuid: str, owner: str) -> dict:
        uuid = normalize_uuid(uuid)
        doc = self.replicas[replica].find_json(subscription_key(uuid))  # not cached: it may be gone
        if doc is None:
            raise errors.subscription_not_found(replica, uuid)
        if doc["owner"] != owner:
            raise errors.not_owner(owner, uuid)
        return doc

    def _listing(self, replica: str, fresh: bool) -> list[str]:
        """uuids of ``replica``'s subscriptions: listed now, or (``fresh`` False) reused if recent."""
        uuids = None if fresh else self.cache.listing(replica)
        if uuids is None:
            started, changes = self.cache.clock(), self.cache.changes(replica)
            keys = self.replicas[replica].list_keys(SUBSCRIPTIONS_PREFIX)
            uuids = [uuid for uuid in (key[len(SUBSCRIPTIONS_PREFIX):] for key in keys) if is_uuid(uuid)]
            self.cache.remember_listing(replica, uuids, started, changes)
        return uuids

    def _documents(self, replica: str, uuids: list[str]) -> list[dict]:
        """The documents of ``uuids`` (read once, then cached); one deleted meanwhile is left out."""
        storage = self.replicas[replica]
        missing = [uuid for uuid in uuids if (replica, uuid) not in self.cache.documents]
        found = green_map(lambda uuid: storage.find_json(subscription_key(uuid)), missing, LOAD_CONCURRENCY)
        for uuid, doc in zip(missing, found):
            if doc is not None:
                self.cache.documents[(replica, uuid)] = doc
        return [self.cache.documents[(replica, uuid)] for uuid in uuids if (replica, uuid) in self.cache.documents]

    def _document(self, replica: str, uuid: str) -> dict | None:
        if not is_uuid(uuid):
            return None
        found = self._documents(replica, [uuid])
        return found[0] if found else None

    def _forget_percolation(self, replica: str, uuid: str) -> None:
        try:
            self.indexes[replica].delete_subscription(uuid)
        except Exception:  # noqa: BLE001 - an orphan entry is skipped by matching; the first error matters
            logger.warning("could not remove the percolator entry of the unwritten subscription %s in %s", uuid,
                           replica, exc_info=True)


class SubscriptionStore(StorageProvider):
    """Injects a ``SubscriptionStoreAPI`` over both replicas' buckets and search indexes (opened
    once per process), sharing one ``SubscriptionCache``. Only searches and the subscription
    registry of the index are used: the indexer alone writes documents."""

    api_class = SubscriptionStoreAPI

    def setup(self):
        super().setup()
        self.indexes = {replica: open_index_backend(self.settings, replica) for replica in REPLICAS}
        self.cache = SubscriptionCache(self.settings.notify_subscription_cache_seconds)

    def stop(self):
        for index in self.indexes.values():
            index.close()

    def get_dependency(self, worker_ctx):
        return self.api_class(self.replicas, self.indexes, self.settings, self.cache)


# --- webhooks ----------------------------------------------------------------------------------------

def _seconds_since(timestamp: Any) -> float | None:
    try:
        moment = datetime.datetime.fromisoformat(str(timestamp))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return (datetime.datetime.now(datetime.timezone.utc) - moment).total_seconds()


class WebhookAPI:
    """One signed attempt per call (``shared.webhooks.deliver``), counted by outcome."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.delays = retry_schedule(settings)

    def deliver(self, replica: str, subscription: dict, payload: dict, attempt: int) -> DeliveryResult:
        try:
            result = deliver(subscription, payload, attempt, self.settings)
        except PermanentDeliveryError:
            NOTIFICATIONS.labels(replica, "dead_lettered").inc()
            raise
        except RetryableDeliveryError:
            # The handler's delays are these same ones: past the last, the message is dead-lettered.
            NOTIFICATIONS.labels(replica, "retrying" if attempt <= len(self.delays) else "dead_lettered").inc()
            raise
        NOTIFICATIONS.labels(replica, "delivered").inc()
        lag = _seconds_since(payload.get("event_timestamp"))
        if lag is not None:
            NOTIFICATION_LAG.labels(replica).observe(max(lag, 0.0))
        return result

    def dropped(self, replica: str, subscription_id: str, transaction_id: str) -> None:
        NOTIFICATIONS.labels(replica, "dropped").inc()
        logger.info("notification %s not delivered: subscription %s no longer exists in %s", transaction_id,
                    subscription_id, replica)


class Webhooks(DependencyProvider):
    def setup(self):
        self.settings = Settings.from_config(self.container.config)

    def get_dependency(self, worker_ctx):
        return WebhookAPI(self.settings)
