"""The services `make up` runs, ``SCALE`` ``nameko run`` processes (instances) of each worker and
one gateway, their ports, what `up` chose (``var/run/stack.json``: scale and broker mode, kept
until `down` so `restart` and `status` follow it), and the gateway's health check.

Instance 1 of a service is named after it (``files``: ``var/run/files.pid``,
``var/log/files.log``), instance k > 1 ``files-k``; instance k serves its metrics on the
service's port + (k - 1) * ``METRICS_PORT_STEP``.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import shutil
import sys
import time
import warnings

import requests
import yaml

from shared.config import Settings

from devtools.local_cloud import port_open
from devtools.stack import processes
from devtools.stack.processes import ROOT, RUN_DIR, Failed, log_file, owned_pid, spawn, tail

logger = logging.getLogger(__name__)

# The services `make up` runs, in start order. Adding a service is adding its name here.
SERVICES = ("files", "bundles", "replicator", "indexer", "notifier", "checkout", "gateway")
# Run as one instance whatever SCALE says: the gateway listens on one HTTP port.
SINGLE_INSTANCE = ("gateway",)
METRICS_PORT_STEP = 100
STACK_STATE = RUN_DIR / "stack.json"
# Present while the gateway serves HTTPS with the development certificate (`make up TLS=1` until
# `make down`), so `up`, `restart` and `status` keep to it.
TLS_STATE = RUN_DIR / "gateway-tls.json"
DEFAULT_GATEWAY_ADDRESS = "127.0.0.1:8080"
HEALTH_TIMEOUT_S = 60
VENV_BIN = pathlib.Path(sys.executable).parent  # not resolved: a venv's python is a symlink


def config_value(service: str, key: str) -> str | None:
    """A key of the service's config.yml as nameko will see it (`${VARIABLE:default}` resolved)."""
    try:
        raw = (yaml.safe_load((ROOT / "services" / service / "config.yml").read_text()) or {}).get(key)
    except (OSError, AttributeError, yaml.YAMLError):
        return None
    if raw is None:
        return None
    match = re.fullmatch(r"\s*\$\{(\w+)(?::([^}]*))?\}\s*", str(raw))
    return os.environ.get(match.group(1), match.group(2)) if match else str(raw)


def metrics_port(service: str, instance: int = 1) -> int | None:
    """Instance ``instance``'s metrics port: the service's own (METRICS_PORT of its config.yml),
    plus ``METRICS_PORT_STEP`` for each instance before it."""
    value = config_value(service, "METRICS_PORT")
    if not value or not value.strip().isdigit():
        return None
    return int(value) + (instance - 1) * METRICS_PORT_STEP


def instance_name(service: str, instance: int) -> str:
    return service if instance == 1 else f"{service}-{instance}"


def instance_names(service: str, scale: int) -> list[str]:
    """What `up` names the instances of ``service`` at ``scale`` (the gateway: one)."""
    count = 1 if service in SINGLE_INSTANCE else scale
    return [instance_name(service, k) for k in range(1, count + 1)]


def running_instances(service: str) -> dict[str, int]:
    """The instances of ``service`` that `up` started and that run, by name, with their pids."""
    found = {}
    for pid_file in sorted(processes.RUN_DIR.glob(f"{service}*.pid")):  # read at call time: tests move it
        name = pid_file.stem
        if name == service or re.fullmatch(rf"{re.escape(service)}-\d+", name):
            if (pid := owned_pid(name)) is not None:
                found[name] = pid
    return dict(sorted(found.items(), key=lambda item: instance_number(item[0])))


def instance_number(name: str) -> int:
    head, _, number = name.rpartition("-")
    return int(number) if head and number.isdigit() else 1


