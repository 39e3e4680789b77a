"""Replication benchmark: how soon, and how fast, what is written to the `aws` replica is verified
in the `gcp` one, against `rclone copy` of the same objects between the same two emulators,
measured in the same run.

    make up && .venv/bin/python bench/replication.py        # or: make bench

Reports (stdout summary + JSON in var/bench/replication-<time>.json):
  - small_paced: N x 4 KiB files stored through the gateway (PUT /files, one writer: the store
    otherwise idle); lag of each from its PUT's answer to its `object_replicated` event (the file
    document and its blob verified in gcp), p50/p99/max, and throughput;
  - small_burst: N more written by several writers at once; time from the first file written to
    the last one verified in gcp, against `rclone copy` of the same blobs and documents;
  - large: M x 256 MiB blobs with their file documents, written to the aws main bucket the way the
    files service does (staged, then a server-side copy to the blob key, then `files/`); time from
    the first blob written to the last file verified in gcp, against `rclone copy` of the same
    objects; peak RSS of the replicator process (with children) meanwhile.
Not part of `make test`. Needs rclone for the baselines (Debian: apt-get install -y rclone); without
it the replication figures are still measured and the ratios are left out.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import os
import pathlib
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid as uuid_module
import warnings

# eventlet (imported by the blob stores) warns about its own deprecation on import: noise here.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

import psutil  # noqa: E402
import requests  # noqa: E402
from kombu import Connection, Consumer, Queue, binding  # noqa: E402
from nameko.events import get_event_exchange  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.files.metadata import file_metadata_doc  # noqa: E402
from bench._common import (RCLONE_INSTALL, PeakRSS, check_stack_health, open_rclone, percentile,  # noqa: E402
                           put_file_via_gateway)
from devtools.fakes import stage_large_object, stage_object  # noqa: E402
from devtools.tokens import mint_token_for_settings  # noqa: E402
from shared import events  # noqa: E402
from shared.blobstore import open_blobstore  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.entrypoints import binding_keys  # noqa: E402
from shared.identifiers import Keys, new_version  # noqa: E402
from shared.storage import open_replicas  # noqa: E402

MiB = 1024 * 1024
DEFAULT_AMQP_URI = "amqp://guest:guest@127.0.0.1:5672/"
RCLONE_SCRATCH_BUCKET = "dss-bench-rclone"

TARGET_LAG_P50_S = 1.0
TARGET_RSS_MIB = 300


def distribution(seconds):
    if not seconds:
        return None
    return {"p50_s": percentile(seconds, 50), "p99_s": percentile(seconds, 99), "max_s": max(seconds),
            "mean_s": statistics.fmean(seconds), "n": len(seconds)}


class BusWatch:
    """Listens to the replicator's `object_changed` and `object_replicated` events and records, for
    each (event, key, replica), when the first one arrived (time.monotonic, so it compares with the
    writes' own clock) and its payload.

    `object_replicated` is what says "verified": the replicator dispatches it only once the object
    and its dependencies are in the destination and checked (listing the gcp bucket would only show
    that a key exists, and polling it competes for the emulators being measured). `object_changed`
    splits the lag in two: the S3 notification reaching the bus (SQS and the bridge), then the copy.

    The queue is durable with an expiry rather than exclusive, and the consumer reconnects: a broker
    restarted meanwhile (a shared machine) loses no event, and an abandoned queue goes by itself."""

    EXPIRES_MS = 10 * 60 * 1000
    GIVE_UP_S = 120

    def __init__(self, amqp_uri: str):
        self.amqp_uri = amqp_uri
        self.seen: dict[tuple[str, str, str], tuple[float, dict]] = {}
        self.reconnects = 0
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: str | None = None
        exchange = get_event_exchange("replicator", {})
        name = f"bench-replication-{uuid_module.uuid4().hex}"
        self._queues = [Queue(name, bindings=[binding(exchange, routing_key=routing_key)
                                              for event in (events.OBJECT_CHANGED, events.OBJECT_REPLICATED)
                                              for routing_key in binding_keys(event)],
                              durable=True, queue_arguments={"x-expires": self.EXPIRES_MS})]
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)

    def _on_message(self, body, message):
        now = time.monotonic()
        message.ack()
        if not isinstance(body, dict):
            return
        kind = message.delivery_info.get("routing_key", "").partition(".")[0]  # the event, not its folder
        replica = body.get("source_replica") if kind == events.OBJECT_REPLICATED else body.get("replica")
        with self._changed:
            self.seen.setdefault((kind, body.get("key"), replica), (now, body))
            self._changed.notify_all()

    def _run(self):
        down_since = None
        while not self._stop.is_set():
            try:
                with Connection(self.amqp_uri, connect_timeout=5) as connection, \
                        Consumer(connection, queues=self._queues, accept=["json"], callbacks=[self._on_message]):
                    down_since = None
                    self._ready.set()
                    while not self._stop.is_set():
                        try:
                            connection.drain_events(timeout=0.2)
                        except socket.timeout:
                            pass
            except Exception as error:  # noqa: BLE001 - the broker went away: reconnect, or give up in time
                now = time.monotonic()
                down_since = down_since or now
                self.reconnects += 1
                if now - down_since > self.GIVE_UP_S:
                    with self._changed:
                        self._error = f"{type(error).__name__}: {error}"
                        self._changed.notify_all()
                    self._ready.set()
                    return
                print(f"event listener: {type(error).__name__}: {error}; reconnecting", file=sys.stderr, flush=True)
                self._stop.wait(1)

    def start(self):
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None or not self._ready.is_set():
            raise SystemExit(f"cannot listen to the replicator's events at {self.amqp_uri}: {self._error}")
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        try:  # the expiry would remove it anyway; no need to leave it for ten minutes
            with Connection(self.amqp_uri, connect_timeout=5) as connection:
                self._queues[0].bind(connection.default_channel).delete()
        except Exception:  # noqa: BLE001
            pass

    def first(self, kind: str, key: str, replica: str = "aws") -> tuple[float, dict] | None:
        with self._changed:
            return self.seen.get((kind, key, replica))

    def wait(self, keys, timeout: float) -> dict[str, tuple[float, dict]]:
        """The first `object_replicated` from aws of each of ``keys``; TimeoutError if some never come."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if self._error is not None:
                    raise RuntimeError(f"event listener failed: {self._error}")
                missing = [key for key in keys if (events.OBJECT_REPLICATED, key, "aws") not in self.seen]
                if not missing:
                    return {key: self.seen[(events.OBJECT_REPLICATED, key, "aws")] for key in keys}
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(missing)} of {len(keys)} keys not replicated within {timeout:.0f}s "
                                       f"(e.g. {missing[0]}); see var/log/replicator.log")
                self._changed.wait(min(left, 1.0))


