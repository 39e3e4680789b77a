"""The processes `make up` owns: each recorded in ``var/run/<name>.pid`` (with its start time in
``<name>.started``, so a recycled pid is never mistaken for ours) and logging to
``var/log/<name>.log``, started detached and stopped by process group; and the lock that lets
one `up` / `down` run at a time. Also where the stack keeps its files (``var/``).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pathlib
import signal
import subprocess
import time

import psutil

logger = logging.getLogger(__name__)

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository
VAR = ROOT / "var"
RUN_DIR = VAR / "run"
LOG_DIR = VAR / "log"
STOP_TIMEOUT_S = 20


class Failed(Exception):
    """`up` cannot continue; the message says why and what to do."""


def shown(path: pathlib.Path) -> str:
    """``path`` as a person reads it: relative to the repository when inside it (tests keep their
    pid files and logs elsewhere)."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _pid_file(name: str) -> pathlib.Path:
    return RUN_DIR / f"{name}.pid"


def log_file(name: str) -> pathlib.Path:
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


def record(name: str, pid: int) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    _start_file(name).write_text(f"{psutil.Process(pid).create_time()}\n")
    _pid_file(name).write_text(f"{pid}\n")


def _open_log(name: str):
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = open(log_file(name), "ab")
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
    record(name, process.pid)
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


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise Failed(f"{what} did not come up within {timeout}s")
        time.sleep(0.2)


@contextlib.contextmanager
def exclusive():
    """One `up`/`down` at a time, so two concurrent `make up`s cannot both start a copy."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUN_DIR / "local.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
