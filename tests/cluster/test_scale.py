"""`make up SCALE=2` (devtools.stack.services, the code behind it): two `nameko run` instances of a
service, started as `up` starts them, consume its queue competitively (both get messages) and each
serves its own metrics port (the service's port, then + METRICS_PORT_STEP)."""
import re

import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy

from devtools.local_cloud import free_port, port_open
from devtools.stack import processes
from devtools.stack.services import METRICS_PORT_STEP, instance_names, running_instances, start_services
from devtools.waiting import queue_state, wait_until

CALLS = 30


def calls(port: int) -> float:
    """How many ``health`` calls the instance serving metrics on ``port`` has handled."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = re.search(r'^dss_entrypoint_calls_total\{entrypoint="health",service="replicator"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def queue_consumers(amqp_uri: str) -> int:
    state = queue_state(amqp_uri, "rpc-replicator")
    return state[1] if state else 0


def metrics_base() -> int:
    while True:
        port = free_port()
        if not port_open("127.0.0.1", port + METRICS_PORT_STEP):
            return port


@pytest.fixture
def stack_files(tmp_path, monkeypatch):
    """The stack's pid files and logs in a temp directory (never a `make up` stack's var/)."""
    monkeypatch.setattr(processes, "RUN_DIR", tmp_path / "run")
    monkeypatch.setattr(processes, "LOG_DIR", tmp_path / "log")


def test_two_instances_consume_competitively(stack_files, rabbit_config, local_cloud_settings, monkeypatch):
    for name, value in local_cloud_settings.items():
        monkeypatch.setenv(name, str(value))
    base = metrics_base()
    monkeypatch.setenv("DSS_REPLICATOR_METRICS_PORT", str(base))
    assert instance_names("replicator", 2) == ["replicator", "replicator-2"]
    assert instance_names("gateway", 2) == ["gateway"]  # one HTTP port: one instance

    states = start_services(rabbit_config["AMQP_URI"], ["replicator"], scale=2)
    try:
        assert list(states) == ["replicator", "replicator-2"]
        assert list(running_instances("replicator")) == ["replicator", "replicator-2"]
        ports = (base, base + METRICS_PORT_STEP)
        wait_until(lambda: all(port_open("127.0.0.1", p) for p in ports), 60, "both instances serving metrics",
                   on_timeout=lambda: "\n".join(processes.tail(processes.log_file(n)) for n in states))
        with ClusterRpcProxy({"AMQP_URI": rabbit_config["AMQP_URI"]}, timeout=30) as cluster:
            wait_until(lambda: queue_consumers(rabbit_config["AMQP_URI"]) == 2, 30, "both instances consuming")
            for _ in range(CALLS):
                cluster.replicator.health()
        handled = [calls(port) for port in ports]
        assert sum(handled) == CALLS and all(count > 0 for count in handled), handled
    finally:
        stopped = processes.stop(*states)
    assert sorted(stopped) == ["replicator", "replicator-2"] and running_instances("replicator") == {}
