"""The services `make up` runs, one ``nameko run`` process each, their ports, and the gateway's
health check.
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
from devtools.stack.processes import ROOT, RUN_DIR, Failed, log_file, owned_pid, spawn, tail

logger = logging.getLogger(__name__)

# The services `make up` runs, in start order. Adding a service is adding its name here.
SERVICES = ("files", "bundles", "replicator", "indexer", "notifier", "checkout", "gateway")
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


def metrics_port(service: str) -> int | None:
    value = config_value(service, "METRICS_PORT")
    return int(value) if value and value.strip().isdigit() else None


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


def service_env(uri: str, name: str | None = None) -> dict:
    env = dict(os.environ)
    if name == "gateway" and TLS_STATE.exists() and not env.get("DSS_TLS_CERT_FILE"):
        state = json.loads(TLS_STATE.read_text())
        env.update(DSS_TLS_CERT_FILE=state["cert_file"], DSS_TLS_KEY_FILE=state["key_file"])
    env["AMQP_URI"] = uri
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach var/log at once
    # A shared METRICS_PORT in the caller's environment would give every service that reads it the
    # same port; each takes its own default (or DSS_<SERVICE>_METRICS_PORT) from its config.yml.
    env.pop("METRICS_PORT", None)
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


def start_services(uri: str, names=SERVICES) -> dict[str, str]:
    check_services(names)
    states = {}
    for name in names:
        if owned_pid(name):
            states[name] = "running"
            continue
        port = metrics_port(name)
        ports = [(metrics_host(), port)] if port else []
        if name == "gateway":
            ports.append(gateway_address())
        busy = [f"{h}:{p}" for h, p in ports if port_open(h, p)]
        if busy:
            raise Failed(f"cannot start {name}: {busy[0]} is already in use by another process.")
        command = [_nameko(), "run", "--config", f"services/{name}/config.yml", f"services.{name}.service"]
        pid = spawn(name, command, env=service_env(uri, name))
        states[name] = f"started (pid {pid})"
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
    return "\n".join(f"--- tail of {log_file(n).relative_to(ROOT)} ---\n{tail(log_file(n))}" for n in names)
