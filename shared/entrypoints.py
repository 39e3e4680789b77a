"""nameko's broker entrypoints (``rpc``, ``event_handler``) and RPC proxy, made to survive a broker
connection dropped under a worker: every service uses these instead of nameko's own.

A worker that finishes just as the broker drops the connection (a broker restart, a node lost, a
network cut) settles its message on a socket that is gone before the consumer thread has noticed.
nameko's ``QueueConsumer`` swallows only amqp's ``ConnectionError`` there, not the socket's own
(``ConnectionResetError``, ``BrokenPipeError``), and an RPC reply that cannot be published raises
kombu's ``OperationalError``; an error raised while settling ends the container, and ``nameko run``
exits. Here both are logged instead: the broker took the unsettled message back when the connection
dropped and delivers it again (handlers are idempotent), and a caller whose reply was lost times
out and retries.

One mechanism for every consumer of a container: ``QueueConsumer`` (nameko's, settling guarded) is
the queue consumer of ``Rpc``, ``EventHandler`` (also the base of ``shared.retry``'s handler) and
``RpcProxy``'s reply listener, so a container keeps one consumer connection.
"""
from __future__ import annotations

import logging

from amqp.exceptions import AMQPError
from kombu.exceptions import KombuError
from nameko import events, messaging, rpc as nameko_rpc

logger = logging.getLogger(__name__)

# What settling a message or publishing a reply raises when the broker connection is gone: the
# socket's own errors (ConnectionResetError, BrokenPipeError, ...), amqp's protocol and connection
# errors, and kombu's OperationalError once its publish retries are spent.
DROPPED_CONNECTION_ERRORS = (OSError, AMQPError, KombuError)


def _queue_name(message) -> str:
    try:
        return message.delivery_info.get("routing_key") or "?"
    except Exception:  # a log line must not fail
        return "?"


class QueueConsumer(messaging.QueueConsumer):
    """nameko's queue consumer, whose acks and requeues on a dropped connection are logged, not fatal."""

    def ack_message(self, message):
        try:
            super().ack_message(message)
        except DROPPED_CONNECTION_ERRORS as error:
            logger.warning("could not acknowledge a message (%s): its broker connection is gone (%r); "
                           "the broker delivers it again", _queue_name(message), error)

    def requeue_message(self, message):
        try:
            super().requeue_message(message)
        except DROPPED_CONNECTION_ERRORS as error:
            logger.warning("could not requeue a message (%s): its broker connection is gone (%r); "
                           "the broker delivers it again", _queue_name(message), error)


class RpcConsumer(nameko_rpc.RpcConsumer):
    """nameko's RPC consumer on ``QueueConsumer``, whose reply, when it cannot be published, is
    logged and dropped: the request is still acknowledged (a retry of it is the caller's choice,
    after its timeout, not a redelivery running it twice)."""

    queue_consumer = QueueConsumer()

    def handle_result(self, message, result, exc_info):
        try:
            return super().handle_result(message, result, exc_info)
        except DROPPED_CONNECTION_ERRORS as error:
            logger.warning("could not send the reply of an RPC (%s): the broker is unreachable (%r); "
                           "its caller times out", _queue_name(message), error)
            self.queue_consumer.ack_message(message)
            return result, exc_info


class Rpc(nameko_rpc.Rpc):
    rpc_consumer = RpcConsumer()


rpc = Rpc.decorator


class EventHandler(events.EventHandler):
    queue_consumer = QueueConsumer()


event_handler = EventHandler.decorator


class ReplyListener(nameko_rpc.ReplyListener):
    queue_consumer = QueueConsumer()


class RpcProxy(nameko_rpc.RpcProxy):
    """nameko's ``RpcProxy``, its replies consumed by ``QueueConsumer``."""

    rpc_reply_listener = ReplyListener()
