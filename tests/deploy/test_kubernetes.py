"""deploy/k8s: every overlay renders with `kubectl kustomize`, its core objects pass
`kubernetes-validate --strict` (oldest and newest Kubernetes it knows), its custom resources our
schemas (deploy/k8s/schemas, from the operators' documented fields), and what the manifests claim
holds against the code: probes on the paths shared/probes.py answers, KEDA's queue patterns match
exactly the work queues each service declares, settings are real settings."""
from __future__ import annotations

import functools
import importlib
import inspect
import json
import re

import jsonschema
import pytest
import yaml
from nameko.events import SERVICE_POOL, EventHandler
from nameko.rpc import Rpc

from shared import probes
from shared.config import SETTINGS
from tests.deploy.conftest import DEPLOY, ROOT, run

K8S = DEPLOY / "k8s"
OVERLAYS = sorted(path.name for path in (K8S / "overlays").iterdir() if (path / "kustomization.yaml").exists())
SERVICES = sorted(path.parent.name for path in (ROOT / "services").glob("*/service.py"))
WORKERS = [name for name in SERVICES if name != "gateway"]
CORE_GROUPS = {"v1", "apps/v1", "policy/v1", "batch/v1", "networking.k8s.io/v1", "autoscaling/v2"}
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")


@functools.cache
def rendered(kubectl: str, target: str) -> list[dict]:
    out = run(kubectl, "kustomize", str(K8S / target)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=["base", *(f"overlays/{name}" for name in OVERLAYS)])
def objects(request, kubectl):
    return rendered(kubectl, request.param)


def pick(objects, kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects, kind: str, name: str) -> dict:
    found = pick(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def test_there_are_the_two_overlays():
    assert {"local", "aws-gcp"} <= set(OVERLAYS)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_are_valid_kubernetes(objects, version, tmp_path):
    core = [o for o in objects if o["apiVersion"] in CORE_GROUPS]
    unknown = {f"{o['apiVersion']} {o['kind']}" for o in objects
               if o["apiVersion"] not in CORE_GROUPS and not schema_file(o).exists()}
    assert not unknown, f"objects neither core nor covered by a schema: {unknown}"
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump_all(core))
    done = run(str(ROOT / ".venv" / "bin" / "kubernetes-validate"), "--strict", "--quiet", "-k", version, str(path))
    assert "fail" not in done.stdout.lower() and "error" not in done.stdout.lower(), done.stdout


def schema_file(o: dict):
    return K8S / "schemas" / f"{o['apiVersion'].replace('/', '_')}_{o['kind']}.json"


