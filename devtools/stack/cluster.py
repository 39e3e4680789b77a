"""A three-node RabbitMQ cluster on this machine for `make up BROKER=cluster` (and the cluster
tests): nodes ``dss<port>@localhost`` on consecutive AMQP ports from the port of AMQP_URI, each
with its data under ``var/rabbitmq-cluster/node<k>`` and one shared Erlang cookie; joined into
one cluster once; the vhost made with default queue type ``quorum`` (every durable queue a
service declares, the delay and dead-letter queues of ``shared.retry`` included, is a quorum
queue); and a delivery limit on the services' queues, so a message that kills its consumer (a
crash, not an exception) is dead-lettered to ``<queue>.dead`` (where ``dss-ops dead-letters``
looks) after ``DELIVERY_LIMIT`` redeliveries instead of looping forever.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import re
import signal
import subprocess
import time
import urllib.parse

import requests

from ops.broker import DEFAULT_AMQP_URI, amqp_uris, management_port, vhost_of

from devtools.local_cloud import port_open
from devtools.stack.broker import broker_error, ensure_epmd, node_env, rabbitmq_server
from devtools.stack.processes import LOG_DIR, VAR, Failed, log_file, owned_pid, spawn, stop, tail

logger = logging.getLogger(__name__)

CLUSTER_DIR = VAR / "rabbitmq-cluster"
SIZE = 3
START_TIMEOUT_S = 120
# Redeliveries a quorum queue allows before it dead-letters a message (each crash of a consumer
# holding it, or a dropped connection, is one).
DELIVERY_LIMIT = 5
# Queues the delivery-limit policies leave alone: shared.retry's delay queues (they dead-letter
# back into the handler's queue by their own arguments), the dead-letter queues themselves, and
# nameko's RPC reply queues (auto-delete, hence classic).
UNGUARDED = re.compile(r"^rpc\.reply-|\.(dead|retry-[0-9]+s)$")
# Where the catch-all policy dead-letters a message of a queue that has no policy of its own yet
# (declared after the last `make up` / `make restart`): listed by `dss-ops dead-letters list`.
CATCH_ALL_QUEUE = "dss-unguarded"


class Cluster:
    """``size`` nodes from the AMQP port of ``uri`` (ports p, p+1, ...; management by
    ``ops.broker.management_port``), their files under ``directory``, their processes recorded
    as ``<prefix>-<k>`` (var/run)."""

    def __init__(self, uri: str = DEFAULT_AMQP_URI, size: int = SIZE, directory: pathlib.Path = CLUSTER_DIR,
                 prefix: str = "rabbitmq", base_port: int | None = None):
        self.template = urllib.parse.urlsplit(amqp_uris(uri)[0])
        self.base_port = base_port or self.template.port or 5672
        self.size, self.directory, self.prefix = size, directory, prefix

    # -- naming ------------------------------------------------------------------------------
    def ports(self) -> list[int]:
        return [self.base_port + k for k in range(self.size)]

    def names(self) -> list[str]:
        """The process names in var/run, in node order."""
        return [f"{self.prefix}-{k + 1}" for k in range(self.size)]

    def node(self, k: int) -> str:
        return f"dss{self.ports()[k]}@localhost"

    def uris(self) -> list[str]:
        userinfo = self.template.netloc.rpartition("@")[0]
        host = self.template.hostname or "127.0.0.1"
        return [urllib.parse.urlunsplit(self.template._replace(netloc=f"{userinfo}@{host}:{port}" if userinfo
                                                               else f"{host}:{port}")) for port in self.ports()]

    def uri(self) -> str:
        """The ``;``-separated node URIs nameko and kombu fail over through."""
        return ";".join(self.uris())

    def management(self) -> list[str]:
        """Each node's management API (as it was started: ``ops.broker.management_port``)."""
        userinfo = f"{self.template.username or 'guest'}:{self.template.password or 'guest'}"
        return [f"http://{userinfo}@127.0.0.1:{management_port(port)}" for port in self.ports()]

    @property
    def vhost(self) -> str:
        return vhost_of(self.uri())

    def _env(self, k: int) -> dict:
        env, _ = node_env(self.directory / f"node{k + 1}", self.ports()[k], self.uris()[k], self.node(k))
        env["HOME"] = str(self.directory)  # one Erlang cookie for every node and for rabbitmqctl
        env["RABBITMQ_LOG_BASE"] = str(LOG_DIR / f"{self.prefix}-{k + 1}")
        return env

    def ctl(self, k: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """``rabbitmqctl -n <node k> args`` (the script itself: /usr/sbin's wrapper switches user)."""
        ctl = str(pathlib.Path(rabbitmq_server() or "rabbitmqctl").with_name("rabbitmqctl"))
        return subprocess.run([ctl, "-n", self.node(k), *args], env=self._env(k), capture_output=True,
                              text=True, timeout=timeout)

    # -- life cycle ----------------------------------------------------------------------------
    def pids(self) -> list[int | None]:
        return [owned_pid(name) for name in self.names()]

    def start(self) -> str:
        """Start the nodes not running, join them into one cluster (first time only), make the vhost
        quorum by default and set the delivery-limit policy. Idempotent."""
        server = rabbitmq_server()
        if not server:
            raise Failed("BROKER=cluster needs rabbitmq-server (as root: apt-get install -y rabbitmq-server)")
        self.directory.mkdir(parents=True, exist_ok=True)
        cookie = self.directory / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(os.urandom(16).hex().upper())
            cookie.chmod(0o400)
        ensure_epmd()
        started = []
        for k, name in enumerate(self.names()):
            if owned_pid(name):
                continue
            port = self.ports()[k]
            busy = [p for p in (port, port + 20000, _port_of(self.management()[k])) if port_open("127.0.0.1", p)]
            if busy:
                raise Failed(f"cannot start RabbitMQ node {self.node(k)}: port {busy[0]} is already in use "
                             f"(another broker?). Run the cluster on other ports: AMQP_URI=amqp://guest:guest@"
                             f"127.0.0.1:5681/ make up BROKER=cluster (nodes on 5681-{5680 + self.size}).")
            spawn(name, [server], env=self._env(k))
            started.append(k)
        for k in range(self.size):
            self.await_node(k)
        self._form()
        self._quorum_vhost()
        self._catch_all_policy()
        nodes = ", ".join(self.node(k) for k in range(self.size))
        return (f"{'started' if started else 'running'} by make up: {self.size} nodes ({nodes}), "
                f"vhost {self.vhost} quorum by default, delivery limit {DELIVERY_LIMIT}")

    def await_node(self, k: int, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while (error := broker_error(self.uris()[k])) is not None:
            if not owned_pid(self.names()[k]) or time.monotonic() > deadline:
                raise Failed(f"RabbitMQ node {self.node(k)} did not come up ({error}). Its log:\n"
                             f"{tail(log_file(self.names()[k]))}\n(node logs in {LOG_DIR}/{self.names()[k]}/)")
            time.sleep(0.5)

    def stop(self) -> list[str]:
        return stop(*self.names(), timeout=60)

    def kill(self, k: int) -> None:
        """``kill -9`` node ``k`` (its whole process group: beam and its helpers)."""
        pid = owned_pid(self.names()[k])
        if pid is None:
            raise Failed(f"{self.node(k)} is not running")
        os.killpg(pid, signal.SIGKILL)

    def restart_node(self, k: int) -> None:
        spawn(self.names()[k], [rabbitmq_server()], env=self._env(k))
        self.await_node(k)

    def running_nodes(self) -> list[str]:
        """The cluster's running nodes as the first reachable node sees them."""
        for k in range(self.size):
            with contextlib.suppress(requests.RequestException, ValueError):
                return sorted(n["name"] for n in self.api(k, "nodes") if n.get("running"))
        return []

    def _form(self) -> None:
        """Join nodes 2.. to node 1 unless the cluster already has them all."""
        expected = sorted(self.node(k) for k in range(self.size))
        if self._members() == expected:
            return
        for k in range(1, self.size):
            if self.node(k) in self._members():
                continue
            logger.info("RabbitMQ: joining %s to %s", self.node(k), self.node(0))
            for args in (("stop_app",), ("join_cluster", self.node(0)), ("start_app",)):
                done = self.ctl(k, *args, timeout=120)
                if done.returncode != 0:
                    raise Failed(f"rabbitmqctl -n {self.node(k)} {' '.join(args)} failed:\n"
                                 f"{done.stdout}{done.stderr}")
            self.await_node(k)
        if self._members() != expected:
            raise Failed(f"the RabbitMQ cluster has {self._members()}, not {expected}")

    def _members(self) -> list[str]:
        done = self.ctl(0, "cluster_status", "--formatter", "json")
        if done.returncode != 0:
            raise Failed(f"rabbitmqctl cluster_status failed: {done.stdout}{done.stderr}")
        return sorted(json.loads(done.stdout).get("disk_nodes", []))

    # -- the management API -------------------------------------------------------------------------
    def api(self, k: int, path: str, method: str = "GET", body: dict | None = None):
        url = self.management()[k]
        parts = urllib.parse.urlsplit(url)
        answer = requests.request(method, f"{parts.scheme}://{parts.hostname}:{parts.port}/api/{path}",
                                  auth=(urllib.parse.unquote(parts.username or "guest"),
                                        urllib.parse.unquote(parts.password or "guest")),
                                  json=body, timeout=10)
        answer.raise_for_status()
        return answer.json() if answer.content else None

    def _vpath(self, *names: str) -> str:
        return "/".join(urllib.parse.quote(n, safe="") for n in (self.vhost, *names))

    def _quorum_vhost(self) -> None:
        """Make the vhost quorum by default: re-created while it holds no queue (at first start the
        node made it as a classic one from ``default_vhost``)."""
        vhost = self.api(0, f"vhosts/{self._vpath()}")
        if (vhost.get("default_queue_type") or vhost.get("metadata", {}).get("default_queue_type")) == "quorum":
            return
        if self.api(0, f"queues/{self._vpath()}"):
            raise Failed(f"vhost {self.vhost} of the cluster has queues but is not quorum by default; start "
                         f"afresh: make down && rm -rf {self.directory}")
        user = urllib.parse.unquote(self.template.username or "guest")
        for args in (("delete_vhost", self.vhost), ("add_vhost", self.vhost, "--default-queue-type", "quorum"),
                     ("set_permissions", "-p", self.vhost, user, ".*", ".*", ".*")):
            done = self.ctl(0, *args)
            if done.returncode != 0:
                raise Failed(f"rabbitmqctl {' '.join(args)} failed: {done.stdout}{done.stderr}")

    def _catch_all_policy(self) -> None:
        self.api(0, f"queues/{self._vpath(CATCH_ALL_QUEUE + '.dead')}", "PUT",
                 {"durable": True, "auto_delete": False, "arguments": {"x-queue-type": "quorum"}})
        self._policy("dss-delivery-limit", r"^(?!rpc\.reply-)(?!.*\.(dead|retry-[0-9]+s)$)", CATCH_ALL_QUEUE, 0)

    def _policy(self, name: str, pattern: str, queue: str, priority: int) -> None:
        self.api(0, f"policies/{self._vpath(name)}", "PUT", {
            "pattern": pattern, "apply-to": "queues", "priority": priority,
            "definition": {"delivery-limit": DELIVERY_LIMIT, "dead-letter-exchange": "",
                           "dead-letter-routing-key": queue + ".dead"}})

    def guard_queues(self) -> list[str]:
        """Give every service queue a policy of its own that dead-letters into ``<queue>.dead``
        (declared here, so nothing dead-lettered is dropped). Run once the services declared their
        queues (`up`, `restart`). Returns the queues guarded."""
        guarded = []
        for queue in self.api(0, f"queues/{self._vpath()}?columns=name,type,durable"):
            name = queue["name"]
            if queue.get("type") != "quorum" or UNGUARDED.search(name) or name == CATCH_ALL_QUEUE:
                continue
            self.api(0, f"queues/{self._vpath(name + '.dead')}", "PUT",
                     {"durable": True, "auto_delete": False, "arguments": {"x-queue-type": "quorum"}})
            self._policy(f"dss-delivery-limit-{name}", f"^{re.escape(name)}$", name, 1)
            guarded.append(name)
        return guarded

    def leader_of(self, queue: str) -> str | None:
        """The node holding ``queue``'s leader, as a reachable node's management API says."""
        for k in range(self.size):
            with contextlib.suppress(requests.RequestException, ValueError):
                info = self.api(k, f"queues/{self._vpath(queue)}")
                return info.get("leader") or info.get("node")
        return None


def _port_of(url: str) -> int:
    return urllib.parse.urlsplit(url).port or 15672

