"""deploy/compose/compose.yaml: valid against the compose specification (check-jsonschema's
vendored schema), with everything the issue lists, the services from the one image with the
commands Kubernetes uses, and a Prometheus configuration that promtool accepts as the container
sees it (its files placed where the compose file mounts them)."""
from __future__ import annotations

import re
import shutil

import pytest
import yaml

from shared.config import SETTINGS
from tests.deploy.conftest import DEPLOY, ROOT, run

COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
SERVICES = sorted(path.parent.name for path in (ROOT / "services").glob("*/service.py"))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())  # anchors and << merges resolved, as compose does


def test_the_compose_file_follows_the_compose_specification():
    done = run(str(ROOT / ".venv" / "bin" / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert "ok" in done.stdout


def test_it_runs_the_broker_the_emulators_search_and_monitoring(compose):
    services = compose["services"]
    images = {name: service.get("image", "") for name, service in services.items()}
    assert images["rabbitmq"].startswith("rabbitmq:") and images["rabbitmq"].endswith("-management")
    plugins_file = next(volume.split(":")[0] for volume in services["rabbitmq"]["volumes"]
                        if volume.split(":")[1] == "/etc/rabbitmq/enabled_plugins")
    plugins = (COMPOSE_DIR / plugins_file).read_text()
    assert "rabbitmq_management" in plugins and "rabbitmq_prometheus" in plugins
    assert images["moto"].startswith("motoserver/moto:")
    assert images["fake-gcs"].startswith("fsouza/fake-gcs-server:")
    assert "emulators" in images["pubsub"] and "pubsub" in services["pubsub"]["command"]
    assert images["opensearch"].startswith("opensearchproject/opensearch:")
    assert images["prometheus"].startswith("prom/prometheus:") and images["grafana"].startswith("grafana/grafana:")


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_runs_from_the_one_image(compose, service):
    spec = compose["services"][service]
    assert spec["build"] == {"context": "../..", "dockerfile": "deploy/Dockerfile"}
    assert spec["command"] == ["nameko", "run", "--config", f"services/{service}/config.yml",
                               f"services.{service}.service"]
    assert spec["depends_on"]["rabbitmq"] == {"condition": "service_healthy"}
    assert spec["depends_on"]["setup"] == {"condition": "service_completed_successfully"}
    assert spec["read_only"] is True and spec["cap_drop"] == ["ALL"]
    known = {setting.name for setting in SETTINGS} | {"AMQP_URI"} | {
        name for path in (ROOT / "services").glob("*/config.yml") for name in re.findall(r"\$\{(\w+):", path.read_text())}
    assert not set(spec["environment"]) - known, f"not settings: {set(spec['environment']) - known}"
    env = spec["environment"]
    for name, url in (("DSS_S3_ENDPOINT", "moto"), ("DSS_GCS_ENDPOINT", "fake-gcs"),
                      ("DSS_PUBSUB_EMULATOR_HOST", "pubsub"), ("DSS_OPENSEARCH_URL", "opensearch"),
                      ("AMQP_URI", "rabbitmq")):
        assert re.search(rf"(//|^|@){url}:", env[name]), f"{name}={env[name]} is not the compose service {url}"


def test_every_service_sends_its_traces_to_the_jaeger_of_the_compose_file(compose):
    jaeger = compose["services"]["jaeger"]
    assert jaeger["image"].startswith("jaegertracing/all-in-one:")
    assert jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert "127.0.0.1:16686:16686" in jaeger["ports"]  # the UI; OTLP (4318) stays inside the network
    for service in SERVICES:
        assert compose["services"][service]["environment"]["DSS_TRACING_ENDPOINT"] == "http://jaeger:4318"


def mounts(spec: dict) -> list[tuple[str, str]]:
    return [tuple(volume.split(":")[:2]) for volume in spec.get("volumes", []) if volume.startswith((".", "/"))]


def test_every_file_it_mounts_is_in_the_repository(compose):
    for name, spec in compose["services"].items():
        for source, _ in mounts(spec):
            if source.startswith("../../var/"):
                continue  # made at run time (make token / make sa-key)
            assert (COMPOSE_DIR / source).exists(), f"{name} mounts {source}, which does not exist"


def test_prometheus_in_compose_scrapes_every_service_and_the_broker(compose, promtool, tmp_path):
    etc = tmp_path / "etc" / "prometheus"
    for source, target in mounts(compose["services"]["prometheus"]):
        if target.startswith("/etc/prometheus/"):
            placed = etc / target.removeprefix("/etc/prometheus/")
            placed.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(COMPOSE_DIR / source, placed)
    run(promtool, "check", "config", str(etc / "prometheus.yml"))
    config = yaml.safe_load((etc / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {*SERVICES, "rabbitmq"}
    for service in SERVICES:
        port = re.search(r"METRICS_PORT: \$\{\w+:(\d+)\}", (ROOT / "services" / service / "config.yml").read_text()).group(1)
        assert jobs[service]["static_configs"] == [{"targets": [f"{service}:{port}"]}]
    assert jobs["rabbitmq"]["metrics_path"] == "/metrics/per-object"
    local = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-local.yml").read_text())
    assert {job["job_name"] for job in local["scrape_configs"]} == set(jobs)


def test_grafana_is_provisioned_with_the_dashboards(compose):
    volumes = dict((target, source) for source, target in mounts(compose["services"]["grafana"]))
    provisioning = COMPOSE_DIR / volumes["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "dss.yml").read_text())["providers"]
    dashboards = COMPOSE_DIR / volumes[provider["options"]["path"]]
    assert sorted(path.stem for path in dashboards.glob("*.json")) == sorted(["overview", *SERVICES])
