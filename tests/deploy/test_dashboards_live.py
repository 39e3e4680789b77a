"""The dashboards and alerts against a real Prometheus scraping a real stack.

The stack is the test's own, as `make up` runs it but on free ports: the seven services as
`nameko run` processes (each exporter on a port of its own), a private RabbitMQ node with its
Prometheus plugin (scraped per object, as in every scrape configuration here), and the session's
emulators with this test's own notification queue and subscription. Prometheus (Debian's build,
fetched by deploy/ensure-tools.sh) runs deploy/prometheus/prometheus-local.yml with the targets
moved to those ports and a 1 s scrape interval, and loads the alert rules. Traffic goes through the
gateway: files and an indexed bundle written and read, a 404, two webhook subscriptions (one
receiver answers 500, so its deliveries fail and are dead-lettered), replication of it all to gcp.
Then every panel query of every dashboard must parse and return data, every alert expression
must parse, every target must be up, and the rule groups must be loaded and healthy."""
from __future__ import annotations

import json
import os
import subprocess
import uuid as uuid_module

import pytest
import requests
import yaml

from devtools.fakes import stage_object
from devtools.local_cloud import free_port
from devtools.processes import ServiceProcess
from devtools.receivers import Receiver
from devtools.waiting import wait_until
from shared.config import Settings
from shared.identifiers import new_uuid, new_version
from tests.deploy.conftest import DEPLOY, ROOT