class ReplicatorMetrics:
    """Counters of the replicator's Prometheus exporter, to tell what a scenario made it do: blob
    bytes copied beyond the bytes written mean the same blob was copied twice (its own event and its
    file document's both found it absent), skipped objects are the other replica's echoes."""

    COUNTERS = ("dss_replication_objects_total", "dss_bytes_copied_total", "dss_notifications_received_total",
                "dss_replication_changes_ignored_total", "dss_retries_total", "dss_dead_letters_total")

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/metrics"

    def sample(self) -> dict[str, float]:
        try:
            text = requests.get(self.url, timeout=10).text
        except requests.RequestException:
            return {}
        values = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in self.COUNTERS:
                    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "service")
                    values[f"{sample.name}{{{labels}}}"] = sample.value
        return values

    @staticmethod
    def delta(before: dict, after: dict) -> dict:
        return {name: after[name] - before.get(name, 0) for name in sorted(after) if after[name] != before.get(name, 0)}


class MachineLoad:
    """CPU used during a scenario: by the whole machine, by each process of the stack (var/run/*.pid)
    and by this script. The rest is other work on the machine, which the figures then share it with:
    "an idle machine" can be checked, not assumed. A process near 1.0 core is single-threaded and saturated."""

    def __init__(self):
        self.processes = {}
        for pid_file in sorted((ROOT / "var" / "run").glob("*.pid")):
            try:
                self.processes[pid_file.stem] = psutil.Process(int(pid_file.read_text().split()[0]))
            except (OSError, ValueError, IndexError, psutil.Error):
                pass
        self.processes["bench"] = psutil.Process()
        self.result = {}

    @staticmethod
    def _cpu(process) -> float:
        try:
            times = process.cpu_times()
            # children_*: those that ended and were reaped meanwhile (rclone, for this script).
            return times.user + times.system + times.children_user + times.children_system + sum(
                c.cpu_times().user + c.cpu_times().system for c in process.children(True))
        except psutil.Error:
            return 0.0

    def __enter__(self):
        self._started = time.monotonic()
        self._machine = psutil.cpu_times()
        self._before = {name: self._cpu(p) for name, p in self.processes.items()}
        return self

    def __exit__(self, *exc):
        elapsed = time.monotonic() - self._started
        now = psutil.cpu_times()
        busy = (sum(now) - now.idle - getattr(now, "iowait", 0)) - (
            sum(self._machine) - self._machine.idle - getattr(self._machine, "iowait", 0))
        cores = {name: (self._cpu(p) - self._before[name]) / elapsed for name, p in self.processes.items()}
        self.result = {"seconds": elapsed, "cpus": psutil.cpu_count(), "machine_busy_cores": busy / elapsed,
                       "load_average_1m": os.getloadavg()[0],
                       "stack_cores": {name: round(value, 3) for name, value in sorted(cores.items())},
                       "other_cores": max(0.0, busy / elapsed - sum(cores.values()))}


