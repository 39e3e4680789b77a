"""The notification bridge: its two normalisers (unit), and its entrypoints on the real broker
against moto (S3 → SQS) and fake-gcs-server (GCS → Pub/Sub emulator)."""
import base64
import hashlib
import json
import logging
import time
import uuid

import eventlet
import google_crc32c
import pytest
from prometheus_client import REGISTRY

from devtools import local_cloud
from devtools.waiting import wait_until
from ops import provision
from shared import events
from shared.config import Settings
from shared.entrypoints import EventDispatcher, event_handler
from services.replicator import bridge as bridge_module
from services.replicator.bridge import (GCSNotificationsEntrypoint, MalformedNotification, S3NotificationsEntrypoint,
                                        gcs_notifications, normalise_gcs_notification, normalise_s3_notification,
                                        s3_notifications)

MAIN = "dss-main"


# --- S3 normaliser ------------------------------------------------------------------------------------

def s3_record(key, event="ObjectCreated:Put", bucket=MAIN, size=5, etag="5d41402abc4b2a76b9719d911017c592",
              sequencer=None):
    obj = {"key": key, "size": size, "eTag": etag}
    if sequencer:
        obj["sequencer"] = sequencer
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "eventTime": "2026-01-02T03:04:05.678Z",
            "eventName": event, "s3": {"bucket": {"name": bucket}, "object": obj}}


def s3_body(*records):
    return json.dumps({"Records": list(records)})


@pytest.mark.parametrize("encoded, key", [
    ("files/abc.2026-01-01T000000.000000Z", "files/abc.2026-01-01T000000.000000Z"),
    ("a+b%2Bc.txt", "a b+c.txt"),                # space is '+', a real plus is %2B
    ("dir%2Fsub%2Fx", "dir/sub/x"),              # moto encodes slashes too
    ("caf%C3%A9+%E2%9C%93", "café ✓"),
    ("100%25", "100%"),
])
def test_s3_keys_are_url_decoded(encoded, key):
    [change] = normalise_s3_notification(s3_body(s3_record(encoded)), MAIN)
    assert change["key"] == key


def test_s3_created_change_has_every_field():
    body = s3_body(s3_record("k", etag='"ABCDEF0123456789ABCDEF0123456789"', sequencer="0055AED6DCD90281E5"))
    assert normalise_s3_notification(body, MAIN) == [{
        "replica": "aws", "bucket": MAIN, "key": "k", "kind": "created", "size": 5,
        "checksums": {"etag": "abcdef0123456789abcdef0123456789", "sequencer": "0055AED6DCD90281E5"},
        "event_time": "2026-01-02T03:04:05.678Z"}]


def test_s3_delete_carries_no_size_or_content_checksum():
    [change] = normalise_s3_notification(s3_body(s3_record("k", "ObjectRemoved:Delete", sequencer="0A")), MAIN)
    assert change["kind"] == "deleted" and change["size"] is None and change["checksums"] == {"sequencer": "0A"}
    [marker] = normalise_s3_notification(s3_body(s3_record("k", "s3:ObjectRemoved:DeleteMarkerCreated")), MAIN)
    assert marker["kind"] == "deleted"


def test_s3_test_event_other_buckets_and_other_events_are_ignored():
    assert normalise_s3_notification(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent",
                                                 "Bucket": MAIN}), MAIN) == []
    assert normalise_s3_notification(s3_body(s3_record("k", bucket="dss-staging")), MAIN) == []
    assert normalise_s3_notification(s3_body(s3_record("k", "ObjectRestore:Completed")), MAIN) == []
    assert normalise_s3_notification(s3_body(s3_record("k", "ObjectTagging:Put")), MAIN) == []


