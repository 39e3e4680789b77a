"""`dss-ops status [--json]`: the live system at a glance, as the broker sees it (its management
API: ``/api/nodes``, ``/api/queues``, ``/api/consumers``, the vhost's connections), so it works
wherever the services run.

- broker nodes, and which are up;
- instances per service: the distinct broker connections consuming from the service's queues
  (``rpc-<service>``, ``evt-<source>-<event>--<service>.<method>``, ``rpc.reply-<service>-<id>``:
  one connection per ``nameko run`` process), with the pid when the instance runs on this machine;
  an instance that stands by (an indexer waiting for the leader lock) consumes only a queue of its
  own, ``standby-<service>.<id>`` (``shared.entrypoints.standby_queue``), and is listed as standing by;
- each service queue's depth, unacknowledged count, consumers and leader node;
- dead letters per handler queue (``<queue>.dead``, as ``dss-ops dead-letters list``);
- replication lag: the backlog (ready + unacknowledged) of the replicator's queues, and of the
  messages waiting in their retry delay queues; the broker keeps no age for messages of quorum
  queues, so no oldest-message age is given.

The management API samples queue statistics (every 5 s by default; a quorum queue's only from
its leader's node) and learns of new consumers a moment late: just after a start, a count can lag.

Needs attention (exit 1): a node down, a queue holding messages with no consumer, dead letters
present, or no management API answering (exit 2).
"""
from __future__ import annotations

import json
import os
import re
import sys
import urllib.parse
from typing import TextIO

import requests

from shared.entrypoints import STANDBY_QUEUE_PREFIX
from shared.retry import DEAD_SUFFIX

RETRY_QUEUE = re.compile(r"\.retry-[0-9]+s$")
REPLY_QUEUE = re.compile(r"^rpc\.reply-(?P<service>.+)-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$")
RPC_QUEUE = re.compile(r"^rpc-(?P<service>[^.]+)$")
EVENT_QUEUE = re.compile(r"^evt-.+--(?P<service>[^.]+)\.")
STANDBY_QUEUE = re.compile(rf"^{re.escape(STANDBY_QUEUE_PREFIX)}(?P<service>[^.]+)\.[0-9a-f]+$")
REPLICATOR = "replicator"
TIMEOUT_S = 10


class Unreachable(Exception):
    """No management API of the broker answered."""


def owner(queue: str) -> str | None:
    """The service that consumes ``queue`` (None for a dead-letter or delay queue or a foreign one)."""
    for pattern in (REPLY_QUEUE, RPC_QUEUE, EVENT_QUEUE, STANDBY_QUEUE):
        if match := pattern.match(queue):
            return match.group("service")
    return None


def _get(management_url: str, path: str):
    parts = urllib.parse.urlsplit(management_url)
    answer = requests.get(f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}/api/{path}",
                          auth=(urllib.parse.unquote(parts.username or "guest"),
                                urllib.parse.unquote(parts.password or "guest")), timeout=TIMEOUT_S)
    answer.raise_for_status()
    return answer.json()


def fetch(management_urls: list[str], vhost: str) -> tuple[str, dict]:
    """Nodes, queues and consumers of ``vhost`` from the first management API that answers."""
    quoted = urllib.parse.quote(vhost, safe="")
    errors = []
    for url in management_urls:
        try:
            return url, {"nodes": _get(url, "nodes?columns=name,running"),
                         "queues": _get(url, f"queues/{quoted}?columns=name,type,messages,messages_ready,"
                                             "messages_unacknowledged,consumers,leader,node,members,online"),
                         "consumers": _get(url, f"consumers/{quoted}"),
                         "connections": _get(url, f"vhosts/{quoted}/connections?columns=name,port")}
        except (requests.RequestException, ValueError) as error:
            errors.append(f"{urllib.parse.urlsplit(url).netloc.rpartition('@')[2]}: {type(error).__name__}")
    raise Unreachable("no management API answered (" + "; ".join(errors) + ")")


