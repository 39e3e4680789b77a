"""The replicator: makes every object written to one replica's main bucket appear, verified, in
the other's.

``handle_object_changed`` consumes ``object_changed`` events (a main bucket's change
notifications, bridged onto the bus by the replicator itself) and copies the object with
everything it depends on, in dependency order, each copy verified against its checksums before
it counts. Its message is acknowledged only after that, or once a failure is scheduled for a
retry on the broker (``DSS_REPLICATION_RETRY_DELAYS``) or dead-lettered (permanent errors: a
malformed key, an invalid source document, source bytes that do not match their key), so a crash
at any point means the work is redone, never lost. Every success dispatches ``object_replicated``.
"""
import logging


from shared import events
from shared.entrypoints import EventDispatcher, rpc
from shared.metrics import Metrics
from shared.tracing import Tracing
from shared.retry import PERMANENT_ERRORS, retrying_event_handler
from shared.schemas import ObjectChanged, ObjectReplicated, load_arguments, schema_instance

from services.replicator.bridge import gcs_notifications, s3_notifications
from services.replicator.dependencies import QueueMonitor, ReplicaStore
from services.replicator.schemas import ReplicateCall, VerifyCall

logger = logging.getLogger(__name__)


def _arguments(schema, **values) -> dict:
    return load_arguments(schema_instance(schema), values)


class ReplicatorService:
    name = "replicator"

    replicator = ReplicaStore()
    queues = QueueMonitor()
    metrics = Metrics()
    tracing = Tracing()
    dispatch = EventDispatcher()

    # The notification bridge: each cloud's change notifications become one `object_changed`
    # fact on the bus. The cloud message is acknowledged only once this worker has returned,
    # i.e. once the event is on the bus (the dispatcher waits for the broker's confirm).
    # The echo of a copy this process made (the destination's notification of it) is dropped by
    # the bridge before a worker runs (``ReplicaStore.is_echo``).
    @s3_notifications
    def handle_s3_notification(self, change):
        self.dispatch(events.OBJECT_CHANGED, schema_instance(ObjectChanged).dump(change))

    @gcs_notifications
    def handle_gcs_notification(self, change):
        self.dispatch(events.OBJECT_CHANGED, schema_instance(ObjectChanged).dump(change))

    @retrying_event_handler("replicator", events.OBJECT_CHANGED, give_up_on=PERMANENT_ERRORS,
                            delays_setting="replication_retry_delays")
    def handle_object_changed(self, payload):
        change = schema_instance(ObjectChanged).load(payload)
        if self.replicator.ignored(change):
            return None
        outcome = self.replicator.replicate(change["key"], change["replica"], size=change.get("size"))
        return self._replicated(outcome, change["event_time"])

    @rpc
    def replicate(self, key, source_replica, deep=False):
        """Copy ``key`` from ``source_replica`` to the other replica now (repairs, tests); ``deep``
        reads a blob already there when its metadata cannot tell whether it is intact."""
        call = _arguments(ReplicateCall, key=key, source_replica=source_replica, deep=deep)
        return self._replicated(self.replicator.replicate(call["key"], call["source_replica"], call["deep"]), None)

    @rpc
    def verify(self, key, deep=False):
        """Compare ``key`` in both replicas: ``{key, status, source, detail}``."""
        call = _arguments(VerifyCall, key=key, deep=deep)
        return self.replicator.verify(call["key"], call["deep"])

    @rpc
    def health(self):
        return {**self.replicator.health(), "queues": self.queues.health()}

    def _replicated(self, outcome, event_time):
        lag = self.replicator.observe_lag(outcome, event_time)
        payload = schema_instance(ObjectReplicated).dump({
            "source_replica": outcome.source, "destination_replica": outcome.destination, "key": outcome.key,
            "size": outcome.size, "copied": outcome.copied, "lag_seconds": lag})
        self.dispatch(events.OBJECT_REPLICATED, payload)
        logger.info("%s %s from %s to %s (%d bytes)", "copied" if outcome.copied else "already had", outcome.key,
                    outcome.source, outcome.destination, outcome.size)
        return payload
