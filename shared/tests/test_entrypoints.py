"""A container keeps running when its broker connection drops under its workers (shared.entrypoints).

The service under test reaches the real RabbitMQ through a ``TcpProxy`` that the test (or a worker
itself, to hit the moment exactly) takes down and brings back: every open connection is reset, as
when the broker restarts. Workers finishing then reply and acknowledge on sockets that are gone;
the container must survive that, reconnect, and serve again.
"""
import urllib.parse
from unittest import mock

import eventlet
import pytest
from nameko.standalone.events import event_dispatcher
from nameko.standalone.rpc import ServiceRpcProxy

from devtools.proxy import TcpProxy
from devtools.waiting import wait_until
from shared.entrypoints import QueueConsumer, event_handler, rpc

proxy: TcpProxy | None = None  # the broker's proxy of the running test
handled: list = []
REPLY_RETRIES_SECONDS = 12  # how long nameko's publisher retries a reply (max_retries 3: 2 + 4 + 6 s)
cuts: list = []  # values whose worker cut the connection: once each (their redelivery must not cut again)
slow_started: list = []  # values of slow workers that began
slow_finished: list = []  # values of slow workers that returned


class Fragile:
    """RPCs and events whose workers drop the broker connection themselves (``cut``) or take a
    while (``slow``), so that they settle after the connection is gone."""
    name = "fragile"

    @rpc
    def echo(self, value, how="plain"):
        return self._run(value, how)

    @event_handler("elsewhere", "happened")
    def handle_happened(self, payload):
        self._run(payload["value"], payload["how"])
        handled.append(payload["value"])

    @staticmethod
    def _run(value, how):
        if how == "cut" and value not in cuts:
            cuts.append(value)
            proxy.down()  # no yield between this and the reply / ack below: they hit reset sockets
        elif how == "slow":
            slow_started.append(value)
            eventlet.sleep(1)
            slow_finished.append(value)
        return value


def through(amqp_uri: str, port: int) -> str:
    parts = urllib.parse.urlsplit(amqp_uri)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def fragile(rabbit_config, container_factory):
    global proxy
    target = urllib.parse.urlsplit(rabbit_config["AMQP_URI"])
    proxy = TcpProxy(target.hostname, target.port or 5672).up()
    for record in (handled, cuts, slow_started, slow_finished):
        record.clear()
    config = {**rabbit_config, "AMQP_URI": through(rabbit_config["AMQP_URI"], proxy.port)}
    container = container_factory(Fragile, config)
    container.start()
    try:
        yield container
    finally:
        proxy.up()  # let the container stop cleanly
        proxy = None


def answers(rabbit_config, value, how="plain", timeout=5.0):
    """The service's answer to ``echo(value, how)`` asked directly of the broker (not through the proxy)."""
    with ServiceRpcProxy("fragile", rabbit_config, timeout=timeout) as service:
        return service.echo(value, how=how)


def assert_alive(container):
    assert not container._died.ready(), f"the container died: {container._died.wait()}"


def test_rpc_workers_finishing_on_a_dropped_connection_leave_the_service_running(fragile, rabbit_config):
    assert answers(rabbit_config, "before") == "before"
    calls = [eventlet.spawn(answers, rabbit_config, f"slow-{n}", "slow", 3) for n in range(4)]
    wait_until(lambda: len(slow_started) >= 4, 10, "the slow workers running")
    # The reply of the cutting worker is published on a reset connection, then its request is
    # acknowledged on one; the slow workers settle after the drop too. Their callers may get their
    # answer from a redelivery or time out: what matters is that the container lives on.
    calls.append(eventlet.spawn(answers, rabbit_config, "cut", "cut", 3))
    wait_until(lambda: cuts, 10, "the cutting worker running")
    # Down for longer than a reply's publish retries (kombu's 2 + 4 + 6 s): the replies are lost.
    eventlet.sleep(REPLY_RETRIES_SECONDS + 2)
    assert_alive(fragile)
    proxy.up()
    for call in calls:
        try:
            call.wait()
        except Exception:  # RpcTimeout: a reply lost with the connection
            pass
    wait_until(lambda: _answers_or_none(rabbit_config) == "after", 60, "the service answering again")
    assert_alive(fragile)


def _answers_or_none(rabbit_config):
    try:
        return answers(rabbit_config, "after", timeout=3)
    except Exception:
        return None


def test_event_workers_finishing_on_a_dropped_connection_leave_the_service_running(fragile, rabbit_config):
    dispatch = event_dispatcher(rabbit_config)  # straight to the broker, not through the proxy
    dispatch("elsewhere", "happened", {"value": "slow", "how": "slow"})
    wait_until(lambda: slow_started, 10, "the slow worker running")
    dispatch("elsewhere", "happened", {"value": "cut", "how": "cut"})
    wait_until(lambda: cuts, 10, "the cutting worker running")
    wait_until(lambda: slow_finished, 10, "the slow worker finished on the dropped connection")
    assert_alive(fragile)
    proxy.up()
    # Unacknowledged when the connection dropped, both come again; and new events are handled.
    dispatch("elsewhere", "happened", {"value": "after", "how": "plain"})
    wait_until(lambda: "after" in handled, 60, "an event after the drop handled")
    wait_until(lambda: handled.count("slow") >= 2, 30, "the slow event delivered again")
    assert_alive(fragile)


@pytest.mark.parametrize("error", [BrokenPipeError("socket closed"), ConnectionResetError(104, "reset")])
def test_settling_on_a_dead_socket_is_logged_not_raised(error, caplog):
    consumer = QueueConsumer()
    message = mock.Mock(delivery_info={"routing_key": "some-queue"})
    message.ack.side_effect = message.requeue.side_effect = error
    with caplog.at_level("WARNING", logger="shared.entrypoints"):
        consumer.ack_message(message)
        consumer.requeue_message(message)
    assert message.ack.called and message.requeue.called
    assert caplog.text.count("broker connection is gone") == 2
