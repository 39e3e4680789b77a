"""The notifier: owns subscriptions and delivers their webhooks.

The RPCs (called by the gateway for /v1/subscriptions) create, read, list and delete a caller's
subscriptions of one replica; the rules live in ``SubscriptionStoreAPI`` (subscriptions.py).

Matching: ``handle_bundle_indexed`` consumes the indexer's ``bundle_indexed`` events. JMESPath
subscriptions of the event's replica fire when their query is truthy on the bundle event document
(no query: every event); Elasticsearch ones fire on a CREATE when percolation of its index
document finds them. Each match is dispatched as a ``subscription_matched`` event with a
transaction id derived from the subscription and the bundle event, so a redelivered event yields
the same ids; the bundle event is acknowledged only once every dispatch was confirmed.

Delivery: ``handle_subscription_matched`` makes one signed webhook attempt per message
(``delivery.deliver``), numbered by the message's attempt. A retryable failure goes back to
the broker's delay queues on the ``DSS_NOTIFY_RETRY_DELAYS`` schedule (durable: it survives a
restart of the notifier), a permanent one to the dead-letter queue at once; a subscription deleted
meanwhile is dropped. Delivery is at least once: a subscriber deduplicates by transaction id.
"""
import logging

from marshmallow import EXCLUDE, ValidationError

from shared import events
from shared.entrypoints import EventDispatcher, rpc
from shared.exceptions import InvalidParameter
from shared.metrics import Metrics
from shared.tracing import Tracing
from shared.retry import AttemptNumber, retrying_event_handler
from shared.schemas import BundleIndexed, SubscriptionMatched, load_arguments

from services.notifier import exceptions as errors
from services.notifier.delivery import PermanentDeliveryError
from services.notifier.dependencies import SubscriptionStore, Webhooks
from services.notifier.schemas import ListSubscriptionsCall, PutSubscriptionCall, SubscriptionCall

logger = logging.getLogger(__name__)

# Messages no further attempt can help: dead-lettered at once.
UNUSABLE_EVENTS = (InvalidParameter, ValidationError)
UNDELIVERABLE = (PermanentDeliveryError, InvalidParameter, ValidationError)


def _arguments(schema, **values) -> dict:
    caller = values.get("caller")
    if not isinstance(caller, dict) or not caller.get("email"):
        raise errors.authentication_required()
    return load_arguments(schema(), values)


class NotifierService:
    name = "notifier"

    subscriptions = SubscriptionStore()
    webhooks = Webhooks()
    attempt = AttemptNumber()
    metrics = Metrics()
    tracing = Tracing()
    dispatch = EventDispatcher()

    # --- subscriptions -------------------------------------------------------------------------------
    @rpc
    def put_subscription(self, replica, subscription, caller=None):
        call = _arguments(PutSubscriptionCall, replica=replica, subscription=subscription, caller=caller)
        created = self.subscriptions.create(call["replica"], call["subscription"], call["caller"]["email"])
        return {"uuid": created["uuid"]}

    @rpc
    def get_subscription(self, replica, uuid, caller=None):
        call = _arguments(SubscriptionCall, replica=replica, uuid=uuid, caller=caller)
        return self.subscriptions.get_owned(call["replica"], call["uuid"], call["caller"]["email"])

    @rpc
    def list_subscriptions(self, replica, caller=None, subscription_type="jmespath"):
        call = _arguments(ListSubscriptionsCall, replica=replica, caller=caller, subscription_type=subscription_type)
        return {"subscriptions": self.subscriptions.list_owned(call["replica"], call["caller"]["email"],
                                                               call["subscription_type"])}

    @rpc
    def delete_subscription(self, replica, uuid, caller=None):
        call = _arguments(SubscriptionCall, replica=replica, uuid=uuid, caller=caller)
        return {"timeDeleted": self.subscriptions.delete_owned(call["replica"], call["uuid"],
                                                               call["caller"]["email"])}

    @rpc
    def health(self):
        return self.subscriptions.health()

    # --- matching ------------------------------------------------------------------------------------
    @retrying_event_handler("indexer", events.BUNDLE_INDEXED, give_up_on=UNUSABLE_EVENTS)
    def handle_bundle_indexed(self, payload):
        event = BundleIndexed(unknown=EXCLUDE).load(payload)
        notifications = self.subscriptions.notifications(event)
        for notification in notifications:
            # The dispatcher waits for the broker's confirm of each: returning acks the bundle event.
            self.dispatch(events.SUBSCRIPTION_MATCHED, SubscriptionMatched().dump(notification))
        if notifications:
            logger.info("%s of %s.%s in %s matched %d subscription(s)", event["event_type"], event["uuid"],
                        event["version"], event["replica"], len(notifications))
        return {"matched": [notification["subscription_id"] for notification in notifications]}

    # --- delivery ------------------------------------------------------------------------------------
    @retrying_event_handler("notifier", events.SUBSCRIPTION_MATCHED, delays_setting="notify_retry_delays",
                            give_up_on=UNDELIVERABLE)
    def handle_subscription_matched(self, payload):
        notification = SubscriptionMatched(unknown=EXCLUDE).load(payload)
        replica, subscription_id = notification["replica"], notification["subscription_id"]
        subscription = self.subscriptions.for_delivery(replica, subscription_id)
        if subscription is None:
            self.webhooks.dropped(replica, subscription_id, notification["transaction_id"])
            return None
        result = self.webhooks.deliver(replica, subscription, notification["payload"], self.attempt)
        return {"subscription_id": subscription_id, "transaction_id": notification["transaction_id"],
                "status": result.status, "attempt": result.attempt}
