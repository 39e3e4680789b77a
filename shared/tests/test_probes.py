"""The liveness and readiness probes beside /metrics (shared.probes), on containers of the real broker."""
import eventlet
import pytest
import requests
from nameko.rpc import rpc

from devtools.local_cloud import free_port
from shared.metrics import Metrics
from devtools.waiting import wait_until


class Probed:
    name = "probed"
    metrics = Metrics()

    @rpc
    def ping(self):
        return "pong"


def get(port: int, path: str) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}{path}", timeout=5)


def answers(port: int, path: str) -> int | None:
    """The status of ``path``, None while nothing listens yet."""
    try:
        return get(port, path).status_code
    except requests.ConnectionError:
        return None


def readiness(port: int) -> tuple[int, dict]:
    answer = get(port, "/readyz")
    assert answer.headers["Content-Type"] == "application/json"
    return answer.status_code, answer.json()


@pytest.fixture
def port():
    return free_port()


def test_live_and_ready_once_consuming_then_not_ready_when_stopped(container_factory, rabbit_config, port):
    container = container_factory(Probed, {**rabbit_config, "METRICS_PORT": port})
    container.start()

    assert get(port, "/healthz").status_code == 200
    assert readiness(port) == (200, {"status": "ready", "services": {"probed": "ready"}})
    metrics = get(port, "/metrics")  # the exporter still answers its metrics on every other path
    assert metrics.status_code == 200 and "dss_entrypoint_calls_total" in metrics.text

    container.stop()
    assert readiness(port) == (503, {"status": "not ready", "services": {"probed": "not started"}})
    assert get(port, "/healthz").status_code == 200  # the process still runs: no reason to restart it


def test_not_ready_while_the_broker_cannot_be_reached(container_factory, rabbit_config, port):
    unreachable = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    container = container_factory(Probed, {**rabbit_config, "AMQP_URI": unreachable, "METRICS_PORT": port})
    starting = eventlet.spawn(container.start)  # start() waits for the broker: forever here

    wait_until(lambda: answers(port, "/healthz") == 200, 10, "the exporter answering")
    status, body = readiness(port)
    assert status == 503 and body["services"] == {"probed": "connecting to the broker"}
    container.stop()
    starting.wait()


def test_not_ready_while_reconnecting_and_ready_again(container_factory, rabbit_config, rabbit_manager, port):
    """The broker drops the service's connection and refuses it for a while (the vhost's permission
    withdrawn): not ready until the service's own reconnection succeeds."""
    vhost, user = rabbit_config["vhost"], rabbit_config["username"]
    container = container_factory(Probed, {**rabbit_config, "METRICS_PORT": port})
    container.start()
    assert readiness(port)[0] == 200

    def connections():  # listed by the management API only once its statistics include them (~5 s)
        return [c["name"] for c in rabbit_manager.get_connections() if c.get("vhost") == vhost]

    wait_until(connections, 30, "the service's connections listed by the management API")
    rabbit_manager._delete("permissions", vhost, user)
    try:
        for name in connections():
            rabbit_manager.delete_connection(name)
        wait_until(lambda: readiness(port)[0] == 503, 20, "readiness failing once the connection is lost")
        assert get(port, "/healthz").status_code == 200
    finally:
        rabbit_manager.set_vhost_permissions(vhost, user, ".*", ".*", ".*")
    wait_until(lambda: readiness(port) == (200, {"status": "ready", "services": {"probed": "ready"}}), 30,
               "readiness back once the service reconnected")
