"""The notifier's dependency providers, one per external system, each injecting a small domain API:

- ``SubscriptionStore``: each replica's main bucket (the subscriptions) and search index (the
  percolation of Elasticsearch subscriptions), as a ``subscriptions.SubscriptionStoreAPI``;
- ``Webhooks``: the subscribers' callback URLs, as a ``WebhookAPI`` making one signed attempt per
  call (``delivery.deliver``) and counting the outcomes.
"""
from __future__ import annotations

import datetime
import logging
from typing import Any

from nameko.extensions import DependencyProvider
from prometheus_client import Counter, Histogram

from shared.config import Settings
from shared.identifiers import REPLICAS
from shared.search import open_index_backend
from shared.storage import StorageProvider

from services.notifier.delivery import DeliveryResult, PermanentDeliveryError, RetryableDeliveryError, deliver
from services.notifier.subscriptions import SubscriptionCache, SubscriptionStoreAPI

logger = logging.getLogger(__name__)

NOTIFICATIONS = Counter("dss_notifications_total",
                        "Notification delivery attempts by outcome: delivered, retrying, dead_lettered, or dropped "
                        "(the subscription was deleted meanwhile).", ["replica", "outcome"])
NOTIFICATION_LAG = Histogram("dss_notification_lag_seconds",
                             "From a bundle event (its indexing) to its notification accepted by the subscriber.",
                             ["replica"],
                             buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 6 * 3600, 86400, 7 * 86400))


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
    """One signed attempt per call (``services.notifier.delivery.deliver``), counted by outcome."""

    def __init__(self, settings: Settings):
        self.settings = settings
        # The delivery handler's schedule (``delays_setting`` in service.py): past its last delay a
        # failed attempt is dead-lettered.
        self.delays = tuple(settings.notify_retry_delays)

    def deliver(self, replica: str, subscription: dict, payload: dict, attempt: int) -> DeliveryResult:
        try:
            result = deliver(subscription, payload, attempt, self.settings)
        except PermanentDeliveryError:
            NOTIFICATIONS.labels(replica, "dead_lettered").inc()
            raise
        except RetryableDeliveryError:
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
