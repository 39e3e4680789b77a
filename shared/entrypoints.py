"""nameko's broker extensions as every service uses them instead of nameko's own: the entrypoints
``rpc`` and ``event_handler`` and the ``RpcProxy``, made to survive a broker connection dropped
under a worker, and the ``EventDispatcher``, which declares its events' handler queues before it
publishes.

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

Tracing (``shared.tracing``): the entrypoints hand the ``traceparent`` / ``tracestate`` headers of
their message to the worker's context (its span's parent); ``RpcProxy`` calls and
``EventDispatcher`` dispatches are client and producer spans whose context travels in the
message's headers. With tracing off each costs one test of a flag.
"""
from __future__ import annotations

import logging
import re
import uuid

from amqp.exceptions import AMQPError
from kombu.exceptions import KombuError
from kombu import Queue, binding
from nameko import events, messaging, rpc as nameko_rpc
from nameko.standalone.events import get_event_exchange

from shared import tracing
from shared.config import Settings
from shared.events import HANDLERS, ROUTED_BY_FOLDER

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


class TraceContextDecoder:
    """A worker's trace context is the one in its message's bare headers, never what a worker
    upstream propagated through nameko's context headers (``nameko.traceparent``: the context of
    the message that started that worker)."""

    def unpack_message_headers(self, message):
        context_data = super().unpack_message_headers(message)
        for name in tracing.TRACE_HEADERS:
            context_data.pop(name, None)
        context_data.update(tracing.context_of_message(message))
        return context_data


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


class Rpc(TraceContextDecoder, nameko_rpc.Rpc):
    rpc_consumer = RpcConsumer()


rpc = Rpc.decorator


_FOLDER = re.compile(r"[A-Za-z0-9_-]+")
OTHER_FOLDER = "_"  # the routing word of a key without a plain top folder


def routing_key(event_type: str, payload) -> str:
    """The routing key of an event: its type, and for an event about one object of a main bucket
    (``ROUTED_BY_FOLDER``) the top folder of its ``key`` as a second word (``object_changed.blobs``)."""
    if event_type not in ROUTED_BY_FOLDER:
        return event_type
    key = payload.get("key") if isinstance(payload, dict) else None
    folder, slash, _ = key.partition("/") if isinstance(key, str) else ("", "", "")
    return f"{event_type}.{folder if slash and _FOLDER.fullmatch(folder) else OTHER_FOLDER}"


def binding_keys(event_type: str, key_prefixes: tuple[str, ...] = ()) -> list[str]:
    """What a handler of ``event_type`` binds its queue with: every event of the type, or, for a
    ``ROUTED_BY_FOLDER`` event and some top folders (``key_prefixes``: ``"bundles/"``), only
    theirs plus the bare type (what a publisher that names no folder sends: an operator's repair
    event, a version before routing), whose other keys the handler's ``skip`` test settles
    without a worker."""
    if event_type not in ROUTED_BY_FOLDER:
        return [event_type]
    if not key_prefixes:
        return [f"{event_type}.#"]  # `#` matches no word too: the bare type as well
    for prefix in key_prefixes:
        if not (prefix.endswith("/") and _FOLDER.fullmatch(prefix[:-1])):
            raise ValueError(f"{prefix!r} is not the prefix of one top folder, like 'bundles/'")
    return [event_type, *(f"{event_type}.{prefix[:-1]}" for prefix in key_prefixes)]


def _bound_queue(name: str, exchange, keys: list[str], **options) -> Queue:
    if len(keys) == 1:
        return Queue(name, exchange=exchange, routing_key=keys[0], **options)
    return Queue(name, bindings=[binding(exchange, routing_key=key) for key in keys], **options)


def handler_queue(source_service: str, event_type: str, handler: str, config: dict,
                  key_prefixes: tuple[str, ...] = ()) -> Queue:
    """The durable queue of the ``handler`` (``"service.method"``) of ``source_service``'s
    ``event_type`` events shared by all the handler service's instances, bound to the source's
    event exchange (``binding_keys``): nameko's service-pool queue with reliable delivery."""
    return _bound_queue(f"evt-{source_service}-{event_type}--{handler}", get_event_exchange(source_service, config),
                        binding_keys(event_type, key_prefixes), durable=True, auto_delete=False, exclusive=False)


STANDBY_QUEUE_PREFIX = "standby-"


def standby_queue(service_name: str) -> Queue:
    """A queue of its own for an instance that stands by, consuming nothing of its service (an
    indexer waiting for the leader lock), so that operators see it (``dss-ops status``): exclusive to
    its connection, gone with it, never holding a message."""
    return Queue(f"{STANDBY_QUEUE_PREFIX}{service_name}.{uuid.uuid4().hex}", exclusive=True, auto_delete=True,
                 durable=False)


def size_above_setting(setting: str):
    """A ``skip`` test for ``event_handler`` / ``retrying_event_handler`` that needs the service's
    settings (bound when the container sets up): the event's ``size`` is above the value of the
    ``shared.config.Settings`` attribute ``setting`` (a payload without an integer size is not
    skipped)."""
    def skip(payload, settings) -> bool:
        size = payload.get("size") if isinstance(payload, dict) else None
        return isinstance(size, int) and size > getattr(settings, setting)
    skip.needs_settings = True
    return skip


