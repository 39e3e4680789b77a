"""Fixtures of the fault tests: the replicator as a real `nameko run` process, a batch of objects
written into the aws main bucket in the real storage layout, the oracle that says whether every
one of them arrived intact in gcp, and control of the system RabbitMQ.

The whole notification path is live: the S3 main bucket notifies an SQS queue of the test's own
(``s3_notification_settings``), the replicator's bridge turns each notification into an
``object_changed`` event, and ``handle_object_changed`` copies the object to gcp, whose own
notifications (a Pub/Sub subscription of the test's own) echo back as gcp -> aws events that must
copy nothing. The tests inject a fault in the middle of that and then require that nothing was
lost: every key present in gcp with its bytes, judged by our own hashes and by
``ops.replicas`` (the logic of ``dss-ops replicas verify --deep``), and no dead letters.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import subprocess
import time
import urllib.parse

import eventlet
import pytest
import requests
from kombu.exceptions import OperationalError

from devtools import local_cloud
from devtools.processes import ServiceProcess
from devtools.waiting import queue_state, wait_until
from ops import replicas
from shared import events
from shared.checksums import checksum_bytes
from shared.identifiers import Keys, new_uuid, new_version
from shared.retry import DEAD_SUFFIX
from shared.schemas import FileMetadata
from shared.storage import ReplicaStorage

HANDLER_QUEUE = replicas.HANDLER_QUEUE
DEAD_LETTER_QUEUE = HANDLER_QUEUE + DEAD_SUFFIX
# Short broker-side delays: a test waits seconds for a retry, not minutes. Their sum (7 s) is less
# than the outages the tests cause, so a retry loop that burns attempts on an outage would show.
RETRY_DELAYS = "1,2,4"
# A wait for the batch fails when nothing arrives for its timeout, or after this many times it.
STALL_FACTOR = 4
MiB = 1024 * 1024


# --- the broker, as the test's vhost sees it ----------------------------------------------------------

def dead_letters(amqp_uri: str, queue: str = HANDLER_QUEUE) -> int:
    """Messages in the dead-letter queue of handler queue ``queue`` (the replicator's unless said),
    which exists only once one was sent there."""
    state = queue_state(amqp_uri, queue + DEAD_SUFFIX)
    return state[0] if state else 0


# --- service processes -----------------------------------------------------------------------------------

def handler_queue(source: str, event: str, service: str, method: str) -> str:
    """The durable queue of an event handler, as nameko names it."""
    return f"evt-{source}-{event}--{service}.{method}"


@dataclasses.dataclass
class Worker:
    """A service as `make up` runs it: ``nameko run`` in a process of its own, up once it consumes
    ``queue``."""
    process: ServiceProcess
    amqp_uri: str
    queue: str = HANDLER_QUEUE

    @property
    def name(self) -> str:
        return self.process.service

    def start(self, timeout: float = 60.0) -> "Worker":
        """Start it and wait until it consumes its queue (the replicator's bridges poll from then on too)."""
        self.process.start()

        def consuming():
            if not self.process.alive:
                raise AssertionError(f"the {self.name} exited ({self.process.returncode}) while starting:\n"
                                     f"{self.process.tail()}")
            try:
                state = queue_state(self.amqp_uri, self.queue)
            except (OSError, OperationalError):  # the broker is away (a restart test's outage)
                return False
            return state is not None and state[1] >= 1

        wait_until(consuming, timeout, f"the {self.name} consuming {self.queue}", on_timeout=self.process.tail)
        return self

    def assert_alive(self, during: str) -> None:
        assert self.process.alive, (f"the {self.name} process died {during} (exit {self.process.returncode}):\n"
                                    f"{self.process.tail(120)}")

    def count(self, text: str) -> int:
        """How many lines of its log contain ``text`` (retries, reconnections: for the report)."""
        return sum(text in line for line in self.process.log().splitlines())


@pytest.fixture
def replicator_env(rabbit_config, local_cloud_settings, s3_notification_settings, gcs_notification_settings):
    """The environment of the replicator process (and of the other service processes, which
    ``service_factory`` starts): the test's vhost, the emulators, the test's own notification queue
    and subscription, short retry delays, no metrics ports."""
    # Settings come from the environment in a `nameko run` process; a developer's own DSS_* (or a
    # shared METRICS_PORT) must not leak in and point it at a `make up` stack.
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("DSS_") and name not in ("AMQP_URI", "METRICS_PORT")}
    env.update({name: str(value) for name, value in local_cloud_settings.items()})
    env.update({name: str(value) for name, value in s3_notification_settings.items()})
    env.update({name: str(value) for name, value in gcs_notification_settings.items()})
    env.update({
        "AMQP_URI": rabbit_config["AMQP_URI"],
        **{f"DSS_{service.upper()}_METRICS_PORT": "0" for service in ("replicator", "files", "bundles", "indexer")},
        "DSS_REPLICATION_RETRY_DELAYS": RETRY_DELAYS,
        "DSS_LOG_LEVEL": "INFO",
    })
    return env


@pytest.fixture
def replicator_factory(replicator_env, rabbit_config, tmp_path):
    """``replicator_factory(**env)`` -> the replicator process with ``env`` on top of
    ``replicator_env``, started and consuming; every one is stopped after the test (before the
    test's vhost goes)."""
    started = []

    def start(**env) -> Worker:
        log = tmp_path / f"replicator-{len(started)}.log"
        replicator = Worker(ServiceProcess("replicator", {**replicator_env, **env}, log), rabbit_config["AMQP_URI"])
        started.append(replicator)
        return replicator.start()

    try:
        yield start
    finally:
        for replicator in started:
            replicator.process.stop()


@pytest.fixture
def service_factory(replicator_env, rabbit_config, tmp_path):
    """``service_factory(service, queue, **env)`` -> that service as a ``nameko run`` process in the
    replicator's environment (the test's vhost, the emulators) plus ``env``, started and consuming
    ``queue``; every one is stopped after the test (before the test's vhost goes)."""
    started = []

    def start(service: str, queue: str, **env) -> Worker:
        log = tmp_path / f"{service}-{len(started)}.log"
        worker = Worker(ServiceProcess(service, {**replicator_env, **{k: str(v) for k, v in env.items()}}, log),
                        rabbit_config["AMQP_URI"], queue)
        started.append(worker)
        return worker.start()

    try:
        yield start
    finally:
        for worker in started:
            worker.process.stop()


@pytest.fixture
def replicator(replicator_factory):
    """The replicator process as the defaults and ``replicator_env`` make it."""
    return replicator_factory()


# --- a batch of objects in the real storage layout -------------------------------------------------------

class Batch:
    """``files`` files written into the ``source`` replica's main bucket (aws unless said) as the
    files and bundles services write them (each blob under its content-address key before the ``files/`` document naming it), and
    one bundle naming them all, written last. The replicator learns of them only through the
    bucket's notifications. ``large`` of the blobs are 20 MiB, above the replicator's 16 MiB part
    size, so that a fault can hit a copy streamed in parallel parts (S3 multipart / GCS compose);
    they are the files at 10%, 20%, ... of the batch, around where the tests inject their faults.
    The oracle looks for them in the other replica (``destination``).

    ``start_writing(hold_after=n)`` writes the first ``n`` files and then waits for ``release()``:
    a test injects its fault before releasing the rest, so the fault lands mid-batch however fast
    the replicator copies, and the rest (the bundle last) is written while it lasts."""

    def __init__(self, blobstores, settings, files: int = 500, large: int = 0, small_bytes: int = 2048,
                 source: str = "aws"):
        self.stores = blobstores
        self.buckets = {name: settings.bucket(name) for name in ("aws", "gcp")}
        self.source, self.destination = source, {"aws": "gcp", "gcp": "aws"}[source]
        self.writer_storage = ReplicaStorage(source, blobstores[source], settings)
        self.files, self.small_bytes = files, small_bytes
        self.large = {files * (k + 1) // 10 for k in range(large)}
        self.blobs: dict[str, str] = {}  # blob key -> sha256 of the bytes written
        self.documents: dict[str, dict] = {}  # document key -> the document written
        self.writer = None
        self.written_at: float | None = None
        self.hold_after: int | None = None
        self._released = eventlet.event.Event()

    @property
    def keys(self) -> set[str]:
        return set(self.blobs) | set(self.documents)

    @property
    def total(self) -> int:
        return 2 * self.files + 1  # a blob and a document per file, and the bundle

    def _write_file(self, index: int) -> tuple[str, str, dict]:
        size = 20 * MiB if index in self.large else self.small_bytes
        data = f"fault test file {index}\n".encode() + os.urandom(size)
        sums = checksum_bytes(data)
        blob_key = sums.blob_key()
        self.stores[self.source].put_bytes(self.buckets[self.source], blob_key, data, if_absent=True)
        self.blobs[blob_key] = hashlib.sha256(data).hexdigest()
        uuid, version = new_uuid(), new_version()
        doc = FileMetadata().dump({"creator_uid": 1, "version": version, "content_type": "application/octet-stream",
                                   "size": len(data), **sums.as_api()})
        key = Keys.file(uuid, version)
        assert self.writer_storage.write_json_once(key, doc) is None
        self.documents[key] = doc
        return uuid, version, doc

    def _write_all(self) -> None:
        pool = eventlet.GreenPool(16)
        held = self.files if self.hold_after is None else min(self.hold_after, self.files)
        files = list(pool.imap(self._write_file, range(held)))
        if held < self.files:
            self._released.wait()
            files += pool.imap(self._write_file, range(held, self.files))
        uuid, version = new_uuid(), new_version()
        manifest = {"format": "0.0.1", "version": version, "creator_uid": 1, "files": [
            {"name": f"file-{i}.bin", "uuid": file_uuid, "version": file_version,
             "content-type": doc["content-type"], "size": doc["size"], "indexed": False, "sha256": doc["sha256"],
             "sha1": doc["sha1"], "s3-etag": doc["s3-etag"], "crc32c": doc["crc32c"]}
            for i, (file_uuid, file_version, doc) in enumerate(files)]}
        key = Keys.bundle(uuid, version)
        assert self.writer_storage.write_json_once(key, manifest) is None
        self.documents[key] = manifest
        self.written_at = time.monotonic()

    def start_writing(self, hold_after: int | None = None) -> "Batch":
        """Write the batch in the background, so that faults can hit it while it is being written;
        with ``hold_after``, only that many files until ``release()``."""
        self.hold_after = hold_after
        self.writer = eventlet.spawn(self._write_all)
        return self

    def release(self) -> None:
        """Write the rest of a batch held by ``start_writing(hold_after=...)``."""
        if not self._released.ready():
            self._released.send()

    def wait_written(self, timeout: float = 120.0) -> None:
        assert self.hold_after is None or self._released.ready(), "the batch is held: release() it first"
        with eventlet.Timeout(timeout, AssertionError(f"writing the batch took more than {timeout}s")):
            self.writer.wait()  # re-raises a write's failure

    # --- arrival --------------------------------------------------------------------------------------
    def arrived(self) -> set[str]:
        """Our keys the destination's main bucket lists (present, not yet judged)."""
        destination, bucket = self.stores[self.destination], self.buckets[self.destination]
        listed = set()
        for prefix in ("blobs/", "bundles/", "files/"):
            listed.update(destination.list_keys(bucket, prefix))
        return listed & self.keys

    def wait_arrived(self, minimum: int, timeout: float, replicator: Worker | None = None) -> int:
        """Wait until at least ``minimum`` of our keys are in the destination; returns how many are. ``timeout``
        bounds a wait without progress: while keys keep arriving the wait goes on (a loaded machine
        is slow, not wrong), up to ``STALL_FACTOR`` times ``timeout`` in all."""
        progress = {"count": -1, "at": time.monotonic()}

        def enough():
            if replicator is not None:
                replicator.assert_alive("while the batch was replicating")
            count, now = len(self.arrived()), time.monotonic()
            if count >= minimum:
                return count
            if count > progress["count"]:
                progress.update(count=count, at=now)
            elif now - progress["at"] > timeout:
                raise AssertionError(f"{minimum} of {self.total} objects arriving in {self.destination}: {count} "
                                     f"arrived, and "
                                     f"none for {timeout:g}s\n" + (replicator.process.tail() if replicator else ""))
            return 0

        return wait_until(enough, STALL_FACTOR * timeout,
                          f"{minimum} of {self.total} objects arriving in {self.destination}",
                          interval=0.5, on_timeout=lambda: (f"{len(self.arrived())} arrived, slowly\n"
                                                            + (replicator.process.tail() if replicator else "")))

    def wait_all_arrived(self, timeout: float, replicator: Worker | None = None) -> float:
        """Wait until the batch is written and every key of it is in the destination; returns the
        seconds it took."""
        started = time.monotonic()
        self.wait_written(timeout)
        self.wait_arrived(self.total, max(1.0, timeout - (time.monotonic() - started)), replicator)
        return time.monotonic() - started

    # --- the oracle -----------------------------------------------------------------------------------
    def assert_nothing_lost(self) -> None:
        """Every key of the batch is in the destination with the bytes written: by our own listing and
        hashes, and by ``ops.replicas``'s comparison of the replicas (``dss-ops replicas
        verify --deep``)."""
        destination = self.stores[self.destination]
        assert len(self.keys) == self.total
        missing = self.keys - self.arrived()
        assert not missing, (f"{len(missing)} objects never arrived in {self.destination}, "
                             f"e.g. {sorted(missing)[:5]}")

        def check(key):
            data = destination.get_bytes(self.buckets[self.destination], key)
            if key in self.blobs:
                if hashlib.sha256(data).hexdigest() != self.blobs[key]:
                    return f"{key}: the {self.destination} copy's sha256 is not that of the bytes written"
            elif json.loads(data) != self.documents[key]:  # --deep below compares the bytes with the source's
                return f"{key}: the {self.destination} document differs from the one written"
            return None

        problems = [problem for problem in eventlet.GreenPool(16).imap(check, sorted(self.keys)) if problem]
        assert not problems, f"{len(problems)} damaged copies: {problems[:5]}"

        # And the operators' oracle, `dss-ops replicas verify --deep`'s comparison (ops.replicas
        # .Comparer) on our keys (the session's buckets hold other tests' objects too): every blob
        # hashed in both replicas and judged against its key, every document compared bytewise.
        # Key by key, 16 at a time: `recheck` alone walks them one after the other.
        findings = [finding for found in eventlet.GreenPool(16).imap(
            lambda key: replicas.recheck(self.stores, self.buckets, [key], deep=True), sorted(self.keys))
            for finding in found]
        assert findings == [], f"replicas verify --deep: {findings[:5]}"


@pytest.fixture
def batch_factory(blobstores, dss_settings):
    def make(files: int = 500, large: int = 0, source: str = "aws") -> Batch:
        return Batch(blobstores, dss_settings, files=files, large=large, source=source)
    return make


# --- the indexer, as its clients see it --------------------------------------------------------------

INDEXER_QUEUES = (handler_queue("bundles", events.BUNDLE_CREATED, "indexer", "handle_bundle_created"),
                  handler_queue("replicator", events.OBJECT_REPLICATED, "indexer", "handle_object_replicated"))


def search_fqids(client, replica: str, tag: str) -> list[str]:
    """Every bundle fqid a search for ``tag`` returns in ``replica``, duplicates kept."""
    query = {"query": {"term": {"files.sample_json.tag": tag}}}
    found, cursor = [], None
    while True:
        page = client.search(replica, query, "summary", 500, cursor)
        found += [hit["bundle_fqid"] for hit in page["results"]]
        cursor = page["search_after"]
        if cursor is None:
            return found


def journal_creates(client, replica: str, since: str) -> collections.Counter:
    """CREATE events per bundle fqid in ``replica``'s journal (GET /events) from ``since`` on."""
    creates, token = collections.Counter(), None
    while True:
        page = client.list_events(replica, since, None, 500, token)
        creates.update(e["bundle_fqid"] for e in page["event_streams"] if e["event_type"] == "CREATE")
        token = page["token"]
        if token is None:
            return creates


# --- the system RabbitMQ ----------------------------------------------------------------------------------

RABBITMQ_SCRIPTS = "/usr/lib/rabbitmq/bin"


class SystemBroker:
    """Stops and starts the RabbitMQ application of the machine's broker (the one nameko's test
    fixtures use), the way an operator restarts it: ``rabbitmqctl stop_app`` / ``start_app``. The
    Erlang node keeps running; vhosts, durable queues and persistent messages are on disk.

    ``rabbitmqctl`` runs with HOME=/var/lib/rabbitmq (the system node's Erlang cookie); a private
    node (``--amqp-uri``/``--rabbit-api-uri`` pointing at it, ``RABBITMQ_NODENAME`` set) is
    controlled with ``RABBITMQ_CTL_HOME`` naming the home of its cookie, which spares the shared
    broker while working on these tests."""

    def __init__(self, amqp_uri: str, api_uri: str):
        self.amqp = urllib.parse.urlsplit(amqp_uri)
        self.api_uri = api_uri.rstrip("/")
        self.stopped = False

    def rabbitmqctl(self, *args: str, timeout: float = 120) -> str:
        # Run as root, Debian's /usr/sbin wrapper switches users and misses the Erlang cookie; the
        # script itself, with the broker's HOME, reaches the node (see the local toolchain notes).
        home = os.environ.get("RABBITMQ_CTL_HOME", "/var/lib/rabbitmq")
        answer = subprocess.run([f"{RABBITMQ_SCRIPTS}/rabbitmqctl", *args], capture_output=True, text=True,
                                env={**os.environ, "HOME": home}, timeout=timeout)
        if answer.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: exit {answer.returncode}\n{answer.stdout}{answer.stderr}")
        return answer.stdout

    def amqp_answers(self) -> bool:
        return local_cloud.port_open(self.amqp.hostname or "127.0.0.1", self.amqp.port or 5672)

    def management_answers(self) -> bool:
        try:
            return requests.get(f"{self.api_uri}/api/overview", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def controls_the_tests_broker(self) -> tuple[str, str]:
        """(the node rabbitmqctl reaches, the node behind the tests' management API): stopping
        one that the tests do not use would test nothing and disturb someone else."""
        controlled = self.rabbitmqctl("eval", "node().", timeout=30).strip()
        used = requests.get(f"{self.api_uri}/api/overview", timeout=10).json()["node"]
        return controlled, used

    def stop_app(self) -> None:
        self.stopped = True
        self.rabbitmqctl("stop_app")

    def start_app(self) -> None:
        self.rabbitmqctl("start_app")
        self.stopped = False

    def ensure_up(self, timeout: float = 120.0) -> None:
        """Whatever happened, leave the broker as the other tests need it: AMQP and management up."""
        if self.stopped or not self.amqp_answers():
            self.start_app()
        wait_until(lambda: self.amqp_answers() and self.management_answers(), timeout,
                   "RabbitMQ (AMQP and management) answering again", interval=0.5)


@pytest.fixture
def system_broker(request, rabbit_config):
    """The machine's RabbitMQ, if this test may restart it: its control script must reach it (as
    root) and it must be the broker nameko's fixtures use. Brought back up after the test, even
    when the test fails, and before the test's vhost is deleted (hence ``rabbit_config``)."""
    amqp_uri = request.config.getoption("RABBIT_AMQP_URI")
    api_uri = request.config.getoption("RABBIT_API_URI")
    broker = SystemBroker(amqp_uri, api_uri)
    if not os.access(f"{RABBITMQ_SCRIPTS}/rabbitmqctl", os.X_OK):
        pytest.fail(f"restarting RabbitMQ needs {RABBITMQ_SCRIPTS}/rabbitmqctl (Debian's rabbitmq-server)",
                    pytrace=False)
    try:
        controlled, used = broker.controls_the_tests_broker()
    except (RuntimeError, subprocess.TimeoutExpired, requests.RequestException, ValueError, KeyError) as error:
        pytest.fail(f"cannot control the local RabbitMQ node (run the tests as root?): {error}", pytrace=False)
    if controlled != used:
        pytest.fail(f"rabbitmqctl controls {controlled}, but the tests use {used}: set RABBITMQ_NODENAME "
                    "(and RABBITMQ_CTL_HOME) for that node", pytrace=False)
    try:
        yield broker
    finally:
        broker.ensure_up()
