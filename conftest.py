"""Test fixtures shared by every test in the repository (the tools they use are in devtools/).

Integration tests run against the real RabbitMQ (nameko's `rabbit_config` gives each test its own
vhost through the management API) and real emulators started here on free ports: moto for S3 (and
SQS) and fake-gcs-server for GCS, so a running `make up` stack is never touched. The main buckets
send change notifications as in `make up`: S3 to an SQS queue on moto, GCS (when the Pub/Sub
emulator is installed; tests that need it ask for `pubsub_emulator_host`) to a Pub/Sub topic.
"""
import eventlet

eventlet.monkey_patch()  # must precede every other import (nameko >= 2.14 no longer does it)

import ctypes  # noqa: E402
import ctypes.util  # noqa: E402
import os  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402

from devtools import local_cloud  # noqa: E402
from devtools.smtp import SmtpServer  # noqa: E402
from ops import provision  # noqa: E402
from shared.config import Settings  # noqa: E402


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _map_large_buffers_directly():
    """The allocator rule `make up` gives every service (MALLOC_MMAP_THRESHOLD_ in devtools/stack/services.py),
    for this process too: buffers above 1 MiB are mapped and returned on free. Without it glibc's
    threshold rises after the first large frees and later part buffers stay in the heap, so the
    RSS bounds of the streaming tests would measure allocator history, not what the code holds."""
    libc = ctypes.util.find_library("c")
    if libc:
        ctypes.CDLL(libc).mallopt(M_MMAP_THRESHOLD, 1024 * 1024)


_map_large_buffers_directly()


# A test that hangs is named by pytest-timeout, but its stack dump shows only OS threads, and under
# eventlet the test itself is a greenlet parked in the hub. Shortly before that timeout, print every
# greenlet's stack (from a real thread: the hub may be blocked) so the call that hangs is visible.
HANG_DUMP_FRACTION = 0.9


def _dump_greenlet_stacks(nodeid: str, after_s: float) -> None:
    import gc
    import sys
    import traceback

    import greenlet
    out = sys.__stderr__
    print(f"\n===== {nodeid} still running after {after_s:.0f} s; the stack of every greenlet:", file=out)
    for candidate in gc.get_objects():
        if isinstance(candidate, greenlet.greenlet) and candidate.gr_frame is not None:
            print(f"----- {candidate!r}", file=out)
            traceback.print_stack(candidate.gr_frame, file=out)
    out.flush()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    marker = item.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker and marker.args else float(item.config.getini("timeout") or 0)
    if not limit:
        yield
        return
    after_s = limit * HANG_DUMP_FRACTION
    timer = eventlet.patcher.original("threading").Timer(after_s, _dump_greenlet_stacks, (item.nodeid, after_s))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


# --- what a run leaves out, and says so ---------------------------------------------------------
# Without OPENSEARCH_URL the OpenSearch backend of tests/conformance/test_search_backends.py is
# openmock, which cannot answer everything: the tests that would have nothing to check there are not
# collected (rather than passing without checking), and the summary says how many and why.
LEFT_OUT = pytest.StashKey[dict]()
NO_OPENSEARCH_CLUSTER = ("on the OpenSearch backend they need a real cluster, which openmock cannot stand in for; "
                         "set OPENSEARCH_URL=http://host:9200 to run them")


def pytest_configure(config):
    config.addinivalue_line("markers", "opensearch: runs on the OpenSearch backend (openmock, or the cluster "
                                       "at OPENSEARCH_URL)")
    config.addinivalue_line("markers", "needs_real_opensearch: on the OpenSearch backend, checks what only a real "
                                       "cluster answers: collected there only when OPENSEARCH_URL is set")
    config.stash[LEFT_OUT] = {}


