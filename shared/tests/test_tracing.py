"""shared.tracing: nothing installed when off; the trace context in message headers and object
metadata when on; a retried event keeps the context of its dispatch (real broker).

Tracing is configured once per process, so the off and on cases each run in a fresh interpreter
(the test process itself never turns tracing on: other tests share it)."""
import subprocess
import sys
import textwrap
import time

from nameko.extensions import DependencyProvider
from kombu import Connection

from devtools.waiting import wait_until
from shared.entrypoints import handler_queue
from shared.exceptions import Unavailable
from shared.retry import retrying_event_handler


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_tracing_off_installs_nothing_and_hooks_do_nothing():
    out = run_python("""
        import logging, requests
        from opentelemetry import trace
        from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
        from opentelemetry.instrumentation.requests import RequestsInstrumentor
        from shared import tracing
        from shared.config import Settings

        assert tracing.configure(Settings.from_config({"DSS_TRACING_ENDPOINT": ""}, environ={}), "files") is False
        assert tracing.enabled is False
        # No SDK provider, no instrumentation: the API's proxy stays a no-op.
        assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
        assert not RequestsInstrumentor().is_instrumented_by_opentelemetry
        assert not BotocoreInstrumentor().is_instrumented_by_opentelemetry
        assert tracing.span("x", "CLIENT") is tracing.NO_SPAN
        assert tracing.current_headers() == {}
        headers = {"nameko.call_id_stack": ["a"], "nameko.traceparent": "stale"}
        assert tracing.message_headers(headers) == {"nameko.call_id_stack": ["a"]}
        assert tracing.object_metadata({"a": "b"}) == {"a": "b"} and tracing.object_metadata(None) is None
        from shared.search import opensearch
        [connection] = opensearch._client("http://127.0.0.1:9").transport.connection_pool.connections
        assert type(connection).__name__ == "Urllib3HttpConnection"  # opensearch-py's own, as before
        record = logging.LogRecord("x", logging.INFO, "test", 1, "m", (), None)
        assert tracing.TraceIdFilter().filter(record) and record.trace_id == "-"
        print("ok")
    """)
    assert out.strip() == "ok"


def test_tracing_on_puts_the_current_span_in_headers_and_metadata_and_exports_it():
    out = run_python("""
        import logging
        from opentelemetry import trace
        from opentelemetry.instrumentation.requests import RequestsInstrumentor
        from devtools.otlp import OtlpReceiver
        from devtools.waiting import wait_until
        from shared import tracing
        from shared.config import Settings

        receiver = OtlpReceiver()
        settings = Settings.from_config({"DSS_TRACING_ENDPOINT": receiver.endpoint}, environ={})
        assert tracing.configure(settings, "files") is True and tracing.enabled
        provider = trace.get_tracer_provider()
        assert provider.resource.attributes["service.name"] == "files"
        assert RequestsInstrumentor().is_instrumented_by_opentelemetry
        assert tracing.configure(Settings.from_config({}, environ={}), "other") is True  # once per process

        # An outbound call outside any trace (a poll) starts none.
        with tracing.span("poll", "CLIENT") as poll:
            assert not poll.get_span_context().trace_flags.sampled
        with tracing.span("files.put_file", "SERVER") as worker:
            context = worker.get_span_context()
            assert context.trace_flags.sampled
            headers = tracing.message_headers({"nameko.call_id_stack": ["a"], "nameko.traceparent": "stale"})
            assert set(headers) == {"nameko.call_id_stack", "traceparent"}
            version, trace_id, span_id, flags = headers["traceparent"].split("-")
            assert (version, trace_id, span_id) == ("00", f"{context.trace_id:032x}", f"{context.span_id:016x}")
            assert int(flags, 16) & 1  # sampled
            metadata = tracing.object_metadata({"a": "b"})
            assert metadata == {"a": "b", "traceparent": headers["traceparent"]}
            assert tracing.parent_from_metadata(metadata) == {"traceparent": headers["traceparent"]}
            record = logging.LogRecord("x", logging.INFO, "test", 1, "m", (), None)
            assert tracing.TraceIdFilter().filter(record) and record.trace_id == trace_id
        # The consumer side continues the same trace below the span that sent it.
        parent = trace.get_current_span(tracing.extract(headers)).get_span_context()
        assert (parent.trace_id, parent.span_id) == (context.trace_id, context.span_id)

        # A typed answer (404) is recorded but is no failure; anything else is.
        from shared.exceptions import NotFound
        for error, failed in ((NotFound("no such bundle", "not_found"), False), (RuntimeError("bug"), True)):
            try:
                with tracing.span("bundles.get", "SERVER") as call:
                    raise error
            except type(error):
                pass
            assert (call.status.status_code.name == "ERROR") is failed and call.events[0].name == "exception"

        # OpenSearch over requests, whose instrumentation makes its calls spans.
        from shared.search import opensearch
        [connection] = opensearch._client("http://127.0.0.1:9").transport.connection_pool.connections
        assert type(connection).__name__ == "RequestsHttpConnection"

        tracing.flush()
        [exported] = wait_until(lambda: [span for span in receiver.spans if span.name == "files.put_file"], 10,
                                "the span exported")
        assert (exported.service, exported.name, exported.kind, exported.trace_id) == (
            "files", "files.put_file", "SERVER", trace_id)
        print("ok")
    """)
    assert out.strip() == "ok"


# --- a retried event keeps its dispatch's trace context --------------------------------------------

seen: list = []
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class WorkerTraceContext(DependencyProvider):
    def get_dependency(self, worker_ctx):
        return dict(worker_ctx.data)


class Flaky:
    name = "tracedflaky"
    context = WorkerTraceContext()

    @retrying_event_handler("tracedsource", "thing_happened", delays=(1,))
    def handle_thing_happened(self, payload):
        seen.append((time.monotonic(), self.context.get("traceparent")))
        if len(seen) == 1:
            raise Unavailable("down once")


def test_a_retried_event_keeps_the_trace_context_of_its_dispatch(rabbit_config, runner_factory):
    runner = runner_factory(rabbit_config, Flaky)
    runner.start()
    queue = handler_queue("tracedsource", "thing_happened", "tracedflaky.handle_thing_happened", rabbit_config)
    with Connection(rabbit_config["AMQP_URI"]) as connection:
        # As the dispatcher sends it: the bare header, and a stale context nameko propagated.
        connection.Producer().publish({"key": 1}, exchange=queue.exchange, routing_key="thing_happened",
                                      headers={"traceparent": TRACEPARENT, "nameko.traceparent": "00-stale"},
                                      declare=[queue], retry=True)
    wait_until(lambda: len(seen) == 2, 20, "the retried delivery")
    # nameko alone would have given the worker the stale one (both strip to the same key).
    assert [traceparent for _, traceparent in seen] == [TRACEPARENT] * 2
    assert seen[1][0] - seen[0][0] >= 0.9  # through the delay queue
