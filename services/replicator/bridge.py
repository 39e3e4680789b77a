"""Entrypoints that bridge the main buckets' change notifications into nameko workers.

``s3_notifications`` long-polls the SQS queue the S3 main bucket notifies
(``DSS_S3_NOTIFICATION_QUEUE``); ``gcs_notifications`` pulls the Pub/Sub subscription of the GCS
main bucket's topic (``DSS_GCS_NOTIFICATION_SUBSCRIPTION``) over Pub/Sub's REST API (requests is
green under eventlet; the grpc client would block the loop). Each notification is normalised into
a ``shared.schemas.ObjectChanged`` dict and handed to the decorated method as its one argument::

    from services.replicator.bridge import gcs_notifications, s3_notifications

    class ReplicatorService:
        @s3_notifications
        def on_s3_change(self, change): ...   # change["replica"] == "aws"

        @gcs_notifications
        def on_gcs_change(self, change): ...  # change["replica"] == "gcp"

Delivery is at-least-once: a message is deleted (SQS) / acknowledged (Pub/Sub) only after every
worker it started has returned without error; when one raises, the message comes back after
``DSS_NOTIFICATION_RETRY_DELAY`` seconds. Settled messages are acknowledged in batches (SQS's
``DeleteMessageBatch`` of up to 10, one Pub/Sub ``acknowledge`` of many ack ids), gathered for
``ACK_LINGER_SECONDS`` by one sending thread: a request per batch rather than per message; an
acknowledgement that is lost only means a duplicate, which handlers tolerate. Fetches are gathered
the same way: one that drains the queue is followed by a pause of ``FETCH_LINGER_SECONDS``.
Duplicates are not filtered: S3 may notify one upload twice (moto sends ``ObjectCreated:Put`` and
``ObjectCreated:CompleteMultipartUpload`` for a multipart upload) and both queues redeliver, so
handlers must be idempotent (the replicator is).
Notifications are not ordered either (fake-gcs-server may publish a delete before the finalize of
the same generation), so a handler should look at the object's current state.

Each entrypoint runs one managed polling thread; at most ``max_workers`` (the container's)
messages per entrypoint are in flight, and only as many are fetched as there are free slots.
``stop()`` stops fetching and waits for in-flight workers (and their acks); ``kill()`` abandons
them, leaving their messages to be redelivered. An unreachable or missing queue / subscription is
logged once and retried with backoff; it never stops the container.
"""
from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import random
from typing import Any, Mapping
from urllib.parse import unquote_plus

import boto3
import eventlet
import requests
from botocore.config import Config
from eventlet.queue import LightQueue
from eventlet.semaphore import Semaphore
from greenlet import GreenletExit
from marshmallow import ValidationError
from nameko.exceptions import ContainerBeingKilled
from nameko.extensions import Entrypoint
from prometheus_client import Counter

from shared import tracing
from shared.config import Settings
from shared.schemas import ObjectChanged, schema_instance
from shared.sessions import read_environment_once

logger = logging.getLogger(__name__)

SQS_WAIT_SECONDS = 20  # SQS's longest long poll: fewest empty receives
SQS_MAX_BATCH = 10  # SQS's receive limit
PUBSUB_MAX_BATCH = 100
# A Pub/Sub pull waits for messages (the emulator up to ~90 s); ending it ourselves just means
# another pull, and a message is handed to a pull only while that pull's connection is open.
PUBSUB_PULL_TIMEOUT = (3.05, 60)
PUBSUB_CALL_TIMEOUT = (3.05, 30)
PUBSUB_API = "https://pubsub.googleapis.com"
PUBSUB_SCOPE = "https://www.googleapis.com/auth/pubsub"
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
# How long the first settled message waits for others to share its acknowledgement request: long
# against a worker (milliseconds), and at most a twentieth of the visibility timeout / ack deadline
# (DSS_NOTIFICATION_RETRY_DELAY) that an acknowledgement must beat.
ACK_LINGER_SECONDS = 0.2
# After a fetch that emptied the queue (fewer messages than asked for), wait this long before the
# next one, so that it takes what arrived meanwhile in one request rather than one or two messages
# per request. bench/small_files.py, 8 writers: SQS requests per file 0.94 -> 0.54, Pub/Sub 0.70 ->
# 0.37, for at most this much more replication lag.
FETCH_LINGER_SECONDS = 0.05
SQS_MAX_DELETE_BATCH = 10  # SQS's DeleteMessageBatch limit
PUBSUB_MAX_ACK_BATCH = 1000