def pytest_collection_modifyitems(config, items):
    if os.environ.get("OPENSEARCH_URL"):
        return
    left_out = [item for item in items
                if item.get_closest_marker("opensearch") and item.get_closest_marker("needs_real_opensearch")]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        dropped = set(left_out)
        items[:] = [item for item in items if item not in dropped]
        config.stash[LEFT_OUT][NO_OPENSEARCH_CLUSTER] = len(left_out)


# The one prerequisite of the tests that neither `make` nor the virtualenv provides, and that CI
# installs (.ci/run): the Pub/Sub emulator, for the GCS change notifications. Said once, up front.
PUBSUB_EMULATOR_MISSING = (
    "{count} collected tests need the Pub/Sub emulator, which is not installed (looked for at {paths} and "
    "next to gcloud; it needs Java): apt-get install google-cloud-cli-pubsub-emulator openjdk-17-jre-headless "
    "(Google's apt repository, see .ci/run), or leave those tests out")


def pytest_collection_finish(session):
    """Stop before running anything when collected tests need the Pub/Sub emulator and it is missing:
    one line, rather than those tests failing one by one among the others."""
    if session.config.option.collectonly:
        return
    needing = [item for item in session.items if "pubsub_emulator_host" in getattr(item, "fixturenames", ())]
    if needing and not local_cloud.pubsub_emulator_binary():
        raise pytest.UsageError(PUBSUB_EMULATOR_MISSING.format(
            count=len(needing), paths=", ".join(local_cloud.PUBSUB_EMULATOR_PATHS)))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for reason, count in config.stash.get(LEFT_OUT, {}).items():
        terminalreporter.write_line(f"{count} tests not collected (counted in 'deselected'): {reason}",
                                    yellow=True, bold=True)


@pytest.fixture(scope="session")
def vhost_pipeline(request, rabbit_manager):
    """nameko's fixture of this name (one fresh vhost per `rabbit_config`, made ahead by a green
    thread), with creation retried: nameko's creating thread dies on the first error of the
    management API (a connection reset or a 5xx under load), and every later `rabbit_config` then
    waits forever, which ends the whole run at the first test's timeout."""
    import random
    import string
    from collections.abc import Iterable
    from urllib.parse import urlparse

    from kombu.pools import connections
    from nameko.testing.utils import ResourcePipeline

    username = urlparse(request.config.getoption("RABBIT_AMQP_URI")).username

    def attempts(what, call, tries=10):
        for attempt in range(1, tries + 1):
            try:
                return call()
            except Exception as error:  # noqa: BLE001 -- the management API's errors are not typed
                if attempt == tries:
                    raise
                print(f"vhost_pipeline: {what} failed ({error!r}); attempt {attempt + 1} of {tries}")
                eventlet.sleep(min(0.5 * 2 ** attempt, 5))

    def create():
        vhost = "nameko_test_" + "".join(random.choice(string.ascii_lowercase) for _ in range(10))
        attempts(f"creating vhost {vhost}", lambda: (rabbit_manager.create_vhost(vhost),
                                                     rabbit_manager.set_vhost_permissions(vhost, username, ".*",
                                                                                          ".*", ".*")))
        return vhost

    def destroy(vhost):
        try:
            attempts(f"deleting vhost {vhost}", lambda: rabbit_manager.delete_vhost(vhost))
        except Exception as error:  # noqa: BLE001 -- a vhost left behind harms no later test
            print(f"vhost_pipeline: vhost {vhost} left behind ({error!r})")
        for key, pool in list(connections.items()):  # the vhost's pooled connections are dead now
            if isinstance(key, Iterable) and key[4] == vhost:
                pool.force_close_all()

    with ResourcePipeline(create, destroy).run() as vhosts:
        yield vhosts


