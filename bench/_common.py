"""Measuring helpers shared by the benchmarks in bench/ (not a benchmark itself: `make bench` runs
only the scripts whose names do not start with an underscore)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import threading
import time
import uuid as uuid_module

import psutil

from shared.identifiers import Keys

RCLONE_INSTALL = ("rclone is not installed: the rclone baselines and ratios are skipped. Install it with "
                  "`apt-get install -y rclone` (Debian/Ubuntu) or see https://rclone.org/install/, then run again.")


def check_stack_health(gateway: str) -> None:
    """Stop with the reason when a service of the stack is down: its figures would be nonsense."""
    import requests
    try:
        answer = requests.get(f"{gateway}/internal/health", timeout=30)
    except requests.RequestException as error:
        raise SystemExit(f"the gateway does not answer ({error}): start the stack with `make up`") from None
    if answer.status_code != 200:
        raise SystemExit(f"the stack is not healthy (`make status`; `make up` restarts what stopped): "
                         f"{answer.text[:500]}")


def put_file_via_gateway(session, gateway: str, uuid: str, version: str, source_url: str) -> dict:
    """PUT /files through the gateway, timed: the file's key and when the request started and was
    answered (monotonic seconds); anything but 201 raises."""
    started = time.monotonic()
    response = session.put(f"{gateway}/v1/files/{uuid}", params={"version": version},
                           json={"source_url": source_url, "creator_uid": 1}, timeout=120)
    written = time.monotonic()
    if response.status_code != 201:
        raise RuntimeError(f"PUT /files answered {response.status_code}: {response.text[:500]}")
    return {"key": Keys.file(uuid, version), "started": started, "written": written}


def percentile(values, pct):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


class _Sampler:
    """Calls ``sample()`` every ``interval`` seconds in a thread while the ``with`` block runs."""

    def __init__(self, interval: float, name: str):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class PeakRSS(_Sampler):
    """Samples the RSS of a process and its children in a thread; ``peak`` in bytes."""

    def __init__(self, pid: int, interval: float = 0.02):
        super().__init__(interval, "rss")
        self.process = psutil.Process(pid)
        self.peak, self.samples = 0, 0

    def current(self) -> int:
        return self.process.memory_info().rss + sum(c.memory_info().rss for c in self.process.children(True))

    def sample(self) -> None:
        try:
            self.peak = max(self.peak, self.current())
            self.samples += 1
        except psutil.Error:  # a child that ended between listing and reading
            pass


def open_rclone(args, settings, workdir: pathlib.Path) -> "Rclone | None":
    """The rclone baseline the command line asks for (``--rclone``, ``--rclone-flag``, ``--no-rclone``),
    or None, saying how to install it when it is missing."""
    import shutil
    import sys
    if args.no_rclone:
        return None
    binary = shutil.which(args.rclone)
    if binary is None:
        print(RCLONE_INSTALL, file=sys.stderr, flush=True)
        return None
    return Rclone(binary, settings, workdir, args.rclone_flag)


class Rclone:
    """`rclone` against the emulators of the stack (remotes ``s3local:`` and ``gcslocal:``), with the
    toolchain's config in a temp file; the baseline the benchmarks measure the store against."""

    def __init__(self, binary: str, settings, workdir: pathlib.Path, extra: list[str]):
        self.binary = binary
        self.extra = extra
        self.config = workdir / "rclone.conf"
        self.config.write_text(
            "[s3local]\ntype = s3\nprovider = Other\naccess_key_id = test\nsecret_access_key = test\n"
            f"endpoint = {settings.s3_endpoint}\nregion = {settings.s3_region}\nforce_path_style = true\n\n"
            "[gcslocal]\ntype = google cloud storage\nanonymous = true\n"
            f"endpoint = {settings.gcs_endpoint.rstrip('/')}/storage/v1/\nbucket_policy_only = true\n")
        self.env = dict(os.environ, RCLONE_CONFIG=str(self.config))
        # rclone's S3 backend fails with LoadCustomCABundleError when this is set.
        self.env.pop("AWS_CA_BUNDLE", None)

    def version(self) -> str:
        return self._run(["version"]).stdout.splitlines()[0]

    def _run(self, arguments: list[str]) -> subprocess.CompletedProcess:
        result = subprocess.run([self.binary, *arguments], env=self.env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"rclone {' '.join(arguments)} failed ({result.returncode}): {result.stderr[-2000:]}")
        return result

    def copy(self, source: str, keys: list[str], destination: str, workdir: pathlib.Path) -> float:
        """Copy exactly ``keys`` of ``source`` (a remote path such as ``s3local:bucket``; no listing
        of the whole bucket) to ``destination``; seconds taken."""
        listing = workdir / f"keys-{uuid_module.uuid4().hex}.txt"
        listing.write_text("\n".join(keys) + "\n")
        started = time.monotonic()
        self._run(["copy", "--files-from-raw", str(listing), source, destination, *self.extra])
        return time.monotonic() - started

    def purge(self, path: str) -> None:
        """Remove a remote path (``gcslocal:bucket/prefix``) and everything under it."""
        self._run(["purge", path])


