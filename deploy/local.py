#!/usr/bin/env python3
"""Run the whole store on this machine: ``up``, ``down``, ``restart``, ``status``, ``token``.

The Makefile targets of the same names call this with the project's virtualenv. ``up`` starts, in
the background and each only if not already there: RabbitMQ (only when AMQP_URI does not answer),
moto (S3) and fake-gcs-server (GCS) on the ports of DSS_S3_ENDPOINT / DSS_GCS_ENDPOINT, the buckets,
the local token issuer, then one ``nameko run`` process per service; it returns once the gateway's
health check passes. For replication it also wires the main buckets' change notifications: moto's
S3 bucket notifies an SQS queue on moto, and fake-gcs-server publishes to a topic of the Pub/Sub
emulator (on the port of DSS_PUBSUB_EMULATOR_HOST) when that is installed; without it only
GCS-originated replication is off. Everything it starts is recorded in ``var/run/<name>.pid`` (with its start
time in ``<name>.started``, so a recycled pid is never mistaken for ours) and logs to
``var/log/<name>.log``; ``down`` stops exactly those process groups. ``up --tls`` makes the gateway
serve HTTPS with a development certificate (``cert`` makes it, under var/tls) until ``down``;
``sa-key`` writes a service-account key file for the dbio / hca clients that the running stack
trusts at once.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import warnings

# eventlet (imported by the blob stores) warns about its own deprecation on import: noise here.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: import `shared` from this checkout

import psutil  # noqa: E402
import requests  # noqa: E402
import yaml  # noqa: E402

from shared import auth_local, local_cloud, tls  # noqa: E402
from shared.auth import issuer_jwks_file  # noqa: E402
from shared.config import Settings  # noqa: E402

logger = logging.getLogger("dss.local")

# The services `make up` runs, in start order. Adding a service is adding its name here.
SERVICES = ("files", "bundles", "replicator", "indexer", "notifier", "checkout", "gateway")

VAR = ROOT / "var"
RUN_DIR = VAR / "run"
LOG_DIR = VAR / "log"
GCS_DATA = VAR / "gcs"
RABBIT_DIR = VAR / "rabbitmq"
TLS_DIR = VAR / "tls"
# Present while the gateway serves HTTPS with the development certificate (`make up TLS=1` until
# `make down`), so `up`, `restart` and `status` keep to it.
TLS_STATE = RUN_DIR / "gateway-tls.json"
DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_GATEWAY_ADDRESS = "127.0.0.1:8080"
HEALTH_TIMEOUT_S = 60
BROKER_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
VENV_BIN = pathlib.Path(sys.executable).parent  # not resolved: a venv's python is a symlink


class Failed(Exception):
    """`up` cannot continue; the message says why and what to do."""


# --- processes we own ---------------------------------------------------------------------------

def _pid_file(name: str) -> pathlib.Path:
    return RUN_DIR / f"{name}.pid"


def _log_file(name: str) -> pathlib.Path:
    return LOG_DIR / f"{name}.log"


def _start_file(name: str) -> pathlib.Path:
    return RUN_DIR / f"{name}.started"


def owned_pid(name: str) -> int | None:
    """Pid of the process `up` started as ``name`` if it still runs, else None (stale files go).

    The pid file holds only the pid (what other tools expect); ``<name>.started`` next to it holds
    the process's start time, so a pid recycled by an unrelated process is not mistaken for ours.
    """
    path = _pid_file(name)
    try:
        pid = int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    try:
        started = float(_start_file(name).read_text())
    except (FileNotFoundError, ValueError):
        started = None
    try:
        process = psutil.Process(pid)
        alive = process.status() != psutil.STATUS_ZOMBIE and (
            started is None or abs(process.create_time() - started) < 1)
    except psutil.Error:
        alive = False
    if not alive:
        _forget(name)
        return None
    return pid


def _forget(name: str) -> None:
    _pid_file(name).unlink(missing_ok=True)
    _start_file(name).unlink(missing_ok=True)


def _record(name: str, pid: int) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    _start_file(name).write_text(f"{psutil.Process(pid).create_time()}\n")
    _pid_file(name).write_text(f"{pid}\n")


def _open_log(name: str):
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = open(_log_file(name), "ab")
    log.write(f"\n=== {name} starting {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
    log.flush()
    return log


def spawn(name: str, command: list[str], env: dict | None = None) -> int:
    """Start ``command`` detached (own session and process group, stdin closed), logging to var/log."""
    log = _open_log(name)
    try:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()
    _record(name, process.pid)
    return process.pid


def _group(pgid: int) -> list[int]:
    """Live members of a process group (zombies excluded: our init may reap them only later)."""
    members = []
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError, psutil.Error):
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pgid:
                members.append(process.pid)
    return members


def stop(*names: str, timeout: float = STOP_TIMEOUT_S) -> list[str]:
    """Stop the process groups `up` started under ``names`` together: TERM, KILL after ``timeout``.

    Returns the names that were running."""
    groups = {name: pid for name in names if (pid := owned_pid(name)) is not None}
    for pid in groups.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_group(pid) for pid in groups.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for name, pid in groups.items():
        if _group(pid):
            logger.warning("%s did not stop within %ss: killing it", name, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        _forget(name)
    return list(groups)


def tail(path: pathlib.Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log, from its latest start only (earlier runs are noise)."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"({path} does not exist)"
    starts = [i for i, line in enumerate(text) if line.startswith("=== ") and " starting " in line]
    return "\n".join(text[starts[-1] if starts else 0:][-lines:])


# --- RabbitMQ -----------------------------------------------------------------------------------

def amqp_uri() -> str:
    return os.environ.get("AMQP_URI") or DEFAULT_AMQP_URI


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


def _rabbitmq_server() -> str | None:
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


def _rabbit_env(uri: str) -> tuple[dict, int]:
    """Environment of a private broker whose every file lives under var/ (no system config read)."""
    parts = urllib.parse.urlsplit(uri)
    port = parts.port or 5672
    management_port = 15672 if port == 5672 else port + 10000  # the test fixtures expect 15672
    user = urllib.parse.unquote(parts.username or "guest")
    password = urllib.parse.unquote(parts.password or "guest")
    vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    RABBIT_DIR.mkdir(parents=True, exist_ok=True)
    conf = RABBIT_DIR / "rabbitmq.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the password
    with os.fdopen(fd, "w") as handle:
        handle.write(
            "# Written by deploy/local.py for the broker `make up` runs; default_* apply at first boot.\n"
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {management_port}\n"
            f"default_user = {user}\ndefault_pass = {password}\ndefault_vhost = {vhost}\n"
            "default_user_tags.administrator = true\n"
            # Its Prometheus plugin (deploy/prometheus/prometheus-local.yml scrapes it) on loopback only.
            "prometheus.tcp.ip = 127.0.0.1\n")
    (RABBIT_DIR / "enabled_plugins").write_text("[rabbitmq_management,rabbitmq_prometheus].\n")
    (RABBIT_DIR / "rabbitmq-env.conf").write_text("# Empty on purpose: keeps /etc/rabbitmq/rabbitmq-env.conf out.\n")
    env = dict(os.environ)
    env.update({
        "HOME": str(RABBIT_DIR),  # the Erlang cookie goes here, not into the caller's home
        "RABBITMQ_NODENAME": f"dss{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(port + 20000),
        "RABBITMQ_CONF_ENV_FILE": str(RABBIT_DIR / "rabbitmq-env.conf"),
        "RABBITMQ_CONFIG_FILE": str(conf),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(RABBIT_DIR / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(RABBIT_DIR / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(RABBIT_DIR / "mnesia"),
        "RABBITMQ_LOG_BASE": str(LOG_DIR / "rabbitmq"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    })
    return env, management_port


def ensure_broker() -> str:
    """Use the broker at AMQP_URI, or start a private one under var/ when it is local and absent."""
    uri = amqp_uri()
    parts = urllib.parse.urlsplit(uri)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    if owned_pid("rabbitmq"):
        _wait_broker(uri)
        return "running (started by make up)"
    if local_cloud.port_open(host, port):
        error = broker_error(uri)
        if error:
            raise Failed(f"something listens on {host}:{port} but an AMQP connection to {redact(uri)} "
                         f"fails ({error}). Fix AMQP_URI or that broker.")
        return "already running (not started by make up)"
    if host not in LOCAL_HOSTS:
        raise Failed(f"no RabbitMQ answers at {redact(uri)}. Start it there, or unset AMQP_URI to use a local one.")
    server = _rabbitmq_server()
    if not server:
        raise Failed(f"no RabbitMQ answers at {redact(uri)} and rabbitmq-server is not installed. "
                     "Install it (as root: apt-get update && apt-get install -y rabbitmq-server) "
                     "or point AMQP_URI at a running broker.")
    env, management_port = _rabbit_env(uri)
    for busy in (management_port, port + 20000):
        if local_cloud.port_open("127.0.0.1", busy):
            raise Failed(f"cannot start RabbitMQ for {redact(uri)}: port {busy} is already in use.")
    epmd = _epmd()
    if epmd and not local_cloud.port_open("127.0.0.1", 4369) and not owned_pid("epmd"):
        # Started by us (not by erl's own `-daemon`), so `down` can stop it again.
        spawn("epmd", [epmd], env={**os.environ, "ERL_EPMD_ADDRESS": "127.0.0.1"})
        _wait(lambda: local_cloud.port_open("127.0.0.1", 4369), 10, "epmd")
    logger.info("starting RabbitMQ on %s (private node, data in %s)", redact(uri), RABBIT_DIR.relative_to(ROOT))
    spawn("rabbitmq", [server], env=env)
    _wait_broker(uri)
    return f"started by make up (management on 127.0.0.1:{management_port})"


def _wait_broker(uri: str) -> None:
    """Wait for the broker `up` started to accept AMQP (~5 s after start)."""
    deadline = time.monotonic() + BROKER_TIMEOUT_S
    while (error := broker_error(uri)) is not None:
        if not owned_pid("rabbitmq") or time.monotonic() > deadline:
            raise Failed(f"RabbitMQ did not come up ({error}). Its log:\n{tail(_log_file('rabbitmq'))}\n"
                         f"(node logs in {LOG_DIR.relative_to(ROOT)}/rabbitmq/)")
        time.sleep(0.5)


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise Failed(f"{what} did not come up within {timeout}s")
        time.sleep(0.2)


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


# --- emulators ----------------------------------------------------------------------------------

def _local_endpoint(endpoint: str) -> tuple[str, int] | None:
    parts = urllib.parse.urlsplit(endpoint)
    if not endpoint or parts.hostname not in LOCAL_HOSTS:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _answers_like_moto(url: str) -> bool:
    with contextlib.suppress(requests.RequestException):
        return requests.get(f"{url}/moto-api/", timeout=3).status_code == 200
    return False


def _answers_like_gcs(url: str) -> bool:
    with contextlib.suppress(requests.RequestException, ValueError):
        return requests.get(f"{url}/storage/v1/b", timeout=3).json().get("kind") == "storage#buckets"
    return False


def ensure_emulator(name: str, endpoint: str, answers, start) -> str:
    """Start the emulator for a local ``endpoint`` unless ours runs or a compatible one is there."""
    local = _local_endpoint(endpoint)
    if local is None:
        return "remote endpoint: not managed by make up" if endpoint else "not configured (real cloud)"
    host, port = local
    url = f"http://{host}:{port}"
    if owned_pid(name):
        return "running (started by make up)"
    if local_cloud.port_open(host, port):
        if answers(url):
            return "already running (not started by make up): reused"
        raise Failed(f"port {port} is taken by something that does not answer like {name}; "
                     f"free it or change the endpoint setting.")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    emulator = start(port)
    _record(name, emulator.process.pid)
    return "started by make up"


def _start_moto(port: int):
    return local_cloud.start_moto(port, log_path=str(_log_file("moto")), detach=True)


def _start_gcs(port: int, settings: Settings | None = None):
    """fake-gcs-server; with ``settings``, publishing the main bucket's events to the Pub/Sub emulator."""
    # Filesystem backend: buckets and objects survive `make down` / `make up`.
    GCS_DATA.mkdir(parents=True, exist_ok=True)
    if settings is not None:
        return local_cloud.start_fake_gcs(port, log_path=str(_log_file("fake-gcs")), data_dir=str(GCS_DATA),
                                          extra_args=local_cloud.fake_gcs_event_args(settings),
                                          env=local_cloud.fake_gcs_event_env(settings), detach=True)
    return local_cloud.start_fake_gcs(port, log_path=str(_log_file("fake-gcs")), data_dir=str(GCS_DATA),
                                      detach=True)