@pytest.fixture(scope="session")
def local_cloud_settings(tmp_path_factory):
    """Start moto, the Pub/Sub emulator (if installed) and fake-gcs-server for the session, with
    the main buckets' notifications wired; yield the settings that point at them."""
    logs = tmp_path_factory.mktemp("emulator-logs")
    moto = local_cloud.start_moto(log_path=str(logs / "moto.log"))
    pubsub = None
    if local_cloud.pubsub_emulator_binary():
        pubsub = local_cloud.start_pubsub_emulator(log_path=str(logs / "pubsub.log"))
    overrides = {
        "DSS_S3_ENDPOINT": moto.url,
        "DSS_SQS_ENDPOINT": moto.url,
        "DSS_S3_ACCESS_KEY_ID": "test",
        "DSS_S3_SECRET_ACCESS_KEY": "test",
        # Without the emulator: a closed port, so nothing reaches a `make up` stack's 8085.
        "DSS_PUBSUB_EMULATOR_HOST": pubsub.url.removeprefix("http://") if pubsub else
        f"127.0.0.1:{local_cloud.free_port()}",
    }
    event_args, env = (), None
    if pubsub:
        settings = Settings.from_config(overrides, environ={})
        provision.configure_gcs_notifications(settings)  # the topic first: fake-gcs publishes at once
        event_args, env = local_cloud.fake_gcs_event_args(settings), local_cloud.fake_gcs_event_env(settings)
    gcs = local_cloud.start_fake_gcs(log_path=str(logs / "fake-gcs.log"), extra_args=event_args, env=env)
    overrides["DSS_GCS_ENDPOINT"] = gcs.url
    settings = Settings.from_config(overrides, environ={})
    provision.create_buckets(settings)
    provision.configure_s3_notifications(settings)
    yield overrides
    moto.stop()
    gcs.stop()
    if pubsub:
        pubsub.stop()


@pytest.fixture(scope="session")
def pubsub_emulator_host(local_cloud_settings):
    """``host:port`` of the session's Pub/Sub emulator; fails (never skips) when it is not installed."""
    if not local_cloud.pubsub_emulator_binary():
        pytest.fail("this test needs the Pub/Sub emulator (Google Cloud SDK component `pubsub-emulator`, "
                    f"and Java), looked for at {', '.join(local_cloud.PUBSUB_EMULATOR_PATHS)}; CI has it. "
                    "Install it: apt-get install google-cloud-cli-pubsub-emulator", pytrace=False)
    return local_cloud_settings["DSS_PUBSUB_EMULATOR_HOST"]


@pytest.fixture
def s3_notification_settings(local_cloud_settings):
    """Config overrides for a test reading S3 notifications: a queue of its own, which the S3 main
    bucket notifies for the test's duration (so it sees only later events; the session queue is
    notified again afterwards), and a retry delay of 1 s."""
    settings = Settings.from_config(local_cloud_settings, environ={})
    queue = f"test-{uuid.uuid4().hex[:12]}"
    url = provision.configure_s3_notifications(
        Settings.from_config({**local_cloud_settings, "DSS_S3_NOTIFICATION_QUEUE": queue}, environ={}))
    yield {"DSS_S3_NOTIFICATION_QUEUE": queue, "DSS_NOTIFICATION_RETRY_DELAY": 1}
    provision.configure_s3_notifications(settings)
    provision.sqs_client(settings).delete_queue(QueueUrl=url)


@pytest.fixture
def bucket_notifications(local_cloud_settings):
    """``bucket_notifications(bucket)`` -> config overrides under which ``bucket`` (an S3 bucket of
    the test's own, made already) is the main bucket and notifies a queue of the test's own, with a
    retry delay of 1 s; every queue made is deleted afterwards."""
    made = []

    def notify(bucket: str) -> dict:
        overrides = {"DSS_S3_BUCKET": bucket, "DSS_S3_NOTIFICATION_QUEUE": f"test-{uuid.uuid4().hex[:12]}",
                     "DSS_NOTIFICATION_RETRY_DELAY": 1}
        settings = Settings.from_config({**local_cloud_settings, **overrides}, environ={})
        made.append((settings, provision.configure_s3_notifications(settings)))
        return overrides

    yield notify
    for settings, url in made:
        provision.sqs_client(settings).delete_queue(QueueUrl=url)


