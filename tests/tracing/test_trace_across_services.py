"""One trace across the whole store (issue 18, item 3): every service runs as `make up` runs it
(``nameko run``, one process each) with ``DSS_TRACING_ENDPOINT`` pointing at an OTLP/HTTP receiver
of the test's own (devtools.otlp), on the real broker and both emulators, over main buckets of the
test's own whose change notifications the replicator bridges.

The test is a traced client: its ``PUT /files`` and ``PUT /bundles`` (an indexed bundle, matched by
a webhook subscription) both carry a ``traceparent`` naming one span of its own. Everything they
cause must join that one trace, correctly parented: the gateway's request spans, the RPC client
and server spans of files and bundles, the replicator's copy (reached through the bucket's change
notification), the indexer's handling of ``bundle_created``, the notifier's of ``bundle_indexed``
and ``subscription_matched``, and the webhook delivery to the test's receiver. The services' logs
carry the trace id.
"""
from __future__ import annotations

import json
import os
import secrets
import uuid

import pytest
import requests

from devtools import http
from devtools.fakes import stage_object
from devtools.local_cloud import free_port
from devtools.otlp import OtlpReceiver
from devtools.processes import ServiceProcess
from devtools.receivers import Receiver
from devtools.waiting import wait_until
from shared.identifiers import new_uuid, new_version

SERVICES = ("gateway", "files", "bundles", "replicator", "indexer", "notifier", "checkout")
TRACED = {"gateway", "files", "bundles", "replicator", "indexer", "notifier"}
KEY_ID, SECRET = "trace-key", "trace-secret"


@pytest.fixture
def otlp():
    receiver = OtlpReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def webhooks():
    receiver = Receiver({KEY_ID: SECRET.encode()})
    yield receiver
    receiver.stop()


@pytest.fixture
def traced_store(rabbit_config, local_cloud_settings, local_issuer_settings, bucket_notifications,
                 gcs_notification_settings, blobstores, otlp, tmp_path):
    """Every service as its own ``nameko run`` process, exporting spans to ``otlp``: (API URL,
    {service: process}). Stopped after the test (before its vhost goes)."""
    bucket = f"trace-{uuid.uuid4().hex[:10]}"
    for store in blobstores.values():
        store.create_bucket(bucket)
    gateway = f"127.0.0.1:{free_port()}"
    # A `nameko run` process reads its settings from the environment: a developer's own DSS_* must not leak in.
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("DSS_", "OTEL_")) and name not in ("AMQP_URI", "METRICS_PORT")}
    env.update({name: str(value) for name, value in {
        **local_cloud_settings, **local_issuer_settings, **bucket_notifications(bucket), **gcs_notification_settings,
        "AMQP_URI": rabbit_config["AMQP_URI"], "DSS_GS_BUCKET": bucket, "DSS_INDEX_DIR": tmp_path / "index",
        "DSS_NOTIFY_ALLOWED_HOSTS": "127.0.0.1", "DSS_GATEWAY_ADDRESS": gateway, "DSS_LOG_LEVEL": "INFO",
        "DSS_TRACING_ENDPOINT": otlp.endpoint,
        # The SDK's own setting: batches leave every 200 ms rather than 5 s, so the test waits less.
        "OTEL_BSP_SCHEDULE_DELAY": 200,
        **{f"DSS_{service.upper()}_METRICS_PORT": 0 for service in SERVICES}}.items()})
    processes = {service: ServiceProcess(service, env, tmp_path / f"{service}.log") for service in SERVICES}
    try:
        for process in processes.values():
            process.start()

        def healthy():
            dead = [name for name, process in processes.items() if not process.alive]
            assert not dead, "exited while starting: " + "\n".join(
                f"--- {name} ---\n{processes[name].tail()}" for name in dead)
            try:
                return requests.get(f"http://{gateway}/internal/health", timeout=10).status_code == 200
            except requests.RequestException:
                return False

        wait_until(healthy, 180, "every service healthy", interval=0.5, on_timeout=lambda: "\n".join(
            f"--- {name} ---\n{process.tail(30)}" for name, process in processes.items()))
        yield f"http://{gateway}/v1", processes
    finally:
        for process in processes.values():
            process.stop()