# --- change notifications (replication) ---------------------------------------------------------

GCS_EVENTS_OFF = "GCS-originated replication is OFF (S3 → GCS still works)"


def _answers_like_pubsub(url: str) -> bool:
    with contextlib.suppress(requests.RequestException, ValueError):
        answer = requests.get(f"{url}/v1/projects/dss-probe/topics", timeout=3)
        return answer.status_code == 200 and isinstance(answer.json(), dict)
    return False


def _start_pubsub(port: int):
    return local_cloud.start_pubsub_emulator(port, log_path=str(_log_file("pubsub")), detach=True)


def ensure_pubsub(settings: Settings) -> tuple[str, bool]:
    """Run the Pub/Sub emulator and create the notification topic and subscription on it.

    Returns (state, whether fake-gcs-server can publish to it). A missing emulator is not an error:
    the store works, only changes made on the GCS side are not replicated."""
    host = settings.pubsub_emulator_host
    if not host:
        return "not configured (real Pub/Sub: set up by hand, see README)", False
    endpoint = f"http://{host}"
    if _local_endpoint(endpoint) is None:
        return "remote emulator: not managed by make up", False
    if (not owned_pid("pubsub") and not local_cloud.port_open(*_local_endpoint(endpoint))
            and local_cloud.pubsub_emulator_binary() is None):
        logger.warning("Pub/Sub emulator not installed (apt-get install google-cloud-cli-pubsub-emulator; it needs "
                       "Java): %s", GCS_EVENTS_OFF)
        return f"not installed: {GCS_EVENTS_OFF}", False
    state = ensure_emulator("pubsub", endpoint, _answers_like_pubsub, _start_pubsub)
    try:
        local_cloud.configure_gcs_notifications(settings)
    except (requests.RequestException, RuntimeError) as error:
        raise Failed(f"creating the notification topic / subscription on {host} failed: {error}") from error
    return f"{state}; topic {settings.gcs_notification_topic}, subscription {settings.gcs_notification_subscription}", True


