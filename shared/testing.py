"""Helpers for the project's tests (the one place they live), in the spirit of nameko.testing."""
from __future__ import annotations

import os
import uuid as uuid_module

from shared.checksums import Checksums, checksum_bytes


def stage_object(store, bucket: str, data: bytes, *, key: str | None = None, prefix: str = "dss-",
                 as_tags: bool = False, content_type: str = "application/octet-stream",
                 declared: dict | None = None) -> tuple[str, Checksums]:
    """Upload ``data`` to a staging bucket the way the DSS clients do, with its four checksums
    as metadata (or S3 tags) named ``{prefix}{name}``. ``declared`` overrides what is declared.
    Returns (source_url, true checksums)."""
    key = key or f"staging/{uuid_module.uuid4()}/{os.urandom(3).hex()}.bin"
    checksums = checksum_bytes(data)
    labels = {f"{prefix}{name}": value for name, value in (declared or checksums.as_api()).items()}
    store.put_bytes(bucket, key, data, content_type=content_type, metadata=None if as_tags else labels)
    if as_tags:
        client = store.client
        client.put_object_tagging(Bucket=bucket, Key=key,
                                  Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in labels.items()]})
    return f"{store.scheme}://{bucket}/{key}", checksums


def stage_large_object(store, bucket: str, size: int, *, chunk: int = 8 * 1024 * 1024, seed: bytes = b"",
                       key: str | None = None) -> tuple[str, Checksums]:
    """Stream ``size`` pseudo-random bytes to a staging object without holding them in memory."""
    from shared.checksums import ChecksumPass
    key = key or f"staging/{uuid_module.uuid4()}/large.bin"
    block = (seed or os.urandom(16)) * (chunk // 16)

    def chunks():
        remaining = size
        while remaining:
            piece = block[: min(chunk, remaining)]
            remaining -= len(piece)
            yield piece

    checksum_pass = ChecksumPass(size)
    for piece in chunks():
        checksum_pass.update(piece)
    checksums = checksum_pass.result()
    metadata = {f"dss-{name}": value for name, value in checksums.as_api().items()}
    store.put_stream(bucket, key, chunks(), size, metadata=metadata)
    return f"{store.scheme}://{bucket}/{key}", checksums


# --- real processes, for fault tests ------------------------------------------------------------

class ServiceProcess:
    """One service run by ``nameko run`` as a real separate process, as `make up` runs it, for tests
    that kill, stop or restart it (an in-process container cannot be killed like a crashed node).

    The process gets a session of its own (a Ctrl-C at the terminal does not reach it) and writes
    its output to ``log_path``, which ``tail()`` shows when a test fails. ``kill()`` is SIGKILL: no
    shutdown code runs, unacknowledged work stays with the broker and the queues, as after a crash.
    """

    def __init__(self, service: str, env: dict, log_path, cwd: str | None = None):
        import pathlib
        self.service = service
        self.env = env
        self.log_path = pathlib.Path(log_path)
        self.cwd = cwd or str(pathlib.Path(__file__).resolve().parent.parent)  # the repository root
        self.process = None
        self.starts = 0

    def command(self) -> list[str]:
        import shutil
        import sys
        nameko = shutil.which("nameko", path=os.path.dirname(sys.executable)) or shutil.which("nameko")
        runner = [nameko] if nameko else [sys.executable, "-m", "nameko"]
        return [*runner, "run", "--config", f"services/{self.service}/config.yml", f"services.{self.service}.service"]

    def start(self) -> "ServiceProcess":
        import subprocess
        if self.alive:
            raise RuntimeError(f"{self.service} is already running (pid {self.pid})")
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {self.service} start #{self.starts} ===\n".encode())
            log.flush()
            self.process = subprocess.Popen(self.command(), cwd=self.cwd, env={**self.env, "PYTHONUNBUFFERED": "1"},
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process else None

    def kill(self) -> None:
        """SIGKILL, and reap it (so that ``alive`` is False at once)."""
        import signal
        if self.alive:
            os.kill(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (nameko stops gracefully: in-flight workers finish and ack), SIGKILL after ``timeout``."""
        import subprocess
        if self.process is None:
            return None
        if self.alive:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


def child_listening_on(port: int):
    """The process, among this process's own descendants, listening on 127.0.0.1:``port`` (a
    ``psutil.Process``). Only descendants are searched, so a test can never signal an emulator it
    did not start (such as a `make up` stack's). Raises LookupError when there is none."""
    import psutil
    for child in psutil.Process().children(recursive=True):
        try:
            connections = child.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections):
            return child
    raise LookupError(f"no process started by this one listens on port {port}")


class paused:
    """``with paused(process): ...``: the process is stopped (SIGSTOP) inside the block and resumed
    (SIGCONT) when it ends, however it ends. A stopped server still accepts TCP connections (the
    kernel does) but never answers them: a hung endpoint, not a refused one."""

    def __init__(self, process):
        import psutil
        self.process = process if isinstance(process, psutil.Process) else psutil.Process(process)

    def __enter__(self):
        self.process.suspend()
        return self.process

    def __exit__(self, *exc_info):
        self.process.resume()
        return False


class TcpProxy:
    """A TCP forwarder from a local port to ``target``, which a test can take down and bring back:
    ``down()`` resets every open connection and stops listening (clients get connection refused,
    as from a crashed or unreachable server, whose data survives), ``up()`` listens again on the
    same port. Point the code under test at ``url`` (or ``address``); the test itself can still
    reach the target directly meanwhile.

    Runs on threads (green ones under eventlet's monkey patching, as in the tests), one pair per
    connection: meant for emulator traffic, not for throughput."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1"):
        import threading
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.port: int | None = None
        self._listener = None
        self._connections: set = set()
        self._lock = threading.Lock()
        self.accepted = 0

    @property
    def address(self) -> str:
        return f"{self.listen_host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def up(self) -> "TcpProxy":
        import socket
        import threading
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the same port again at once
        listener.bind((self.listen_host, self.port or 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name=f"proxy-{self.port}").start()
        return self

    start = up

    def down(self) -> None:
        """Refuse new connections and reset the open ones (their requests fail at once)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            self._close(listener, reset=False)
        with self._lock:
            connections, self._connections = self._connections, set()
        for sock in connections:
            self._close(sock, reset=True)

    close = down

    @staticmethod
    def _close(sock, reset: bool) -> None:
        import socket
        import struct
        try:
            if reset:  # linger 0: close sends RST, as a crashed peer's kernel does
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass

    def _accept(self, listener) -> None:
        import socket
        import threading
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by down()
                return
            if self._listener is not listener:
                self._close(client, reset=True)
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                self._close(client, reset=True)
                continue
            self.accepted += 1
            with self._lock:
                self._connections.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source, sink) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except (OSError, EOFError):  # reset, or closed by down() (eventlet then raises EOFError)
            pass
        finally:
            with self._lock:
                self._connections.discard(source)
                self._connections.discard(sink)
            # One side ended: end the other, so that neither end waits on a half-open pair.
            self._close(sink, reset=False)
            self._close(source, reset=False)
