"""Fixtures of the cluster tests: a three-node RabbitMQ cluster of their own (``devtools.stack.cluster``,
the code behind `make up BROKER=cluster`) on free ports, its files, pid files and logs in a temp
directory, so a `make up` stack is never touched."""
import shutil

import pytest

from devtools.local_cloud import port_open
from devtools.stack import cluster as cluster_module
from devtools.stack import processes
from devtools.stack.broker import rabbitmq_server, stop_epmd

FIRST_PORT, LAST_PORT = 5700, 5990


def free_base_port() -> int:
    """A first AMQP port p whose node ports p..p+2 and their distribution (+20000), management
    (+10000) and rabbitmqctl (+30000) ports are all free."""
    for base in range(FIRST_PORT, LAST_PORT, 3):
        ports = [p + offset for p in range(base, base + 3) for offset in (0, 10000, 10020, 20000, 30000)]
        if not any(port_open("127.0.0.1", port) for port in ports):
            return base
    raise RuntimeError("no free ports for a test cluster")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running three-node cluster (started in ~40 s), stopped and removed after the module."""
    if rabbitmq_server() is None:
        pytest.fail("rabbitmq-server is not installed (deploy/ensure-rabbitmq.sh installs it)")
    root = tmp_path_factory.mktemp("cluster")
    with pytest.MonkeyPatch.context() as patch:
        # The stack's process records and logs, here instead of the checkout's var/.
        patch.setattr(processes, "RUN_DIR", root / "run")
        patch.setattr(processes, "LOG_DIR", root / "log")
        patch.setattr(cluster_module, "LOG_DIR", root / "log")
        base = free_base_port()
        nodes = cluster_module.Cluster(f"amqp://guest:guest@127.0.0.1:{base}/", directory=root / "rabbitmq",
                                       prefix=f"test-rabbitmq-{base}")
        try:
            nodes.start()
            yield nodes
        finally:
            nodes.stop()
            stop_epmd()
    shutil.rmtree(root, ignore_errors=True)