def ensure_gcs(settings: Settings, publish_events: bool) -> str:
    """fake-gcs-server, publishing the main bucket's events when ``publish_events``. One of ours that
    runs without the event flags (started before the Pub/Sub emulator was there) is restarted:
    its objects are on disk."""
    pid = owned_pid("fake-gcs")
    if pid and publish_events:
        with contextlib.suppress(psutil.Error):
            if " ".join(local_cloud.fake_gcs_event_args(settings)) not in " ".join(psutil.Process(pid).cmdline()):
                stop("fake-gcs")
                logger.info("fake-gcs-server: restarting it to publish change notifications")
    state = ensure_emulator("fake-gcs", settings.gcs_endpoint, _answers_like_gcs,
                            lambda port: _start_gcs(port, settings if publish_events else None))
    if publish_events and "reused" in state:
        state += " (started elsewhere: it publishes notifications only if started with the -event.* flags)"
    return state


def ensure_s3_notifications(settings: Settings) -> str:
    """Make moto's S3 main bucket notify the SQS queue (on moto too); idempotent."""
    if _local_endpoint(settings.s3_endpoint) is None or _local_endpoint(settings.sqs_endpoint) is None:
        return "not managed (real AWS: set up by hand, see README)"
    if settings.sqs_endpoint.rstrip("/") != settings.s3_endpoint.rstrip("/"):
        logger.warning("DSS_SQS_ENDPOINT differs from DSS_S3_ENDPOINT: moto notifies only queues of its own; "
                       "S3-originated replication is OFF")
        return "off (DSS_SQS_ENDPOINT is not the moto of DSS_S3_ENDPOINT)"
    try:
        local_cloud.configure_s3_notifications(settings)
    except Exception as error:  # boto3's errors; shown to the user
        raise Failed(f"configuring S3 notifications failed: {type(error).__name__}: {error}") from error
    return f"bucket {settings.s3_bucket} → SQS queue {settings.s3_notification_queue}"