class Bench:
    def __init__(self, args, workdir: pathlib.Path):
        self.args = args
        self.workdir = workdir
        self.settings = Settings.from_config({})
        self.gateway = args.gateway.rstrip("/")
        self.replicas = open_replicas(self.settings)
        self.aws, self.gcp = self.replicas["aws"], self.replicas["gcp"]
        self.s3 = self.aws.store
        self.staging = self.settings.bucket("aws", "staging")
        self.token = mint_token_for_settings(self.settings, "bench@example.org", ["dbio"])
        self._local = threading.local()
        # Every file of this run gets a uuid starting with the same 8 hex digits, so this run's
        # documents are one prefix (`files/{run}`) to list and to hand to rclone.
        self.run = uuid_module.uuid4().hex[:8]
        self.metrics = ReplicatorMetrics(int(os.environ.get("DSS_REPLICATOR_METRICS_PORT", "9104")))
        self.events = BusWatch(os.environ.get("AMQP_URI") or DEFAULT_AMQP_URI)
        self.rclone = open_rclone(args, self.settings, workdir)
        if self.rclone is not None:
            open_blobstore("gcp", self.settings).create_bucket(RCLONE_SCRATCH_BUCKET)
        pid_file = ROOT / "var" / "run" / "replicator.pid"
        try:
            self.replicator_pid = int(pid_file.read_text().split()[0])
            environ = psutil.Process(self.replicator_pid).environ()
        except (OSError, ValueError, IndexError, psutil.Error):
            raise SystemExit(f"no running replicator ({pid_file}): start the stack with `make up`") from None
        # The settings the replicator runs with are those of its environment, not of ours.
        effective = Settings.from_config({}, environ=environ)
        self.replicator_settings = {name: value for name, value in sorted(effective.values.items())
                                    if name.startswith(("replication_", "notification_"))}
        self.replicator_environ = {name: value for name, value in sorted(environ.items())
                                   if name.startswith(("DSS_REPLICAT", "DSS_NOTIFICATION_", "MALLOC_"))}

    def new_uuid(self) -> str:
        return f"{self.run}{str(uuid_module.uuid4())[8:]}"

    def http(self) -> requests.Session:
        # requests.Session is not meant to be shared between threads: one per writer.
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self.token}"
        return session

    def check_health(self) -> None:
        check_stack_health(self.gateway)

    # --- writing -------------------------------------------------------------------------------
    def stage_small(self, count: int) -> list[str]:
        """``count`` distinct small objects in the staging bucket (not notified: nothing replicates yet)."""
        size = self.args.small_kib * 1024
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            staged = pool.map(lambda _: stage_object(self.s3, self.staging, os.urandom(size))[0], range(count))
            return list(staged)

    def put_file(self, source_url: str) -> dict:
        """PUT /files through the gateway; returns the file's key, its blob key and when it was written."""
        return put_file_via_gateway(self.http(), self.gateway, self.new_uuid(), new_version(), source_url)

    def write_small(self, sources: list[str], writers: int) -> list[dict]:
        with concurrent.futures.ThreadPoolExecutor(writers) as pool:
            return list(pool.map(self.put_file, sources))

    # --- measuring -----------------------------------------------------------------------------
    def replicated(self, writes: list[dict]) -> dict:
        """Wait for every written file's event; lag of each from its write, and the whole span."""
        arrived = self.events.wait([w["key"] for w in writes], self.args.timeout)
        lags = [arrived[w["key"]][0] - w["written"] for w in writes]
        # Where the lag goes: until the document's S3 notification is on the bus as object_changed
        # (moto -> SQS -> the replicator's bridge), then until its copy is verified.
        notified, copying = [], []
        for w in writes:
            changed = self.events.first(events.OBJECT_CHANGED, w["key"])
            if changed is not None:
                notified.append(changed[0] - w["written"])
                copying.append(arrived[w["key"]][0] - changed[0])
        # The replicator's own lag: from the S3 notification's event time to verified.
        own = [arrived[w["key"]][1]["lag_seconds"] for w in writes if arrived[w["key"]][1].get("lag_seconds") is not None]
        first_start = min(w["started"] for w in writes)
        first_written = min(w["written"] for w in writes)
        last_written = max(w["written"] for w in writes)
        last_verified = max(arrived[w["key"]][0] for w in writes)
        return {"lag": distribution(lags), "replicator_lag_seconds": distribution(own),
                "lag_to_object_changed": distribution(notified), "lag_object_changed_to_verified": distribution(copying),
                "write_span_s": last_written - first_start, "tail_after_last_write_s": last_verified - last_written,
                # From the first object the replicator could see to the last one verified in gcp.
                "replication_span_s": last_verified - first_written,
                "end_to_end_s": last_verified - first_start}

    def check_in_gcp(self, keys: list[str]) -> int:
        """How many of ``keys`` the gcp main bucket holds (a listing of this run's prefix)."""
        present = set(self.gcp.list_keys(f"files/{self.run}"))
        return sum(key in present for key in keys)

    def blob_keys(self, file_keys: list[str]) -> list[str]:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            docs = pool.map(self.aws.read_json, file_keys)
            return [f"blobs/{d['sha256']}.{d['sha1']}.{d['s3-etag']}.{d['crc32c']}" for d in docs]

    def rclone_copy(self, name: str, file_keys: list[str], size_bytes: int) -> dict | None:
        if self.rclone is None:
            return None
        keys = sorted(set(self.blob_keys(file_keys))) + sorted(file_keys)
        destination = f"{RCLONE_SCRATCH_BUCKET}/{self.run}/{name}"
        with MachineLoad() as load:
            elapsed = self.rclone.copy(f"s3local:{self.aws.bucket}", keys, f"gcslocal:{destination}",
                                       self.workdir)
        copied = sum(1 for _ in open_blobstore("gcp", self.settings).list_keys(RCLONE_SCRATCH_BUCKET,
                                                                                f"{self.run}/{name}/"))
        if copied != len(keys):
            raise RuntimeError(f"rclone copied {copied} of {len(keys)} objects to gcslocal:{destination}")
        if not self.args.keep:
            self.rclone.purge(f"gcslocal:{destination}")
        return {"seconds": elapsed, "objects": len(keys), "mib_per_s": size_bytes / MiB / elapsed,
                "objects_per_s": len(keys) / elapsed, "cpu": load.result}

    # --- scenarios -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def window(self, result: dict):
        """Measure the replication window of a scenario into ``result``: the replicator's peak RSS,
        the CPU of the stack and of the rest of the machine, and the replicator's counters."""
        sampler = PeakRSS(self.replicator_pid)
        result["replicator_rss_before_mib"] = sampler.current() / MiB
        before = self.metrics.sample()
        with sampler, MachineLoad() as load:
            yield
        result["replicator_peak_rss_mib"] = sampler.peak / MiB
        result["cpu"] = load.result
        result["replicator_counters"] = ReplicatorMetrics.delta(before, self.metrics.sample())

    def small(self, writers: int, baseline: bool) -> dict:
        count = self.args.small_count
        sources = self.stage_small(count)
        measured: dict = {}
        with self.window(measured):
            writes = self.write_small(sources, writers)
            result = self.replicated(writes)
        keys = [w["key"] for w in writes]
        result.update(measured, files=count, size_kib=self.args.small_kib, writers=writers,
                      write_rate_per_s=count / result["write_span_s"],
                      files_per_s=count / result["replication_span_s"], in_gcp=self.check_in_gcp(keys))
        if baseline:
            copied = self.rclone_copy("small", keys, count * self.args.small_kib * 1024)
            result["rclone"] = copied
            if copied:
                result["ratio_vs_rclone"] = result["replication_span_s"] / copied["seconds"]
        return result

    def small_paced(self) -> dict:
        # One writer: each file is written once the previous one is stored, the pace of a single
        # client, so the lag is that of a store not flooded with work.
        return self.small(1, baseline=False)

    def small_burst(self) -> dict:
        # The baseline is here: rclone copies objects that are all there, so it compares with the
        # replicator given the whole set at once rather than at one writer's pace.
        return self.small(self.args.burst_writers, baseline=True)

    def write_large(self, staged: tuple[str, object]) -> dict:
        """What the files service does for a large file: a server-side copy of the verified staged
        object to its blob key, then the file document."""
        source_url, checksums = staged
        source_key = source_url.split("/", 3)[3]
        size = self.args.large_mib * MiB
        blob_key = checksums.blob_key()
        uuid, version = self.new_uuid(), new_version()
        started = time.monotonic()
        self.s3.copy(self.staging, source_key, self.aws.bucket, blob_key,
                     content_type="application/octet-stream", part_size=self.settings.copy_part_bytes)
        blob_written = time.monotonic()
        doc = file_metadata_doc(version, 1, "application/octet-stream", size, checksums)
        if self.aws.write_json_once(Keys.file(uuid, version), doc) is not None:
            raise RuntimeError(f"{Keys.file(uuid, version)} existed already")
        return {"key": Keys.file(uuid, version), "blob": blob_key, "started": started,
                "blob_written": blob_written, "written": time.monotonic()}

    def large(self) -> dict:
        count, size = self.args.large_count, self.args.large_mib * MiB
        # Fresh random bytes each run: a blob already in gcp would be skipped, not copied.
        staged = [stage_large_object(self.s3, self.staging, size) for _ in range(count)]
        result: dict = {"files": count, "size_mib": self.args.large_mib}
        with self.window(result):
            # All at once, as a client uploading several files would: the server-side copies take
            # about a second, so the replicator sees them together.
            with concurrent.futures.ThreadPoolExecutor(count) as pool:
                writes = list(pool.map(self.write_large, staged))
            arrived = self.events.wait([w["key"] for w in writes], self.args.timeout)
        first_blob = min(w["blob_written"] for w in writes)
        elapsed = max(arrived[w["key"]][0] for w in writes) - first_blob
        for w in writes:
            info = self.gcp.store.stat(self.gcp.bucket, w["blob"])
            if info.size != size:
                raise RuntimeError(f"{w['blob']} has {info.size} bytes in gcp, not {size}")
        result.update(write_span_s=max(w["written"] for w in writes) - min(w["started"] for w in writes),
                      replication_s=elapsed, mib_per_s=count * size / MiB / elapsed,
                      per_file_lag_s=sorted(arrived[w["key"]][0] - w["blob_written"] for w in writes))
        baseline = self.rclone_copy("large", [w["key"] for w in writes], count * size)
        result["rclone"] = baseline
        if baseline:
            result["ratio_vs_rclone"] = elapsed / baseline["seconds"]
        for source_url, _ in staged:  # the staged copies are ours to drop (moto keeps them in memory)
            self.s3.delete(self.staging, source_url.split("/", 3)[3])
        return result


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _machine(result: dict) -> str:
    cpu = result["cpu"]
    return (f"machine: {cpu['machine_busy_cores']:.1f} of {cpu['cpus']} CPUs busy, "
            f"{cpu['other_cores']:.1f} by work outside the stack")


