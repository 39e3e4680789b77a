"""The subscription store: each owner's subscriptions of a replica (made, read, listed, deleted),
the matching of bundle events against them, and the disabling of those whose queries break the
limits of evaluation. ``SubscriptionStoreAPI`` is what ``dependencies.SubscriptionStore`` injects;
it works over each replica's main bucket and that replica's search index (for the percolation of
Elasticsearch subscriptions).

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

Disabled subscriptions: one whose expressions break the limits of evaluation (the cost model or
the budget of ``bounded_jmespath``, a query stored before a stricter rule, or an
Elasticsearch query whose percolation fails with a typed 4xx error) is disabled instead of
failing the event for everyone: a marker ``subscriptions-disabled/{uuid}``
``{uuid, code, reason, at}`` is written once in that replica's main bucket (per replica, like the
subscriptions), its percolator entry is removed, and matching skips it from then on (at once in
this process, within ``DSS_NOTIFY_SUBSCRIPTION_CACHE_SECONDS`` in others, which list the markers
as they list the subscriptions). The owner's reads show ``disabled: {code, reason, at}``; the
way back is to delete it (the marker goes too) and make a new one, which the rules of the day
judge. Notifications matched before it was disabled are still delivered.
"""
from __future__ import annotations

import datetime
import logging
import time
import uuid as uuid_module
from typing import Any, Callable

import eventlet
from prometheus_client import Counter

from shared.bundle_documents import CREATE, index_document_of
from shared.concurrency import green_map
from shared.config import Settings
from shared.exceptions import DSSError, InvalidParameter, Unavailable
from shared.identifiers import bundle_url, is_uuid, new_uuid, normalize_uuid
from shared.search import QueryLimits, parse_search
from shared.search.documents import flatten
from shared.schemas import (DEFAULT_WEBHOOK_ENCODING, DEFAULT_WEBHOOK_METHOD, ELASTICSEARCH, JMESPATH,
                            load_arguments)
from shared.search.evaluate import matches
from shared.storage import Replicas

from services.notifier import exceptions as errors
from services.notifier.delivery import validate_subscription
from services.notifier.notifications import build_payload, jmespath_limits, jmespath_matches, matched_bundle
from services.notifier.schemas import SECRET_FIELDS, StoredSubscription

logger = logging.getLogger(__name__)

SUBSCRIPTIONS_PREFIX = "subscriptions/"
DISABLED_PREFIX = "subscriptions-disabled/"  # not under SUBSCRIPTIONS_PREFIX: listing those stays one prefix
DISABLED_FIELDS = ("code", "reason", "at")  # of a marker, what the owner is shown
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8080"  # the gateway of `make up`, when DSS_PUBLIC_URL is empty
LOAD_CONCURRENCY = 16  # parallel reads of subscription documents not cached yet
# Fixed for good: a transaction id must come out the same for the same match in any release.
TRANSACTION_NAMESPACE = uuid_module.UUID("0b6f3c52-8a0e-4d4e-9b8e-3f7d3c2a9e61")

MATCHES = Counter("dss_subscription_matches_total", "Bundle events that matched a subscription.",
                  ["replica", "kind"])
DISABLED = Counter("dss_subscriptions_disabled_total",
                   "Subscriptions disabled because their queries broke the limits of evaluation, by error code.",
                   ["replica", "code"])

_STORED = StoredSubscription()


# --- pure helpers ----------------------------------------------------------------------------------

def subscription_key(uuid: str) -> str:
    return f"{SUBSCRIPTIONS_PREFIX}{uuid}"


def disabled_key(uuid: str) -> str:
    return f"{DISABLED_PREFIX}{uuid}"


def is_subscription_fault(error: BaseException) -> bool:
    """Whether an error of evaluating or percolating a subscription's query is the query's fault
    (a typed 4xx error, or nesting too deep for the evaluator) rather than a passing one."""
    return isinstance(error, RecursionError) or (isinstance(error, DSSError) and not isinstance(error, Unavailable))


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
    replica's listing of subscription uuids, reused for ``ttl`` seconds; likewise the markers of
    disabled subscriptions (a subscription never comes back from disabled) and their listing."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self.documents: dict[tuple[str, str], dict] = {}
        self.disabled: dict[tuple[str, str], dict] = {}
        self._listings: dict[str, tuple[float, list[str]]] = {}
        self._disabled_listings: dict[str, tuple[float, frozenset[str]]] = {}
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

    def disabled_listing(self, replica: str) -> frozenset[str] | None:
        entry = self._disabled_listings.get(replica)
        if entry is None or self.clock() - entry[0] >= self.ttl:
            return None
        return entry[1]

    def remember_disabled_listing(self, replica: str, uuids: frozenset[str], started: float) -> None:
        # A marker this process writes meanwhile is in ``disabled`` anyway: no change count needed.
        self._disabled_listings[replica] = (started, uuids)


# --- the subscription store ------------------------------------------------------------------------

