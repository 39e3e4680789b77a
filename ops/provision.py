"""Provision an emulated deployment: the buckets of both replicas and the main buckets' change
notifications (moto's S3 main bucket to an SQS queue on moto itself; the Pub/Sub emulator's topic
and subscription that fake-gcs-server publishes to). Idempotent, and refusing real clouds, whose
notifications are configured by hand (README).

Run by `make up` (devtools.stack), the compose file's and the local Kubernetes overlay's setup
jobs (in the image), and the test fixtures.
"""
from __future__ import annotations

import logging

import requests

logger = logging.getLogger(__name__)


def _pubsub_put(emulator_host: str, path: str, body: dict | None = None) -> None:
    """Create a Pub/Sub resource on the emulator; one that exists already is fine."""
    answer = requests.put(f"http://{emulator_host}/v1/{path}", json=body or {}, timeout=10)
    if answer.status_code not in (200, 409):
        raise RuntimeError(f"creating {path} on the Pub/Sub emulator at {emulator_host}: "
                           f"HTTP {answer.status_code} {answer.text[:300]}")


def subscription_path(project: str, subscription: str) -> str:
    return subscription if subscription.startswith("projects/") else f"projects/{project}/subscriptions/{subscription}"


def ensure_pubsub_topic(emulator_host: str, project: str, topic: str) -> None:
    _pubsub_put(emulator_host, f"projects/{project}/topics/{topic}")


def ensure_pubsub_subscription(emulator_host: str, project: str, subscription: str, topic: str,
                               ack_deadline: int = 10) -> None:
    _pubsub_put(emulator_host, subscription_path(project, subscription),
                {"topic": f"projects/{project}/topics/{topic}", "ackDeadlineSeconds": ack_deadline})


def delete_pubsub_subscription(emulator_host: str, project: str, subscription: str) -> None:
    requests.delete(f"http://{emulator_host}/v1/{subscription_path(project, subscription)}", timeout=10)


def configure_gcs_notifications(settings, ack_deadline: int = 10) -> None:
    """Create the notification topic and subscription on the Pub/Sub emulator (idempotent).

    Never touches real Pub/Sub: with ``DSS_PUBSUB_EMULATOR_HOST`` empty this raises ValueError."""
    host = settings.pubsub_emulator_host
    if not host:
        raise ValueError("DSS_PUBSUB_EMULATOR_HOST is empty: real Pub/Sub is configured by hand (see README)")
    ensure_pubsub_topic(host, settings.gcp_project, settings.gcs_notification_topic)
    ensure_pubsub_subscription(host, settings.gcp_project, settings.gcs_notification_subscription,
                               settings.gcs_notification_topic, ack_deadline)


# --- S3 notifications to SQS (moto serves both) ----------------------------------------------------

def _aws_client(service: str, endpoint: str, settings):
    import boto3
    key_id = settings.s3_access_key_id or "test"  # an emulator accepts any keys
    secret = settings.s3_secret_access_key or "test"
    return boto3.session.Session().client(service, endpoint_url=endpoint, region_name=settings.s3_region,
                                          aws_access_key_id=key_id, aws_secret_access_key=secret)


def sqs_client(settings):
    """An SQS client for the emulator at ``DSS_SQS_ENDPOINT``."""
    if not settings.sqs_endpoint:
        raise ValueError("DSS_SQS_ENDPOINT is empty: real SQS is configured by hand (see README)")
    return _aws_client("sqs", settings.sqs_endpoint, settings)


def configure_s3_notifications(settings) -> str:
    """Create the notification queue on the SQS emulator and make the S3 main bucket send its
    ``s3:ObjectCreated:*`` and ``s3:ObjectRemoved:*`` events there (idempotent). Returns the
    queue's URL. Refuses real AWS (empty endpoints): that is configured by hand (see README)."""
    if not settings.s3_endpoint:
        raise ValueError("DSS_S3_ENDPOINT is empty: real S3 notifications are configured by hand (see README)")
    sqs = sqs_client(settings)
    queue = settings.s3_notification_queue
    if queue.startswith(("http://", "https://")):
        url = queue
    else:
        url = sqs.create_queue(QueueName=queue)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3 = _aws_client("s3", settings.s3_endpoint, settings)
    s3.put_bucket_notification_configuration(Bucket=settings.s3_bucket, NotificationConfiguration={
        "QueueConfigurations": [{"Id": "dss-replication", "QueueArn": arn,
                                 "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})
    return url


def create_buckets(settings) -> None:
    """Create the main, checkout and staging buckets of both replicas (idempotent)."""
    from shared.blobstore import open_blobstore
    for replica in ("aws", "gcp"):
        store = open_blobstore(replica, settings)
        for kind in ("main", "checkout", "staging"):
            store.create_bucket(settings.bucket(replica, kind))