def ensure_buckets(settings: Settings, replicas: list[str]) -> None:
    if not replicas:
        return
    try:
        if set(replicas) == {"aws", "gcp"}:
            local_cloud.create_buckets(settings)
        else:  # never create buckets in a real cloud account behind the user's back
            from shared.blobstore import open_blobstore
            for replica in replicas:
                store = open_blobstore(replica, settings)
                for kind in ("main", "checkout", "staging"):
                    store.create_bucket(settings.bucket(replica, kind))
    except Exception as error:
        raise Failed(f"creating the buckets failed: {type(error).__name__}: {error}") from error


# --- token issuer -------------------------------------------------------------------------------

def ensure_issuer(settings: Settings) -> str:
    jwks = auth_local.local_jwks_path(settings.auth_issuers, settings.local_issuer)
    if jwks is None:
        logger.warning("DSS_AUTH_ISSUERS names no JWKS file for %s: the gateway will not trust local tokens",
                       settings.local_issuer)
        jwks = str(VAR / "auth" / "jwks.json")
    auth_local.ensure_local_issuer(settings.local_issuer_key, jwks)
    return jwks


# --- TLS ----------------------------------------------------------------------------------------

def tls_names(settings: Settings) -> tuple[str, ...]:
    """What the development certificate names: loopback, and the gateway's host and public host."""
    names = list(tls.DEFAULT_NAMES)
    host, _ = gateway_address()
    names.append(host)
    if settings.public_url:
        names.append(urllib.parse.urlsplit(settings.public_url).hostname or "")
    return tuple(dict.fromkeys(n for n in names if n))