def _duplicates(result: dict, written_bytes: int) -> str:
    copied = sum(v for k, v in result["replicator_counters"].items()
                 if k.startswith("dss_bytes_copied_total{kind=blob"))
    return f"blob bytes copied {copied / written_bytes:.2f}x those written"


def print_summary(results: dict, out: pathlib.Path) -> None:
    print()
    paced = results.get("small_paced")
    if paced and "error" not in paced:
        lag = paced["lag"]
        verdict = "met" if lag["p50_s"] < TARGET_LAG_P50_S else "MISSED"
        print(f"{paced['files']} x {paced['size_kib']} KiB, one writer ({paced['write_rate_per_s']:.0f} PUT/s): lag "
              f"p50 {_ms(lag['p50_s'])}, p99 {_ms(lag['p99_s'])}, max {_ms(lag['max_s'])} (target p50 < "
              f"{_ms(TARGET_LAG_P50_S)}: {verdict}); {paced['files_per_s']:.0f} files/s (the writer's pace at most)")
        notified, copying = paced["lag_to_object_changed"], paced["lag_object_changed_to_verified"]
        if notified and copying:
            print(f"  p50 {_ms(notified['p50_s'])} until the notification is on the bus, then {_ms(copying['p50_s'])} "
                  f"to copy and verify; {_machine(paced)}; "
                  f"{_duplicates(paced, paced['files'] * paced['size_kib'] * 1024)}")
    burst = results.get("small_burst")
    if burst and "error" not in burst:
        lag, baseline = burst["lag"], burst.get("rclone")
        line = (f"{burst['files']} x {burst['size_kib']} KiB, {burst['writers']} writers "
                f"({burst['write_rate_per_s']:.0f} PUT/s): all verified in gcp {burst['replication_span_s']:.1f} s "
                f"after the first was written, {burst['files_per_s']:.0f} files/s (lag p50 {_ms(lag['p50_s'])}, "
                f"p99 {_ms(lag['p99_s'])}, max {_ms(lag['max_s'])})")
        if baseline:
            line += (f"; rclone copy of its {baseline['objects']} objects {baseline['seconds']:.1f} s: "
                     f"ratio {burst['ratio_vs_rclone']:.2f}x")
        print(line)
        print(f"  {_machine(burst)}; {_duplicates(burst, burst['files'] * burst['size_kib'] * 1024)}")
    large = results.get("large")
    if large and "error" not in large:
        baseline = large.get("rclone")
        line = (f"{large['files']} x {large['size_mib']} MiB: verified in gcp in {large['replication_s']:.1f} s, "
                f"{large['mib_per_s']:.0f} MiB/s")
        if baseline:
            verdict = "met" if large["mib_per_s"] >= baseline["mib_per_s"] else "MISSED"
            line += (f"; rclone copy {baseline['seconds']:.1f} s, {baseline['mib_per_s']:.0f} MiB/s: ratio "
                     f"{large['ratio_vs_rclone']:.2f}x (target: at least rclone's throughput: {verdict})")
        print(line)
        verdict = "met" if large["replicator_peak_rss_mib"] < TARGET_RSS_MIB else "MISSED"
        print(f"  replicator peak RSS during the copies {large['replicator_peak_rss_mib']:.0f} MiB (before "
              f"{large['replicator_rss_before_mib']:.0f} MiB; target < {TARGET_RSS_MIB} MiB: {verdict})")
        print(f"  {_machine(large)}" + (f" (during rclone: {baseline['cpu']['other_cores']:.1f})" if baseline else "")
              + f"; {_duplicates(large, large['files'] * large['size_mib'] * MiB)}")
    for name in SCENARIOS:
        if "error" in results.get(name, {}):
            print(f"{name} FAILED: {results[name]['error']}")
    if results.get("rclone") is None and not results["args"]["no_rclone"]:
        print(RCLONE_INSTALL)
    print(f"results: {out}")


