"""Nothing lost, nothing twice (issue 13, item 4): the whole store at ``SCALE`` instances of every
worker (`make up SCALE=3`, devtools.stack.services) on a three-node RabbitMQ cluster of the test's
own (`make up BROKER=cluster`, devtools.stack.cluster), both emulators and main buckets of the
test's own. Small files, large ones (above ``DSS_ASYNC_COPY_THRESHOLD``, lowered here: they take the
202 background path) and bundles (half of them indexed, with two webhook subscriptions whose
receiver is the test's own) are written through the gateway while, mid-run, one instance of every
service (the gateway's only one included) and the broker node holding the most queue leaders are
killed with ``kill -9``; both are restarted some seconds later, as an operator would. The writer
retries what failed (connection refused, 5xx) as a client does.

Afterwards: every file and bundle is in both replicas and ``dss-ops replicas verify --deep``
(``ops.replicas.compare_replicas``) finds nothing; every indexed bundle version is searchable in
both replicas exactly once; each (subscription, bundle) webhook was delivered at least once and
duplicates carry the same ``transaction_id``; the event journal has one CREATE per bundle version;
no dead letters; and no process died other than those the test killed.

The counts are scaled down to keep ``make test`` within a few minutes on 2 cores; the issue's full
run is ``FAULT_SMALL_FILES=1000 FAULT_LARGE_FILES=20 FAULT_BUNDLES=100 pytest tests/scale``.
"""
from __future__ import annotations

import collections
import json
import os
import signal
import time
import uuid

import eventlet
import pytest
import requests
import requests.adapters

from devtools.fakes import stage_object
from devtools.local_cloud import free_port, port_open
from devtools.receivers import Receiver
from devtools.stack import processes
from devtools.stack.services import METRICS_PORT_STEP, SERVICES, instance_names, start_services
from devtools.waiting import wait_until
from ops import replicas
from shared import retry
from shared.identifiers import new_uuid, new_version

pytestmark = pytest.mark.cluster