def ensure_tls(settings: Settings) -> tls.DevCertificate:
    """The development CA and the gateway's certificate under var/tls (made once, re-issued when
    a name is missing or it nears its end)."""
    return tls.ensure_dev_certificate(TLS_DIR, tls_names(settings))


def use_tls(certificate: tls.DevCertificate) -> bool:
    """Make the gateway `up` starts serve HTTPS with ``certificate``; True if it was plain before."""
    was_plain = not TLS_STATE.exists()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    TLS_STATE.write_text(json.dumps(dataclasses.asdict(certificate)) + "\n")
    return was_plain


def _relative(path: str) -> str:
    return os.path.relpath(path, ROOT) if path.startswith(str(ROOT)) else path


# --- services -----------------------------------------------------------------------------------

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
        busy = [f"{h}:{p}" for h, p in ports if local_cloud.port_open(h, p)]
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
    return "\n".join(f"--- tail of {_log_file(n).relative_to(ROOT)} ---\n{tail(_log_file(n))}" for n in names)


# --- commands -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _exclusive():
    """One `up`/`down` at a time, so two concurrent `make up`s cannot both start a copy."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUN_DIR / "local.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cmd_up(args) -> int:
    with _exclusive():
        check_services()  # before starting anything
        settings = Settings.from_config({})
        uri = amqp_uri()
        broker = ensure_broker()
        logger.info("RabbitMQ: %s", broker)
        s3 = ensure_emulator("moto", settings.s3_endpoint, _answers_like_moto, _start_moto)
        logger.info("S3 (moto): %s", s3)
        pubsub, gcs_events = ensure_pubsub(settings)  # its topic must exist before fake-gcs publishes
        logger.info("Pub/Sub emulator: %s", pubsub)
        gcs = ensure_gcs(settings, gcs_events and _local_endpoint(settings.gcs_endpoint) is not None)
        logger.info("GCS (fake-gcs-server): %s", gcs)
        replicas = [r for r, e in (("aws", settings.s3_endpoint), ("gcp", settings.gcs_endpoint))
                    if _local_endpoint(e)]
        ensure_buckets(settings, replicas)
        logger.info("buckets: %s", ", ".join(sorted({settings.bucket(r, k) for r in replicas
                                                    for k in ("main", "checkout", "staging")})) or "-")
        s3_events = ensure_s3_notifications(settings)
        logger.info("S3 notifications: %s", s3_events)
        jwks = ensure_issuer(settings)
        logger.info("token issuer: %s (key %s, JWKS %s)", settings.local_issuer, settings.local_issuer_key, jwks)
        if args.tls:
            if settings.tls_cert_file:
                raise Failed("DSS_TLS_CERT_FILE is set: the gateway serves that certificate; leave out TLS=1")
            certificate = ensure_tls(settings)
            logger.info("TLS: development certificate %s (CA %s)", _relative(certificate.cert_file),
                        _relative(certificate.ca_file))
            if use_tls(certificate) and owned_pid("gateway"):
                logger.info("gateway: restarting it to serve HTTPS")
                stop("gateway")
        states = start_services(uri)
        for name, state in states.items():
            logger.info("%s: %s", name, state)
        if not args.no_wait:
            wait_healthy(timeout=args.timeout)
    print_endpoints(settings, uri, broker, gcs_events)
    return 0


def print_endpoints(settings: Settings, uri: str, broker: str, gcs_events: bool = True) -> None:
    metrics = ", ".join(f"{n} {metrics_host()}:{metrics_port(n)}" for n in SERVICES)
    subscription = f"subscription {settings.gcs_notification_subscription}: GCS main bucket notifications"
    if not settings.pubsub_emulator_host:
        pubsub = f"Google Cloud   ({subscription})"
    elif gcs_events:
        pubsub = f"{settings.pubsub_emulator_host} (emulator)   ({subscription})"
    else:
        pubsub = f"none at {settings.pubsub_emulator_host}: {GCS_EVENTS_OFF}"
    tls_line = ""
    if TLS_STATE.exists():
        ca = _relative(json.loads(TLS_STATE.read_text())["ca_file"])
        tls_line = f"\n  TLS        HTTPS with a development certificate; trust its CA: REQUESTS_CA_BUNDLE={ca}"
    print(f"""DSS is up.
  API        {gateway_url()}/v1   (Swagger: {gateway_url()}/v1/swagger.json)
  health     {health_url()}{tls_line}
  S3         {settings.s3_endpoint or 'AWS'}   (buckets {settings.s3_bucket}, {settings.s3_checkout_bucket}, {settings.s3_staging_bucket})
  GCS        {settings.gcs_endpoint or 'Google Cloud'}   (buckets {settings.gs_bucket}, {settings.gs_checkout_bucket}, {settings.gs_staging_bucket})
  SQS        {settings.sqs_endpoint or 'AWS'}   (queue {settings.s3_notification_queue}: S3 main bucket notifications)
  Pub/Sub    {pubsub}
  AMQP       {redact(uri)}   ({broker})
  metrics    {metrics}
  logs       {LOG_DIR.relative_to(ROOT)}/
  token      TOKEN=$(make -s token EMAIL=you@example.org GROUPS=dbio)
  clients    make sa-key EMAIL=you@example.org OUT=sa-key.json GROUPS=dbio  (README "Using the old DSS clients")
  stop       make down""")


def cmd_down(args) -> int:
    with _exclusive():
        infrastructure = ("fake-gcs", "pubsub", "moto", "rabbitmq", "epmd")
        # Pid files of services dropped from SERVICES since the last `up` would otherwise be orphaned.
        others = sorted(p.stem for p in RUN_DIR.glob("*.pid") if p.stem not in (*SERVICES, *infrastructure))
        # Services first (in parallel), so none of them sees its broker or storage vanish.
        stopped = stop(*others, *SERVICES) + stop(*infrastructure[:-1])
        TLS_STATE.unlink(missing_ok=True)  # the next `up` serves plain HTTP unless asked (TLS=1)
        for name in stopped:
            logger.info("%s: stopped", name)
        stop_epmd()
    print("stopped: " + ", ".join(stopped) if stopped else "nothing started by make up was running")
    return 0


def cmd_restart(args) -> int:
    names = args.services or list(SERVICES)
    unknown = sorted(set(names) - set(SERVICES))
    if unknown:
        raise Failed(f"unknown service(s): {', '.join(unknown)} (known: {', '.join(SERVICES)})")
    with _exclusive():
        for name in stop(*names):
            logger.info("%s: stopped", name)
        for name, state in start_services(amqp_uri(), names).items():
            logger.info("%s: %s", name, state)
        wait_healthy(names)
    print(f"restarted: {', '.join(names)}")
    return 0


def cmd_status(args) -> int:
    settings = Settings.from_config({})
    uri = amqp_uri()
    healthy = True

    def line(name: str, state: str, ok: bool) -> None:
        nonlocal healthy
        healthy &= ok
        print(f"  {name:<10} {state}")

    def owner(name: str) -> str:
        pid = owned_pid(name)
        return f"started by make up, pid {pid}" if pid else "not started by make up"

    broker = broker_error(uri)
    line("rabbitmq", f"{'up' if broker is None else 'DOWN'} at {redact(uri)} ({owner('rabbitmq')})", broker is None)
    for name, endpoint, answers in (("moto", settings.s3_endpoint, _answers_like_moto),
                                    ("fake-gcs", settings.gcs_endpoint, _answers_like_gcs),
                                    ("pubsub", settings.pubsub_emulator_host and f"http://{settings.pubsub_emulator_host}",
                                     _answers_like_pubsub)):
        if _local_endpoint(endpoint) is None:
            line(name, f"not managed ({endpoint or 'real cloud'})", True)
            continue
        if name == "pubsub" and not owned_pid(name) and local_cloud.pubsub_emulator_binary() is None \
                and not local_cloud.port_open(*_local_endpoint(endpoint)):
            line(name, f"not installed: {GCS_EVENTS_OFF}", True)
            continue
        up = answers(endpoint.rstrip("/"))
        line(name, f"{'up' if up else 'DOWN'} at {endpoint} ({owner(name)})", up)
    for name in SERVICES:
        pid = owned_pid(name)
        line(name, f"running, pid {pid}, metrics :{metrics_port(name)}" if pid else "stopped", bool(pid))
    try:
        answer = get_gateway(health_url())
        line("health", f"HTTP {answer.status_code} {answer.text[:300]}", answer.status_code == 200)
    except requests.RequestException as error:
        line("health", f"no answer from {health_url()} ({type(error).__name__})", False)
    return 0 if healthy else 3


def cmd_token(args) -> int:
    settings = Settings.from_config({})
    ensure_issuer(settings)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    # stdout carries the token and nothing else: `TOKEN=$(make -s token ...)`.
    print(auth_local.mint_token_for_settings(settings, args.email, groups, lifetime_s=args.lifetime))
    return 0


def cmd_sa_key(args) -> int:
    """Write a service-account key file the running stack trusts at once (its JWKS is re-read),
    recording the groups granted to the account (``--groups``) with its keys."""
    settings = Settings.from_config({})
    jwks = issuer_jwks_file(settings.auth_issuers, args.email)
    if jwks is None:
        raise Failed(f"DSS_AUTH_ISSUERS trusts no JWKS file for {args.email} (it is `{settings.auth_issuers}`); "
                     "add an entry such as `*=var/auth/service-accounts/{iss}.json` (the default has it)")
    if os.path.exists(args.out):
        raise Failed(f"{args.out} exists; give another OUT, or delete it first")
    groups = None if args.groups is None else [g.strip() for g in args.groups.split(",") if g.strip()]
    try:
        kid = auth_local.create_service_account_key(args.email, args.out, jwks, groups=groups)
    except ValueError as error:
        raise Failed(str(error)) from None
    granted = auth_local.account_groups(jwks, args.email)
    writers = ", ".join(settings.auth_allowed_groups)
    if set(granted) & set(settings.auth_allowed_groups):
        access = f"It is granted {', '.join(granted)}: it may write."
    else:
        access = (f"It is granted {', '.join(granted) or 'no group'}: it may only read (GROUPS=dbio, or another "
                  f"group of DSS_AUTH_ALLOWED_GROUPS ({writers}), to let it write; its tokens' group claims count "
                  "for nothing).")
    admin = args.email.lower() in {e.lower() for e in settings.admin_emails}
    print(f"wrote {args.out}: a service-account key of {args.email} (key id {kid}), trusted through {jwks}.\n"
          f"Use it:   export GOOGLE_APPLICATION_CREDENTIALS={args.out}\n"
          f"{access} "
          f"{'It is an administrator (DSS_ADMIN_EMAILS).' if admin else 'Deleting bundles needs DSS_ADMIN_EMAILS.'}\n"
          f"Revoke it: remove its key from {jwks}.", file=sys.stderr)
    return 0


def cmd_cert(args) -> int:
    """Make (once) the development CA and the gateway's certificate under var/tls."""
    certificate = ensure_tls(Settings.from_config({}))
    print(f"CA          {_relative(certificate.ca_file)}   (trust it: REQUESTS_CA_BUNDLE, or the system store)\n"
          f"certificate {_relative(certificate.cert_file)}   (DSS_TLS_CERT_FILE)\n"
          f"key         {_relative(certificate.key_file)}   (DSS_TLS_KEY_FILE)\n"
          f"names       {', '.join(tls_names(Settings.from_config({})))}\n"
          "`make up TLS=1` serves HTTPS with it.", file=sys.stderr)
    return 0