def test_s3_multipart_double_event_yields_both():
    # moto notifies a multipart completion twice; both are dispatched, the replicator is idempotent.
    body_put = s3_body(s3_record("mp", etag="cb8d7289925309a05b2db09b7709c264-1"))
    body_mpu = s3_body(s3_record("mp", "ObjectCreated:CompleteMultipartUpload", etag="cb8d7289925309a05b2db09b7709c264-1"))
    [first] = normalise_s3_notification(body_put, MAIN)
    [second] = normalise_s3_notification(body_mpu, MAIN)
    assert first == second and first["checksums"]["etag"] == "cb8d7289925309a05b2db09b7709c264-1"


def test_s3_several_records_and_sns_envelope():
    body = s3_body(s3_record("one"), s3_record("two", "ObjectRemoved:Delete"), s3_record("x", bucket="other"))
    changes = normalise_s3_notification(body, MAIN)
    assert [(c["key"], c["kind"]) for c in changes] == [("one", "created"), ("two", "deleted")]
    envelope = json.dumps({"Type": "Notification", "Message": s3_body(s3_record("a+b"))})
    assert normalise_s3_notification(envelope, MAIN)[0]["key"] == "a b"
    assert normalise_s3_notification(body, None)[-1]["bucket"] == "other"  # no filter


@pytest.mark.parametrize("body", ["not json", "[1, 2]", json.dumps({"foo": 1}),
                                  json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]})])
def test_s3_malformed(body):
    with pytest.raises(MalformedNotification):
        normalise_s3_notification(body, MAIN)


# --- GCS normaliser -----------------------------------------------------------------------------------

def gcs_message(event="OBJECT_FINALIZE", key="a b+c é.txt", bucket=MAIN, data=b"hello", generation="1795572100228273",
                **extra_attributes):
    resource = {"kind": "storage#object", "name": key, "bucket": bucket, "generation": generation,
                "size": str(len(data)), "updated": "2026-01-02T03:04:05.678Z",
                "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),
                "crc32c": base64.b64encode(google_crc32c.Checksum(data).digest()).decode()}
    attributes = {"bucketId": bucket, "objectId": key, "eventType": event, "payloadFormat": "JSON_API_V1",
                  "objectGeneration": generation, "eventTime": "2026-01-02T03:04:05Z", **extra_attributes}
    return {"data": base64.b64encode(json.dumps(resource).encode()).decode(), "attributes": attributes,
            "messageId": "1", "publishTime": "2026-01-02T03:04:06.000Z"}


def test_gcs_finalize_converts_checksums_to_hex():
    assert normalise_gcs_notification(gcs_message(), MAIN) == {
        "replica": "gcp", "bucket": MAIN, "key": "a b+c é.txt", "kind": "created", "size": 5,
        "checksums": {"crc32c": "9a71bb4c", "md5": "5d41402abc4b2a76b9719d911017c592",
                      "generation": "1795572100228273"},
        "event_time": "2026-01-02T03:04:05Z"}


def test_gcs_delete_and_archive():
    change = normalise_gcs_notification(gcs_message("OBJECT_DELETE"), MAIN)
    assert change["kind"] == "deleted" and change["size"] is None
    assert change["checksums"] == {"generation": "1795572100228273"}
    assert normalise_gcs_notification(gcs_message("OBJECT_ARCHIVE"), MAIN)["kind"] == "deleted"


def test_gcs_overwrite_metadata_update_and_other_buckets_are_ignored():
    assert normalise_gcs_notification(gcs_message("OBJECT_DELETE", overwrittenByGeneration="2"), MAIN) is None
    assert normalise_gcs_notification(gcs_message("OBJECT_ARCHIVE", overwrittenByGeneration="2"), MAIN) is None
    assert normalise_gcs_notification(gcs_message("OBJECT_METADATA_UPDATE"), MAIN) is None
    assert normalise_gcs_notification(gcs_message(bucket="dss-staging"), MAIN) is None