SERVICES = ("files", "bundles", "replicator", "indexer", "notifier", "checkout", "gateway")
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
KEY_ID, SECRET = "dashboards-key", "dashboards-secret"


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expression) of every query of every dashboard."""
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                found.append((path.stem, panel["title"], target["expr"]))
    return found


def alert_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


@pytest.fixture
def stack(tmp_path, private_broker, local_cloud_settings, local_issuer_settings, s3_notification_settings,
          gcs_notification_settings):
    """The seven services on the private broker; yields (gateway URL, {job: metrics port})."""
    ports = {name: free_port() for name in SERVICES}
    gateway = f"127.0.0.1:{free_port()}"
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("DSS_") and name not in ("AMQP_URI", "METRICS_PORT")}
    env.update({name: str(value) for name, value in {**local_cloud_settings, **local_issuer_settings,
                                                      **s3_notification_settings, **gcs_notification_settings}.items()})
    env.update({"AMQP_URI": private_broker.amqp_uri, "DSS_GATEWAY_ADDRESS": gateway,
                "DSS_INDEX_DIR": str(tmp_path / "index"), "DSS_NOTIFY_ALLOWED_HOSTS": "127.0.0.1",
                "DSS_NOTIFY_RETRY_DELAYS": "1", "DSS_REPLICATION_RETRY_DELAYS": "1,1,2",
                "MALLOC_MMAP_THRESHOLD_": "1048576"})
    env.update({f"DSS_{name.upper()}_METRICS_PORT": str(port) for name, port in ports.items()})
    processes = [ServiceProcess(name, env, tmp_path / f"{name}.log").start() for name in SERVICES]
    try:
        url = f"http://{gateway}"

        def healthy():
            dead = [p.service for p in processes if not p.alive]
            assert not dead, "exited: " + ", ".join(dead) + "\n" + "\n".join(p.tail() for p in processes if not p.alive)
            try:
                return requests.get(f"{url}/internal/health", timeout=10).status_code == 200
            except requests.RequestException:
                return False

        wait_until(healthy, 90, "the gateway's health check (every service up)", interval=0.5,
                   on_timeout=lambda: "\n".join(f"--- {p.service}\n{p.tail(20)}" for p in processes))
        yield url, ports
    finally:
        for process in processes:
            process.stop()


@pytest.fixture
def prometheus(tmp_path, prometheus_server, stack, private_broker):
    """Prometheus with prometheus-local.yml's jobs pointed at the test's stack; yields its API URL."""
    _, ports = stack
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-local.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
    for job in config["scrape_configs"]:
        port = private_broker.prometheus_port if job["job_name"] == "rabbitmq" else ports[job["job_name"]]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    assert {job["job_name"] for job in config["scrape_configs"]} == {*SERVICES, "rabbitmq"}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    log = open(tmp_path / "prometheus.log", "ab")
    process = subprocess.Popen([prometheus_server, f"--config.file={tmp_path / 'prometheus.yml'}",
                                f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address={address}"],
                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    api = f"http://{address}/api/v1"
    try:
        def ready():
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                return requests.get(f"http://{address}/-/ready", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, 30, "Prometheus ready", interval=0.2)
        yield api
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(api: str, expression: str) -> dict:
    answer = requests.get(f"{api}/query", params={"query": expression}, timeout=10)
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "success", f"{expression}: {body.get('error')}"
    return body["data"]


def drive_traffic(url: str, dss_settings: Settings, blobstores, token: str, receiver: Receiver) -> dict:
    """What an API client does in a few seconds, touching every service; returns what to wait for."""
    auth = {"Authorization": f"Bearer {token}"}
    api = f"{url}/v1"
    signed = {"hmac_secret_key": SECRET, "hmac_key_id": KEY_ID}
    title = f"dashboard test {uuid_module.uuid4().hex[:8]}"
    for path in ("/ok", "/status/500"):
        answer = requests.put(f"{api}/subscriptions", params={"replica": "aws"}, headers=auth, timeout=30, json={
            "callback_url": receiver.url(path), **signed, "jmespath_query": f"event_type=='CREATE'"})
        assert answer.status_code == 201, answer.text
    files = []
    for index in range(4):
        document = {"project_core": {"title": title}, "index": index}
        source, _ = stage_object(blobstores["aws"], dss_settings.bucket("aws", "staging"),
                                 json.dumps(document).encode(), content_type="application/json")
        file_uuid, version = new_uuid(), new_version()
        answer = requests.put(f"{api}/files/{file_uuid}", params={"version": version}, headers=auth, timeout=60,
                              json={"source_url": source, "creator_uid": 7})
        assert answer.status_code == 201, answer.text
        files.append({"uuid": file_uuid, "version": version, "name": f"project_{index}.json", "indexed": True})
        read = requests.get(f"{api}/files/{file_uuid}", params={"replica": "aws"}, timeout=30, allow_redirects=False)
        assert read.status_code in (301, 302), read.text
    bundle_uuid, bundle_version = new_uuid(), new_version()
    answer = requests.put(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws", "version": bundle_version},
                          headers=auth, timeout=60, json={"creator_uid": 7, "files": files})
    assert answer.status_code == 201, answer.text
    assert requests.get(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws"}, timeout=30).status_code == 200
    assert requests.get(f"{api}/files/{new_uuid()}", params={"replica": "aws"}, timeout=30).status_code == 404
    return {"bundle": f"bundles/{bundle_uuid}.{bundle_version}"}


def test_every_panel_and_alert_runs_against_a_real_prometheus(stack, prometheus, dss_settings, blobstores, mint_token):
    url, _ = stack
    api = prometheus
    receiver = Receiver({KEY_ID: SECRET.encode()})
    try:
        expected = drive_traffic(url, dss_settings, blobstores, mint_token("user@example.org", ["dbio"]), receiver)
        # The traffic's consequences: the bundle copied to gcp, one webhook delivered, the other
        # given up and dead-lettered (one retry after 1 s).
        wait_until(lambda: blobstores["gcp"].exists(dss_settings.bucket("gcp"), expected["bundle"]), 60,
                   "the bundle replicated to gcp")
        wait_until(lambda: any(r.path == "/ok" and r.accepted for r in receiver.requests), 60, "a webhook delivered")
        wait_until(lambda: query(api, 'sum(rabbitmq_queue_messages_ready{queue=~".+\\\\.dead"})')["result"], 60,
                   "the failing webhook dead-lettered, as the broker's metrics show")
    finally:
        receiver.stop()

    def states():
        targets = requests.get(f"{api}/targets", timeout=10).json()["data"]["activeTargets"]
        return {target["labels"]["job"]: (target["health"], target["lastError"], target["lastScrapeDuration"])
                for target in targets}

    wait_until(lambda: all(health == "up" for health, _, _ in states().values()), 30, "every target scraped",
               on_timeout=lambda: str(states()))
    assert set(states()) == {*SERVICES, "rabbitmq"}
    up = {sample["metric"]["job"]: sample["value"][1] for sample in query(api, "up")["result"]}
    assert up == {job: "1" for job in (*SERVICES, "rabbitmq")}

    def empty_panels():
        return [f"{dashboard} / {title}: {expression}" for dashboard, title, expression in panel_queries()
                if not query(api, expression)["result"]]

    # Rates need two samples of every counter since the traffic: a few more scrapes (one a second).
    wait_until(lambda: not empty_panels(), 30, "every panel with data after the traffic", interval=1,
               on_timeout=lambda: "panels without data:\n" + "\n".join(empty_panels()))

    for alert, expression in alert_expressions():
        query(api, expression)  # parses and evaluates
    groups = requests.get(f"{api}/rules", timeout=10).json()["data"]["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(rules) == {alert for alert, _ in alert_expressions()}
    assert all(rule["health"] == "ok" for rule in rules.values()), {n: r.get("lastError") for n, r in rules.items()}


def test_every_dashboard_is_a_grafana_dashboard_of_prometheus_queries():
    names = {path.stem for path in DASHBOARDS}
    assert names == {"overview", *SERVICES}
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] not in uids and dashboard["title"] and dashboard["panels"]
        uids.add(dashboard["uid"])
        variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
        assert variables["datasource"]["query"] == "prometheus"
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
            assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