def _count(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


SMALL_FILES = _count("FAULT_SMALL_FILES", 100)
LARGE_FILES = _count("FAULT_LARGE_FILES", 4)
BUNDLES = _count("FAULT_BUNDLES", 20)
SCALE = _count("FAULT_SCALE", 3)
# Large files are this size, above the threshold the test sets: they take the background path.
ASYNC_THRESHOLD = 64 * 1024
LARGE_BYTES = 96 * 1024
# The faults fall once this share of the writes is done; the killed ones come back after DOWN_S.
FAULT_AT = 0.3
DOWN_S = 10
WRITERS = 6
# How long one write may keep failing (the gateway away, the broker electing leaders) before the test gives up.
WRITE_PATIENCE_S = 120
SETTLE_S = _count("FAULT_SETTLE_S", 300)
HEALTH_S = 300
RETRY_DELAYS = "1,2,4,8,16,30"
KEY_ID, SECRET = "scale-key", "scale-secret"
# Who killed what: the test's kills, and the processes found dead besides (issue 13 item 3).
KILLED_INSTANCE = 2  # instance k of each worker; the gateway has one


def free_metrics_base(scale: int) -> int:
    while True:
        port = free_port()
        if all(not port_open("127.0.0.1", port + k * METRICS_PORT_STEP) for k in range(scale)):
            return port


@pytest.fixture
def store(cluster, tmp_path, monkeypatch, local_cloud_settings, local_issuer_settings, bucket_notifications,
          gcs_notification_settings, blobstores):
    """Every service at ``SCALE`` instances as `make up SCALE=3 BROKER=cluster` runs them, over a
    main bucket of the test's own in both replicas; yields (api URL, bucket, restart). Stopped
    after the test."""
    bucket = f"scale-{uuid.uuid4().hex[:10]}"
    for blobstore in blobstores.values():
        blobstore.create_bucket(bucket)
    gateway = f"127.0.0.1:{free_port()}"
    env = {**local_cloud_settings, **local_issuer_settings, **bucket_notifications(bucket), **gcs_notification_settings,
           "DSS_GS_BUCKET": bucket, "DSS_INDEX_DIR": str(tmp_path / "index"),
           "DSS_NOTIFY_ALLOWED_HOSTS": "127.0.0.1", "DSS_GATEWAY_ADDRESS": gateway,
           "DSS_ASYNC_COPY_THRESHOLD": ASYNC_THRESHOLD, "DSS_LOG_LEVEL": "INFO",
           **{f"DSS_{name}_RETRY_DELAYS": RETRY_DELAYS
              for name in ("FILES", "REPLICATION", "NOTIFY", "INDEX", "CHECKOUT_COPY", "CHECKOUT_JOB")}}
    for service in SERVICES:
        env[f"DSS_{service.upper()}_METRICS_PORT"] = free_metrics_base(SCALE)
    for name in [n for n in os.environ if n.startswith("DSS_")] + ["METRICS_PORT"]:
        monkeypatch.delenv(name, raising=False)  # a developer's own settings must not leak in
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    uri = cluster.uri()
    names = [n for s in SERVICES for n in instance_names(s, SCALE)]

    def start():
        states = start_services(uri, scale=SCALE)
        started = [n for n, state in states.items() if state.startswith("started")]

        def healthy():
            dead = [n for n in started if processes.owned_pid(n) is None]
            assert not dead, f"exited while starting: {dead}\n" + "\n".join(
                f"--- {n} ---\n{processes.tail(processes.log_file(n), 60)}" for n in dead)
            try:
                return requests.get(f"http://{gateway}/internal/health", timeout=10).status_code == 200
            except requests.RequestException:
                return False
        # Not services.wait_healthy: its report names logs relative to the checkout, and ours are elsewhere.
        wait_until(healthy, HEALTH_S, "the gateway healthy", interval=1, on_timeout=lambda: "\n".join(
            f"--- {n} ---\n{processes.tail(processes.log_file(n), 30)}" for n in started))
        cluster.guard_queues()  # each queue its delivery limit, as `make up` does
        return states

    try:
        start()
        yield f"http://{gateway}/v1", bucket, start
    finally:
        processes.stop(*names)
        print("service logs:", processes.LOG_DIR)


# --- the client -----------------------------------------------------------------------------------------

class Client:
    """A client of the API that retries what a fault may fail (no answer, 5xx) and counts it."""

    def __init__(self, api: str, auth: dict):
        self.api, self.auth = api, auth
        self.retries = collections.Counter()
        self.session = requests.Session()  # one connection per writer, kept
        self.session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=WRITERS * 2))

    def call(self, method: str, path: str, ok: tuple[int, ...], **kwargs) -> requests.Response:
        deadline = time.monotonic() + WRITE_PATIENCE_S
        while True:
            try:
                answer = self.session.request(method, f"{self.api}{path}", headers=self.auth, timeout=60,
                                          allow_redirects=False, **kwargs)
                if answer.status_code in ok:
                    return answer
                if answer.status_code < 500:
                    raise AssertionError(f"{method} {path}: {answer.status_code} {answer.text[:500]}")
                why = str(answer.status_code)
            except requests.RequestException as error:
                why = type(error).__name__
            self.retries[why] += 1
            assert time.monotonic() < deadline, f"{method} {path} kept failing ({why}) for {WRITE_PATIENCE_S}s"
            time.sleep(1)


