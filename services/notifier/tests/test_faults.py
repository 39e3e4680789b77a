"""The notifier as `make up` runs it (``nameko run``, a process of its own) killed with SIGKILL while
a webhook delivery waits in the broker's retry delay queue: nothing of the delivery lived in the
process, so once restarted it makes the next attempt and the receiver accepts it exactly once."""
import os

from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ServiceRpcProxy

from shared import events
from shared.bundle_documents import event_document
from shared.identifiers import new_uuid, new_version
from devtools.processes import ServiceProcess
from devtools.waiting import queue_state, wait_until

from services.notifier.delivery import ATTEMPT_HEADER
from services.notifier.tests.conftest import KEY_ID, SECRET

DELIVERY_QUEUE = "evt-notifier-subscription_matched--notifier.handle_subscription_matched"
MATCHING_QUEUE = "evt-indexer-bundle_indexed--notifier.handle_bundle_indexed"
RETRY_DELAY = 3  # seconds: long enough to kill the process while the message waits, short for a test


def start(process: ServiceProcess, amqp_uri: str) -> ServiceProcess:
    """Start it and wait until it consumes both its event queues."""
    process.start()

    def consuming():
        assert process.alive, f"the notifier exited ({process.returncode}):\n{process.tail()}"
        states = [queue_state(amqp_uri, name) for name in (MATCHING_QUEUE, DELIVERY_QUEUE)]
        return all(state is not None and state[1] >= 1 for state in states)

    wait_until(consuming, 60, "the notifier consuming its queues", on_timeout=process.tail)
    return process


def test_a_delivery_waiting_for_its_retry_survives_a_notifier_crash(notifier_config, receiver, tmp_path):
    amqp_uri = notifier_config["AMQP_URI"]
    # A `nameko run` process takes its settings from the environment; a developer's own DSS_*
    # must not leak in and point it at a `make up` stack.
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("DSS_") and name not in ("AMQP_URI", "METRICS_PORT")}
    env.update({name: str(value) for name, value in notifier_config.items() if name.startswith("DSS_")})
    env.update({"AMQP_URI": amqp_uri, "DSS_NOTIFIER_METRICS_PORT": "0", "DSS_NOTIFY_RETRY_DELAYS": str(RETRY_DELAY)})
    notifier = start(ServiceProcess("notifier", env, tmp_path / "notifier.log"), amqp_uri)
    try:
        with ServiceRpcProxy("notifier", {"AMQP_URI": amqp_uri}, timeout=30) as rpc:
            subscription = rpc.put_subscription("aws", {"callback_url": receiver.url("/flaky/1/500"),
                                                        "hmac_secret_key": SECRET, "hmac_key_id": KEY_ID},
                                                {"email": "owner@example.org"})["uuid"]
        uuid, version = new_uuid(), new_version()
        event_dispatcher({"AMQP_URI": amqp_uri})("indexer", events.BUNDLE_INDEXED, {
            "replica": "aws", "uuid": uuid, "version": version, "event_type": "CREATE",
            "event_timestamp": "2026-11-25T01:02:03.000000Z",
            "document": event_document("CREATE", uuid, version, {"version": version, "files": []}, {})})

        delay_queue = f"{DELIVERY_QUEUE}.retry-{RETRY_DELAY}s"
        wait_until(lambda: (queue_state(amqp_uri, delay_queue) or (0, 0))[0] == 1, 20,
                   "the failed first attempt waiting in the delay queue", interval=0.05, on_timeout=notifier.tail)
        notifier.kill()
        assert [request.status for request in receiver.requests] == [500]
        # While the notifier is dead the delay ends: the message is back in its durable queue.
        wait_until(lambda: queue_state(amqp_uri, DELIVERY_QUEUE) == (1, 0), 10,
                   "the delivery back in the handler's queue")

        start(notifier, amqp_uri)
        wait_until(lambda: receiver.accepted(), 20, "the retried delivery accepted", on_timeout=notifier.tail)
        wait_until(lambda: queue_state(amqp_uri, DELIVERY_QUEUE) == (0, 1), 10, "the delivery acknowledged")
    finally:
        notifier.stop()
    # At least once: a kill between scheduling the retry and acknowledging the first delivery (the
    # ack is the last thing the handler sends) brings that delivery back too, beside the retry.
    statuses = [request.status for request in receiver.requests]
    attempts = [request.headers[ATTEMPT_HEADER.lower()] for request in receiver.requests]
    assert (statuses, attempts) in (([500, 200], ["1", "2"]), ([500, 200, 200], ["1", "1", "2"]),
                                    ([500, 200, 200], ["1", "2", "1"])), (statuses, attempts)
    transaction = receiver.requests[0].payload()["transaction_id"]
    for accepted in receiver.accepted():  # each one the receiver can tell is the same notification
        assert accepted.key_ids == (KEY_ID, KEY_ID) and accepted.payload()["subscription_id"] == subscription
        assert accepted.payload()["transaction_id"] == transaction
    assert "subscription_matched" in notifier.log() and SECRET not in notifier.log()
