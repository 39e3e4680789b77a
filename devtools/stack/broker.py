"""RabbitMQ for `make up`: the broker at AMQP_URI, or a private node under ``var/rabbitmq`` (with
its epmd) when that is local and absent.
"""
from __future__ import annotations

import logging
import os
import pathlib
import shutil
import subprocess
import time
import urllib.parse

from ops.broker import amqp_uri, management_port

from devtools.local_cloud import port_open
from devtools.stack.processes import (LOG_DIR, ROOT, VAR, Failed, log_file, owned_pid, spawn, stop, tail,
                                      wait_for)

logger = logging.getLogger(__name__)

RABBIT_DIR = VAR / "rabbitmq"
BROKER_TIMEOUT_S = 60
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def redact(uri: str) -> str:
    """The URI without its password (safe to print)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def broker_error(uri: str) -> str | None:
    """None if an AMQP connection to ``uri`` succeeds, else why not."""
    from kombu import Connection
    try:
        with Connection(uri, connect_timeout=3) as connection:
            connection.connect()
        return None
    except Exception as error:  # any failure means "not usable"; the message is shown to the user
        return f"{type(error).__name__}: {error}"


def rabbitmq_server() -> str | None:
    # Debian's /usr/sbin/rabbitmq-server is a wrapper that switches to the rabbitmq user; the real
    # scripts under /usr/lib/rabbitmq/bin run as the caller, which a private instance needs.
    for candidate in ("/usr/lib/rabbitmq/bin/rabbitmq-server", shutil.which("rabbitmq-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _epmd() -> str | None:
    found = shutil.which("epmd") or shutil.which("epmd", path="/usr/lib/erlang/bin")
    if not found:
        found = next(iter(sorted(pathlib.Path("/usr/lib/erlang").glob("erts-*/bin/epmd"), reverse=True)), None)
    return str(found) if found else None


def node_env(directory: pathlib.Path, port: int, uri: str, node_name: str | None = None,
             extra_conf: str = "") -> tuple[dict, int]:
    """Environment of a broker node whose every file lives under ``directory`` (no system config
    read), listening for AMQP on ``port`` with the user and vhost of ``uri``; and its management port.

    Its distribution port is ``port`` + 20000, its management port ``ops.broker.management_port``,
    its Prometheus port the management port + 20 (15692 for 5672, the default)."""
    parts = urllib.parse.urlsplit(uri)
    management = management_port(port)
    user = urllib.parse.unquote(parts.username or "guest")
    password = urllib.parse.unquote(parts.password or "guest")
    vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "rabbitmq.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the password
    with os.fdopen(fd, "w") as handle:
        handle.write(
            "# Written by devtools.stack for the broker `make up` runs; default_* apply at first boot.\n"
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {management}\n"
            f"default_user = {user}\ndefault_pass = {password}\ndefault_vhost = {vhost}\n"
            "default_user_tags.administrator = true\n"
            # Its Prometheus plugin (deploy/prometheus/prometheus-local.yml scrapes it) on loopback only.
            f"prometheus.tcp.ip = 127.0.0.1\nprometheus.tcp.port = {management + 20}\n" + extra_conf)
    (directory / "enabled_plugins").write_text("[rabbitmq_management,rabbitmq_prometheus].\n")
    (directory / "rabbitmq-env.conf").write_text("# Empty on purpose: keeps /etc/rabbitmq/rabbitmq-env.conf out.\n")
    env = dict(os.environ)
    env.update({
        "HOME": str(directory),  # the Erlang cookie goes here, not into the caller's home
        "RABBITMQ_NODENAME": node_name or f"dss{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(port + 20000),
        # rabbitmqctl's own distribution ports, clear of every node's (a cluster's are consecutive).
        "RABBITMQ_CTL_DIST_PORT_MIN": str(port + 30000),
        "RABBITMQ_CTL_DIST_PORT_MAX": str(port + 30009),
        "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
        "RABBITMQ_CONFIG_FILE": str(conf),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
        "RABBITMQ_LOG_BASE": str(LOG_DIR / directory.name),
        "RABBITMQ_PID_FILE": str(directory / "rabbitmq.pid"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    })
    return env, management


def ensure_epmd() -> None:
    """epmd on 127.0.0.1:4369, started by us (not by erl's own `-daemon`) so `down` can stop it."""
    epmd = _epmd()
    if epmd and not port_open("127.0.0.1", 4369) and not owned_pid("epmd"):
        spawn("epmd", [epmd], env={**os.environ, "ERL_EPMD_ADDRESS": "127.0.0.1"})
        wait_for(lambda: port_open("127.0.0.1", 4369), 10, "epmd")


def ensure_broker() -> str:
    """Use the broker at AMQP_URI, or start a private one under var/ when it is local and absent."""
    uri = amqp_uri()
    parts = urllib.parse.urlsplit(uri)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    if owned_pid("rabbitmq"):
        _wait_broker(uri)
        return "running (started by make up)"
    if port_open(host, port):
        error = broker_error(uri)
        if error:
            raise Failed(f"something listens on {host}:{port} but an AMQP connection to {redact(uri)} "
                         f"fails ({error}). Fix AMQP_URI or that broker.")
        return "already running (not started by make up)"
    if host not in LOCAL_HOSTS:
        raise Failed(f"no RabbitMQ answers at {redact(uri)}. Start it there, or unset AMQP_URI to use a local one.")
    server = rabbitmq_server()
    if not server:
        raise Failed(f"no RabbitMQ answers at {redact(uri)} and rabbitmq-server is not installed. "
                     "Install it (as root: apt-get update && apt-get install -y rabbitmq-server) "
                     "or point AMQP_URI at a running broker.")
    env, management = node_env(RABBIT_DIR, port, uri)
    for busy in (management, port + 20000):
        if port_open("127.0.0.1", busy):
            raise Failed(f"cannot start RabbitMQ for {redact(uri)}: port {busy} is already in use.")
    ensure_epmd()
    logger.info("starting RabbitMQ on %s (private node, data in %s)", redact(uri), RABBIT_DIR.relative_to(ROOT))
    spawn("rabbitmq", [server], env=env)
    _wait_broker(uri)
    return f"started by make up (management on 127.0.0.1:{management})"


def _wait_broker(uri: str) -> None:
    """Wait for the broker `up` started to accept AMQP (~5 s after start)."""
    deadline = time.monotonic() + BROKER_TIMEOUT_S
    while (error := broker_error(uri)) is not None:
        if not owned_pid("rabbitmq") or time.monotonic() > deadline:
            raise Failed(f"RabbitMQ did not come up ({error}). Its log:\n{tail(log_file('rabbitmq'))}\n"
                         f"(node logs in {LOG_DIR.relative_to(ROOT)}/rabbitmq/)")
        time.sleep(0.5)


def stop_epmd() -> None:
    """Stop the epmd `up` started, unless another Erlang node (not ours) registered with it since."""
    pid = owned_pid("epmd")
    if pid is None:
        return
    names = subprocess.run([_epmd() or "epmd", "-names"], capture_output=True, text=True,
                           env={**os.environ, "ERL_EPMD_ADDRESS": "127.0.0.1"}).stdout
    others = [line for line in names.splitlines() if line.startswith("name ")]
    if others:
        logger.info("epmd: left running, still used by %s", ", ".join(o.split()[1] for o in others))
        return
    stop("epmd")
    logger.info("epmd: stopped")