def key_not_under(*prefixes: str):
    """A ``skip`` test for ``event_handler`` / ``retrying_event_handler``: the event names a ``key``
    outside ``prefixes`` (a payload without a string key is not skipped: the worker judges it)."""
    def skip(payload) -> bool:
        key = payload.get("key") if isinstance(payload, dict) else None
        return isinstance(key, str) and not key.startswith(prefixes)
    return skip


class EventHandler(TraceContextDecoder, events.EventHandler):
    """nameko's event handler on ``QueueConsumer``. ``skip``: a test of the raw payload, True for an
    event the handler would do nothing with; such a message is settled as a success at once,
    without a worker (a worker costs more than the little a handler does to ignore an event).
    ``key_prefixes``: for a ``ROUTED_BY_FOLDER`` event, the top folders (``"bundles/"``) of the
    keys the handler takes; the queue is bound to those only (``binding_keys``), and the others
    that still arrive (published without a folder) are skipped."""
    queue_consumer = QueueConsumer()

    def __init__(self, source_service, event_type, *args, skip=None, key_prefixes: tuple[str, ...] = (), **kwargs):
        binding_keys(event_type, key_prefixes)  # a malformed prefix fails at import, not at start
        if key_prefixes and skip is None:
            skip = key_not_under(*key_prefixes)
        self.key_prefixes = tuple(key_prefixes)
        self.skip_test = skip
        self.skip = skip
        super().__init__(source_service, event_type, *args, **kwargs)

    def handle_message(self, body, message):
        if self.skip is not None and self.skip(body):
            self.handle_message_processed(message)
            return
        super().handle_message(body, message)

    def setup(self):
        super().setup()
        if getattr(self.skip_test, "needs_settings", False):
            test, settings = self.skip_test, Settings.from_config(self.container.config)
            self.skip = lambda payload: test(payload, settings)
        if self.handler_type is events.SERVICE_POOL and self.reliable_delivery:
            # The very queue publishers declare (one definition of its name, arguments and bindings).
            self.queue = handler_queue(self.source_service, self.event_type,
                                       f"{self.container.service_name}.{self.method_name}", self.container.config,
                                       self.key_prefixes)
        elif self.event_type in ROUTED_BY_FOLDER:  # nameko's own queue (broadcast, singleton), rebound
            queue = self.queue
            self.queue = _bound_queue(queue.name, queue.exchange, binding_keys(self.event_type, self.key_prefixes),
                                      durable=queue.durable, auto_delete=queue.auto_delete, exclusive=queue.exclusive)


event_handler = EventHandler.decorator


class ReplyListener(nameko_rpc.ReplyListener):
    queue_consumer = QueueConsumer()


class MethodProxy(nameko_rpc.MethodProxy):
    """nameko's method proxy, each call a client span whose context its request message carries."""

    def __call__(self, *args, **kwargs):
        if not tracing.enabled:
            return super().__call__(*args, **kwargs)
        with tracing.span(f"{self.service_name}.{self.method_name}", "CLIENT",
                          {"rpc.system": "nameko", "rpc.service": self.service_name, "rpc.method": self.method_name}):
            return super().__call__(*args, **kwargs)

    def get_message_headers(self, worker_ctx):
        headers = super().get_message_headers(worker_ctx)
        return tracing.message_headers(headers) if tracing.enabled else headers


class ServiceProxy(nameko_rpc.ServiceProxy):
    def __getattr__(self, name):
        return MethodProxy(self.worker_ctx, self.service_name, name, self.reply_listener, **self.options)


class RpcProxy(nameko_rpc.RpcProxy):
    """nameko's ``RpcProxy``, its replies consumed by ``QueueConsumer``, its calls traced."""

    rpc_reply_listener = ReplyListener()

    def get_dependency(self, worker_ctx):
        return ServiceProxy(worker_ctx, self.target_service, self.rpc_reply_listener, **self.options)


class EventDispatcher(events.EventDispatcher):
    """nameko's ``EventDispatcher``, declaring the handler queues (``shared.events.HANDLERS``) of
    each event before publishing it."""

    def setup(self):
        super().setup()
        service_name, config = self.container.service_name, self.container.config
        self.handler_queues: dict[str, list[Queue]] = {}
        for source, event_type, handler, key_prefixes in HANDLERS:
            if source == service_name:
                self.handler_queues.setdefault(event_type, []).append(
                    handler_queue(source, event_type, handler, config, key_prefixes))

    def get_dependency(self, worker_ctx):
        extra_headers = self.get_message_headers(worker_ctx)
        service_name = self.container.service_name

        def publish(event_type, event_data, headers):
            self.publisher.publish(event_data, exchange=self.exchange, routing_key=routing_key(event_type, event_data),
                                   extra_headers=headers, declare=self.handler_queues.get(event_type, ()))

        def dispatch(event_type, event_data):
            if not tracing.enabled:
                return publish(event_type, event_data, extra_headers)
            with tracing.span(f"{service_name}.{event_type} publish", "PRODUCER",
                              {"messaging.system": "rabbitmq", "messaging.operation.type": "publish",
                               "messaging.destination.name": f"{service_name}.{event_type}"}):
                return publish(event_type, event_data, tracing.message_headers(extra_headers))

        return dispatch