def cmd_dead_letters(args) -> int:
    """List, show or replay the messages that background work gave up on (shared.retry)."""
    from shared import retry
    uri = amqp_uri()
    if args.action == "list":
        management = os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672")
        vhost = urllib.parse.unquote(urllib.parse.urlsplit(uri).path.lstrip("/")) or "/"
        queues = retry.dead_letter_queues(management, vhost)
        for queue, count in sorted(queues.items()):
            print(f"{count:8d}  {queue}")
        if not queues:
            print("no dead-letter queues", file=sys.stderr)
        return 0
    if not args.queue:
        raise Failed(f"dead-letters {args.action} needs the handler queue (see `dead-letters list`)")
    if args.action == "show":
        for letter in retry.peek_dead_letters(uri, args.queue, args.limit or 20):
            print(json.dumps(letter, sort_keys=True))
        return 0
    moved = retry.replay_dead_letters(uri, args.queue, args.limit)
    print(f"replayed {moved} message(s) into {args.queue}", file=sys.stderr)
    return 0


def cmd_replicas(args) -> int:
    """Compare the two main buckets key by key (shared.replication); `repair` re-enqueues what differs."""
    from shared import replication
    return replication.run_command(args.action, Settings.from_config({}), amqp_uri(), prefix=args.prefix,
                                   deep=args.deep, wait=args.wait)