NOTIFICATIONS_RECEIVED = Counter(
    "dss_notifications_received_total", "Change notification messages fetched from SQS / Pub/Sub.", ["replica"])
NOTIFICATIONS_DISPATCHED = Counter(
    "dss_notifications_dispatched_total", "Object changes whose worker succeeded.", ["replica"])
NOTIFICATIONS_FAILED = Counter(
    "dss_notifications_failed_total", "Object changes whose worker raised (the message is redelivered).", ["replica"])
NOTIFICATIONS_IGNORED = Counter(
    "dss_notifications_ignored_total", "Notification messages acknowledged without a worker.", ["replica", "reason"])
NOTIFICATION_POLL_ERRORS = Counter(
    "dss_notification_poll_errors_total", "Failed fetches from SQS / Pub/Sub (retried with backoff).", ["replica"])


_ACKS_END = object()  # put on the queue of acknowledgements by stop(): send the rest, then end


class MalformedNotification(ValueError):
    """A message that is not a notification we understand; redelivering it cannot help."""


# --- normalisers ------------------------------------------------------------------------------------

def _object_changed(**fields) -> dict:
    try:
        return schema_instance(ObjectChanged).load(fields)
    except ValidationError as error:
        raise MalformedNotification(f"not an object change: {error.messages}") from None


def _s3_kind(event_name: str) -> str | None:
    # AWS names events without the "s3:" that configurations use; accept both spellings.
    name = event_name.removeprefix("s3:")
    if name.startswith("ObjectCreated:"):
        return "created"
    if name.startswith("ObjectRemoved:") or name == "LifecycleExpiration:Delete":
        return "deleted"
    return None  # restores, replication, tagging, ACL ...: the object's bytes did not change


def normalise_s3_notification(body: str | bytes | Mapping, bucket: str | None = None) -> list[dict]:
    """The object changes of one S3 event notification (an SQS message body), for ``bucket`` only.

    An empty list means nothing to do (``s3:TestEvent``, other buckets, other event types). Keys
    are URL-decoded (S3 sends ``a+b%2Bc`` for ``a b+c``). An S3 → SNS → SQS envelope is unwrapped.
    A deletion carries no size or content checksums: AWS sends none, and an emulator's are stale.
    Raises ``MalformedNotification``.
    """
    try:
        document = json.loads(body) if isinstance(body, (str, bytes)) else dict(body)
        if document.get("Type") == "Notification" and isinstance(document.get("Message"), str):
            document = json.loads(document["Message"])
    except (ValueError, TypeError, AttributeError) as error:
        raise MalformedNotification(f"not JSON: {error}") from None
    if not isinstance(document, dict):
        raise MalformedNotification("not a JSON object")
    if document.get("Event") == "s3:TestEvent":
        return []
    records = document.get("Records")
    if not isinstance(records, list):
        raise MalformedNotification("no Records")
    changes = []
    for record in records:
        try:
            kind = _s3_kind(record["eventName"])
            record_bucket = record["s3"]["bucket"]["name"]
            obj = record["s3"]["object"]
            key = unquote_plus(obj["key"])
        except (KeyError, TypeError, AttributeError) as error:
            raise MalformedNotification(f"incomplete S3 record: missing {error}") from None
        if kind is None or (bucket is not None and record_bucket != bucket):
            continue
        checksums = {}
        if kind == "created" and obj.get("eTag"):
            checksums["etag"] = str(obj["eTag"]).strip('"').lower()
        if obj.get("sequencer"):
            checksums["sequencer"] = str(obj["sequencer"])
        changes.append(_object_changed(
            replica="aws", bucket=record_bucket, key=key, kind=kind,
            size=obj.get("size") if kind == "created" else None,
            checksums=checksums, event_time=record.get("eventTime")))
    return changes