class SubscriptionStoreAPI:
    def __init__(self, replicas: Replicas, indexes: dict, settings: Settings, cache: SubscriptionCache):
        self.replicas = replicas
        self.indexes = indexes
        self.settings = settings
        self.cache = cache
        self.limits = jmespath_limits(settings)
        self.query_limits = QueryLimits.from_settings(settings)

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
            parse_search(es_query, self.query_limits)  # 400 before anything is written
        limit = self.settings.notify_max_subscriptions
        owned = sum(doc["owner"] == owner for doc in self._documents(replica, self._listing(replica, fresh=True)))
        if owned >= limit:
            raise errors.too_many_subscriptions(owner, replica, limit)
        uuid = new_uuid()
        doc = {"uuid": uuid, "owner": owner, "replica": replica, "created": utc_now(),
               "callback_url": fields["callback_url"], "method": fields.get("method") or DEFAULT_WEBHOOK_METHOD,
               "encoding": fields.get("encoding") or DEFAULT_WEBHOOK_ENCODING,
               **{name: fields.get(name) for name in ("form_fields", "payload_form_field", "hmac_key_id",
                                                        "attachments")}}
        if fields.get("hmac_secret_key") is not None:
            doc["hmac_secret_key"] = fields["hmac_secret_key"]
        if es_query is not None:
            doc["es_query"] = es_query
        else:
            doc["jmespath_query"] = jmespath_query
        # A shape the validators above let through is still a 400.
        doc = _STORED.dump(load_arguments(_STORED, doc, where="subscription"))
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
        """The subscription without secrets; with ``disabled: {code, reason, at}`` if it was disabled."""
        doc = self._owned(replica, uuid, owner)
        return self._shown(doc, self._marker(replica, doc["uuid"]))

    def list_owned(self, replica: str, owner: str, kind: str) -> list[dict]:
        """The owner's subscriptions of ``kind`` (jmespath or elasticsearch), oldest first, as
        ``get_owned`` shows them."""
        docs = self._documents(replica, self._listing(replica, fresh=True))
        owned = [doc for doc in docs if doc["owner"] == owner and subscription_type(doc) == kind]
        disabled = self._disabled(replica, fresh=True)
        shown = [self._shown(doc, self._marker(replica, doc["uuid"]) if doc["uuid"] in disabled else None)
                 for doc in owned]
        return sorted(shown, key=lambda doc: (doc["created"], doc["uuid"]))

    def delete_owned(self, replica: str, uuid: str, owner: str) -> str:
        """Delete the owner's subscription; the time it was deleted. Safe to retry after a failure
        halfway: each step succeeds when there is nothing left for it to remove. A marker of its
        being disabled goes last (one left behind by a crash names a uuid never used again)."""
        doc = self._owned(replica, uuid, owner)
        uuid = doc["uuid"]
        if subscription_type(doc) == ELASTICSEARCH:
            self.indexes[replica].delete_subscription(uuid)
        self.replicas[replica].delete(subscription_key(uuid))
        self.cache.documents.pop((replica, uuid), None)
        self.cache.forget_listing(replica)
        self.replicas[replica].delete(disabled_key(uuid))
        self.cache.disabled.pop((replica, uuid), None)
        logger.info("subscription %s of %s deleted in %s", uuid, owner, replica)
        return utc_now()

    @staticmethod
    def _shown(doc: dict, marker: dict | None) -> dict:
        shown = without_secrets(doc)
        if marker is not None:
            shown["disabled"] = {name: marker.get(name) for name in DISABLED_FIELDS}
        return shown

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
        for subscription in self._candidates(replica, event_type, document):
            transaction = transaction_id(subscription["uuid"], replica, event["uuid"], event["version"], event_type)
            payload = self._payload(replica, subscription, document, transaction, event["event_timestamp"], url)
            if payload is not None:
                MATCHES.labels(replica, subscription_type(subscription)).inc()
                notifications.append({"replica": replica, "subscription_id": subscription["uuid"],
                                      "transaction_id": transaction, "payload": payload})
            eventlet.sleep(0)  # each evaluation is bounded; between two, the other green threads run
        return notifications

    def _candidates(self, replica: str, event_type: str, document: dict) -> list[dict]:
        """The subscriptions of ``replica`` that may fire on a bundle event document, by uuid, none
        of them disabled: every JMESPath one (its query decides), and, for a CREATE, the
        Elasticsearch ones percolation finds for its index document."""
        disabled = self._disabled(replica, fresh=False)
        candidates = [doc for doc in self._documents(replica, self._listing(replica, fresh=False))
                      if subscription_type(doc) == JMESPATH and doc["uuid"] not in disabled]
        if event_type == CREATE:
            for uuid in self._percolate(replica, index_document_of(document)):
                doc = self._document(replica, uuid)
                if doc is None:  # deleted since, or a crash between the two writes of a create
                    logger.info("percolator entry %s of %s has no subscription document; skipped", uuid, replica)
                elif subscription_type(doc) == ELASTICSEARCH and uuid not in disabled:
                    candidates.append(doc)
        return sorted(candidates, key=lambda doc: doc["uuid"])

    def _payload(self, replica: str, subscription: dict, document: dict, transaction: str, timestamp: Any,
                 url: str) -> dict | None:
        """The notification body if ``subscription`` fires on ``document`` (its query, then its
        attachments, evaluated within one budget), else None; None too when its expressions break
        the limits, and then it is disabled."""
        budget = self.limits.budget()
        try:
            if subscription_type(subscription) == JMESPATH and not jmespath_matches(
                    subscription.get("jmespath_query"), document, budget):
                return None
            return build_payload(subscription, document, transaction, timestamp, url, budget)
        except InvalidParameter as broken:  # the subscription's expressions, whatever the document
            self._disable(replica, subscription, broken.error_code, broken.title)
            return None

    def _percolate(self, replica: str, index_document: dict) -> list[str]:
        """The uuids percolation finds. A subscription whose query the engine refuses (beyond
        today's limits, or over its work budget on this document) is disabled, the others matched.
        When percolation as a whole fails for a query's fault (a cluster refusing one), the
        Elasticsearch subscriptions that fail alone with the project's own evaluator are disabled,
        which takes them out of the percolator, and it runs once more; a failure no subscription
        explains is raised (the event is retried)."""
        index = self.indexes[replica]
        refused: list[tuple[str, DSSError]] = []
        try:
            found = index.percolate(index_document, refused=lambda uuid, error: refused.append((uuid, error)))
        except Exception as error:  # noqa: BLE001 - sorted out below, the rest raised again
            if not is_subscription_fault(error):
                raise
            failing = self._failing_percolations(replica, index_document)
            if not failing:
                raise
            logger.warning("percolation in %s failed (%s); %d subscription(s) at fault", replica,
                           type(error).__name__, len(failing))
            for doc, code, reason in failing:
                self._disable(replica, doc, code, reason)
            return index.percolate(index_document)
        for uuid, error in refused:
            doc = self._document(replica, uuid)
            if doc is not None:
                self._disable(replica, doc, error.error_code, error.title)
        return found

    def _failing_percolations(self, replica: str, index_document: dict) -> list[tuple[dict, str, str]]:
        """(subscription, code, reason) of each Elasticsearch subscription whose query alone fails
        on ``index_document`` with the project's own evaluator; disabled ones included, as their
        percolator entry may be back (a reindex) or may not have been removed."""
        flat = flatten(index_document)
        failing = []
        for doc in self._documents(replica, self._listing(replica, fresh=False)):
            if subscription_type(doc) != ELASTICSEARCH:
                continue
            try:
                matches(parse_search(doc["es_query"], self.query_limits), flat)
            except Exception as error:  # noqa: BLE001 - only a fault of this query counts
                if not is_subscription_fault(error):
                    raise
                if isinstance(error, DSSError):
                    failing.append((doc, error.error_code, error.title))
                else:
                    failing.append((doc, "es_query_too_deep", "es_query nests too deeply to be matched"))
        return failing

    def _disable(self, replica: str, doc: dict, code: str, reason: str) -> None:
        """Record for good that ``doc`` is disabled (written before the event is acknowledged) and
        take it out of the percolator."""
        uuid = doc["uuid"]
        marker = {"uuid": uuid, "code": code, "reason": reason[:1000], "at": utc_now()}
        existing = self.replicas[replica].write_json_once(disabled_key(uuid), marker)
        self.cache.disabled[(replica, uuid)] = existing or marker
        if subscription_type(doc) == ELASTICSEARCH:
            self._forget_percolation(replica, uuid)
        if existing is None:
            DISABLED.labels(replica, code).inc()
            logger.warning("subscription %s of %s in %s disabled (%s): %s", uuid, doc["owner"], replica, code,
                           marker["reason"])

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

    def _disabled(self, replica: str, fresh: bool) -> frozenset[str]:
        """uuids of ``replica``'s disabled subscriptions: those this process knows of, and the
        markers listed now or (``fresh`` False) recently."""
        uuids = None if fresh else self.cache.disabled_listing(replica)
        if uuids is None:
            started = self.cache.clock()
            keys = self.replicas[replica].list_keys(DISABLED_PREFIX)
            uuids = frozenset(uuid for uuid in (key[len(DISABLED_PREFIX):] for key in keys) if is_uuid(uuid))
            self.cache.remember_disabled_listing(replica, uuids, started)
        known = {uuid for (where, uuid) in self.cache.disabled if where == replica}
        return uuids | known

    def _marker(self, replica: str, uuid: str) -> dict | None:
        """The marker of a disabled subscription, None if it is not disabled (not cached then)."""
        marker = self.cache.disabled.get((replica, uuid))
        if marker is None:
            marker = self.replicas[replica].find_json(disabled_key(uuid))
            if marker is not None:
                self.cache.disabled[(replica, uuid)] = marker
        return marker

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
            logger.warning("could not remove the percolator entry of subscription %s in %s", uuid, replica,
                           exc_info=True)
