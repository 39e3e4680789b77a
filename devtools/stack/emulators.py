"""The cloud emulators of `make up` (moto for S3 and SQS, fake-gcs-server, the Pub/Sub emulator),
each started only when its endpoint is local and nothing compatible answers there; the buckets;
and the main buckets' change notifications, which replication needs.
"""
from __future__ import annotations

import contextlib
import logging
import urllib.parse

import psutil
import requests

from ops import provision
from shared.config import Settings

from devtools import local_cloud
from devtools.stack.broker import LOCAL_HOSTS
from devtools.stack.processes import LOG_DIR, VAR, Failed, log_file, owned_pid, record, stop

logger = logging.getLogger(__name__)

GCS_DATA = VAR / "gcs"


def local_endpoint(endpoint: str) -> tuple[str, int] | None:
    parts = urllib.parse.urlsplit(endpoint)
    if not endpoint or parts.hostname not in LOCAL_HOSTS:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def answers_like_moto(url: str) -> bool:
    with contextlib.suppress(requests.RequestException):
        return requests.get(f"{url}/moto-api/", timeout=3).status_code == 200
    return False


def answers_like_gcs(url: str) -> bool:
    with contextlib.suppress(requests.RequestException, ValueError):
        return requests.get(f"{url}/storage/v1/b", timeout=3).json().get("kind") == "storage#buckets"
    return False


def ensure_emulator(name: str, endpoint: str, answers, start) -> str:
    """Start the emulator for a local ``endpoint`` unless ours runs or a compatible one is there."""
    local = local_endpoint(endpoint)
    if local is None:
        return "remote endpoint: not managed by make up" if endpoint else "not configured (real cloud)"
    host, port = local
    url = f"http://{host}:{port}"
    if owned_pid(name):
        return "running (started by make up)"
    if local_cloud.port_open(host, port):
        if answers(url):
            return "already running (not started by make up): reused"
        raise Failed(f"port {port} is taken by something that does not answer like {name}; "
                     f"free it or change the endpoint setting.")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    emulator = start(port)
    record(name, emulator.process.pid)
    return "started by make up"


def launch_moto(port: int):
    return local_cloud.start_moto(port, log_path=str(log_file("moto")), detach=True)


def launch_gcs(port: int, settings: Settings | None = None):
    """fake-gcs-server; with ``settings``, publishing the main bucket's events to the Pub/Sub emulator."""
    # Filesystem backend: buckets and objects survive `make down` / `make up`.
    GCS_DATA.mkdir(parents=True, exist_ok=True)
    if settings is not None:
        return local_cloud.start_fake_gcs(port, log_path=str(log_file("fake-gcs")), data_dir=str(GCS_DATA),
                                          extra_args=local_cloud.fake_gcs_event_args(settings),
                                          env=local_cloud.fake_gcs_event_env(settings), detach=True)
    return local_cloud.start_fake_gcs(port, log_path=str(log_file("fake-gcs")), data_dir=str(GCS_DATA),
                                      detach=True)


GCS_EVENTS_OFF = "GCS-originated replication is OFF (S3 → GCS still works)"


def answers_like_pubsub(url: str) -> bool:
    with contextlib.suppress(requests.RequestException, ValueError):
        answer = requests.get(f"{url}/v1/projects/dss-probe/topics", timeout=3)
        return answer.status_code == 200 and isinstance(answer.json(), dict)
    return False


def launch_pubsub(port: int):
    return local_cloud.start_pubsub_emulator(port, log_path=str(log_file("pubsub")), detach=True)


def ensure_pubsub(settings: Settings) -> tuple[str, bool]:
    """Run the Pub/Sub emulator and create the notification topic and subscription on it.

    Returns (state, whether fake-gcs-server can publish to it). A missing emulator is not an error:
    the store works, only changes made on the GCS side are not replicated."""
    host = settings.pubsub_emulator_host
    if not host:
        return "not configured (real Pub/Sub: set up by hand, see README)", False
    endpoint = f"http://{host}"
    if local_endpoint(endpoint) is None:
        return "remote emulator: not managed by make up", False
    if (not owned_pid("pubsub") and not local_cloud.port_open(*local_endpoint(endpoint))
            and local_cloud.pubsub_emulator_binary() is None):
        logger.warning("Pub/Sub emulator not installed (apt-get install google-cloud-cli-pubsub-emulator; it needs "
                       "Java): %s", GCS_EVENTS_OFF)
        return f"not installed: {GCS_EVENTS_OFF}", False
    state = ensure_emulator("pubsub", endpoint, answers_like_pubsub, launch_pubsub)
    try:
        provision.configure_gcs_notifications(settings)
    except (requests.RequestException, RuntimeError) as error:
        raise Failed(f"creating the notification topic / subscription on {host} failed: {error}") from error
    return f"{state}; topic {settings.gcs_notification_topic}, subscription {settings.gcs_notification_subscription}", True


def ensure_gcs(settings: Settings, publish_events: bool) -> str:
    """fake-gcs-server, publishing the main bucket's events when ``publish_events``. One of ours that
    runs without the event flags (started before the Pub/Sub emulator was there) is restarted:
    its objects are on disk."""
    pid = owned_pid("fake-gcs")
    if pid and publish_events:
        with contextlib.suppress(psutil.Error):
            if " ".join(local_cloud.fake_gcs_event_args(settings)) not in " ".join(psutil.Process(pid).cmdline()):
                stop("fake-gcs")
                logger.info("fake-gcs-server: restarting it to publish change notifications")
    state = ensure_emulator("fake-gcs", settings.gcs_endpoint, answers_like_gcs,
                            lambda port: launch_gcs(port, settings if publish_events else None))
    if publish_events and "reused" in state:
        state += " (started elsewhere: it publishes notifications only if started with the -event.* flags)"
    return state


def ensure_s3_notifications(settings: Settings) -> str:
    """Make moto's S3 main bucket notify the SQS queue (on moto too); idempotent."""
    if local_endpoint(settings.s3_endpoint) is None or local_endpoint(settings.sqs_endpoint) is None:
        return "not managed (real AWS: set up by hand, see README)"
    if settings.sqs_endpoint.rstrip("/") != settings.s3_endpoint.rstrip("/"):
        logger.warning("DSS_SQS_ENDPOINT differs from DSS_S3_ENDPOINT: moto notifies only queues of its own; "
                       "S3-originated replication is OFF")
        return "off (DSS_SQS_ENDPOINT is not the moto of DSS_S3_ENDPOINT)"
    try:
        provision.configure_s3_notifications(settings)
    except Exception as error:  # boto3's errors; shown to the user
        raise Failed(f"configuring S3 notifications failed: {type(error).__name__}: {error}") from error
    return f"bucket {settings.s3_bucket} → SQS queue {settings.s3_notification_queue}"


def ensure_buckets(settings: Settings, replicas: list[str]) -> None:
    if not replicas:
        return
    try:
        if set(replicas) == {"aws", "gcp"}:
            provision.create_buckets(settings)
        else:  # never create buckets in a real cloud account behind the user's back
            from shared.blobstore import open_blobstore
            for replica in replicas:
                store = open_blobstore(replica, settings)
                for kind in ("main", "checkout", "staging"):
                    store.create_bucket(settings.bucket(replica, kind))
    except Exception as error:
        raise Failed(f"creating the buckets failed: {type(error).__name__}: {error}") from error
