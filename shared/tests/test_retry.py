"""Broker-side retries and dead letters (shared.retry) on the real RabbitMQ."""
import time

import pytest
from nameko.events import EventDispatcher
from nameko.rpc import rpc
from nameko.standalone.rpc import ServiceRpcProxy

from shared.exceptions import Unavailable, Unprocessable
from shared.retry import AttemptNumber, RetryingEventHandler, dead_letter_queues, peek_dead_letters, \
    replay_dead_letters, retrying_event_handler

QUEUE = "evt-source-thing_happened--flaky.handle_thing_happened"
attempts: dict[str, list] = {}
attempt_numbers: dict[str, list] = {}  # what AttemptNumber told each worker


class Source:
    name = "source"
    dispatch = EventDispatcher()

    @rpc
    def happen(self, key):
        self.dispatch("thing_happened", {"key": key})


class Flaky:
    """Fails as the payload says: `transient:N` fails N times then succeeds; `permanent` fails once
    with a permanent error; `always` keeps failing."""
    name = "flaky"
    attempt = AttemptNumber()

    @retrying_event_handler("source", "thing_happened", delays=(1, 1), give_up_on=(Unprocessable,))
    def handle_thing_happened(self, payload):
        key = payload["key"]
        attempts.setdefault(key, []).append(time.monotonic())
        attempt_numbers.setdefault(key, []).append(self.attempt)
        kind, _, count = key.partition(":")
        if kind == "transient" and len(attempts[key]) <= int(count):
            raise Unavailable("storage is down")
        if kind == "permanent":
            raise Unprocessable("bytes do not match", "checksum_mismatch")
        if kind == "always":
            raise Unavailable("still down")


def wait_until(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def bus(rabbit_config, runner_factory):
    runner = runner_factory(rabbit_config, Source, Flaky)
    runner.start()
    with ServiceRpcProxy("source", rabbit_config) as source:
        yield source


def test_transient_failures_are_retried_with_backoff_until_they_succeed(bus):
    bus.happen("transient:2")
    wait_until(lambda: len(attempts.get("transient:2", [])) == 3)
    first, second, third = attempts["transient:2"]
    assert second - first >= 0.9 and third - second >= 0.9  # waited on the broker, not hot-looped
    assert attempt_numbers["transient:2"] == [1, 2, 3]
    time.sleep(1.5)
    assert len(attempts["transient:2"]) == 3  # and then acked: no further delivery


def test_exhausted_and_permanent_failures_end_in_the_dead_letter_queue_and_can_be_replayed(bus, rabbit_config,
                                                                                          request):
    amqp_uri = rabbit_config["AMQP_URI"]
    bus.happen("permanent")
    bus.happen("always")
    wait_until(lambda: len(attempts.get("always", [])) == 3)  # first try + two delays
    wait_until(lambda: len(peek_dead_letters(amqp_uri, QUEUE)) == 2)
    assert len(attempts["permanent"]) == 1  # a permanent error is not retried

    letters = {letter["payload"]["key"]: letter for letter in peek_dead_letters(amqp_uri, QUEUE)}
    assert "Unprocessable" in letters["permanent"]["error"] and letters["permanent"]["attempts"] == 1
    assert "still down" in letters["always"]["error"] and letters["always"]["attempts"] == 3
    management = request.config.getoption("RABBIT_API_URI")
    wait_until(lambda: dead_letter_queues(management, rabbit_config["vhost"]).get(QUEUE) == 2, timeout=15)

    assert replay_dead_letters(amqp_uri, QUEUE) == 2
    # replayed letters start a fresh round of attempts
    wait_until(lambda: len(attempts["permanent"]) == 2 and len(attempts["always"]) >= 4)


def test_the_attempt_number_comes_from_the_bare_header_only():
    """A retried upstream worker propagates its context (``nameko.x-dss-attempt``) into the events
    it dispatches; that is its attempt, not the attempt of the event it dispatched."""
    from unittest import mock

    handler = RetryingEventHandler("source", "thing_happened")
    first = mock.Mock(headers={"nameko.x-dss-attempt": 4, "nameko.call_id_stack": ["a"]})
    retried = mock.Mock(headers={"nameko.x-dss-attempt": 4, "x-dss-attempt": 2})
    assert handler.unpack_message_headers(first)["x-dss-attempt"] == 1
    assert handler.unpack_message_headers(retried)["x-dss-attempt"] == 2
    assert AttemptNumber().get_dependency(mock.Mock(data={})) == 1
