"""An OTLP/HTTP trace receiver for tests: a real HTTP server on 127.0.0.1 that takes what the
services' exporters send (``POST /v1/traces``, a protobuf ``ExportTraceServiceRequest``, gzip or
not), decodes it with opentelemetry-proto and keeps every span, so that a test can look at whole
traces as a tracing backend would."""
from __future__ import annotations

import dataclasses
import gzip
import http.server
import threading


@dataclasses.dataclass(frozen=True)
class ReceivedSpan:
    service: str  # the resource's service.name
    trace_id: str  # hex
    span_id: str
    parent_id: str  # "" for a root
    name: str
    kind: str  # SERVER, CLIENT, PRODUCER, CONSUMER, INTERNAL
    attributes: dict
    error: bool


def _value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind in ("string_value", "bool_value", "int_value", "double_value") else None


def decode_spans(body: bytes) -> list[ReceivedSpan]:
    """The spans of one ``ExportTraceServiceRequest``."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(ReceivedSpan(
                    service=str(resource.get("service.name", "")), trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(), parent_id=span.parent_span_id.hex(), name=span.name,
                    kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                    attributes={a.key: _value(a.value) for a in span.attributes},
                    error=span.status.code == Status.STATUS_CODE_ERROR))
    return spans


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        try:
            spans = decode_spans(body)
        except Exception as error:  # a malformed export: the exporter logs the 400
            self.server.receiver.errors.append(repr(error))
            self.send_error(400)
            return
        with self.server.receiver.lock:
            self.server.receiver.spans.extend(spans)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format, *args):  # quiet: a test prints what it needs
        pass


class OtlpReceiver:
    """``endpoint`` is what ``DSS_TRACING_ENDPOINT`` takes; ``trace(trace_id)`` the spans received
    of one trace so far."""

    def __init__(self):
        self.spans: list[ReceivedSpan] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.receiver = self
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self.lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