def _b64_hex(value: str) -> str:
    return base64.b64decode(value, validate=True).hex()


def normalise_gcs_notification(message: Mapping, bucket: str | None = None) -> dict | None:
    """The object change of one GCS Pub/Sub notification (a Pub/Sub ``PubsubMessage``), or None.

    None for other buckets, metadata updates and the delete (or archive) of a generation that was
    replaced by a newer one (``overwrittenByGeneration``: the finalize of that one is the change).
    The checksums come from the object resource in ``data`` (``JSON_API_V1``): ``crc32c`` as 8 and
    ``md5`` as 32 lower-case hex digits, plus ``generation``. A deletion carries only the
    generation. Raises ``MalformedNotification``.
    """
    attributes = message.get("attributes") or {}
    event_type = attributes.get("eventType")
    if not event_type or "bucketId" not in attributes or "objectId" not in attributes:
        raise MalformedNotification("not a GCS notification (eventType, bucketId, objectId missing)")
    if bucket is not None and attributes["bucketId"] != bucket:
        return None
    if event_type == "OBJECT_FINALIZE":
        kind = "created"
    elif event_type in ("OBJECT_DELETE", "OBJECT_ARCHIVE"):
        if attributes.get("overwrittenByGeneration"):
            return None
        kind = "deleted"
    else:  # OBJECT_METADATA_UPDATE and anything newer
        return None
    resource: dict = {}
    if attributes.get("payloadFormat") == "JSON_API_V1" and message.get("data"):
        try:
            resource = json.loads(base64.b64decode(message["data"]))
        except (ValueError, binascii.Error) as error:
            raise MalformedNotification(f"data is not a base64 JSON object resource: {error}") from None
        if not isinstance(resource, dict):
            raise MalformedNotification("data is not a JSON object")
    checksums = {}
    try:
        if kind == "created" and resource.get("crc32c"):
            checksums["crc32c"] = _b64_hex(resource["crc32c"])
        if kind == "created" and resource.get("md5Hash"):  # composite objects have none
            checksums["md5"] = _b64_hex(resource["md5Hash"])
    except (ValueError, binascii.Error) as error:
        raise MalformedNotification(f"checksum is not base64: {error}") from None
    generation = resource.get("generation") or attributes.get("objectGeneration")
    if generation:
        checksums["generation"] = str(generation)
    size = resource.get("size") if kind == "created" else None
    try:
        size = int(size) if size is not None else None  # the JSON API sends it as a string
    except (TypeError, ValueError):
        raise MalformedNotification(f"size is not a number: {size!r}") from None
    return _object_changed(
        replica="gcp", bucket=attributes["bucketId"], key=attributes["objectId"], kind=kind,
        size=size, checksums=checksums,
        event_time=attributes.get("eventTime") or message.get("publishTime") or resource.get("updated"))


# --- entrypoints --------------------------------------------------------------------------------------

class _Delivery:
    """One fetched message and the workers it started; settled when the last of them returns."""

    def __init__(self, message: Any, pending: int):
        self.message = message
        self.pending = pending
        self.failed = False