SCENARIOS = ("small_paced", "small_burst", "large")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", default=os.environ.get("DSS_BENCH_GATEWAY", "http://127.0.0.1:8080"))
    parser.add_argument("--small-count", type=int, default=1000)
    parser.add_argument("--small-kib", type=int, default=4)
    parser.add_argument("--burst-writers", type=int, default=8)
    parser.add_argument("--large-count", type=int, default=4)
    parser.add_argument("--large-mib", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for a scenario's copies")
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="run only these scenarios")
    parser.add_argument("--rclone", default="rclone", help="the rclone binary")
    parser.add_argument("--rclone-flag", action="append", default=[],
                        help="an extra rclone copy argument (repeat), e.g. --rclone-flag=--transfers=8")
    parser.add_argument("--no-rclone", action="store_true", help="skip the rclone baselines")
    parser.add_argument("--keep", action="store_true", help="keep rclone's copies in gcs://" + RCLONE_SCRATCH_BUCKET)
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # relative settings (the token issuer's key) resolve against the repo root
    results = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(), "args": vars(args)}
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dss-bench-replication-") as workdir:
        bench = Bench(args, pathlib.Path(workdir))
        results["run_prefix"] = bench.run
        results["rclone"] = bench.rclone.version() if bench.rclone else None
        results["replicator_settings"] = bench.replicator_settings
        results["replicator_environment"] = bench.replicator_environ
        bench.events.start()
        try:
            for name in args.only or SCENARIOS:
                print(f"running {name} ...", file=sys.stderr, flush=True)
                bench.check_health()
                try:
                    results[name] = getattr(bench, name)()
                except (RuntimeError, TimeoutError) as error:  # keep the other scenarios' figures
                    print(f"{name} failed: {error}", file=sys.stderr, flush=True)
                    failed.append(name)
                    results[name] = {"error": str(error)}
                    continue
                print(json.dumps({name: results[name]}, indent=2), flush=True)
        finally:
            bench.events.stop()
    out = ROOT / "var" / "bench" / f"replication-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print_summary(results, out)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