def test_gcs_without_payload_and_composite_objects():
    message = gcs_message()
    del message["data"]
    message["attributes"]["payloadFormat"] = "NONE"
    change = normalise_gcs_notification(message, MAIN)
    assert change["kind"] == "created" and change["size"] is None
    assert change["checksums"] == {"generation": "1795572100228273"}
    composite = gcs_message()
    resource = json.loads(base64.b64decode(composite["data"]))
    del resource["md5Hash"]
    composite["data"] = base64.b64encode(json.dumps(resource).encode()).decode()
    assert set(normalise_gcs_notification(composite, MAIN)["checksums"]) == {"crc32c", "generation"}


@pytest.mark.parametrize("mangle", [
    lambda m: m["attributes"].pop("eventType"),
    lambda m: m["attributes"].pop("objectId"),
    lambda m: m.update(data="%%%not base64"),
    lambda m: m.update(data=base64.b64encode(b"[1]").decode()),
    lambda m: m.update(data=base64.b64encode(json.dumps({"crc32c": "!!"}).encode()).decode()),
])
def test_gcs_malformed(mangle):
    message = gcs_message()
    mangle(message)
    with pytest.raises(MalformedNotification):
        normalise_gcs_notification(message, MAIN)


# --- entrypoints on the real broker and emulators ------------------------------------------------------

CALLS: list = []        # (key, monotonic time) of every worker started
COLLECTED: list = []    # the payloads that reached the bus
FAIL_ONCE: set = set()  # keys whose first worker raises
SLOW: dict = {}         # key -> seconds its workers take
ACTIVE = {"now": 0, "peak": 0}


def work(dispatch, change):
    CALLS.append((change["key"], time.monotonic()))
    ACTIVE["now"] += 1
    ACTIVE["peak"] = max(ACTIVE["peak"], ACTIVE["now"])
    try:
        if change["key"] in SLOW:
            eventlet.sleep(SLOW[change["key"]])
        if change["key"] in FAIL_ONCE:
            FAIL_ONCE.discard(change["key"])
            raise RuntimeError("failing once on purpose")
        dispatch(events.OBJECT_CHANGED, change)
    finally:
        ACTIVE["now"] -= 1


class S3Bridge:
    name = "bridge_test"
    dispatch = EventDispatcher()

    @s3_notifications
    def on_s3_change(self, change):
        work(self.dispatch, change)


class GCSBridge:
    name = "bridge_test"
    dispatch = EventDispatcher()

    @gcs_notifications
    def on_gcs_change(self, change):
        work(self.dispatch, change)


class Collector:
    name = "bridge_collector"

    @event_handler("bridge_test", events.OBJECT_CHANGED)
    def collect(self, payload):
        COLLECTED.append(payload)


@pytest.fixture(autouse=True)
def _reset():
    for state in (CALLS, COLLECTED, FAIL_ONCE, SLOW):
        state.clear()
    ACTIVE.update(now=0, peak=0)


WAIT = 15.0  # for any one thing the bridge under test is to do; far more than it takes


def collected(key, kind=None):
    return [c for c in COLLECTED if c["key"] == key and (kind is None or c["kind"] == kind)]


def calls(key):
    return [t for k, t in CALLS if k == key]


def unique_prefix():
    return f"bridge-test/{uuid.uuid4().hex[:8]}"


def metric(name, replica):
    return REGISTRY.get_sample_value(name, {"replica": replica}) or 0.0


@pytest.fixture
def s3_config(service_config, s3_notification_settings):
    return {**service_config, **s3_notification_settings}


@pytest.fixture
def gcs_config(service_config, gcs_notification_settings):
    return {**service_config, **gcs_notification_settings}


@pytest.fixture
def start_bridge(container_factory):
    """Start the collector and a bridge service; returns the bridge's container."""
    def start(service_cls, config):
        collector = container_factory(Collector, config)
        collector.start()
        bridge = container_factory(service_cls, config)
        bridge.start()
        return bridge
    return start