class _NotificationEntrypoint(Entrypoint):
    """Fetch messages from a queue-like source while slots are free; one worker per object change."""

    replica = ""
    max_batch = 1
    max_ack_batch = 1
    _poller = None
    _acker = None
    _slots = None

    def setup(self):
        self.settings = Settings.from_config(self.container.config)
        self.bucket = self.settings.bucket(self.replica, "main")
        self.retry_delay = max(0, self.settings.notification_retry_delay)
        self.limit = max(1, int(self.container.max_workers or 1))
        self._slots = Semaphore(self.limit)
        self._stopping = False
        self._fetching = True  # until the poller dispatches, stop() may simply kill it
        self._poller = None
        self._acks = LightQueue()  # settled messages waiting for their acknowledgement
        # A dependency provider of the service that knows its own writes (``is_echo(change)``)
        # lets the bridge drop their echoes before any worker runs.
        self._echo_checks = [provider.is_echo for provider in self.container.dependencies
                             if callable(getattr(provider, "is_echo", None))]
        self._linger = min(ACK_LINGER_SECONDS, max(1, self.retry_delay) / 20)

    def start(self):
        self._poller = self.container.spawn_managed_thread(self._poll, identifier=f"{self}.poll")
        self._acker = self.container.spawn_managed_thread(self._send_acks, identifier=f"{self}.acks")

    def stop(self):
        self._stopping = True
        poller, self._poller = self._poller, None
        if poller is not None:
            if self._fetching:
                # Waiting for a slot, in a long poll or in backoff: nothing of ours is lost (a
                # message received by an interrupted fetch comes back after its timeout).
                poller.kill()
            else:
                try:
                    poller.wait()  # let it hand over the batch it holds
                except GreenletExit:  # killed meanwhile (by kill()); the slots tell the rest
                    pass
        if self._slots is None:  # never set up
            return
        for _ in range(self.limit):  # every slot back: every in-flight message settled
            self._slots.acquire()
        acker, self._acker = self._acker, None
        self._acks.put(_ACKS_END)  # the acker sends what is settled, then ends
        if acker is not None:
            try:
                acker.wait()
            except GreenletExit:  # killed meanwhile (by kill())
                pass
        else:
            self._flush_acks([])
        self._close()

    def kill(self):
        self._stopping = True
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.kill()
        acker, self._acker = self._acker, None
        if acker is not None:  # what it had not acknowledged is delivered again
            acker.kill()
        if self._slots is None:
            return
        try:
            self._close()
        except Exception:  # the container is dying; never raise from kill
            logger.debug("closing %s failed", self, exc_info=True)

    # --- the polling thread -----------------------------------------------------------------
    def _poll(self):
        failures = 0
        while not self._stopping:
            self._fetching = True
            self._slots.acquire()
            taken = 1
            while taken < self.max_batch and self._slots.acquire(blocking=False):
                taken += 1
            try:
                try:
                    messages = self._fetch(taken)
                except Exception as error:
                    NOTIFICATION_POLL_ERRORS.labels(self.replica).inc()
                    failures += 1
                    if failures == 1:
                        logger.warning("%s: cannot fetch notifications from %s (%s); retrying with backoff",
                                       self, self._source_name(), error)
                    else:
                        logger.debug("%s: fetch failed again: %s", self, error)
                    delay = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (failures - 1))
                    eventlet.sleep(delay * random.uniform(0.8, 1.2))
                    continue
                if failures:
                    logger.info("%s: fetching notifications from %s again", self, self._source_name())
                    failures = 0
                self._fetching = False
                asked = taken
                for message in messages:
                    taken -= 1  # each message holds one slot until it is settled
                    self._handle(message)
            finally:
                for _ in range(taken):
                    self._slots.release()
            if 0 < len(messages) < asked:  # the queue is drained: let the next fetch gather more
                self._fetching = True
                eventlet.sleep(FETCH_LINGER_SECONDS)
        self._fetching = True

    def _handle(self, message) -> None:
        NOTIFICATIONS_RECEIVED.labels(self.replica).inc()
        try:
            changes = self._normalise(message)
        except MalformedNotification as error:
            logger.error("%s: dropping a malformed notification (%s): %.500s", self, error, self._describe(message))
            self._ignore(message, "malformed")
            return
        except Exception:  # our bug, not the message's: keep it for redelivery after a fix
            logger.exception("%s: cannot normalise a notification: %.500s", self, self._describe(message))
            self._slots.release()
            return
        if not changes:
            self._ignore(message, "irrelevant")
            return
        changes = [change for change in changes if not any(is_echo(change) for is_echo in self._echo_checks)]
        if not changes:  # the echo of the service's own write: no worker for it
            self._ignore(message, "echo")
            return
        delivery = _Delivery(message, len(changes))
        for index, change in enumerate(changes):
            try:
                self.container.spawn_worker(self, (change,), {},
                                            context_data=self._carried_trace(message, change) if tracing.enabled else None,
                                            handle_result=functools.partial(self._handle_result, delivery))
            except ContainerBeingKilled:
                # The rest of this message is left to redelivery; the slot is freed once.
                delivery.failed = True
                delivery.pending -= len(changes) - index - 1
                self._settle_one(delivery)
                return

    def _handle_result(self, delivery: _Delivery, worker_ctx, result, exc_info):
        if exc_info is not None:
            NOTIFICATIONS_FAILED.labels(self.replica).inc()
            delivery.failed = True
        else:
            NOTIFICATIONS_DISPATCHED.labels(self.replica).inc()
        self._settle_one(delivery)
        return result, exc_info

    def _settle_one(self, delivery: _Delivery) -> None:
        delivery.pending -= 1
        if delivery.pending > 0:
            return
        try:
            if delivery.failed:
                self._retry_later(delivery.message)
            else:
                self._ack(delivery.message)
        except Exception as error:  # it will be redelivered: a duplicate, which handlers tolerate
            logger.warning("%s: could not settle a notification (%s); it will be delivered again", self, error)
        finally:
            self._slots.release()

    def _ignore(self, message, reason: str) -> None:
        NOTIFICATIONS_IGNORED.labels(self.replica, reason).inc()
        try:
            self._ack(message)
        finally:
            self._slots.release()

    # --- the trace of the write a change reports (tracing on only) ------------------------------
    # Its writer put its ``traceparent`` in the object's metadata (``shared.tracing.object_metadata``);
    # the worker's span continues that trace. A lookup that fails only leaves the change a trace of
    # its own.
    def _carried_trace(self, message, change: dict) -> dict:
        """What the notification itself tells (the poller's thread: no I/O here)."""
        return {}

    def trace_context(self, worker_ctx) -> dict:
        """What needs a request to learn, asked by ``shared.tracing.Tracing`` in the worker's own
        green thread (so lookups run in parallel, not one by one in the poller's)."""
        return {}

    def _lookup(self, change: dict, read) -> dict:
        if change["kind"] != "created":
            return {}
        try:
            return tracing.parent_from_metadata(read())
        except Exception as error:
            logger.debug("%s: no trace context for %s: %s", self, change["key"], error)
            return {}

    # --- acknowledgements, in batches ---------------------------------------------------------
    def _ack(self, message) -> None:
        """Acknowledge a settled message (with others settled meanwhile: ``_send_acks``)."""
        self._acks.put(message)

    def _send_acks(self):
        while True:
            first = self._acks.get()
            if first is _ACKS_END:
                return
            eventlet.sleep(self._linger)  # let the workers of the same fetch settle too
            if self._flush_acks([first]):
                return

    def _flush_acks(self, batch: list) -> bool:
        """Acknowledge ``batch`` and everything settled meanwhile, ``max_ack_batch`` messages per
        request; True once the end marker (put by ``stop``) was taken."""
        ended = False
        while True:
            while len(batch) < self.max_ack_batch and not ended and not self._acks.empty():
                message = self._acks.get_nowait()
                if message is _ACKS_END:
                    ended = True
                else:
                    batch.append(message)
            if not batch:
                return ended
            try:
                self._acknowledge(batch)
            except Exception as error:  # they will be redelivered: duplicates, which handlers tolerate
                logger.warning("%s: could not acknowledge %d notification(s) (%s); they will be delivered again",
                               self, len(batch), error)
            batch = []

    # --- the source -------------------------------------------------------------------------
    def _source_name(self) -> str:
        raise NotImplementedError

    def _fetch(self, max_messages: int) -> list:
        raise NotImplementedError

    def _normalise(self, message) -> list[dict]:
        raise NotImplementedError

    def _describe(self, message) -> str:
        return repr(message)

    def _acknowledge(self, messages: list) -> None:
        """Acknowledge ``messages`` (at most ``max_ack_batch``) in one request."""
        raise NotImplementedError

    def _retry_later(self, message) -> None:
        """Make a failed message come back after the retry delay."""

    def _close(self) -> None:
        pass


