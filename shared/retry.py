"""Retries on the broker with backoff, ending in a dead-letter queue that can be inspected and replayed.

``retrying_event_handler`` is nameko's ``event_handler`` (service pool, reliable delivery) whose
failures are neither lost nor hot-looped. When the worker raises a retryable error, the message is
republished to a durable delay queue ``{queue}.retry-{N}s`` whose TTL dead-letters it back into
the handler's own queue after N seconds; the attempt number travels in the ``x-dss-attempt``
header. After the last delay, or at once for a permanent error (``give_up_on``), the message goes
to the durable ``{queue}.dead`` with the error in ``x-dss-error``. The original message is acked
only after the republish is confirmed by the broker, so a crash at any point means redelivery,
never loss: handlers must be idempotent.

A worker that needs to know which attempt it is making (a webhook numbers its attempts) declares
``attempt = AttemptNumber()``: 1 for the first delivery, then what the last retry wrote.

``dead_letter_queues`` / ``peek_dead_letters`` / ``replay_dead_letters`` back the
``dss-ops dead-letters`` command.
"""
from __future__ import annotations

import logging

from kombu import Connection, Queue
from nameko.amqp.publish import Publisher
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.contextdata import ContextDataProvider
from nameko.events import SERVICE_POOL
from marshmallow import ValidationError
from prometheus_client import Counter

from shared.config import Settings
from shared.entrypoints import EventHandler
from shared.exceptions import InvalidParameter, Unprocessable

logger = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-dss-attempt"
ERROR_HEADER = "x-dss-error"
DEAD_SUFFIX = ".dead"
DEFAULT_DELAYS = (1, 5, 30, 120, 600, 3600)  # seconds before attempts 2, 3, ...
# What a handler of another service's events gives up on at once (``give_up_on=PERMANENT_ERRORS``):
# an event that does not load, or that names something malformed or unusable. Another attempt
# reads the same bytes. A handler that can fail permanently in more ways names its own tuple.
PERMANENT_ERRORS = (InvalidParameter, Unprocessable, ValidationError)

RETRIES = Counter("dss_retries_total", "Failed deliveries scheduled for another attempt.", ["queue"])
DEAD_LETTERS = Counter("dss_dead_letters_total", "Deliveries given up and dead-lettered.", ["queue"])


def attempt_of(message) -> int:
    """Which attempt this delivery of ``message`` is: 1, or the number the last retry wrote."""
    return int((message.headers or {}).get(ATTEMPT_HEADER, 1))


def delay_queue(queue_name: str, delay: int) -> Queue:
    return Queue(f"{queue_name}.retry-{delay}s", durable=True, auto_delete=False, queue_arguments={
        "x-message-ttl": delay * 1000,
        "x-dead-letter-exchange": "",  # the default exchange routes by queue name ...
        "x-dead-letter-routing-key": queue_name,  # ... back to the handler's own queue
    })


def dead_letter_queue(queue_name: str) -> Queue:
    return Queue(queue_name + DEAD_SUFFIX, durable=True, auto_delete=False)


