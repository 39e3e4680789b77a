"""Fixtures of the deployment checks: the operators' own tools, found where deploy/ensure-tools.sh
puts them (`make test` runs it first). A missing tool fails the test, naming how to get it."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS_BIN = ROOT / "var" / "tools" / "prometheus" / "usr" / "bin"
VENV_BIN = pathlib.Path(sys.executable).parent


def tool(name: str, *candidates: pathlib.Path) -> str:
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"{name} is missing: run deploy/ensure-tools.sh (make test does)", pytrace=False)


def run(*command: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run a tool; its output is in the failure message when it fails."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(command)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool("promtool", PROMETHEUS_BIN / "promtool")


@pytest.fixture(scope="session")
def prometheus_server() -> str:
    return tool("prometheus", PROMETHEUS_BIN / "prometheus")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return tool("kubectl", VENV_BIN / "kubectl")


# --- a private RabbitMQ node with its Prometheus plugin ---------------------------------------------

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class PrivateBroker:
    """A RabbitMQ node of the test's own (name, ports, data and cookie under a temp folder) with the
    management and Prometheus plugins, the latter answering per-object metrics on ``prometheus_port``.
    The machine's broker is left as it is: enabling a plugin there would change it for everyone."""

    def __init__(self, root: pathlib.Path):
        from devtools.local_cloud import free_port
        self.root = root
        self.amqp_port, self.management_port = free_port(), free_port()
        self.prometheus_port, self.dist_port = free_port(), free_port()
        self.process: subprocess.Popen | None = None

    @property
    def amqp_uri(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    def environment(self) -> dict:
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
            f"prometheus.tcp.ip = 127.0.0.1\nprometheus.tcp.port = {self.prometheus_port}\n"
            "loopback_users = none\n")
        (self.root / "enabled_plugins").write_text("[rabbitmq_management,rabbitmq_prometheus].\n")
        (self.root / "rabbitmq-env.conf").write_text("")
        return {**os.environ,
                "HOME": str(self.root),
                "RABBITMQ_NODENAME": f"dsstest{self.amqp_port}@localhost",
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.amqp_port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
                "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.root / "log"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
                "ERL_EPMD_ADDRESS": "127.0.0.1"}

    def start(self, timeout: float = 90) -> "PrivateBroker":
        import requests

        from devtools.waiting import wait_until
        if not os.access(RABBITMQ_SERVER, os.X_OK):
            pytest.fail(f"{RABBITMQ_SERVER} is missing (Debian's rabbitmq-server)", pytrace=False)
        log = open(self.root / "server.log", "ab")
        self.process = subprocess.Popen([RABBITMQ_SERVER], env=self.environment(), stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def answers() -> bool:
            assert self.process.poll() is None, f"RabbitMQ exited:\n{self.log()}"
            try:
                return requests.get(f"http://127.0.0.1:{self.prometheus_port}/metrics", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(answers, timeout, "the private RabbitMQ node's Prometheus endpoint", interval=0.5,
                   on_timeout=self.log)
        return self

    def log(self) -> str:
        return (self.root / "server.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory):
    broker = PrivateBroker(tmp_path_factory.mktemp("rabbitmq")).start()
    try:
        yield broker
    finally:
        broker.stop()