def sqs_messages_about(config, key, wait=2):
    """Messages of the notification queue that mention ``key`` (received and left in place)."""
    settings = Settings.from_config(config, environ={})
    sqs = provision.sqs_client(settings)
    url = sqs.get_queue_url(QueueName=settings.s3_notification_queue)["QueueUrl"]
    bodies = [m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait,
                                                     VisibilityTimeout=1).get("Messages", [])]
    return [b for b in bodies if any(c["key"] == key for c in normalise_s3_notification(b))]


def wait_until_every_message_is_deleted(config):
    """Wait until the test's notification queue holds no message, visible or in flight: each was
    deleted, none left to come back after its visibility timeout (what a fixed sleep past that
    timeout, then a receive, checked with a race)."""
    settings = Settings.from_config(config, environ={})
    sqs = provision.sqs_client(settings)
    url = sqs.get_queue_url(QueueName=settings.s3_notification_queue)["QueueUrl"]
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]

    def counts():
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        return tuple(int(attributes[name]) for name in names)
    wait_until(lambda: counts() == (0, 0), timeout=WAIT, what="every message of the queue deleted",
               on_timeout=lambda: f"(visible, in flight): {counts()}")


@pytest.fixture
def gcs_acked(monkeypatch):
    """The keys of the Pub/Sub messages a GCS bridge acknowledged (after the emulator accepted it)."""
    acked = []
    acknowledge = GCSNotificationsEntrypoint._acknowledge

    def recording(bridge, messages):  # a batch: one acknowledge request for all of them
        acknowledge(bridge, messages)
        acked.extend(change["key"] for message in messages for change in bridge._normalise(message))
    monkeypatch.setattr(GCSNotificationsEntrypoint, "_acknowledge", recording)
    return acked


def test_s3_put_and_delete_reach_the_bus_normalised(start_bridge, s3_config, blobstores, dss_settings):
    start_bridge(S3Bridge, s3_config)
    store, main = blobstores["aws"], dss_settings.bucket("aws")
    key = f"{unique_prefix()}/a b+c é.txt"
    received = metric("dss_notifications_received_total", "aws")

    store.put_bytes(main, key, b"hello")
    wait_until(lambda: collected(key, "created"), timeout=WAIT, what="the created change")
    [change] = collected(key, "created")
    assert change["replica"] == "aws" and change["bucket"] == main and change["size"] == 5
    assert change["checksums"]["etag"] == hashlib.md5(b"hello").hexdigest()
    assert change["event_time"]

    store.delete(main, key)
    wait_until(lambda: collected(key, "deleted"), timeout=WAIT, what="the deleted change")
    [deleted] = collected(key, "deleted")
    assert deleted["size"] is None and "etag" not in deleted["checksums"]
    assert metric("dss_notifications_received_total", "aws") >= received + 2
    assert metric("dss_notifications_dispatched_total", "aws") >= 2


def test_s3_other_buckets_are_not_bridged(start_bridge, s3_config, blobstores, dss_settings):
    start_bridge(S3Bridge, s3_config)
    store = blobstores["aws"]
    key = f"{unique_prefix()}/staged"
    store.put_bytes(dss_settings.bucket("aws", "staging"), key, b"x")
    marker = f"{unique_prefix()}/marker"
    store.put_bytes(dss_settings.bucket("aws"), marker, b"x")
    wait_until(lambda: collected(marker), timeout=WAIT, what="the marker")
    assert not collected(key)