class RetryingEventHandler(EventHandler):
    """``shared.entrypoints``' event handler (service pool, reliable delivery) with retries.

    ``delays``: seconds before attempts 2, 3, ...; or ``delays_setting``: the name of a
    ``shared.config.Settings`` attribute that gives them, read when the container starts (so that a
    deployment, or a test, changes a service's schedule without a code change)."""

    def __init__(self, source_service, event_type, delays=DEFAULT_DELAYS, give_up_on=(),
                 delays_setting: str | None = None, **kwargs):
        kwargs.update(handler_type=SERVICE_POOL, reliable_delivery=True, requeue_on_error=False)
        super().__init__(source_service, event_type, **kwargs)
        self.delays = tuple(int(delay) for delay in delays)
        self.delays_setting = delays_setting
        self.give_up_on = tuple(give_up_on)

    def setup(self):
        super().setup()
        if self.delays_setting is not None:
            settings = Settings.from_config(self.container.config)
            self.delays = tuple(int(delay) for delay in getattr(settings, self.delays_setting))
        self.publisher = Publisher(self.container.config[AMQP_URI_CONFIG_KEY], use_confirms=True)

    def unpack_message_headers(self, message):
        context_data = super().unpack_message_headers(message)
        # The worker's context carries the attempt number (``AttemptNumber``). Only the bare header
        # counts: a ``nameko.x-dss-attempt`` that an upstream retried worker propagated through
        # its context is that worker's attempt, not this message's.
        context_data[ATTEMPT_HEADER] = attempt_of(message)
        return context_data

    def handle_message_processed(self, message, result=None, exc_info=None):
        # Settling on a connection the broker just dropped is logged, not fatal: the queue consumer
        # of shared.entrypoints sees to it, and the broker delivers the message again.
        if exc_info is None:
            self.queue_consumer.ack_message(message)
            return
        error = exc_info[1]
        attempt = attempt_of(message)
        queue_name = self.queue.name
        try:
            if isinstance(error, self.give_up_on) or attempt > len(self.delays):
                self._republish(message, dead_letter_queue(queue_name), attempt, error)
                DEAD_LETTERS.labels(queue_name).inc()
                logger.error("dead-lettered %s after %d attempt(s): %r", queue_name, attempt, error)
            else:
                delay = self.delays[attempt - 1]
                self._republish(message, delay_queue(queue_name, delay), attempt + 1, error)
                RETRIES.labels(queue_name).inc()
                logger.warning("attempt %d of %s failed (%r); retrying in %ds", attempt, queue_name, error, delay)
        except Exception:  # the broker refused the republish: keep the message where it was
            logger.exception("could not schedule a retry of %s; requeueing", queue_name)
            self.queue_consumer.requeue_message(message)
            return
        self.queue_consumer.ack_message(message)

    def _republish(self, message, target: Queue, attempt: int, error: BaseException) -> None:
        headers = dict(message.headers or {})
        headers[ATTEMPT_HEADER] = attempt
        headers[ERROR_HEADER] = f"{type(error).__name__}: {error}"[:1000]
        self.publisher.publish(message.payload, exchange=None, routing_key=target.name, declare=[target],
                               headers=headers, mandatory=True)


retrying_event_handler = RetryingEventHandler.decorator


class AttemptNumber(ContextDataProvider):
    """Injects the attempt number (1 for the first) of the message a ``RetryingEventHandler``
    worker is handling."""

    context_key = ATTEMPT_HEADER

    def get_dependency(self, worker_ctx):
        return int(worker_ctx.data.get(self.context_key) or 1)


# --- operating dead letters -------------------------------------------------------------------------

def dead_letter_queues(management_url: str, vhost: str = "/") -> dict[str, int]:
    """Dead-letter queues of ``vhost`` with their message counts, from the RabbitMQ management API
    (``management_url`` like ``http://guest:guest@127.0.0.1:15672``)."""
    import urllib.parse

    import requests

    parsed = urllib.parse.urlsplit(management_url)
    base = f"{parsed.scheme}://{parsed.hostname}:{parsed.port or 15672}"
    response = requests.get(f"{base}/api/queues/{urllib.parse.quote(vhost, safe='')}",
                            auth=(parsed.username or "guest", parsed.password or "guest"), timeout=10)
    response.raise_for_status()
    return {queue["name"][: -len(DEAD_SUFFIX)]: queue.get("messages", 0)
            for queue in response.json() if queue["name"].endswith(DEAD_SUFFIX)}


def peek_dead_letters(amqp_uri: str, queue_name: str, limit: int = 20) -> list[dict]:
    """Up to ``limit`` dead letters of the handler queue ``queue_name``, left in place."""
    shown = []
    with Connection(amqp_uri) as connection:
        channel = connection.channel()
        queue = dead_letter_queue(queue_name)(channel)
        queue.declare()
        for _ in range(limit):
            message = queue.get(no_ack=False)
            if message is None:
                break
            shown.append({"attempts": message.headers.get(ATTEMPT_HEADER), "error": message.headers.get(ERROR_HEADER),
                          "payload": message.decode()})
        channel.close()  # unacked messages return to the queue, in order
    return shown


def replay_dead_letters(amqp_uri: str, queue_name: str, limit: int | None = None) -> int:
    """Move dead letters back into the handler's queue for a fresh round of attempts.

    Only the letters present when the call starts are moved: one that fails again at once comes
    back to the dead-letter queue while this runs, and must not be replayed twice."""
    moved = 0
    with Connection(amqp_uri) as connection:
        channel = connection.channel()
        queue = dead_letter_queue(queue_name)(channel)
        present = queue.queue_declare().message_count
        limit = present if limit is None else min(limit, present)
        producer = connection.Producer(channel)
        while moved < limit:
            message = queue.get(no_ack=False)
            if message is None:
                break
            headers = {k: v for k, v in (message.headers or {}).items() if k not in (ATTEMPT_HEADER, ERROR_HEADER)}
            producer.publish(message.body, routing_key=queue_name, exchange="", headers=headers,
                             content_type=message.content_type, content_encoding=message.content_encoding,
                             delivery_mode=2)
            message.ack()
            moved += 1
    return moved