def local_pid(port: int, remote_port: int | None = None) -> int | None:
    """The pid of the process on this machine whose TCP socket has local ``port`` (and, when given,
    ``remote_port``: one ephemeral port may serve connections to several broker nodes) (Linux /proc;
    None elsewhere, or when the process is another user's)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port and (
                            remote_port is None or int(fields[2].rsplit(":", 1)[1], 16) == remote_port):
                        inodes.add(fields[9])
        except (OSError, ValueError, IndexError):
            continue
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                    return int(pid)
        except OSError:
            continue
    return None


def summarise(raw: dict, local_hosts=("127.0.0.1", "::1", "localhost")) -> dict:
    """The status document (what ``--json`` prints) from the management API's answers."""
    nodes = [{"name": node["name"], "running": bool(node.get("running"))} for node in raw["nodes"]]
    # Consumers counted from /api/consumers, which is current; a queue's own statistics are sampled
    # (every 5 s by default, and quorum queues report only from their leader) and lag behind.
    consuming: dict[str, int] = {}
    for consumer in raw["consumers"]:
        consuming[consumer["queue"]["name"]] = consuming.get(consumer["queue"]["name"], 0) + 1
    queues, dead_letters, delayed = [], {}, {}
    for queue in sorted(raw["queues"], key=lambda q: q["name"]):
        name = queue["name"]
        if name.endswith(DEAD_SUFFIX):
            dead_letters[name[: -len(DEAD_SUFFIX)]] = queue.get("messages") or 0
            continue
        if RETRY_QUEUE.search(name):
            handler = RETRY_QUEUE.sub("", name)
            delayed[handler] = delayed.get(handler, 0) + (queue.get("messages") or 0)
            continue
        queues.append({"name": name, "service": owner(name), "type": queue.get("type"),
                       "ready": queue.get("messages_ready") or 0,
                       "unacked": queue.get("messages_unacknowledged") or 0,
                       "consumers": consuming.get(name, 0),
                       "leader": queue.get("leader") or queue.get("node")})
    broker_ports = {c["name"]: c.get("port") for c in raw.get("connections", [])}
    connections: dict[str, dict[str, dict]] = {}
    for consumer in raw["consumers"]:
        service = owner(consumer["queue"]["name"])
        if service is None:
            continue
        channel = consumer.get("channel_details") or {}
        connection = channel.get("connection_name") or channel.get("name")
        instance = connections.setdefault(service, {}).setdefault(connection, {
            "connection": connection, "node": channel.get("node"), "queues": set()})
        instance["queues"].add(consumer["queue"]["name"])
        if "pid" not in instance:
            local = channel.get("peer_host") in local_hosts and channel.get("peer_port")
            instance["pid"] = local_pid(channel["peer_port"], broker_ports.get(connection)) if local else None
    services = {service: [{**instance, "queues": sorted(instance["queues"]),
                           "standby": all(STANDBY_QUEUE.match(q) for q in instance["queues"])}
                          for _, instance in sorted(found.items())]
                for service, found in sorted(connections.items())}
    replication = [q for q in queues if q["service"] == REPLICATOR and not q["name"].startswith("rpc")]
    lag = {"backlog": sum(q["ready"] + q["unacked"] for q in replication),
           "delayed_retries": sum(delayed.get(q["name"], 0) for q in replication),
           "queues": [q["name"] for q in replication]}
    attention = [f"node {n['name']} is down" for n in nodes if not n["running"]]
    attention += [f"queue {q['name']} holds {q['ready']} message(s) and has no consumer"
                  for q in queues if q["ready"] and not q["consumers"]]
    attention += [f"{count} dead letter(s) of {queue} (dss-ops dead-letters show {queue})"
                  for queue, count in sorted(dead_letters.items()) if count]
    return {"nodes": nodes, "services": services, "queues": queues,
            "dead_letters": {q: c for q, c in dead_letters.items() if c}, "delayed_retries": delayed,
            "replication": lag, "attention": attention}


def render(status: dict, source: str, out: TextIO) -> None:
    up = sum(n["running"] for n in status["nodes"])
    out.write(f"broker ({source}): {up} of {len(status['nodes'])} node(s) up\n")
    for node in status["nodes"]:
        out.write(f"  {node['name']:<28} {'up' if node['running'] else 'DOWN'}\n")
    out.write("services (instances = broker connections consuming):\n")
    for service, instances in status["services"].items():
        pids = ", ".join(sorted((str(i["pid"]) if i["pid"] else "?") for i in instances))
        standing_by = sum(i["standby"] for i in instances)
        roles = f" ({len(instances) - standing_by} active, {standing_by} standing by)" if standing_by else ""
        out.write(f"  {service:<12} {len(instances)} instance(s){roles}  pids {pids}\n")
    out.write(f"queues:{'':<76} ready  unacked  consumers  leader\n")
    for queue in status["queues"]:
        if REPLY_QUEUE.match(queue["name"]) or STANDBY_QUEUE.match(queue["name"]):
            continue  # one per process; counted as instances above
        out.write(f"  {queue['name'][:80]:<81} {queue['ready']:>5}  {queue['unacked']:>7}  "
                  f"{queue['consumers']:>9}  {queue['leader'] or '-'}\n")
    lag = status["replication"]
    out.write(f"replication: {lag['backlog']} change(s) waiting or in progress, "
              f"{lag['delayed_retries']} waiting for a retry\n")
    letters = status["dead_letters"]
    out.write("dead letters: " + (", ".join(f"{q} {c}" for q, c in sorted(letters.items())) or "none") + "\n")
    out.write(("needs attention:\n" + "".join(f"  {a}\n" for a in status["attention"])) if status["attention"]
              else "all well\n")


def run_command(management_urls: list[str], vhost: str, as_json: bool = False, out: TextIO | None = None,
                err: TextIO | None = None) -> int:
    """Print the status; 0 when all is well, 1 when something needs attention, 2 when no
    management API answers."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        source, raw = fetch(management_urls, vhost)
    except Unreachable as error:
        if as_json:
            out.write(json.dumps({"attention": [str(error)]}) + "\n")
        err.write(f"dss-ops status: {error}\n")
        return 2
    status = summarise(raw)
    if as_json:
        out.write(json.dumps(status, indent=2, sort_keys=True) + "\n")
    else:
        render(status, urllib.parse.urlsplit(source).netloc.rpartition("@")[2], out)
    return 1 if status["attention"] else 0