def test_s3_malformed_messages_are_dropped_and_free_their_slot(start_bridge, s3_config, blobstores, dss_settings):
    start_bridge(S3Bridge, {**s3_config, "max_workers": 1})
    settings = Settings.from_config(s3_config, environ={})
    sqs = provision.sqs_client(settings)
    url = sqs.get_queue_url(QueueName=settings.s3_notification_queue)["QueueUrl"]
    labels = {"replica": "aws", "reason": "malformed"}
    dropped = REGISTRY.get_sample_value("dss_notifications_ignored_total", labels) or 0.0
    for _ in range(3):
        sqs.send_message(QueueUrl=url, MessageBody="not a notification")
    key = f"{unique_prefix()}/after-garbage"
    blobstores["aws"].put_bytes(dss_settings.bucket("aws"), key, b"x")
    wait_until(lambda: collected(key), timeout=WAIT, what="the change among the garbage")
    wait_until(lambda: REGISTRY.get_sample_value("dss_notifications_ignored_total", labels) == dropped + 3,
               timeout=WAIT, what="the garbage to be dropped")
    wait_until_every_message_is_deleted(s3_config)  # not left to come back
    assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages") is None


def test_s3_failed_worker_leaves_the_message_for_redelivery(start_bridge, s3_config, blobstores, dss_settings):
    start_bridge(S3Bridge, s3_config)
    key = f"{unique_prefix()}/flaky"
    FAIL_ONCE.add(key)
    failed = metric("dss_notifications_failed_total", "aws")

    blobstores["aws"].put_bytes(dss_settings.bucket("aws"), key, b"flaky")
    wait_until(lambda: collected(key), timeout=WAIT, what="the redelivered change")
    first, second = calls(key)
    assert second - first >= 0.9  # after the visibility timeout (DSS_NOTIFICATION_RETRY_DELAY=1)
    assert metric("dss_notifications_failed_total", "aws") == failed + 1
    wait_until_every_message_is_deleted(s3_config)  # after the success: not delivered a third time
    assert len(calls(key)) == 2 and len(collected(key)) == 1


