"""`dss-ops status` (ops.status) on the real RabbitMQ, in the test's own vhost: service queues
declared as nameko declares them, consumed by connections of this process (two "instances"),
a backlog without a consumer and a dead letter, each reported, and the exit code saying so."""
import io
import json
import os
import urllib.parse

import pytest
from kombu import Connection, Consumer, Queue

from devtools.waiting import wait_until
from ops import status
from shared.retry import DEAD_SUFFIX, dead_letter_queue

RPC = "rpc-files"
HANDLER = "evt-files-file_created--replicator.handle_file_created"
ORPHAN = "evt-bundles-bundle_created--indexer.handle_bundle_created"


def run(management: str, vhost: str, as_json: bool) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = status.run_command([management], vhost, as_json=as_json, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def vhost_of(amqp_uri: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(amqp_uri).path[1:])


@pytest.fixture
def consumers(rabbit_config):
    """Two connections, each consuming ``rpc-files`` and the replicator's handler queue: two instances."""
    connections = []
    for _ in range(2):
        connection = Connection(rabbit_config["AMQP_URI"])
        channel = connection.channel()
        queues = [Queue(name, durable=True, auto_delete=False)(channel) for name in (RPC, HANDLER)]
        for queue in queues:
            queue.declare()
        Consumer(channel, queues, callbacks=[lambda body, message: None], auto_declare=False).consume()
        connections.append(connection)
    yield connections
    for connection in connections:
        connection.release()


def test_instances_queues_and_all_well(rabbit_config, request, consumers):
    amqp_uri, management = rabbit_config["AMQP_URI"], request.config.getoption("RABBIT_API_URI")
    vhost = vhost_of(amqp_uri)

    def reported():  # the management API's consumer list and queue statistics lag a little
        code, out, _ = run(management, vhost, as_json=True)
        document = json.loads(out)
        counted = {q["name"]: q["consumers"] for q in document["queues"]}
        complete = len(document["services"].get("files", [])) == 2 and counted == {RPC: 2, HANDLER: 2}
        return (code, document) if complete else None

    code, document = wait_until(reported, 20, "both instances of files listed")
    assert code == 0 and document["attention"] == []
    assert [n["running"] for n in document["nodes"]] == [True]
    files = document["services"]["files"]
    assert {tuple(instance["queues"]) for instance in files} == {(RPC,)}
    assert {instance["pid"] for instance in files} == {os.getpid()}  # both connections are this process's
    assert len(document["services"]["replicator"]) == 2
    by_name = {q["name"]: q for q in document["queues"]}
    assert by_name[RPC]["consumers"] == 2 and by_name[RPC]["service"] == "files"
    assert document["replication"]["queues"] == [HANDLER] and document["replication"]["backlog"] == 0

    code, out, _ = run(management, vhost, as_json=False)
    assert code == 0 and out.endswith("all well\n")
    assert "files        2 instance(s)" in out and "1 of 1 node(s) up" in out


def test_a_backlog_without_consumers_and_dead_letters_need_attention(rabbit_config, request):
    amqp_uri, management = rabbit_config["AMQP_URI"], request.config.getoption("RABBIT_API_URI")
    vhost = vhost_of(amqp_uri)
    with Connection(amqp_uri) as connection:
        channel = connection.channel()
        for queue in (Queue(ORPHAN, durable=True, auto_delete=False), dead_letter_queue(HANDLER)):
            queue(channel).declare()
        producer = connection.Producer(channel)
        for routing_key in (ORPHAN, ORPHAN, HANDLER + DEAD_SUFFIX):
            producer.publish({"key": "a"}, routing_key=routing_key, exchange="", serializer="json")
        channel.close()

    def reported():
        code, out, _ = run(management, vhost, as_json=True)
        document = json.loads(out)
        return (code, document) if len(document["attention"]) == 2 else None

    code, document = wait_until(reported, 20, "the backlog and the dead letter reported")
    assert code == 1
    assert document["dead_letters"] == {HANDLER: 1}
    assert document["attention"] == [
        f"queue {ORPHAN} holds 2 message(s) and has no consumer",
        f"1 dead letter(s) of {HANDLER} (dss-ops dead-letters show {HANDLER})"]

    code, out, _ = run(management, vhost, as_json=False)
    assert code == 1 and "needs attention:" in out and f"dead letters: {HANDLER} 1" in out


def test_no_management_api_is_exit_2():
    code, out, err = run("http://guest:guest@127.0.0.1:1", "/", as_json=True)
    assert code == 2 and "no management API answered" in json.loads(out)["attention"][0]
    assert "no management API answered" in err


def test_queue_owners():
    assert status.owner("rpc-files") == "files"
    assert status.owner("rpc.reply-gateway-7d8abee6-76d5-4187-9f10-101de0be7289") == "gateway"
    assert status.owner("evt-files-file_created--checkout.note_file_version-2b91b459fac241ceb45b56f6027b7970") \
        == "checkout"
    assert status.owner(HANDLER + DEAD_SUFFIX) == "replicator"  # summarise takes .dead queues out first
    assert status.owner("something-else") is None