@pytest.fixture
def gcs_notification_settings(local_cloud_settings, pubsub_emulator_host):
    """Config overrides for a test reading GCS notifications: a subscription of its own on the
    session topic (so it sees only later events; deleted afterwards) and a retry delay of 1 s."""
    settings = Settings.from_config(local_cloud_settings, environ={})
    subscription = f"test-{uuid.uuid4().hex[:12]}"
    provision.ensure_pubsub_subscription(pubsub_emulator_host, settings.gcp_project, subscription,
                                           settings.gcs_notification_topic)
    yield {"DSS_GCS_NOTIFICATION_SUBSCRIPTION": subscription, "DSS_NOTIFICATION_RETRY_DELAY": 1}
    provision.delete_pubsub_subscription(pubsub_emulator_host, settings.gcp_project, subscription)


@pytest.fixture
def smtp_server(tmp_path):
    """A real SMTP relay (aiosmtpd in a process of its own) for the test; ``.settings`` points
    ``DSS_MAIL_*`` at it."""
    server = SmtpServer(tmp_path / "smtp").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dss_settings(local_cloud_settings):
    """Settings resolved only from defaults and the emulator overrides (the environment is ignored)."""
    return Settings.from_config(local_cloud_settings, environ={})


@pytest.fixture(scope="session")
def local_issuer_settings(tmp_path_factory):
    """A token issuer of the tests' own (key + JWKS in a temp dir) that services under test trust."""
    from devtools.tokens import ensure_local_issuer
    directory = tmp_path_factory.mktemp("auth")
    key, jwks = directory / "issuer.pem", directory / "jwks.json"
    ensure_local_issuer(key, jwks)
    return {"DSS_LOCAL_ISSUER_KEY": str(key), "DSS_AUTH_ISSUERS": f"https://dss.local/={jwks}"}


@pytest.fixture(scope="session")
def mint_token(local_cloud_settings, local_issuer_settings):
    """``mint_token(email, groups, lifetime_s=3600)`` -> a bearer token the services under test accept."""
    from devtools.tokens import mint_token_for_settings
    settings = Settings.from_config({**local_cloud_settings, **local_issuer_settings}, environ={})

    def mint(email="user@example.org", groups=("dbio",), lifetime_s=3600):
        return mint_token_for_settings(settings, email, groups, lifetime_s=lifetime_s)
    return mint


@pytest.fixture(scope="session")
def search_index_dir(tmp_path_factory):
    """Where the services under test keep embedded search indexes (never a `make up` stack's)."""
    return str(tmp_path_factory.mktemp("search-index"))


@pytest.fixture
def service_config(rabbit_config, local_cloud_settings, local_issuer_settings, search_index_dir):
    """A nameko config for a service under test: its own vhost, the emulators, the test issuer,
    the session's search index directory, metrics off."""
    config = dict(rabbit_config)
    config.update(local_cloud_settings)
    config.update(local_issuer_settings)
    config["DSS_INDEX_DIR"] = search_index_dir
    config["METRICS_PORT"] = 0
    return config


@pytest.fixture
def web_session(web_config_port):
    """nameko's ``web_session`` (which imports ``werkzeug.urls.url_join``, gone in werkzeug 3):
    a requests session whose relative URLs go to the service under test, and whose calls time out
    (devtools.http: a default well under pytest-timeout's, the error naming the call)."""
    from urllib.parse import urljoin

    from devtools.http import TimeoutSession

    class WebSession(TimeoutSession):
        def request(self, method, url, *args, **kwargs):
            return super().request(method, urljoin(f"http://127.0.0.1:{web_config_port}/", url), *args, **kwargs)

    with WebSession() as session:
        yield session


@pytest.fixture(scope="session")
def blobstores(dss_settings):
    from shared.blobstore import open_blobstore
    return {replica: open_blobstore(replica, dss_settings) for replica in ("aws", "gcp")}