# --- the processes of a running stack: CPU seconds and peak RSS per service ------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and of its children it has waited for, from
    /proc/<pid>/stat (fields 14-17); 0.0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rindex(")") + 2:].split()
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def service_of(instance: str) -> str:
    """`files-3` -> `files`, `rabbitmq-cluster-2` -> `rabbitmq-cluster`: the name a pid file of
    var/run has without its instance number."""
    head, _, tail = instance.rpartition("-")
    return head if head and tail.isdigit() else instance


class StackProcesses:
    """The processes `python -m devtools.stack up` recorded in ``run_dir`` (``<name>.pid``), each with
    its descendants (rabbitmq-server's beam.smp, a shell's child), grouped by service; and this script.
    ``cpu()`` is the CPU seconds each service used so far, summed over its instances; ``rss()`` its
    resident memory now."""

    def __init__(self, run_dir: pathlib.Path):
        self.instances: dict[str, psutil.Process] = {}
        for pid_file in sorted(run_dir.glob("*.pid")):
            try:
                self.instances[pid_file.stem] = psutil.Process(int(pid_file.read_text().split()[0]))
            except (OSError, ValueError, IndexError, psutil.Error):
                pass
        self.instances["bench"] = psutil.Process()

    def _tree(self, process: psutil.Process) -> list[psutil.Process]:
        try:
            return [process, *process.children(recursive=True)]
        except psutil.Error:
            return []

    def instance_cpu(self) -> dict[str, float]:
        return {name: sum(proc_cpu_seconds(p.pid) for p in self._tree(process))
                for name, process in self.instances.items()}

    def cpu(self) -> dict[str, float]:
        return by_service(self.instance_cpu())

    def rss(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for name, process in self.instances.items():
            for member in self._tree(process):
                try:
                    sizes[name] = sizes.get(name, 0) + member.memory_info().rss
                except psutil.Error:  # ended between listing and reading
                    pass
        return by_service(sizes)


def by_service(per_instance: dict) -> dict:
    """Per-instance figures (`files-2`) summed per service (`files`)."""
    total: dict = {}
    for name, value in per_instance.items():
        total[service_of(name)] = total.get(service_of(name), 0) + value
    return total


class StackPeakRSS(_Sampler):
    """Samples ``StackProcesses.rss()`` in a thread; ``peak`` is each service's highest total (bytes)."""

    def __init__(self, processes: StackProcesses, interval: float = 0.25):
        super().__init__(interval, "stack-rss")
        self.processes = processes
        self.peak: dict[str, int] = {}

    def sample(self) -> None:
        for name, size in self.processes.rss().items():
            self.peak[name] = max(self.peak.get(name, 0), size)


def machine_load() -> dict:
    """The load average (as `uptime` shows it) and the CPU count: how busy the machine was."""
    one, five, fifteen = os.getloadavg()
    return {"load_1m": one, "load_5m": five, "load_15m": fifteen, "cpus": os.cpu_count()}


def thread_session(local, token: str):
    """The calling writer thread's own session with the gateway (a ``requests.Session`` is not meant
    to be shared between threads), kept in ``local`` (a ``threading.local``)."""
    import requests

    session = getattr(local, "session", None)
    if session is None:
        session = local.session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
    return session