def cmd_reindex(args) -> int:
    """Rebuild a replica's search index on the running indexer, following it with a progress bar."""
    from services.indexer.cli import run_reindex_command
    return run_reindex_command(args.replica, amqp_uri())


def cmd_collections(args) -> int:
    """Index the collections of a store written before the owner index (services/bundles/owner_index.py)."""
    from services.bundles.cli import run_owner_index_command
    return run_owner_index_command(Settings.from_config({}), (args.replica,) if args.replica else ("aws", "gcp"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/local.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start everything in the background; return once healthy")
    up.add_argument("--no-wait", action="store_true", help="do not wait for the gateway's health check")
    up.add_argument("--timeout", type=float, default=HEALTH_TIMEOUT_S,
                    help="seconds to wait for the health check (default %(default)s)")
    up.add_argument("--tls", action="store_true",
                    help="serve HTTPS with the development certificate of var/tls (made if missing) until `down`")
    up.set_defaults(run=cmd_up)
    commands.add_parser("down", help="stop what `up` started").set_defaults(run=cmd_down)
    restart = commands.add_parser("restart", help="restart services (all by default) after a code change")
    restart.add_argument("services", nargs="*")
    restart.set_defaults(run=cmd_restart)
    commands.add_parser("status", help="what runs, and the gateway's health").set_defaults(run=cmd_status)
    token = commands.add_parser("token", help="print a bearer token signed by the local issuer")
    token.add_argument("--email", required=True)
    token.add_argument("--groups", default="dbio", help="comma-separated")
    token.add_argument("--lifetime", type=int, default=3600, help="seconds")
    token.set_defaults(run=cmd_token)
    sa_key = commands.add_parser("sa-key", help="write a service-account key file (GOOGLE_APPLICATION_CREDENTIALS "
                                                "of dbio / hca) whose tokens the stack trusts, without a restart")
    sa_key.add_argument("--email", required=True, help="the account's e-mail (its tokens' iss, sub and email)")
    sa_key.add_argument("--out", required=True, type=os.path.abspath, help="the key file to write (owner-only)")
    sa_key.add_argument("--groups", default=None,
                        help="comma-separated groups granted to the account, replacing its earlier grant "
                             "(default: keep it; none for a new account, which may then only read)")
    sa_key.set_defaults(run=cmd_sa_key)
    commands.add_parser("cert", help="make the development CA and the gateway's certificate (var/tls)"
                        ).set_defaults(run=cmd_cert)
    letters = commands.add_parser("dead-letters", help="list, show or replay dead-lettered background work")
    letters.add_argument("action", choices=("list", "show", "replay"))
    letters.add_argument("queue", nargs="?", help="the handler queue, as `list` prints it")
    letters.add_argument("--limit", type=int, default=None, help="at most this many messages")
    letters.set_defaults(run=cmd_dead_letters)
    replicas = commands.add_parser("replicas", help="compare the replicas' main buckets; repair what differs")
    replicas.add_argument("action", choices=("verify", "repair"))
    replicas.add_argument("--prefix", default="", help="only keys starting with this (e.g. files/)")
    replicas.add_argument("--deep", action="store_true", help="hash every blob, compare documents byte for byte")
    replicas.add_argument("--wait", type=float, default=0, help="repair: seconds to wait for the copies to match")
    replicas.set_defaults(run=cmd_replicas)
    reindex = commands.add_parser("reindex", help="rebuild a replica's search index without downtime")
    reindex.add_argument("--replica", required=True, choices=("aws", "gcp"))
    reindex.set_defaults(run=cmd_reindex)
    collections = commands.add_parser("collections", help="index the collections of a store written before the "
                                                          "owner index (once, after upgrading)")
    collections.add_argument("action", choices=("index",))
    collections.add_argument("--replica", choices=("aws", "gcp"), help="one replica (default: both)")
    collections.set_defaults(run=cmd_collections)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("botocore", "boto3", "urllib3", "google", "amqp", "kombu"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.chdir(ROOT)  # relative settings (key, JWKS) resolve against the repo root, as in the services
    try:
        return args.run(args)
    except Failed as error:
        logger.error("%s: %s", args.command, error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
