"""The Prometheus exporter of a service (shared/metrics.py) listens where DSS_METRICS_ADDRESS says:
loopback by default, like the gateway. Checked on a real container's real listening socket."""
import socket

import psutil
import pytest
import requests
from nameko.rpc import rpc
from nameko.testing.utils import find_free_port

from shared.metrics import Metrics


class MeteredService:
    name = "metered"

    metrics = Metrics()

    @rpc
    def ping(self):
        return "pong"


def listening_addresses(port: int) -> set[str]:
    return {conn.laddr.ip for conn in psutil.Process().net_connections(kind="tcp")
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port}


def other_local_address() -> str | None:
    """An IPv4 address of this host that is not loopback, if it has one."""
    return next((addr.address for addresses in psutil.net_if_addrs().values() for addr in addresses
                 if addr.family == socket.AF_INET and not addr.address.startswith("127.")), None)


def start_metered(container_factory, rabbit_config, **config):
    port = find_free_port()
    container_factory(MeteredService, {**rabbit_config, "METRICS_PORT": port, **config}).start()
    return port


def test_the_exporter_listens_on_loopback_by_default(container_factory, rabbit_config, monkeypatch):
    monkeypatch.delenv("DSS_METRICS_ADDRESS", raising=False)
    port = start_metered(container_factory, rabbit_config)

    assert listening_addresses(port) == {"127.0.0.1"}
    answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert answer.status_code == 200 and "dss_entrypoint_calls_total" in answer.text
    other = other_local_address()
    if other is not None:  # the host's own non-loopback address is not served (a bare connect: no proxy)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((other, port), timeout=10).close()


def test_a_deployment_opens_the_exporter_to_all_interfaces(container_factory, rabbit_config):
    port = start_metered(container_factory, rabbit_config, DSS_METRICS_ADDRESS="0.0.0.0")

    assert listening_addresses(port) == {"0.0.0.0"}
    socket.create_connection((other_local_address() or "127.0.0.1", port), timeout=10).close()