class S3NotificationsEntrypoint(_NotificationEntrypoint):
    """Long-polls the SQS queue of the S3 main bucket's ``s3:ObjectCreated:*`` /
    ``s3:ObjectRemoved:*`` notifications. A message is received with a visibility timeout of
    ``DSS_NOTIFICATION_RETRY_DELAY``, deleted once its workers succeeded, else left to reappear."""

    replica = "aws"
    max_batch = SQS_MAX_BATCH
    max_ack_batch = SQS_MAX_DELETE_BATCH

    def setup(self):
        super().setup()
        settings = self.settings
        credentials = {}
        key_id, secret = settings.s3_access_key_id, settings.s3_secret_access_key
        if not key_id and settings.sqs_endpoint:
            key_id, secret = "test", "test"  # an emulator accepts any keys
        if key_id:
            credentials = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
        self._credentials = credentials
        self._s3 = None  # for the trace context of a change (tracing on only)
        config = Config(region_name=settings.s3_region, connect_timeout=3, read_timeout=SQS_WAIT_SECONDS + 10,
                        retries={"mode": "standard", "max_attempts": 2}, parameter_validation=False)
        # A session of its own: boto3's default session is not safe to share between threads.
        self.sqs = boto3.session.Session().client("sqs", endpoint_url=settings.sqs_endpoint or None,
                                                  config=config, **credentials)
        queue = settings.s3_notification_queue
        self._queue_url = queue if queue.startswith(("http://", "https://")) else None

    def _source_name(self) -> str:
        return f"SQS queue {self.settings.s3_notification_queue}"

    def trace_context(self, worker_ctx) -> dict:
        # S3's notifications carry no user metadata: one HEAD per created object, only with tracing on.
        change = worker_ctx.args[0]
        return self._lookup(change, lambda: self._s3_client().head_object(
            Bucket=change["bucket"], Key=change["key"]).get("Metadata", {}))

    def _s3_client(self):
        if self._s3 is None:
            settings = self.settings
            self._s3 = boto3.session.Session().client(
                "s3", endpoint_url=settings.s3_endpoint or None, region_name=settings.s3_region,
                config=Config(connect_timeout=3, read_timeout=10, retries={"mode": "standard", "max_attempts": 2}),
                **self._credentials)
        return self._s3

    def _fetch(self, max_messages: int) -> list:
        if self._queue_url is None:
            self._queue_url = self.sqs.get_queue_url(QueueName=self.settings.s3_notification_queue)["QueueUrl"]
        answer = self.sqs.receive_message(QueueUrl=self._queue_url, MaxNumberOfMessages=max_messages,
                                          WaitTimeSeconds=SQS_WAIT_SECONDS,
                                          VisibilityTimeout=min(max(1, self.retry_delay), 43200))  # SQS's range
        return answer.get("Messages", [])

    def _normalise(self, message) -> list[dict]:
        return normalise_s3_notification(message.get("Body", ""), self.bucket)

    def _describe(self, message) -> str:
        return message.get("Body", "")

    def _acknowledge(self, messages: list) -> None:
        answer = self.sqs.delete_message_batch(QueueUrl=self._queue_url, Entries=[
            {"Id": str(number), "ReceiptHandle": message["ReceiptHandle"]} for number, message in enumerate(messages)])
        if answer.get("Failed"):
            logger.warning("%s: %d of %d deletes failed (%s); those notifications will be delivered again", self,
                           len(answer["Failed"]), len(messages), answer["Failed"][0].get("Message", ""))

    def _close(self) -> None:
        self.sqs.close()
        if self._s3 is not None:
            self._s3.close()


