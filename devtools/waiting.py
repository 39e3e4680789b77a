"""Waiting in tests: polling until a condition holds, a queue as the broker sees it, and the messages
settled as successes (what to wait for where a test would sleep to see that nothing more comes)."""
from __future__ import annotations

import time


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2, on_timeout=lambda: ""):
    """Poll ``predicate`` until it returns something true (returned), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s\n{on_timeout()}")
        time.sleep(interval)


def queue_state(amqp_uri: str, name: str) -> tuple[int, int] | None:
    """(messages ready, consumers) of queue ``name``, or None if it does not exist (a passive
    declare, which creates nothing). Raises if the broker cannot be reached."""
    from amqp.exceptions import NotFound as QueueNotFound
    from kombu import Connection

    with Connection(amqp_uri, connect_timeout=5) as connection:
        channel = connection.channel()
        try:
            _, messages, consumers = channel.queue_declare(queue=name, passive=True)
        except QueueNotFound:
            return None
        channel.close()
        return messages, consumers


def record_settled_successes(monkeypatch) -> list[tuple[str, object]]:
    """From now on, ``(queue name, payload)`` of each message a ``shared.retry.RetryingEventHandler``
    settles as a success: acknowledged, neither retried nor dead-lettered. Where a test checks that
    nothing more comes after a success, it waits for this rather than sleeping past a retry delay."""
    from shared.retry import RetryingEventHandler

    settled = []
    processed = RetryingEventHandler.handle_message_processed

    def recording(handler, message, result=None, exc_info=None):
        processed(handler, message, result, exc_info)
        if exc_info is None:
            settled.append((handler.queue.name, message.payload))
    monkeypatch.setattr(RetryingEventHandler, "handle_message_processed", recording)
    return settled