def test_s3_multipart_upload_is_bridged(start_bridge, s3_config, blobstores, dss_settings):
    start_bridge(S3Bridge, s3_config)
    key = f"{unique_prefix()}/multi part"
    client, main = blobstores["aws"].client, dss_settings.bucket("aws")
    upload = client.create_multipart_upload(Bucket=main, Key=key)["UploadId"]
    part = client.upload_part(Bucket=main, Key=key, UploadId=upload, PartNumber=1, Body=b"p" * 10)
    client.complete_multipart_upload(Bucket=main, Key=key, UploadId=upload,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    # moto notifies Put and CompleteMultipartUpload; both are dispatched (the replicator is idempotent)
    wait_until(lambda: len(collected(key)) == 2, timeout=WAIT, what="both multipart notifications")
    first, second = ({k: v for k, v in c.items() if k != "event_time"} for c in collected(key))
    assert first == second and first["checksums"]["etag"].endswith("-1") and first["size"] == 10


def test_s3_stop_waits_for_the_worker_in_flight(start_bridge, s3_config, blobstores, dss_settings):
    bridge = start_bridge(S3Bridge, s3_config)
    key = f"{unique_prefix()}/slow"
    SLOW[key] = 1.0
    blobstores["aws"].put_bytes(dss_settings.bucket("aws"), key, b"slow")
    wait_until(lambda: calls(key), timeout=WAIT, what="the worker to start")
    bridge.stop()
    assert collected(key), "stop() returned before the worker finished"
    wait_until_every_message_is_deleted(s3_config)  # by stop(): not left to come back
    assert sqs_messages_about(s3_config, key) == []


def test_s3_kill_leaves_the_message_in_flight(start_bridge, s3_config, blobstores, dss_settings):
    bridge = start_bridge(S3Bridge, s3_config)
    key = f"{unique_prefix()}/killed"
    SLOW[key] = 30
    blobstores["aws"].put_bytes(dss_settings.bucket("aws"), key, b"killed")
    wait_until(lambda: calls(key), timeout=WAIT, what="the worker to start")
    started = time.monotonic()
    bridge.kill()
    assert time.monotonic() - started < 10  # generous (a loaded machine): far below the worker's 30 s
    assert not collected(key)
    assert len(sqs_messages_about(s3_config, key, wait=3)) == 1  # visible again for the next consumer


def test_s3_concurrency_is_bounded_by_max_workers(start_bridge, s3_config, blobstores, dss_settings):
    start_bridge(S3Bridge, {**s3_config, "max_workers": 2})
    prefix = unique_prefix()
    keys = [f"{prefix}/{n}" for n in range(6)]
    for key in keys:
        SLOW[key] = 0.3
        blobstores["aws"].put_bytes(dss_settings.bucket("aws"), key, b"n")
    wait_until(lambda: all(collected(k) for k in keys), timeout=WAIT, what="every change")
    assert ACTIVE["peak"] == 2


def test_s3_a_fetch_that_drains_the_queue_lets_the_next_one_gather(start_bridge, s3_config, blobstores, dss_settings,
                                                                    monkeypatch):
    """After a fetch that got fewer messages than it asked for, the bridge waits (FETCH_LINGER_SECONDS)
    before fetching again: notifications that arrive meanwhile come in one receive, not one each."""
    monkeypatch.setattr(bridge_module, "FETCH_LINGER_SECONDS", 3.0)  # long against the writes below
    store, main, prefix = blobstores["aws"], dss_settings.bucket("aws"), unique_prefix()
    fetched = []  # this test's keys in each fetch (the queue may also hold S3's test event)
    fetch = S3NotificationsEntrypoint._fetch

    def recording(bridge, max_messages):
        messages = fetch(bridge, max_messages)
        keys = sorted(c["key"] for m in messages for c in bridge._normalise(m) if c["key"].startswith(prefix))
        if keys:
            fetched.append(keys)
        return messages
    monkeypatch.setattr(S3NotificationsEntrypoint, "_fetch", recording)
    start_bridge(S3Bridge, s3_config)

    store.put_bytes(main, f"{prefix}/first", b"1")
    wait_until(lambda: collected(f"{prefix}/first"), timeout=WAIT, what="the first change")
    burst = [f"{prefix}/burst-{n}" for n in range(5)]
    for key in burst:  # while the bridge lingers after the fetch of the first
        store.put_bytes(main, key, b"n")
    wait_until(lambda: all(collected(k) for k in burst), timeout=WAIT, what="the burst's changes")
    assert fetched == [[f"{prefix}/first"], sorted(burst)]  # one receive for the five


def test_s3_unreachable_queue_is_retried_without_crashing(start_bridge, s3_config, caplog):
    caplog.set_level(logging.DEBUG, logger="services.replicator.bridge")
    config = {**s3_config, "DSS_SQS_ENDPOINT": f"http://127.0.0.1:{local_cloud.free_port()}"}
    errors = metric("dss_notification_poll_errors_total", "aws")
    bridge = start_bridge(S3Bridge, config)
    wait_until(lambda: metric("dss_notification_poll_errors_total", "aws") >= errors + 2, timeout=WAIT,
               what="a second failed fetch")  # it kept trying
    warnings = [r for r in caplog.records if r.name == "services.replicator.bridge" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot fetch notifications" in warnings[0].getMessage()  # once, not per retry
    assert not bridge._died.ready()
    started = time.monotonic()
    bridge.stop()
    assert time.monotonic() - started < 10  # generous (a loaded machine): not a wait for a fetch that never ends


def test_gcs_finalize_and_delete_reach_the_bus_normalised(start_bridge, gcs_config, blobstores, dss_settings):
    start_bridge(GCSBridge, gcs_config)
    store, main = blobstores["gcp"], dss_settings.bucket("gcp")
    key = f"{unique_prefix()}/a b+c é.txt"

    store.put_bytes(main, key, b"hello")
    wait_until(lambda: collected(key, "created"), timeout=WAIT, what="the created change")
    [change] = collected(key, "created")
    assert change["replica"] == "gcp" and change["bucket"] == main and change["size"] == 5
    assert change["checksums"]["crc32c"] == google_crc32c.Checksum(b"hello").digest().hex() == "9a71bb4c"
    assert change["checksums"]["md5"] == hashlib.md5(b"hello").hexdigest()
    assert change["checksums"]["generation"] and change["event_time"]

    store.delete(main, key)
    wait_until(lambda: collected(key, "deleted"), timeout=WAIT, what="the deleted change")
    [deleted] = collected(key, "deleted")
    assert deleted["checksums"] == {"generation": change["checksums"]["generation"]}
    assert metric("dss_notifications_dispatched_total", "gcp") >= 2


def test_gcs_failed_worker_gets_the_message_again(start_bridge, gcs_config, blobstores, dss_settings, gcs_acked):
    start_bridge(GCSBridge, gcs_config)
    key = f"{unique_prefix()}/flaky"
    FAIL_ONCE.add(key)
    blobstores["gcp"].put_bytes(dss_settings.bucket("gcp"), key, b"flaky")
    wait_until(lambda: collected(key), timeout=WAIT, what="the redelivered change")
    first, second = calls(key)
    assert second - first >= 0.9  # the failed message's ack deadline was set to the retry delay
    wait_until(lambda: key in gcs_acked, timeout=WAIT, what="the acknowledgement after the success")
    assert len(calls(key)) == 2 and len(collected(key)) == 1  # acknowledged: not delivered a third time


def test_gcs_unreachable_subscription_is_retried_without_crashing(start_bridge, gcs_config, caplog):
    caplog.set_level(logging.WARNING, logger="services.replicator.bridge")
    errors = metric("dss_notification_poll_errors_total", "gcp")
    bridge = start_bridge(GCSBridge, {**gcs_config, "DSS_GCS_NOTIFICATION_SUBSCRIPTION": "no-such-subscription"})
    wait_until(lambda: metric("dss_notification_poll_errors_total", "gcp") >= errors + 2, timeout=WAIT,
               what="a second failed fetch")
    warnings = [r for r in caplog.records if r.name == "services.replicator.bridge"]
    assert len(warnings) == 1 and "404" in warnings[0].getMessage()
    assert not bridge._died.ready()
    bridge.stop()


class SelfBridge:
    """A bridge whose own container consumes what it dispatches, as the replicator does: named as
    the replicator and its handler, so that the dispatcher declares that handler's queue from
    ``shared.events.HANDLERS``."""
    name = "replicator"
    dispatch = EventDispatcher()

    @s3_notifications
    def on_s3_change(self, change):
        self.dispatch(events.OBJECT_CHANGED, change)

    @event_handler("replicator", events.OBJECT_CHANGED)
    def handle_object_changed(self, payload):
        COLLECTED.append(payload)


def test_notifications_waiting_at_the_first_start_are_not_lost(container_factory, s3_config, blobstores,
                                                               dss_settings, monkeypatch):
    """Each test has a fresh vhost, so the handler's queue does not exist yet: a notification already
    waiting in SQS is fetched at once, and its event must not be published before that queue is
    declared (it would be unroutable, and dropped): the dispatcher declares it with the event. The consumer is made slow to start, as on a
    loaded machine, so that the fetch wins the race."""
    from nameko.messaging import QueueConsumer
    original_start = QueueConsumer.start

    def slow_start(consumer):
        eventlet.sleep(3)
        return original_start(consumer)
    monkeypatch.setattr(QueueConsumer, "start", slow_start)
    key = f"{unique_prefix()}/waiting.txt"
    blobstores["aws"].put_bytes(dss_settings.bucket("aws"), key, b"waiting")
    wait_until(lambda: sqs_messages_about(s3_config, key, wait=1), timeout=WAIT, what="the notification in SQS")
    container_factory(SelfBridge, s3_config).start()
    wait_until(lambda: collected(key, "created"), timeout=WAIT, what="the change that was waiting before the first start")