def stack_state() -> dict:
    """What the running stack's `up` chose: ``{"scale": N, "broker": "single"|"cluster", "amqp_uri": ...}``
    (empty when `up` has not run since the last `down`)."""
    try:
        return json.loads(STACK_STATE.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def record_stack_state(**state) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    STACK_STATE.write_text(json.dumps(state, sort_keys=True) + "\n")


def _reachable(host: str) -> str:
    """Where this machine reaches a server listening on ``host``."""
    return "127.0.0.1" if host in ("", "0.0.0.0") else host


def metrics_host() -> str:
    return _reachable(Settings.from_config({}).metrics_address)


def gateway_address() -> tuple[str, int]:
    host, _, port = (config_value("gateway", "WEB_SERVER_ADDRESS") or DEFAULT_GATEWAY_ADDRESS).rpartition(":")
    return _reachable(host), int(port)


def gateway_url() -> str:
    host, port = gateway_address()
    scheme = "https" if TLS_STATE.exists() or Settings.from_config({}).tls_cert_file else "http"
    return f"{scheme}://{host}:{port}"


def get_gateway(url: str, timeout: float = 5) -> requests.Response:
    """GET from the gateway `up` started, trusting the development CA when it serves with it."""
    if TLS_STATE.exists():
        return requests.get(url, timeout=timeout, verify=json.loads(TLS_STATE.read_text())["ca_file"])
    if url.startswith("https://"):
        # A certificate of the user's own (DSS_TLS_CERT_FILE) names the public host, not the
        # loopback address probed here; this only asks our own process whether it is healthy.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return requests.get(url, timeout=timeout, verify=False)
    return requests.get(url, timeout=timeout)


def health_url() -> str:
    return f"{gateway_url()}/internal/health"


def _nameko() -> str:
    candidate = VENV_BIN / "nameko"
    return str(candidate) if candidate.exists() else (shutil.which("nameko") or "nameko")


def service_env(uri: str, name: str | None = None, instance: int = 1) -> dict:
    env = dict(os.environ)
    if name == "gateway" and TLS_STATE.exists() and not env.get("DSS_TLS_CERT_FILE"):
        state = json.loads(TLS_STATE.read_text())
        env.update(DSS_TLS_CERT_FILE=state["cert_file"], DSS_TLS_KEY_FILE=state["key_file"])
    env["AMQP_URI"] = uri
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach var/log at once
    # A shared METRICS_PORT in the caller's environment would give every service that reads it the
    # same port; each takes its own default (or DSS_<SERVICE>_METRICS_PORT) from its config.yml.
    env.pop("METRICS_PORT", None)
    if name and instance > 1 and (port := metrics_port(name, instance)):
        env[f"DSS_{name.upper()}_METRICS_PORT"] = str(port)
    # glibc keeps freed multi-MiB part buffers in its heap arenas, so a replicator that once copied
    # large blobs stayed at ~370 MiB idle (bench/replication.py); buffers above 1 MiB mapped
    # directly are returned on free (peak 290 instead of 560 MiB at the same throughput).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "1048576")
    return env


def check_services(names=SERVICES) -> None:
    for name in names:
        folder = ROOT / "services" / name
        if not (folder / "service.py").exists() or not (folder / "config.yml").exists():
            raise Failed(f"services/{name}/service.py or config.yml is missing: cannot run {name}.")


def start_services(uri: str, names=SERVICES, scale: int = 1) -> dict[str, str]:
    """Start the instances of ``names`` at ``scale`` that do not run yet; returns each instance's state."""
    check_services(names)
    states = {}
    for name in names:
        for number, instance in enumerate(instance_names(name, scale), start=1):
            if owned_pid(instance):
                states[instance] = "running"
                continue
            port = metrics_port(name, number)
            ports = [(metrics_host(), port)] if port else []
            if name == "gateway":
                ports.append(gateway_address())
            busy = [f"{h}:{p}" for h, p in ports if port_open(h, p)]
            if busy:
                raise Failed(f"cannot start {instance}: {busy[0]} is already in use by another process.")
            command = [_nameko(), "run", "--config", f"services/{name}/config.yml", f"services.{name}.service"]
            pid = spawn(instance, command, env=service_env(uri, name, number))
            states[instance] = f"started (pid {pid}, metrics :{port})"
    return states


def wait_healthy(names=SERVICES, timeout: float | None = None) -> None:
    timeout = timeout or HEALTH_TIMEOUT_S
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        dead = [name for name in names if not owned_pid(name)]
        if dead:
            raise Failed("exited during start-up: " + ", ".join(dead) + "\n" + _log_tails(dead))
        try:
            answer = get_gateway(health_url())
            if answer.status_code == 200:
                return
            last = f"HTTP {answer.status_code}: {answer.text[:1000]}"
        except requests.RequestException as error:
            last = f"{type(error).__name__}"
        time.sleep(0.5)
    raise Failed(f"{health_url()} not healthy within {timeout}s (last: {last}). The services are left "
                 f"running for inspection (`make down` stops them).\n" + _log_tails(names))


def _log_tails(names) -> str:
    return "\n".join(f"--- tail of {processes.shown(log_file(n))} ---\n{tail(log_file(n))}" for n in names)