def children_of(spans) -> dict:
    by_parent: dict = {}
    for span in spans:
        by_parent.setdefault(span.parent_id, []).append(span)
    return by_parent


def one(spans, what: str, **match):
    found = [span for span in spans if all(getattr(span, name) == value for name, value in match.items())]
    assert found, f"no span of {what} ({match}) in the trace: {sorted((s.service, s.name, s.kind) for s in spans)}"
    return found[0]


def parent_of(span, spans):
    return next((candidate for candidate in spans if candidate.span_id == span.parent_id), None)


def test_a_put_of_files_and_an_indexed_bundle_is_one_trace_across_every_service(traced_store, otlp, webhooks,
                                                                                blobstores, dss_settings, mint_token):
    api, processes = traced_store
    auth = {"Authorization": f"Bearer {mint_token('user@example.org', ['dbio'])}"}
    title = f"traced atlas {uuid.uuid4().hex[:8]}"

    # The subscription is made outside the trace under test.
    subscription = http.put(f"{api}/subscriptions", params={"replica": "aws"}, headers=auth, json={
        "callback_url": webhooks.url("/ok"), "hmac_secret_key": SECRET, "hmac_key_id": KEY_ID,
        "jmespath_query": f"event_type=='CREATE' && files.project_json[0].project_core.title=='{title}'"})
    assert subscription.status_code == 201, subscription.text

    # The client's own span: both writes are its children.
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    traced = {**auth, "traceparent": f"00-{trace_id}-{client_span}-01"}

    source_url, _ = stage_object(blobstores["aws"], dss_settings.bucket("aws", "staging"),
                                 json.dumps({"project_core": {"title": title}}).encode(),
                                 content_type="application/json")
    file_uuid, file_version = new_uuid(), new_version()
    put_file = http.put(f"{api}/files/{file_uuid}", params={"version": file_version}, headers=traced,
                        json={"source_url": source_url, "creator_uid": 7})
    assert put_file.status_code == 201, put_file.text
    # The answer names the gateway's span of the request, in the client's trace.
    version, answered_trace, answered_span, flags = put_file.headers["traceparent"].split("-")
    assert (version, answered_trace, flags) == ("00", trace_id, "01") and answered_span != client_span

    bundle_uuid, bundle_version = new_uuid(), new_version()
    put_bundle = http.put(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws", "version": bundle_version},
                          headers=traced, json={"creator_uid": 7, "files": [
                              {"uuid": file_uuid, "version": file_version, "name": "project_0.json",
                               "indexed": True}]})
    assert put_bundle.status_code == 201, put_bundle.text
    assert put_bundle.headers["traceparent"].split("-")[1] == trace_id

    wait_until(lambda: webhooks.accepted(), 60, "the webhook delivery")
    [delivery] = webhooks.accepted()
    assert delivery.payload()["match"] == {"bundle_uuid": bundle_uuid, "bundle_version": bundle_version}

    def complete():
        """The trace once every service's spans arrived and every span's parent did too."""
        spans = otlp.trace(trace_id)
        ids = {span.span_id for span in spans} | {client_span}
        services = {span.service for span in spans}
        webhook = [s for s in spans if s.service == "notifier" and s.kind == "CLIENT" and s.name.startswith("webhook")]
        orphans = [span for span in spans if span.parent_id not in ids]
        return spans if TRACED <= services and webhook and not orphans else None

    spans = wait_until(complete, 60, "the whole trace at the receiver", on_timeout=lambda: "\n".join(
        f"{s.service} {s.kind} {s.name} {s.span_id} <- {s.parent_id}" for s in otlp.trace(trace_id)) + f"\n{otlp.errors}")

    # The gateway: a server span per request, children of the client's span.
    requests_ = [s for s in spans if s.service == "gateway" and s.kind == "SERVER"]
    assert sorted(s.name.split("/")[:3] for s in requests_) == [["PUT ", "v1", "bundles"], ["PUT ", "v1", "files"]], \
        [s.name for s in requests_]
    assert {s.parent_id for s in requests_} == {client_span}
    assert answered_span in {s.span_id for s in requests_}

    # RPC: the callee's server span is a child of the caller's client span, itself below a request.
    for service in ("files", "bundles"):
        server = [s for s in spans if s.service == service and s.kind == "SERVER"]
        assert server, f"no RPC server span of {service}"
        for span in server:
            caller = parent_of(span, spans)
            assert caller.kind == "CLIENT" and caller.name == span.name, (span, caller)
        assert any(parent_of(parent_of(parent_of(s, spans), spans), spans) in requests_ for s in server)

    # Events: the consumer span of each handler is a child of its dispatch's producer span.
    def consumed(service, method, source, event):
        span = one(spans, f"{service}.{method}", service=service, name=f"{service}.{method}", kind="CONSUMER")
        producer = parent_of(span, spans)
        assert producer.kind == "PRODUCER" and producer.service == source \
            and producer.name == f"{source}.{event} publish", (span, producer)
        return span

    consumed("indexer", "handle_bundle_created", "bundles", "bundle_created")
    consumed("notifier", "handle_bundle_indexed", "indexer", "bundle_indexed")
    matched = consumed("notifier", "handle_subscription_matched", "notifier", "subscription_matched")
    consumed("replicator", "handle_object_changed", "replicator", "object_changed")

    # Replication: the bridge's worker continues the trace of the write it reports (the object's
    # metadata): the worker that wrote it (files and bundles, but the indexer's journal and the
    # replicator's own copies too).
    bridged = [s for s in spans if s.service == "replicator" and s.name.startswith("replicator.handle_")
               and s.name.endswith("_notification")]
    assert bridged, "no bridged change notification in the trace"
    for span in bridged:
        writer = parent_of(span, spans)
        assert writer.kind in ("SERVER", "CONSUMER") and writer.name.startswith(f"{writer.service}."), writer
    assert {parent_of(span, spans).service for span in bridged} >= {"files", "bundles"}
    # Its copy writes to the other replica: outbound calls of the replicator below its handler.
    handler_ids = {s.span_id for s in spans if s.name == "replicator.handle_object_changed"}
    assert any(s.parent_id in handler_ids and s.kind == "CLIENT" for s in spans), "no outbound call of a copy"

    # The webhook delivery is a client span of the worker that delivered it.
    webhook = one(spans, "the webhook delivery", service="notifier", name="webhook POST", kind="CLIENT")
    assert webhook.parent_id == matched.span_id and webhook.attributes["http.response.status_code"] == 200
    assert delivery.headers.get("traceparent", "").split("-")[1:3] == [trace_id, webhook.span_id]

    # Outbound storage calls are children too: S3 through botocore, GCS through requests.
    assert any(s.kind == "CLIENT" and s.attributes.get("rpc.system") == "aws-api" for s in spans), "no S3 span"
    assert any(s.kind == "CLIENT" and str(s.attributes.get("url.full", s.attributes.get("http.url", "")))
               .startswith(local_gcs(dss_settings)) for s in spans), "no GCS span"

    # Every span of the trace descends from the client's.
    by_parent = children_of(spans)
    reached, frontier = set(), [client_span]
    while frontier:
        for child in by_parent.get(frontier.pop(), ()):
            reached.add(child.span_id)
            frontier.append(child.span_id)
    assert reached == {s.span_id for s in spans}

    # Logs carry the trace id: the lines the copy and the delivery log at INFO.
    for service, text in (("replicator", "from aws to gcp"), ("notifier", "delivered to")):
        lines = [line for line in processes[service].log().splitlines() if text in line and f"[{trace_id}]" in line]
        assert lines, f"{service}'s log names the trace in no line about {text!r}"


def local_gcs(settings) -> str:
    return settings.gcs_endpoint.rstrip("/")
