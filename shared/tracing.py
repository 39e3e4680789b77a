"""Distributed tracing with OpenTelemetry: one trace follows a request across every service.

Each service declares ``tracing = Tracing()``. Its ``setup()`` configures the process once
(``configure``): with ``DSS_TRACING_ENDPOINT`` empty (the default) nothing is installed and every
hook below returns after one test of a module flag, so tracing off costs nothing; set, a
``TracerProvider`` named for the service exports its spans over OTLP/HTTP in batches, sampled
at ``DSS_TRACING_SAMPLE_RATIO`` (children follow their parent's decision), and the botocore
(S3, SQS) and requests (GCS, Pub/Sub, OpenSearch, webhooks) instrumentations make every outbound
call a child span of the worker making it.

Spans: the provider opens one per worker, a child of the trace context its message carried
(``traceparent`` / ``tracestate``, W3C Trace Context, as bare AMQP headers): ``SERVER`` for an RPC,
``CONSUMER`` for an event handler or a change notification, ``INTERNAL`` for the gateway's
workers (below the HTTP server span of ``services/gateway/web.py``) and timers. The broker
extensions of ``shared.entrypoints`` open the ``CLIENT`` span of an RPC call and the ``PRODUCER``
span of an event dispatch and put that span's context in the message headers
(``message_headers``). A retried event keeps its headers (``shared.retry`` republishes them), so
every attempt is a consumer span of the same dispatch. The replicator's work begins with a change
notification of a bucket, which carries no headers: the writer puts its ``traceparent`` in the
object's metadata (``object_metadata``) and the notification bridge reads it back
(``parent_from_metadata``; an entrypoint's ``trace_context(worker_ctx)``, when it has one, is asked
in the worker's thread), so replication joins the trace of the write that caused it. Green threads
start with an empty context: work handed to one keeps the trace through ``carry``.

``TraceIdFilter`` gives every log record a ``trace_id`` (``-`` outside a trace), which the
services' log format shows.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Mapping

from nameko.extensions import DependencyProvider

from shared.config import Settings

logger = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACE_HEADERS = (TRACEPARENT, TRACESTATE)
# What nameko would make of the same keys when it copies a worker's context into the headers of
# the messages it sends: the context of the message that started the worker, not of the new call.
_NAMEKO_TRACE_HEADERS = tuple(f"nameko.{name}" for name in TRACE_HEADERS)

_lock = threading.Lock()
_configured = False
enabled = False  # read by every hook: the whole cost of tracing off
_tracer = None


def configure(settings: Settings, service_name: str) -> bool:
    """Install tracing for this process once, from ``settings``; whether it is on.

    The first service of a process names it (a deployment runs one service per process)."""
    global _configured, enabled, _tracer
    with _lock:
        if _configured:
            return enabled
        _configured = True
        endpoint = settings.tracing_endpoint
        if not endpoint:
            return False
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
        from opentelemetry.instrumentation.requests import RequestsInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": service_name}),
                                  sampler=_sampler(settings.tracing_sample_ratio))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=_traces_url(endpoint),
                                                                        timeout=10)))
        trace.set_tracer_provider(provider)
        BotocoreInstrumentor().instrument(tracer_provider=provider)
        RequestsInstrumentor().instrument(tracer_provider=provider)
        _tracer = provider.get_tracer("dss")
        enabled = True
        logger.info("tracing on: spans of %s go to %s (sampled at %s)", service_name, _traces_url(endpoint),
                    settings.tracing_sample_ratio)
        return True


def flush(timeout_millis: int = 5000) -> None:
    """Export the spans still buffered (a container stopping)."""
    if enabled:
        from opentelemetry import trace
        trace.get_tracer_provider().force_flush(timeout_millis)


def _traces_url(endpoint: str) -> str:
    # OTLP/HTTP's traces path under a collector's base URL; a full URL is taken as given.
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def _sampler(ratio: float):
    from opentelemetry.sdk.trace.sampling import (Decision, ParentBased, Sampler, SamplingResult,
                                                  TraceIdRatioBased)
    from opentelemetry.trace import SpanKind

    class RootSampler(Sampler):
        """A trace begins with a request, an RPC, an event or a timer, sampled at ``ratio``; an
        outbound call with no parent (the bridge's polls of SQS and Pub/Sub, every few seconds) is
        not a trace of its own."""

        def __init__(self):
            self.ratio = TraceIdRatioBased(ratio)

        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                          trace_state=None):
            if kind is SpanKind.CLIENT:
                return SamplingResult(Decision.DROP)
            return self.ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self):
            return f"RootSampler{{{ratio}}}"

    return ParentBased(root=RootSampler())


# --- trace context in carriers ----------------------------------------------------------------------

def _propagator():
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    return TraceContextTextMapPropagator()


def extract(carrier: Mapping[str, Any] | None):
    """The OpenTelemetry context of the ``traceparent`` / ``tracestate`` in ``carrier`` (none: a root)."""
    return _propagator().extract({name: str(carrier[name]) for name in TRACE_HEADERS
                                  if carrier and carrier.get(name)})


def current_headers() -> dict[str, str]:
    """``traceparent`` (and ``tracestate``) of the current span; empty outside a trace or when off."""
    carrier: dict[str, str] = {}
    if enabled:
        _propagator().inject(carrier)
    return carrier


def message_headers(headers: Mapping[str, Any]) -> dict:
    """``headers`` (nameko's, of a worker's context) with the current span's trace context as its
    only trace context. Called inside the client or producer span of the message."""
    out = {name: value for name, value in headers.items()
           if name not in _NAMEKO_TRACE_HEADERS and name not in TRACE_HEADERS}
    out.update(current_headers())
    return out


def context_of_message(message) -> dict:
    """The trace headers of an AMQP message, for its worker's context data (see ``Tracing``)."""
    headers = message.headers or {}
    return {name: headers[name] for name in TRACE_HEADERS if headers.get(name)}


def object_metadata(metadata: Mapping[str, str] | None) -> dict | None:
    """An object's metadata with the writer's ``traceparent``, for the replication it causes."""
    if not enabled:
        return metadata if metadata is None else dict(metadata)
    traced = dict(metadata or {})
    traced.update({name: value for name, value in current_headers().items() if name == TRACEPARENT})
    return traced


def parent_from_metadata(metadata: Mapping[str, str] | None) -> dict:
    """The worker context data continuing the trace a stored object's metadata names."""
    value = (metadata or {}).get(TRACEPARENT)
    return {TRACEPARENT: value} if value else {}


# --- spans ------------------------------------------------------------------------------------------

def carry(function):
    """``function`` run in the trace context current here, for a green thread it is handed to (a new
    green thread starts with an empty context): its outbound calls stay children of this worker."""
    if not enabled:
        return function
    from opentelemetry import context
    current = context.get_current()

    def in_context(*args, **kwargs):
        token = context.attach(current)
        try:
            return function(*args, **kwargs)
        finally:
            context.detach(token)

    return in_context


class _NoSpan:
    """What ``span()`` yields when tracing is off."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def set_attribute(self, key, value):
        pass


NO_SPAN = _NoSpan()


def span(name: str, kind: str = "INTERNAL", attributes: Mapping[str, Any] | None = None):
    """A context manager: a child span of the current one, current inside the block (``NO_SPAN``
    when tracing is off). ``kind``: ``INTERNAL``, ``CLIENT``, ``SERVER``, ``PRODUCER``, ``CONSUMER``.
    An exception leaving the block is recorded on it (``record_error``)."""
    if not enabled:
        return NO_SPAN
    return _current_span(name, kind, attributes)


@contextlib.contextmanager
def _current_span(name: str, kind: str, attributes):
    from opentelemetry.trace import SpanKind
    with _tracer.start_as_current_span(name, kind=SpanKind[kind], attributes=dict(attributes or {}),
                                       record_exception=False, set_status_on_exception=False) as current:
        try:
            yield current
        except BaseException as error:
            record_error(current, error)
            raise


def record_error(target, error: BaseException) -> None:
    """``error`` as an event of the span ``target``, which it marks failed unless it is an answer
    about the request (a typed error of ``shared.exceptions`` other than ``Unavailable``: a 404 is
    the right answer to a read of nothing, not a fault to look for in a trace)."""
    from opentelemetry.trace import Status, StatusCode
    from shared.exceptions import DSSError, Unavailable

    target.record_exception(error)
    if not isinstance(error, DSSError) or isinstance(error, Unavailable):
        target.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:300]))


def _worker_span_of(entrypoint, service_name: str) -> tuple[str, str, dict]:
    """Name, kind and attributes of the span of a worker started by ``entrypoint``."""
    # Imported here: shared.entrypoints imports this module.
    from nameko.rpc import Rpc
    from nameko.events import EventHandler
    from nameko.web.handlers import HttpRequestHandler

    method = f"{service_name}.{entrypoint.method_name}"
    if isinstance(entrypoint, Rpc):
        return method, "SERVER", {"rpc.system": "nameko", "rpc.service": service_name,
                                  "rpc.method": entrypoint.method_name}
    if isinstance(entrypoint, EventHandler):
        return method, "CONSUMER", {"messaging.system": "rabbitmq", "messaging.operation.type": "process",
                                    "messaging.destination.name": f"{entrypoint.source_service}.{entrypoint.event_type}"}
    if isinstance(entrypoint, HttpRequestHandler):
        return method, "INTERNAL", {}
    if getattr(entrypoint, "replica", None):  # the replicator's change-notification bridge
        return method, "CONSUMER", {"messaging.operation.type": "process", "dss.replica": entrypoint.replica}
    return method, "INTERNAL", {}


class Tracing(DependencyProvider):
    """Configures tracing for the process (once) and makes each worker of the service a span,
    current while the worker runs (so its outbound calls, RPCs and events are its children)."""

    def setup(self):
        self.on = configure(Settings.from_config(self.container.config), self.container.service_name)
        self.spans: dict = {}

    def stop(self):
        flush()

    def worker_setup(self, worker_ctx):
        if not self.on:
            return
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind

        name, kind, attributes = _worker_span_of(worker_ctx.entrypoint, self.container.service_name)
        from shared.retry import ATTEMPT_HEADER  # here: shared.retry imports this module's users

        attempt = worker_ctx.data.get(ATTEMPT_HEADER)
        if attempt:
            attributes["dss.attempt"] = int(attempt)
        carrier = worker_ctx.data
        # An entrypoint whose messages carry no headers may know where to look (the replicator's
        # bridge: the metadata of the object a notification reports).
        lookup = getattr(worker_ctx.entrypoint, "trace_context", None)
        if lookup is not None and not carrier.get(TRACEPARENT):
            carrier = {**carrier, **lookup(worker_ctx)}
        worker_span = _tracer.start_span(name, context=extract(carrier), kind=SpanKind[kind],
                                         attributes=attributes)
        # Worker setup, the method and teardown run in the worker's own green thread, whose context
        # this is (greenlets keep one context each).
        token = context.attach(trace.set_span_in_context(worker_span))
        self.spans[worker_ctx] = (worker_span, token)

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        if not self.on or exc_info is None:
            return
        entry = self.spans.get(worker_ctx)
        if entry is not None:
            record_error(entry[0], exc_info[1])

    def worker_teardown(self, worker_ctx):
        if not self.on:
            return
        entry = self.spans.pop(worker_ctx, None)
        if entry is not None:
            from opentelemetry import context
            worker_span, token = entry
            worker_span.end()
            context.detach(token)


class TraceIdFilter(logging.Filter):
    """Adds ``trace_id`` to every record: the current trace's id in hex, ``-`` outside a trace.
    A handler's filter (see each service's ``config.yml``), so records of every logger get it."""

    def filter(self, record):
        record.trace_id = "-"
        if enabled:
            from opentelemetry import trace
            span_context = trace.get_current_span().get_span_context()
            if span_context.is_valid:
                record.trace_id = format(span_context.trace_id, "032x")
        return True