def test_custom_resources_match_their_schemas(objects):
    custom = [o for o in objects if o["apiVersion"] not in CORE_GROUPS]
    assert {o["kind"] for o in custom} >= {"RabbitmqCluster", "ScaledObject", "TriggerAuthentication", "PodMonitor",
                                           "ServiceMonitor", "PrometheusRule"}
    for o in custom:
        schema = json.loads(schema_file(o).read_text())
        jsonschema.validators.validator_for(schema).check_schema(schema)
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(o), key=lambda e: list(e.path))
        assert not errors, f"{o['kind']} {o['metadata']['name']}: " + "; ".join(
            f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_schemas_reject_what_the_operators_would(objects):
    """Our schemas are not vacuous: a misspelt field, a number where KEDA wants a string, an unknown
    queue-length mode are each refused."""
    scaled = json.loads(json.dumps(pick(objects, "ScaledObject")[0]))
    schema = json.loads(schema_file(scaled).read_text())
    for mutate in (lambda o: o["spec"].update(maxReplicas=3),
                   lambda o: o["spec"]["triggers"][0]["metadata"].update(value=20),
                   lambda o: o["spec"]["triggers"][0]["metadata"].update(mode="Length")):
        broken = json.loads(json.dumps(scaled))
        mutate(broken)
        assert list(jsonschema.Draft202012Validator(schema).iter_errors(broken)), "a broken ScaledObject passed"


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_runs_as_the_image_says_with_probes_resources_and_a_graceful_stop(objects, service):
    deployment = one(objects, "Deployment", service)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["nameko", "run", "--config", f"services/{service}/config.yml",
                                 f"services.{service}.service"]
    metrics = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    config = (ROOT / "services" / service / "config.yml").read_text()
    assert f":{metrics}}}" in config, f"{service}: the metrics port {metrics} is not its config.yml's default"
    assert container["livenessProbe"]["httpGet"] == {"path": probes.LIVENESS_PATH, "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": probes.LIVENESS_PATH, "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": probes.READINESS_PATH, "port": "metrics"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and "memory" in container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["terminationGracePeriodSeconds"] >= 60, "too short for workers in flight to finish"
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    env = {e["name"]: e for e in container["env"]}
    assert env["AMQP_URI"]["value"].startswith("amqp://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@")
    assert env["RABBITMQ_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "dss-broker-default-user"
    assert {"configMapRef": {"name": "dss-config"}} in container["envFrom"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts
    volumes = {v["name"]: v for v in pod["volumes"]}
    for volume in volumes.values():
        kinds = set(volume) - {"name"}
        assert len(kinds) == 1, f"{service}: volume {volume['name']} has {kinds}"


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_a_disruption_budget_and_is_scraped(objects, service):
    labels = one(objects, "Deployment", service)["spec"]["template"]["metadata"]["labels"]
    budgets = [b for b in pick(objects, "PodDisruptionBudget")
               if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
    assert len(budgets) == 1
    monitors = [m for m in pick(objects, "PodMonitor") if any(
        e["key"] in labels and labels[e["key"]] in e["values"] for e in m["spec"]["selector"]["matchExpressions"])]
    assert len(monitors) == 1 and monitors[0]["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert {e["port"] for e in monitors[0]["spec"]["podMetricsEndpoints"]} == {"metrics"}


def work_queues(service: str) -> set[str]:
    """The queues the service's workers consume, named as nameko names them (nameko.events,
    nameko.rpc): one per RPC service and one per service-pool event handler."""
    cls = next(c for _, c in inspect.getmembers(importlib.import_module(f"services.{service}.service"),
                                                 inspect.isclass) if getattr(c, "name", None) == service)
    queues = set()
    for method_name, method in inspect.getmembers(cls, inspect.isfunction):
        for entrypoint in getattr(method, "nameko_entrypoints", ()):
            if isinstance(entrypoint, Rpc):
                queues.add(f"rpc-{service}")
            elif isinstance(entrypoint, EventHandler) and entrypoint.handler_type is SERVICE_POOL:
                queues.add(f"evt-{entrypoint.source_service}-{entrypoint.event_type}--{service}.{method_name}")
    return queues


@pytest.mark.parametrize("service", WORKERS)
def test_every_worker_scales_on_its_own_queues_unacknowledged_messages_included(objects, service):
    scaled = one(objects, "ScaledObject", service)
    assert scaled["spec"]["scaleTargetRef"]["name"] == service
    (trigger,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "rabbitmq"]
    meta = trigger["metadata"]
    assert trigger["type"] == "rabbitmq" and meta["protocol"] == "http" and meta["mode"] == "QueueLength"
    assert meta["excludeUnacknowledged"] == "false" and meta["useRegex"] == "true" and meta["operation"] == "sum"
    assert one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    pattern = re.compile(meta["queueName"])
    own = work_queues(service)
    assert own, f"{service} declares no work queue"
    assert all(pattern.fullmatch(queue) for queue in own), f"{meta['queueName']} misses some of {sorted(own)}"
    others = {queue for other in SERVICES if other != service for queue in work_queues(other)}
    retries = {f"{queue}{suffix}" for queue in own for suffix in (".dead", ".retry-30s")}
    assert not [queue for queue in others | retries if pattern.fullmatch(queue)], "it counts queues not its own"
    workers = int(re.search(r"max_workers: \$\{\w+:(\d+)\}", (ROOT / "services" / service / "config.yml").read_text()
                            ).group(1)) if "max_workers" in (ROOT / "services" / service / "config.yml").read_text() else 10
    assert int(meta["value"]) >= workers, "a target below one instance's prefetch would scale an idle-looking backlog"


def test_against_the_clouds_the_replicator_also_scales_on_the_notification_backlogs(kubectl):
    """Notifications wait in SQS and Pub/Sub before the replicator bridges them onto the bus: in the
    aws-gcp overlay its ScaledObject counts them too, on the queue and subscription the services
    read, authenticated by objects that exist; elsewhere the rabbitmq trigger is the only one."""
    objects = rendered(kubectl, "overlays/aws-gcp")
    config = one(objects, "ConfigMap", "dss-config")["data"]
    scaled = one(objects, "ScaledObject", "replicator")
    triggers = {t["type"]: t for t in scaled["spec"]["triggers"]}
    assert sorted(triggers) == ["aws-sqs-queue", "gcp-pubsub", "rabbitmq"]
    sqs, pubsub = triggers["aws-sqs-queue"]["metadata"], triggers["gcp-pubsub"]["metadata"]
    assert sqs["queueURL"] == config["DSS_S3_NOTIFICATION_QUEUE"] and sqs["awsRegion"] == config["DSS_S3_REGION"]
    assert pubsub["subscriptionName"] == (f"projects/{config['DSS_GCP_PROJECT']}/subscriptions/"
                                          f"{config['DSS_GCS_NOTIFICATION_SUBSCRIPTION']}")
    assert sqs["scaleOnInFlight"] == "true", "notifications being bridged are work too"
    for trigger in triggers.values():
        assert one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert scaled["spec"]["maxReplicaCount"] >= 80 and one(objects, "ScaledObject", "files")["spec"]["maxReplicaCount"] >= 20
    for target in ("base", "overlays/local"):
        assert [t["type"] for t in one(rendered(kubectl, target), "ScaledObject", "replicator")["spec"]["triggers"]] \
            == ["rabbitmq"]

    schema = json.loads(schema_file(scaled).read_text())
    for mutate in (lambda o: o["spec"]["triggers"][1]["metadata"].update(queueLenght="10"),
                   lambda o: o["spec"]["triggers"][1]["metadata"].pop("awsRegion"),
                   lambda o: o["spec"]["triggers"][2]["metadata"].update(mode="Backlog")):
        broken = json.loads(json.dumps(scaled))
        mutate(broken)
        assert list(jsonschema.Draft202012Validator(schema).iter_errors(broken)), "a broken trigger passed"


def test_the_indexer_never_runs_twice(objects):
    """The journal and the per-bundle order of index writes have one writer, and the leader lock
    (services/indexer/leadership.py) is a file lock, which pods on different nodes do not share."""
    assert one(objects, "ScaledObject", "indexer")["spec"]["maxReplicaCount"] == 1
    strategy = one(objects, "Deployment", "indexer")["spec"]["strategy"]
    assert strategy["type"] == "Recreate" or strategy["rollingUpdate"]["maxSurge"] == 0


def test_the_broker_is_three_nodes_with_quorum_queues_and_scraped_per_object(objects):
    broker = one(objects, "RabbitmqCluster", "dss-broker")
    assert broker["spec"]["replicas"] == 3
    assert re.search(r"^default_queue_type = quorum$", broker["spec"]["rabbitmq"]["additionalConfig"], re.M)
    assert "rabbitmq_prometheus" in broker["spec"]["rabbitmq"]["additionalPlugins"]
    (monitor,) = pick(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics/per-object"
    assert {"targetLabel": "job", "replacement": "rabbitmq"} in monitor["spec"]["endpoints"][0]["relabelings"]


def test_the_gateway_is_served_and_reached_through_an_ingress(objects):
    service = one(objects, "Service", "gateway")
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "gateway"}
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    ingress = one(objects, "Ingress", "gateway")
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "gateway"
    assert one(objects, "Deployment", "gateway")["spec"]["replicas"] >= 2


def test_configuration_names_only_real_settings_and_holds_no_secret(objects):
    # shared/config.py's settings, the nameko config.yml variables (README "Settings" lists both)
    # and glibc's allocator setting the README asks production to keep.
    config_variables = {name for path in (ROOT / "services").glob("*/config.yml")
                        for name in re.findall(r"\$\{(\w+):", path.read_text())}
    known = {setting.name for setting in SETTINGS} | config_variables | {"MALLOC_MMAP_THRESHOLD_"}
    (config,) = pick(objects, "ConfigMap")
    unknown = sorted(name for name in config["data"] if name not in known)
    assert not unknown, f"not settings of shared/config.py: {unknown}"
    for name, value in config["data"].items():
        if re.search(r"PASSWORD|SECRET_ACCESS_KEY|TOKEN", name):
            assert value in ("", "test"), f"{name}: a secret in a ConfigMap"
    assert not pick(objects, "Secret"), "secrets are referenced, never shipped"


def test_the_local_overlay_runs_the_emulators_and_one_embedded_index_writer(kubectl):
    objects = rendered(kubectl, "overlays/local")
    data = one(objects, "ConfigMap", "dss-config")["data"]
    for name in ("moto", "fake-gcs", "pubsub"):
        service = one(objects, "Service", name)
        port = service["spec"]["ports"][0]["port"]
        assert any(f"{name}:{port}" in value for value in data.values()), f"no setting points at {name}:{port}"
    assert data["DSS_INDEX_BACKEND"] == "embedded"
    indexer = one(objects, "Deployment", "indexer")
    assert indexer["spec"]["strategy"] == {"type": "Recreate"}
    volumes = {v["name"]: v for v in indexer["spec"]["template"]["spec"]["volumes"]}
    assert volumes["index"] == {"name": "index", "persistentVolumeClaim": {"claimName": "indexer-index"}}
    assert one(objects, "ScaledObject", "indexer")["spec"]["maxReplicaCount"] == 1
    job = one(objects, "Job", "dss-setup")
    assert "create_buckets" in job["spec"]["template"]["spec"]["containers"][0]["command"][-1]


def test_the_cloud_overlay_uses_the_real_services_with_secrets_by_reference(kubectl):
    objects = rendered(kubectl, "overlays/aws-gcp")
    data = one(objects, "ConfigMap", "dss-config")["data"]
    for endpoint in ("DSS_S3_ENDPOINT", "DSS_SQS_ENDPOINT", "DSS_GCS_ENDPOINT", "DSS_PUBSUB_EMULATOR_HOST"):
        assert data[endpoint] == "", f"{endpoint} must be empty for the real cloud"
    assert data["DSS_INDEX_BACKEND"] == "opensearch" and "DSS_OPENSEARCH_URL" not in data  # it is in dss-secrets
    for service in SERVICES:
        pod = one(objects, "Deployment", service)["spec"]["template"]["spec"]
        assert {"name": "gcp-credentials", "secret": {"secretName": "dss-gcp-credentials"}} in pod["volumes"]
        assert {"secretRef": {"name": "dss-secrets", "optional": True}} in pod["containers"][0]["envFrom"]
    readme = (K8S / "README.md").read_text()
    for secret in ("dss-secrets", "dss-gcp-credentials", "dss-auth", "dss-broker-default-user"):
        assert secret in readme, f"deploy/k8s/README.md does not say what {secret} holds"
