"""deploy/prometheus/alerts.yml: `promtool check rules`, and `promtool test rules` unit tests in
which every alert fires on the series meant to raise it and stays quiet otherwise; every alert has
its runbook in docs/operations.md, reads metrics the code exports, and the Kubernetes
PrometheusRule carries the same rules."""
from __future__ import annotations

import re

import yaml

from tests.deploy.conftest import DEPLOY, ROOT, run

RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "alerts_test.yml"
# What the issue asks alerts for, by the alert that covers it.
REQUIRED = {"ReplicationLagHigh", "DeadLetters", "QueueDepthGrowing", "ConsumersMissing", "GatewayErrorRate",
            "GatewayLatencyHigh", "WebhookDeliveriesFailing", "CheckoutJobsFailing", "InstanceDown", "BrokerNodeDown"}


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def test_the_rules_pass_promtool_check(promtool):
    done = run(promtool, "check", "rules", str(RULES))
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout + done.stderr


def test_the_unit_tests_pass_promtool_test(promtool):
    done = run(promtool, "test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in done.stdout + done.stderr


def test_every_alert_is_shown_to_fire_and_to_stay_quiet():
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    names = {rule["alert"] for rule in alerts()}
    assert REQUIRED <= names
    for name in names:
        fired = [case for case in cases if case["alertname"] == name and case["exp_alerts"]]
        quiet = [case for case in cases if case["alertname"] == name and not case["exp_alerts"]]
        assert fired and quiet, f"{name}: fires in {len(fired)} and stays quiet in {len(quiet)} unit tests"


def test_every_alert_has_a_runbook_in_the_operations_guide():
    guide = (ROOT / "docs" / "operations.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", heading.lower()).strip().replace(" ", "-")
               for heading in re.findall(r"^#+ (.+)$", guide, re.M)}
    for rule in alerts():
        runbook = rule["annotations"]["runbook"]
        assert runbook.startswith("docs/operations.md#"), runbook
        assert runbook.partition("#")[2] in anchors, f"{rule['alert']}: no section {runbook} in docs/operations.md"
        assert rule["labels"]["severity"] in ("critical", "warning")


def exported_metrics() -> set[str]:
    """Names of the metrics the code defines (Counter/Gauge/Histogram), with a histogram's series."""
    names = set()
    for path in [*(ROOT / "shared").rglob("*.py"), *(ROOT / "services").rglob("*.py")]:
        if "tests" in path.parts:
            continue
        for kind, name in re.findall(r"\b(Counter|Gauge|Histogram)\(\s*\"(dss_\w+)\"", path.read_text()):
            names.add(name)
            if kind == "Histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_the_alerts_read_metrics_the_services_export():
    exported = exported_metrics()
    for rule in alerts():
        for name in re.findall(r"\b(dss_\w+)", rule["expr"]):
            assert name in exported, f"{rule['alert']}: no service exports {name}"


def test_the_kubernetes_prometheus_rule_carries_the_same_rules():
    (rule,) = [doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / "base" / "alerts.yaml").read_text())]
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