class GCSNotificationsEntrypoint(_NotificationEntrypoint):
    """Pulls the Pub/Sub subscription of the GCS main bucket's notifications (REST API). A message
    is acknowledged once its worker succeeded; a failed one gets an ack deadline of
    ``DSS_NOTIFICATION_RETRY_DELAY`` seconds, after which Pub/Sub delivers it again."""

    replica = "gcp"
    max_batch = PUBSUB_MAX_BATCH
    max_ack_batch = PUBSUB_MAX_ACK_BATCH

    def setup(self):
        super().setup()
        subscription = self.settings.gcs_notification_subscription
        if not subscription.startswith("projects/"):
            subscription = f"projects/{self.settings.gcp_project}/subscriptions/{subscription}"
        self.subscription = subscription
        host = self.settings.pubsub_emulator_host
        self.base_url = f"http://{host}/v1/{subscription}" if host else f"{PUBSUB_API}/v1/{subscription}"
        self.session = None  # made by the first fetch, so missing credentials are retried, not fatal

    def _session(self) -> requests.Session:
        if self.session is None:
            if self.settings.pubsub_emulator_host:
                self.session = read_environment_once(requests.Session())
            else:
                import google.auth
                from google.auth.transport.requests import AuthorizedSession
                credentials, _ = google.auth.default(scopes=[PUBSUB_SCOPE])
                self.session = read_environment_once(AuthorizedSession(credentials))
        return self.session

    def _call(self, verb: str, body: dict, timeout=PUBSUB_CALL_TIMEOUT) -> dict:
        answer = self._session().post(f"{self.base_url}:{verb}", json=body, timeout=timeout)
        if answer.status_code >= 400:
            raise RuntimeError(f"Pub/Sub {verb} of {self.subscription}: HTTP {answer.status_code} {answer.text[:300]}")
        return answer.json() if answer.content else {}

    def _source_name(self) -> str:
        where = self.settings.pubsub_emulator_host or "Pub/Sub"
        return f"subscription {self.subscription} at {where}"

    def _fetch(self, max_messages: int) -> list:
        try:
            answer = self._call("pull", {"maxMessages": max_messages}, timeout=PUBSUB_PULL_TIMEOUT)
        except requests.exceptions.ReadTimeout:
            return []  # an empty long pull
        return answer.get("receivedMessages", [])

    def _normalise(self, message) -> list[dict]:
        change = normalise_gcs_notification(message.get("message") or {}, self.bucket)
        return [change] if change else []

    def _carried_trace(self, message, change: dict) -> dict:
        # The object resource of the notification (JSON_API_V1) has the metadata.
        return self._lookup(change, lambda: json.loads(
            base64.b64decode((message.get("message") or {}).get("data") or b"e30=")).get("metadata") or {})

    def _describe(self, message) -> str:
        return json.dumps(message.get("message"))

    def _acknowledge(self, messages: list) -> None:
        self._call("acknowledge", {"ackIds": [message["ackId"] for message in messages]})

    def _retry_later(self, message) -> None:
        self._call("modifyAckDeadline", {"ackIds": [message["ackId"]], "ackDeadlineSeconds": min(self.retry_delay, 600)})

    def _close(self) -> None:
        if self.session is not None:
            self.session.close()


s3_notifications = S3NotificationsEntrypoint.decorator
gcs_notifications = GCSNotificationsEntrypoint.decorator