class Workload:
    """The writes: each small file a JSON document tagged with this run's tag; bundle i names its
    share of the small files (indexed when i is even, under the name ``sample_0.json`` that
    search and the subscriptions match); the large files on their own."""

    def __init__(self, client: Client, stage, tag: str):
        self.client, self.stage, self.tag = client, stage, tag
        self.files: dict[str, str] = {}  # uuid -> version
        self.large: dict[str, str] = {}
        self.bundles: dict[str, dict] = {}  # fqid -> {"indexed": bool, "created": how many 201s}
        self.done = 0
        self.units = BUNDLES + LARGE_FILES

    def put_file(self, data: bytes, content_type: str) -> tuple[str, str, int]:
        source_url = self.stage(data, content_type)
        file_uuid, version = new_uuid(), new_version()
        answer = self.client.call("PUT", f"/files/{file_uuid}", (200, 201, 202), params={"version": version},
                                  json={"source_url": source_url, "creator_uid": 7})
        return file_uuid, version, answer.status_code

    def write_bundle(self, index: int) -> None:
        share = SMALL_FILES // BUNDLES + (index < SMALL_FILES % BUNDLES)
        indexed = index % 2 == 0
        files = []
        for k in range(max(share, 1)):
            document = {"tag": self.tag, "bundle": index, "n": k, "pad": os.urandom(256).hex()}
            file_uuid, version, status = self.put_file(json.dumps(document).encode(), "application/json")
            assert status in (200, 201), status
            self.files[file_uuid] = version
            files.append({"uuid": file_uuid, "version": version, "name": f"sample_{k}.json",
                          "indexed": indexed})
        bundle_uuid, version = new_uuid(), new_version()
        fqid = f"{bundle_uuid}.{version}"
        self.bundles[fqid] = {"indexed": indexed, "created": 0}
        answer = self.client.call("PUT", f"/bundles/{bundle_uuid}", (200, 201),
                                  params={"replica": "aws", "version": version},
                                  json={"creator_uid": 7, "files": files})
        self.bundles[fqid]["created"] += answer.status_code == 201

    def write_large(self, index: int) -> None:
        data = f"large {index} {self.tag}\n".encode() + os.urandom(LARGE_BYTES)
        file_uuid, version, status = self.put_file(data, "application/octet-stream")
        # 200: a retry of a PUT whose first attempt (its answer lost to a fault) already copied it.
        assert status in (200, 201, 202), status
        self.large[file_uuid] = version

    def unit(self, index: int) -> None:
        if index < BUNDLES:
            self.write_bundle(index)
        else:
            self.write_large(index - BUNDLES)
        self.done += 1

    def start(self):
        pool = eventlet.GreenPool(WRITERS)
        # Large files spread among the bundles, so the faults can catch background copies.
        order = list(range(BUNDLES))
        for k in range(LARGE_FILES):
            order.insert((k + 1) * len(order) // (LARGE_FILES + 1), BUNDLES + k)
        return eventlet.spawn(lambda: list(pool.imap(self.unit, order)))


# --- the faults ------------------------------------------------------------------------------------------

def leaders_by_node(cluster) -> collections.Counter:
    queues = wait_until(lambda: _queues(cluster), 30, "the cluster's queue list")
    return collections.Counter(q.get("leader") or q.get("node") for q in queues if q.get("type") == "quorum")


def _queues(cluster):
    for k in range(cluster.size):
        try:
            return cluster.api(k, "queues/%2F?columns=name,type,leader,node")
        except (requests.RequestException, ValueError):
            continue
    return None


def kill_instance(name: str) -> int:
    pid = processes.owned_pid(name)
    assert pid is not None, f"{name} was not running before the fault"
    os.killpg(pid, signal.SIGKILL)
    return pid


# --- the oracles ------------------------------------------------------------------------------------------

def search_fqids(api: str, replica: str, tag: str) -> list[str]:
    """Every bundle fqid a search for the run's tag returns in ``replica``, duplicates kept."""
    query = {"es_query": {"query": {"term": {"files.sample_json.tag": tag}}}}
    answer = requests.post(f"{api}/search", params={"replica": replica, "per_page": 500}, json=query, timeout=60)
    found = []
    while True:
        assert answer.status_code in (200, 206), answer.text
        found += [hit["bundle_fqid"] for hit in answer.json()["results"]]
        if "next" not in answer.links:
            return found
        answer = requests.post(answer.links["next"]["url"], json=query, timeout=60)


def journal(api: str, replica: str, since: str) -> list[tuple[str, str]]:
    """(bundle fqid, event type) of the event journal from ``since`` on, in order."""
    answer = requests.get(f"{api}/events", params={"replica": replica, "from_date": since, "per_page": 500},
                          timeout=60)
    events = []
    while True:
        assert answer.status_code in (200, 206), answer.text
        events += [(e["bundle_fqid"], e["event_type"]) for e in answer.json()["event_streams"]]
        if "next" not in answer.links:
            return events
        answer = requests.get(answer.links["next"]["url"], timeout=60)


def log_lines(text: str) -> str:
    """The lines of every service instance's log that mention ``text``, by instance (for a report)."""
    found = []
    for name in (n for s in SERVICES for n in instance_names(s, SCALE)):
        try:
            lines = processes.log_file(name).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            continue
        found += [f"\n  {name}: {line}" for line in lines if text in line]
    return f"\n{text} in the logs:" + "".join(found)


def differences(blobstores, bucket: str, deep: bool) -> list:
    """``dss-ops replicas verify [--deep]`` over the test's main bucket: the findings."""
    # 8 workers: the session's blob stores keep 10 connections each (more only warn and reconnect).
    return list(replicas.compare_replicas(blobstores, {"aws": bucket, "gcp": bucket}, deep=deep, workers=8))


@pytest.mark.timeout(1800)
def test_nothing_lost_nothing_twice_when_an_instance_of_every_service_and_a_broker_node_die(
        cluster, store, blobstores, dss_settings, mint_token):
    api, bucket, restart = store
    first_version = new_version()
    tag = uuid.uuid4().hex
    staging = dss_settings.bucket("aws", "staging")
    client = Client(api, {"Authorization": f"Bearer {mint_token('scale@example.org', ['dbio'])}"})
    receiver = Receiver({KEY_ID: SECRET.encode()})
    try:
        signed = {"callback_url": receiver.url("/ok"), "hmac_secret_key": SECRET, "hmac_key_id": KEY_ID}
        subscriptions = {
            client.call("PUT", "/subscriptions", (201,), params={"replica": "aws"}, json={
                **signed, "jmespath_query": f"event_type=='CREATE' && files.sample_json[0].tag=='{tag}'"}
            ).json()["uuid"],
            client.call("PUT", "/subscriptions", (201,), params={"replica": "aws"}, json={
                **signed, "es_query": {"query": {"term": {"files.sample_json.tag": tag}}}}).json()["uuid"]}

        work = Workload(client, lambda data, kind: stage_object(blobstores["aws"], staging, data,
                                                                content_type=kind)[0], tag)
        started = time.monotonic()
        writer = work.start()
        wait_until(lambda: work.done >= FAULT_AT * work.units or writer.dead, 300, "the writes reaching the fault")
        assert not writer.dead or work.done < work.units, "every write was done before the faults: raise the counts"

        # The faults: one instance of every service, and the broker node leading the most queues.
        everyone = [n for s in SERVICES for n in instance_names(s, SCALE)]
        victims = [names[min(KILLED_INSTANCE, len(names)) - 1] for names in (instance_names(s, SCALE) for s in SERVICES)]
        for name in victims:
            kill_instance(name)
        leaders = leaders_by_node(cluster)
        node = leaders.most_common(1)[0][0]
        k = [cluster.node(i) for i in range(cluster.size)].index(node)
        cluster.kill(k)
        fault_at = work.done
        time.sleep(DOWN_S)
        died = sorted(n for n in everyone if n not in victims and processes.owned_pid(n) is None)
        cluster.restart_node(k)
        restart()
        died_later = sorted(n for n in everyone if processes.owned_pid(n) is None)  # none: restart() started them

        writer.wait()  # re-raises a write that failed for good
        written_s = time.monotonic() - started

        # Large files: their background copies finish (the 202's task), whatever was killed meanwhile.
        def large_done():
            return all(requests.get(f"{api}/files/{u}", params={"replica": "aws", "version": v},
                                    allow_redirects=False, timeout=30).status_code in (200, 302)
                       for u, v in work.large.items())
        wait_until(large_done, SETTLE_S, "every large file's background copy done")

        # Both replicas: every key in both, then verified deeply (dss-ops replicas verify --deep).
        aws_files = set(blobstores["aws"].list_keys(bucket, "files/"))
        assert len(aws_files) == len(work.files) + len(work.large)
        assert len(set(blobstores["aws"].list_keys(bucket, "bundles/"))) == BUNDLES
        wait_until(lambda: not differences(blobstores, bucket, deep=False), SETTLE_S, "the replicas agreeing",
                   interval=2, on_timeout=lambda: differences(blobstores, bucket, deep=False)[:10])
        deep = differences(blobstores, bucket, deep=True)
        assert deep == [], f"replicas verify --deep: {deep[:10]}"
        for replica in ("aws", "gcp"):
            assert len(set(blobstores[replica].list_keys(bucket, "bundles/"))) == BUNDLES, replica

        # Search: every indexed bundle version exactly once, in both replicas.
        indexed = sorted(f for f, b in work.bundles.items() if b["indexed"])
        for replica in ("aws", "gcp"):
            wait_until(lambda: len(set(search_fqids(api, replica, tag))) >= len(indexed), SETTLE_S,
                       f"every indexed bundle searchable in {replica}",
                       on_timeout=lambda: f"{len(set(search_fqids(api, replica, tag)))} of {len(indexed)}")
            assert sorted(search_fqids(api, replica, tag)) == indexed, replica

        # Webhooks: each (subscription, bundle) at least once; a duplicate carries the same transaction_id.
        expected = {(s, f) for s in subscriptions for f in indexed}

        def delivered():
            return {(r.payload()["subscription_id"], "{bundle_uuid}.{bundle_version}".format(**r.payload()["match"]))
                    for r in receiver.accepted()}
        wait_until(lambda: delivered() >= expected, SETTLE_S, "every webhook delivered",
                   on_timeout=lambda: f"{len(expected - delivered())} of {len(expected)} missing")
        by_transaction = collections.defaultdict(set)
        for request in receiver.accepted():
            payload = request.payload()
            assert request.key_ids == (KEY_ID, KEY_ID)
            by_transaction[payload["transaction_id"]].add(
                (payload["subscription_id"], payload["match"]["bundle_uuid"], payload["match"]["bundle_version"],
                 payload["event_type"]))
        assert all(len(what) == 1 for what in by_transaction.values()), "one transaction_id named two notifications"
        assert len(by_transaction) == len(expected), "a (subscription, bundle) notified under two transaction_ids"
        duplicates = len(receiver.accepted()) - len(by_transaction)

        # What follows is gathered, so that one run reports every broken promise at once.
        problems = []
        # Nothing twice: each bundle version created (201) once, one CREATE in each replica's journal.
        twice = [f for f, b in work.bundles.items() if b["created"] > 1]
        if twice:
            problems.append(f"bundle versions answered 201 Created more than once: {twice}")
        for replica in ("aws", "gcp"):
            creates = collections.Counter(f for f, kind in journal(api, replica, first_version)
                                          if kind == "CREATE" and f in work.bundles)
            missing = sorted(set(work.bundles) - set(creates))
            repeated = {f: n for f, n in creates.items() if n > 1}
            if missing or repeated:
                problems.append(f"the {replica} event journal (GET /events) has {len(missing)} of {len(work.bundles)} "
                                f"bundle versions without a CREATE event and these with more than one: {repeated}"
                                + "".join(log_lines(fqid) for fqid in repeated))

        # Nothing parked: no dead letters in any queue of the cluster.
        dead = {q: n for q, n in retry.dead_letter_queues(cluster.management()[(k + 1) % cluster.size], "/").items()
                if n}
        if dead:
            problems.append(f"dead letters (queue: count): {dead}")

        # No process died of the faults other than those killed (issue 13 item 3).
        if died:
            problems.append(f"died besides the killed instances (restarted by the test): {died}\n" + "\n".join(
                f"--- {n} ---\n{processes.tail(processes.log_file(n), 60)}" for n in died))
        if died_later:
            problems.append(f"not running after the restart: {died_later}")
        print(f"\n{SMALL_FILES} small files, {LARGE_FILES} large ones, {BUNDLES} bundles at SCALE={SCALE}: faults at "
              f"{fault_at}/{work.units} writes ({', '.join(victims)} and {node}, which led "
              f"{leaders[node]} of {sum(leaders.values())} queues); written in {written_s:.0f}s with retries "
              f"{dict(client.retries)}; verified after {time.monotonic() - started:.0f}s; "
              f"{duplicates} duplicate webhook deliveries")
        assert not problems, "\n".join(problems)
    finally:
        receiver.stop()
