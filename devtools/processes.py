"""Real processes for fault tests: a service run by ``nameko run`` that a test can kill, stop or
restart; finding the emulator process a test started by its port; pausing a process."""
from __future__ import annotations

import os


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
