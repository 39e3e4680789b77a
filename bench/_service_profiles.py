"""Where the services' CPU goes, by kind of work: the samples of `bench/sampling/sitecustomize.py`
(taken in every `nameko run` process of a stack started with ``environment()``), sorted into the
categories below and scaled by each service's measured CPU per file.

    profiles = ServiceProfiles(directory)
    os.environ.update(profiles.environment())    # before the stack starts
    profiles.start(processes); ...; profiles.stop(processes)
    profiles.breakdown({"replicator": 0.0098, ...})  # -> {"replicator": {"S3, SQS (botocore)": ms, ...}}

A sample counts for the first category (in the order of CATEGORIES) one of whose frames its stack
holds, so a publish inside an HTTP request counts as a publish, an S3 call inside a replication
as an S3 call. The samples are shares; the CPU per file is /proc's, measured beside them.
"""
from __future__ import annotations

import os
import pathlib
import signal
import time

import psutil

SAMPLER_DIR = pathlib.Path(__file__).resolve().parent / "sampling"

# (category, frame prefixes): a frame is `<module path>:<function>`, the module path relative to
# site-packages or to the repository.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("S3, SQS (botocore)", ("botocore/",)),
    ("GCS (google-cloud-storage)", ("google/cloud/storage/", "google/resumable_media/")),
    ("Pub/Sub REST (requests)", ("requests/",)),
    ("bus: publish (events, RPC calls and replies)", ("nameko/amqp/publish.py:publish",)),
    ("bus: consume and acknowledge", ("kombu/", "amqp/")),
    ("HTTP server (gateway)", ("eventlet/wsgi.py", "werkzeug/")),
    ("schemas (marshmallow)", ("marshmallow/",)),
    ("logging", ("logging/",)),
)
REST = "the rest: workers, the event loop, the store's own code"
CLOUD = {"S3, SQS (botocore)", "GCS (google-cloud-storage)", "Pub/Sub REST (requests)"}


def categorise(stack: str) -> str:
    frames = stack.split(";")
    for name, prefixes in CATEGORIES:
        if any(frame.startswith(prefixes) for frame in frames):
            return name
    return REST


def _with_children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return []


def read_folded(path: pathlib.Path) -> dict[str, int]:
    samples: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples[stack] = samples.get(stack, 0) + int(count)
    return samples


class ServiceProfiles:
    def __init__(self, directory: pathlib.Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def environment(self) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH")
        return {"PYTHONPATH": os.pathsep.join([str(SAMPLER_DIR), *([path] if path else [])]),
                "DSS_BENCH_PROFILE_DIR": str(self.directory)}

    @staticmethod
    def _service_processes(processes) -> list[psutil.Process]:
        """The `nameko run services.*` processes: only those have the sampler's signal handlers (the
        same signals would end any other)."""
        found, seen = [], set()
        for process in [member for process in processes for member in _with_children(process)]:
            if process.pid in seen:
                continue
            seen.add(process.pid)
            try:
                command = process.cmdline()
            except psutil.Error:
                continue
            # ['.../python3', '.../bin/nameko', 'run', '--config', ..., 'services.files.service']
            if any(os.path.basename(arg) == "nameko" for arg in command[:2]) and any(
                    arg.startswith("services.") for arg in command):
                found.append(process)
        return found

    def start(self, processes) -> None:
        for old in self.directory.glob("*.folded"):
            old.unlink()
        for process in self._service_processes(processes):
            process.send_signal(signal.SIGUSR1)

    def stop(self, processes, timeout: float = 10.0) -> None:
        """Stop sampling and wait until every process has written its samples."""
        pending = {process.pid: process for process in self._service_processes(processes)}
        for process in pending.values():
            process.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            written = {int(path.stem.rpartition("-")[2]) for path in self.directory.glob("*.folded")}
            pending = {pid: p for pid, p in pending.items() if pid not in written}
            time.sleep(0.1)

    def samples(self) -> dict[str, dict[str, int]]:
        """Samples per service (instances summed) and category."""
        per_service: dict[str, dict[str, int]] = {}
        for path in sorted(self.directory.glob("*.folded")):
            service = path.stem.rpartition("-")[0]
            counts = per_service.setdefault(service, {})
            for stack, count in read_folded(path).items():
                category = categorise(stack)
                counts[category] = counts.get(category, 0) + count
        return per_service

    def breakdown(self, cpu_s_per_service: dict[str, float]) -> dict[str, dict[str, float]]:
        """CPU ms per file by service and category: each service's measured CPU split as its samples are."""
        result: dict[str, dict[str, float]] = {}
        for service, counts in self.samples().items():
            total = sum(counts.values())
            cpu_ms = cpu_s_per_service.get(service, 0.0) * 1000
            if not total or not cpu_ms:
                continue
            result[service] = {category: round(cpu_ms * count / total, 2)
                               for category, count in sorted(counts.items(), key=lambda item: -item[1])}
        return result


def totals(breakdown: dict[str, dict[str, float]]) -> dict[str, float]:
    """The categories summed over the services, largest first."""
    summed: dict[str, float] = {}
    for categories in breakdown.values():
        for category, value in categories.items():
            summed[category] = summed.get(category, 0.0) + value
    return {k: round(v, 2) for k, v in sorted(summed.items(), key=lambda item: -item[1])}
