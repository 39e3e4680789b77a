"""`make up BROKER=cluster` (devtools.stack.cluster) on a cluster of the test's own: every durable
queue the services declare is a quorum queue with the delivery limit; a message that kills its
consumer ends in its dead-letter queue (where `dss-ops dead-letters` finds it) after a few
deliveries; and a service keeps consuming, through another node, when the node holding its queue's
leader is killed with kill -9."""
import io

import pytest
from kombu import Connection, Queue
from nameko.standalone.events import event_dispatcher

from devtools.stack.cluster import CATCH_ALL_QUEUE, DELIVERY_LIMIT, UNGUARDED
from devtools.waiting import wait_until
from ops import dead_letters
from services.bundles.service import BundlesService
from services.checkout.service import CheckoutService
from services.files.service import FilesService
from services.gateway.service import GatewayService
from services.indexer.service import IndexerService
from services.notifier.service import NotifierService
from services.replicator.service import ReplicatorService
from shared.retry import DEAD_SUFFIX, retrying_event_handler

pytestmark = pytest.mark.cluster

SERVICES = (GatewayService, FilesService, BundlesService, IndexerService, NotifierService, CheckoutService,
            ReplicatorService)


def queues(cluster) -> dict[str, dict]:
    return {q["name"]: q for q in cluster.api(0, "queues/%2F")}


def test_every_service_queue_is_quorum_with_a_delivery_limit(cluster, service_config, web_config, runner_factory):
    config = {**service_config, **web_config, "AMQP_URI": cluster.uri()}
    runner = runner_factory(config, *SERVICES)
    runner.start()
    guarded = cluster.guard_queues()
    assert {"rpc-files", "rpc-bundles", "rpc-replicator", "rpc-indexer", "rpc-notifier", "rpc-checkout"} <= set(guarded)

    def guarded_queues():
        found = {name: queue for name, queue in queues(cluster).items()
                 if queue["durable"] and not queue["auto_delete"] and not queue.get("exclusive")}
        waiting = [name for name, queue in found.items() if not queue.get("effective_policy_definition")
                   and not UNGUARDED.search(name) and name != CATCH_ALL_QUEUE]
        return found if found and not waiting else None

    durable = wait_until(guarded_queues, 15, "every queue's policy in effect")
    declared = queues(cluster)
    assert {queue["type"] for queue in durable.values()} == {"quorum"}
    for name, queue in durable.items():
        if UNGUARDED.search(name) or name == CATCH_ALL_QUEUE:
            continue
        assert queue["effective_policy_definition"] == {
            "delivery-limit": DELIVERY_LIMIT, "dead-letter-exchange": "",
            "dead-letter-routing-key": name + DEAD_SUFFIX}, name
        assert declared[name + DEAD_SUFFIX]["type"] == "quorum"


def test_a_message_that_kills_its_consumer_is_dead_lettered(cluster, request):
    name = "evt-test-poison--test.handle_poison"
    with Connection(cluster.uri()) as connection:
        channel = connection.channel()
        Queue(name, durable=True, auto_delete=False)(channel).declare()
        cluster.guard_queues()
        wait_until(lambda: queues(cluster)[name].get("effective_policy_definition"), 15, "the policy in effect")
        connection.Producer(channel).publish({"poison": True}, routing_key=name, exchange="", serializer="json")
        channel.close()
    crashes = 0
    while True:
        # A consumer that dies holding the message: taken unacknowledged, then its connection dropped.
        with Connection(cluster.uri()) as connection:
            message = Queue(name)(connection.channel()).get(no_ack=False)
        if message is None:
            break
        crashes += 1
        assert crashes <= DELIVERY_LIMIT + 1
    assert crashes == DELIVERY_LIMIT + 1  # the first delivery and DELIVERY_LIMIT redeliveries

    out = io.StringIO()
    wait_until(lambda: dead_letters.run_command("list", cluster.uri(), cluster.management()[0], out=out,
                                                err=io.StringIO()) == 0 and f"       1  {name}\n" in out.getvalue(),
               15, "the dead letter listed by dss-ops dead-letters")


class Counter:
    """A service of the test consuming through shared.retry's handler, as the workers do."""
    name = "counter"
    seen = []

    @retrying_event_handler("test_source", "thing_happened")
    def handle(self, payload):
        Counter.seen.append(payload["n"])


def test_a_service_keeps_consuming_when_its_leader_node_is_killed(cluster, runner_factory):
    config = {"AMQP_URI": cluster.uri(), "max_workers": 4}
    Counter.seen.clear()
    runner = runner_factory(config, Counter)
    runner.start()
    dispatch = event_dispatcher(config)
    dispatch("test_source", "thing_happened", {"n": 0})
    wait_until(lambda: Counter.seen == [0], 15, "the first event handled")

    queue = "evt-test_source-thing_happened--counter.handle"
    leader = wait_until(lambda: cluster.leader_of(queue), 15, "the queue's leader")
    k = [cluster.node(i) for i in range(cluster.size)].index(leader)
    cluster.kill(k)
    try:
        def published(n):
            try:
                event_dispatcher(config)("test_source", "thing_happened", {"n": n})
                return True
            except Exception:  # refused while the queue elects a new leader: publish again
                return False

        for n in range(1, 6):
            wait_until(lambda: published(n), 30, f"event {n} published through another node", interval=0.5)
        wait_until(lambda: sorted(set(Counter.seen)) == list(range(6)), 60,
                   "every event handled through the remaining nodes", on_timeout=lambda: f"seen {Counter.seen}")
        assert cluster.leader_of(queue) not in (None, leader)
    finally:
        cluster.restart_node(k)
    assert len(cluster.running_nodes()) == cluster.size
