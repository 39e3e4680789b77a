"""Broker-side retries and dead letters (shared.retry) on the real RabbitMQ."""
import time

import pytest
from nameko.events import EventDispatcher
from nameko.rpc import rpc
from nameko.standalone.rpc import ServiceRpcProxy

from devtools.waiting import record_settled_successes, wait_until
from shared.entrypoints import key_not_under, size_above_setting
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


WAIT = 20.0  # for the broker's retries of a few 1 s delays; far more than they take


@pytest.fixture
def succeeded(monkeypatch):
    return record_settled_successes(monkeypatch)


@pytest.fixture
def bus(rabbit_config, runner_factory):
    runner = runner_factory(rabbit_config, Source, Flaky)
    runner.start()
    with ServiceRpcProxy("source", rabbit_config) as source:
        yield source


def test_transient_failures_are_retried_with_backoff_until_they_succeed(succeeded, bus):
    bus.happen("transient:2")
    wait_until(lambda: len(attempts.get("transient:2", [])) == 3, WAIT, "the third attempt")
    first, second, third = attempts["transient:2"]
    assert second - first >= 0.9 and third - second >= 0.9  # waited on the broker, not hot-looped
    assert attempt_numbers["transient:2"] == [1, 2, 3]
    wait_until(lambda: (QUEUE, {"key": "transient:2"}) in succeeded, WAIT, "the success acknowledged")
    assert len(attempts["transient:2"]) == 3  # and acked, not retried: no further delivery


def test_exhausted_and_permanent_failures_end_in_the_dead_letter_queue_and_can_be_replayed(bus, rabbit_config,
                                                                                          request):
    amqp_uri = rabbit_config["AMQP_URI"]
    bus.happen("permanent")
    bus.happen("always")
    wait_until(lambda: len(attempts.get("always", [])) == 3, WAIT, "three attempts")  # first try + two delays
    wait_until(lambda: len(peek_dead_letters(amqp_uri, QUEUE)) == 2, WAIT, "two dead letters")
    assert len(attempts["permanent"]) == 1  # a permanent error is not retried

    letters = {letter["payload"]["key"]: letter for letter in peek_dead_letters(amqp_uri, QUEUE)}
    assert "Unprocessable" in letters["permanent"]["error"] and letters["permanent"]["attempts"] == 1
    assert "still down" in letters["always"]["error"] and letters["always"]["attempts"] == 3
    management = request.config.getoption("RABBIT_API_URI")
    wait_until(lambda: dead_letter_queues(management, rabbit_config["vhost"]).get(QUEUE) == 2, 15,
               "the dead-letter queue listed with two messages")

    assert replay_dead_letters(amqp_uri, QUEUE) == 2
    # replayed letters start a fresh round of attempts
    wait_until(lambda: len(attempts["permanent"]) == 2 and len(attempts["always"]) >= 4, WAIT,
               "the replayed messages attempted again")


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


# --- skip: events a handler ignores, settled without a worker -----------------------------------------

skipped_workers: list = []


class Picky:
    """Handles only the events of keys under `wanted/`: the others are settled without a worker."""
    name = "picky"

    @retrying_event_handler("source", "thing_happened", delays=(1,), skip=key_not_under("wanted/"))
    def handle_thing_happened(self, payload):
        skipped_workers.append(payload["key"])


def test_an_event_the_handler_skips_is_settled_without_a_worker(succeeded, rabbit_config, runner_factory):
    runner = runner_factory(rabbit_config, Source, Picky)
    runner.start()
    queue = "evt-source-thing_happened--picky.handle_thing_happened"
    with ServiceRpcProxy("source", rabbit_config) as source:
        source.happen("other/1")
        source.happen("wanted/1")
        wait_until(lambda: (queue, {"key": "wanted/1"}) in succeeded, WAIT, "the wanted event handled")
        wait_until(lambda: (queue, {"key": "other/1"}) in succeeded, WAIT, "the other event settled")
    assert skipped_workers == ["wanted/1"]
    # A payload without a string key is not skipped: the worker judges it.
    assert key_not_under("wanted/")({"key": 3}) is False and key_not_under("wanted/")(["x"]) is False


warmed: list = []


class SizedSource:
    name = "sized_source"
    dispatch = EventDispatcher()

    @rpc
    def create(self, key, size):
        self.dispatch("thing_created", {"key": key, "size": size})


class Warmer:
    """Handles only the events of things up to DSS_CHECKOUT_WARM_BYTES, a setting of its container."""
    name = "warmer"

    @retrying_event_handler("sized_source", "thing_created", delays=(1,),
                            skip=size_above_setting("checkout_warm_bytes"))
    def handle_thing_created(self, payload):
        warmed.append(payload["key"])


def test_a_skip_test_reads_the_settings_of_its_container(succeeded, rabbit_config, runner_factory):
    runner = runner_factory({**rabbit_config, "DSS_CHECKOUT_WARM_BYTES": 10}, SizedSource, Warmer)
    runner.start()
    queue = "evt-sized_source-thing_created--warmer.handle_thing_created"
    with ServiceRpcProxy("sized_source", rabbit_config) as source:
        source.create("large", 11)
        source.create("small", 10)
        wait_until(lambda: (queue, {"key": "small", "size": 10}) in succeeded, WAIT, "the small thing handled")
        wait_until(lambda: (queue, {"key": "large", "size": 11}) in succeeded, WAIT, "the large thing settled")
    assert warmed == ["small"]
    # A payload without an integer size is not skipped: the worker judges it.
    assert size_above_setting("checkout_warm_bytes")({"size": "11"}, None) is False
