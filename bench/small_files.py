"""Small files against the floor: what the store costs per 4 KiB file next to the least work that
ingest + replication of the same files needs, on the same emulators, in one run (issue 15).

    .venv/bin/python bench/small_files.py                  # 300 files, ~80 s with start and stop
    .venv/bin/python bench/small_files.py --files 100 --json

It starts a stack of its own (`python -m devtools.stack up`, as bench/scaling.py does, on free
ports and a private broker, so it shares nothing with another stack on the machine; a stack of this
worktree already running is stopped first and started again at the end), then measures:

  - the floor: a plain script doing only the necessary work for N staged files (read the staged
    tags and bytes, compute the four checksums, write the blob and the file document to S3, then
    both to GCS), 8 threads; run before and after the store, the mean is the floor;
  - the store: 8 writers PUT /files through the gateway, until each file's `object_replicated`
    (its document and blob verified in gcp) has arrived;
  - one writer: PUT /files p50 against one thread of the floor's time per file;
  - requests per file by kind, counted at the emulators: S3 and SQS from moto's request log,
    GCS and Pub/Sub by a counting proxy (devtools.proxy) in front of fake-gcs-server and the
    Pub/Sub emulator, in a process of its own;
  - CPU seconds per file of every process (/proc/<pid>/stat before and after), peak RSS.

The floor writes to scratch buckets (no change notifications: it replicates nothing itself).
Figures on a shared machine are noisy: the ratios, taken in one run, are what to compare.
Results: stdout summary (`--json`: the JSON on stdout too) and var/bench/small-files-<time>.json.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import datetime
import json
import os
import pathlib
import re
import statistics
import subprocess
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

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import (thread_session, StackPeakRSS, StackProcesses, by_service, check_stack_health,  # noqa: E402
                           machine_load, percentile, put_file_via_gateway, service_of)
from bench.replication import BusWatch, distribution  # noqa: E402
from bench.scaling import busy_seconds, running_stack, stack  # noqa: E402
from bench._service_profiles import CLOUD, ServiceProfiles, totals  # noqa: E402
from devtools import local_cloud  # noqa: E402
from devtools.fakes import stage_object  # noqa: E402
from devtools.tokens import mint_token_for_settings  # noqa: E402
from services.files.metadata import file_metadata_doc  # noqa: E402
from shared.blobstore import open_blobstore  # noqa: E402
from shared.checksums import Checksums, checksum_bytes  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.identifiers import Keys, new_version  # noqa: E402

RUN_DIR = ROOT / "var" / "run"
LOG_DIR = ROOT / "var" / "log"
FLOOR_BUCKET = "dss-bench-floor"
# Not services of the store: the emulators, the broker, the counting proxy, this script.
NOT_SERVICES = ("moto", "fake-gcs", "pubsub", "rabbitmq", "epmd", "proxy", "bench")
SERVICE_METRICS = ("FILES", "BUNDLES", "REPLICATOR", "INDEXER", "NOTIFIER", "CHECKOUT", "GATEWAY")
TARGETS = {"throughput_ratio": 0.5, "put_p50_ratio": 3.0, "s3_per_file": 7}

# moto (werkzeug) logs each request: `127.0.0.1 - - [date] "GET /bucket/key?x HTTP/1.1" 200 -`, the
# request of an answer other than 200 in ANSI colours (removed before matching).
_MOTO_LINE = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})')
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def classify_moto(method: str, path: str) -> str | None:
    """``sqs`` (POSTs to / or to a queue URL) or ``s3 <operation>``; None for moto's own API."""
    bare, _, query = path.partition("?")
    if bare.startswith("/moto-api"):
        return None
    if bare == "/" or re.match(r"^/\d{12}/", bare):
        return "sqs"
    parameters = {part.split("=")[0] for part in query.split("&") if part}
    has_key = "/" in bare.strip("/")
    if "tagging" in parameters:
        return f"s3 {method} tagging"
    if not has_key:
        return "s3 list" if method == "GET" else f"s3 {method} bucket"
    if "uploads" in parameters or "uploadId" in parameters:
        return "s3 multipart"
    if method == "PUT" and "x-amz-copy-source" in query:
        return "s3 copy"
    return f"s3 {method}"


class MotoLog:
    """Counts of moto's request log lines since ``mark()``."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def counts(self) -> dict[str, int]:
        counts: collections.Counter = collections.Counter()
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            for line in handle.read().decode("utf-8", "replace").splitlines():
                match = _MOTO_LINE.search(_ANSI.sub("", line))
                if match:
                    label = classify_moto(match.group(1), match.group(2))
                    if label:
                        counts[label] += 1
        return dict(counts)


class ProxyCounts:
    """The counting proxies' counts (devtools.proxy writes them to a file every 0.2 s)."""

    def __init__(self, path: pathlib.Path, ports: dict[str, int]):
        self.path = path
        self.ports = ports  # kind ("gcs", "pubsub") -> listening port
        self.before: dict = {}

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def mark(self) -> None:
        time.sleep(0.3)  # the last write of the proxies is at most 0.2 s old
        self.before = self._read()

    def counts(self) -> dict[str, int]:
        time.sleep(0.3)
        now, total = self._read(), {}
        for port in map(str, self.ports.values()):
            for label, value in now.get(port, {}).items():
                delta = value - self.before.get(port, {}).get(label, 0)
                if delta:
                    total[label] = total.get(label, 0) + delta
        return total


class Environment:
    """Free ports for everything, the GCS and Pub/Sub emulators behind counting proxies (started
    here: `up` reuses what answers at an endpoint), and the stack started with that environment."""

    def __init__(self, args, workdir: pathlib.Path, profile_dir: pathlib.Path | None = None):
        self.args = args
        self.workdir = workdir
        self.processes: dict[str, subprocess.Popen | psutil.Process] = {}
        self.emulators: list = []
        self.profiles = ServiceProfiles(profile_dir) if profile_dir else None

    def start(self) -> None:
        free = local_cloud.free_port
        moto, gateway = free(), free()
        gcs, pubsub, gcs_proxy, pubsub_proxy = free(), free(), free(), free()
        env = {"DSS_S3_ENDPOINT": f"http://127.0.0.1:{moto}", "DSS_SQS_ENDPOINT": f"http://127.0.0.1:{moto}",
               "DSS_GCS_ENDPOINT": f"http://127.0.0.1:{gcs_proxy}",
               "DSS_PUBSUB_EMULATOR_HOST": f"127.0.0.1:{pubsub_proxy}",
               "DSS_GATEWAY_ADDRESS": f"127.0.0.1:{gateway}", "AMQP_URI": self.args.amqp_uri}
        env.update({f"DSS_{name}_METRICS_PORT": str(free()) for name in SERVICE_METRICS})
        if self.profiles:  # the services load the sampler at start-up (bench/sampling)
            env.update(self.profiles.environment())
        os.environ.update(env)  # Settings and the token issuer of this process follow the stack's
        self.gateway = f"http://127.0.0.1:{gateway}"
        self.settings = Settings.from_config({})
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        # The Pub/Sub emulator first: fake-gcs-server publishes to it directly (not through the proxy).
        direct = Settings.from_config({}, environ={**os.environ, "DSS_PUBSUB_EMULATOR_HOST": f"127.0.0.1:{pubsub}"})
        self.emulators.append(local_cloud.start_pubsub_emulator(pubsub, log_path=str(LOG_DIR / "bench-pubsub.log")))
        self.emulators.append(local_cloud.start_fake_gcs(
            gcs, log_path=str(LOG_DIR / "bench-fake-gcs.log"), extra_args=local_cloud.fake_gcs_event_args(direct),
            env=local_cloud.fake_gcs_event_env(direct)))
        self.counts_file = self.workdir / "proxy-counts.json"
        proxy = subprocess.Popen([sys.executable, "-m", "devtools.proxy", str(self.counts_file),
                                  f"{gcs_proxy}:{gcs}", f"{pubsub_proxy}:{pubsub}"], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=open(LOG_DIR / "bench-proxy.log", "ab"))
        self.processes["proxy"] = proxy
        local_cloud.wait_for_http(f"http://127.0.0.1:{gcs_proxy}/storage/v1/b")
        self.processes["fake-gcs"] = self.emulators[1].process
        self.processes["pubsub"] = self.emulators[0].process
        stack(["up"], self.args.amqp_uri)
        self.proxy_counts = ProxyCounts(self.counts_file, {"gcs": gcs_proxy, "pubsub": pubsub_proxy})
        self.moto_log = MotoLog(LOG_DIR / "moto.log")

    def stop(self) -> None:
        with contextlib.suppress(SystemExit):
            stack(["down"], self.args.amqp_uri)
        for emulator in self.emulators:
            emulator.stop()
        proxy = self.processes.get("proxy")
        if isinstance(proxy, subprocess.Popen):
            proxy.terminate()
            proxy.wait(10)

    def stack_processes(self) -> StackProcesses:
        processes = StackProcesses(RUN_DIR)
        for name, process in self.processes.items():
            with contextlib.suppress(psutil.Error):
                processes.instances[name] = psutil.Process(process.pid)
        return processes


class Bench:
    def __init__(self, args, env: Environment):
        self.args, self.env = args, env
        self.settings = env.settings
        self.s3 = open_blobstore("aws", self.settings)
        self.gcs = open_blobstore("gcp", self.settings)
        self.staging = self.settings.bucket("aws", "staging")
        self.s3.create_bucket(FLOOR_BUCKET)
        self.gcs.create_bucket(FLOOR_BUCKET)
        self.token = mint_token_for_settings(self.settings, "bench@example.org", ["dbio"])
        self.events = BusWatch(args.amqp_uri).start()
        self.run = uuid_module.uuid4().hex[:8]
        self._local = threading.local()

    # --- the two sides -----------------------------------------------------------------------
    def stage(self, count: int) -> list[str]:
        """``count`` distinct 4 KiB objects in the staging bucket, their checksums as S3 tags (as
        the DSS clients tag them), so that both sides read tags."""
        size = self.args.kib * 1024
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda _: stage_object(self.s3, self.staging, os.urandom(size), as_tags=True)[0],
                                 range(count)))

    def floor_one(self, source_url: str) -> float:
        """The least ingest + replication of one file must do; seconds it took."""
        started = time.monotonic()
        key = source_url.split("/", 3)[3]
        declared = {name.removeprefix("dss-"): value for name, value in self.s3.get_tags(self.staging, key).items()}
        data = self.s3.get_bytes(self.staging, key)
        checksums = checksum_bytes(data)
        if checksums != Checksums.parse(declared):
            raise RuntimeError(f"{source_url}: checksums differ from its tags")
        doc = json.dumps(file_metadata_doc(new_version(), 1, "application/octet-stream", len(data), checksums))
        file_key = Keys.file(str(uuid_module.uuid4()), new_version())
        for store in (self.s3, self.gcs):
            store.put_bytes(FLOOR_BUCKET, checksums.blob_key(), data)
            store.put_bytes(FLOOR_BUCKET, file_key, doc.encode(), content_type="application/json")
        return time.monotonic() - started

    def http(self) -> requests.Session:
        return thread_session(self._local, self.token)

    def put_file(self, source_url: str) -> dict:
        uuid = f"{self.run}{str(uuid_module.uuid4())[8:]}"
        return put_file_via_gateway(self.http(), self.env.gateway, uuid, new_version(), source_url)

    # --- measuring ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def window(self, result: dict, count: int):
        """CPU per file of every process, peak RSS, requests per file by kind, machine load."""
        processes = self.env.stack_processes()
        self.env.moto_log.mark()
        self.env.proxy_counts.mark()
        before = processes.instance_cpu()
        machine_before = _machine_busy()
        with StackPeakRSS(processes) as rss:
            started = time.monotonic()
            yield
            elapsed = time.monotonic() - started
        after = processes.instance_cpu()
        busy = _machine_busy() - machine_before
        cpu = {name: (after[name] - before.get(name, 0.0)) / count for name in after}
        requests_by_label = {**self.env.moto_log.counts(), **self.env.proxy_counts.counts()}
        kinds: dict[str, float] = collections.Counter()
        for label, value in requests_by_label.items():
            kinds[label.split()[0].upper().replace("PUBSUB", "Pub/Sub")] += value / count
        result.update(
            window_s=elapsed,
            cpu_s_per_file={name: round(value, 5) for name, value in sorted(cpu.items(), key=lambda i: -i[1])},
            services_cpu_s_per_file=sum(v for n, v in cpu.items() if service_of(n) not in NOT_SERVICES),
            peak_rss_mib={name: round(value / 2**20, 1) for name, value in sorted(rss.peak.items())},
            requests_per_file=dict(sorted(kinds.items())),
            requests_per_file_by_operation={k: round(v / count, 2) for k, v in sorted(requests_by_label.items())},
            machine_busy_cores=busy / elapsed if elapsed else None, load_1m=os.getloadavg()[0])

    def floor(self, sources: list[str], threads: int) -> dict:
        result: dict = {"files": len(sources), "threads": threads}
        with self.window(result, len(sources)):
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                times = list(pool.map(self.floor_one, sources))
            elapsed = time.monotonic() - started
        result.update(seconds=elapsed, files_per_s=len(sources) / elapsed, per_file=_summary(times))
        return result

    def store(self, sources: list[str], writers: int) -> dict:
        result: dict = {"files": len(sources), "writers": writers}
        with self.window(result, len(sources)), self.profiled(result):
            busy_at_start = _machine_busy()
            with concurrent.futures.ThreadPoolExecutor(writers) as pool:
                writes = list(pool.map(self.put_file, sources))
            arrived = self.events.wait([w["key"] for w in writes], self.args.timeout)
            verified_at = max(arrived[w["key"]][0] for w in writes)
            busy_until_verified = _machine_busy() - busy_at_start
            self.settle()
        first = min(w["started"] for w in writes)
        span = verified_at - first
        # The window's own figure takes in the quieter tail (the copies' echoes, the settling): this
        # one is the machine while files were being written and replicated.
        result["machine_busy_cores_until_verified"] = busy_until_verified / span
        result.update(seconds=span, files_per_s=len(sources) / span,
                      put_per_s=len(sources) / (max(w["written"] for w in writes) - first),
                      put=_summary([w["written"] - w["started"] for w in writes]),
                      lag=distribution([arrived[w["key"]][0] - w["written"] for w in writes]))
        return result

    @contextlib.contextmanager
    def profiled(self, result: dict):
        """With ``--profile``: the services sampled meanwhile; the shares are turned into CPU ms per
        file by category once ``window`` (the outer context) has measured the CPU."""
        profiles = self.env.profiles
        if profiles is None:
            yield
            return
        processes = list(self.env.stack_processes().instances.values())
        profiles.start(processes)
        try:
            yield
        finally:
            profiles.stop(processes)
            result["profile_samples"] = profiles.samples()

    def settle(self, quiet_s: float = 1.5, limit_s: float = 30) -> None:
        """Wait until the echoes of the copies have been handled: no request to moto or the proxies
        for ``quiet_s`` (idle long polls excepted), at most ``limit_s``."""
        deadline = time.monotonic() + limit_s
        last, quiet_since = None, time.monotonic()
        while time.monotonic() < deadline:
            now = (self.env.moto_log.path.stat().st_size, json.dumps(self.env.proxy_counts._read(), sort_keys=True))
            if now != last:
                last, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_s:
                return
            time.sleep(0.25)

    def one_writer(self, sources: list[str]) -> dict:
        writes = [self.put_file(source) for source in sources]
        self.events.wait([w["key"] for w in writes], self.args.timeout)
        self.settle()  # its replication done before the next measurement
        return _summary([w["written"] - w["started"] for w in writes])

    def warm_up(self) -> None:
        # First requests of fresh processes (imports, connections) are not the steady state.
        sources = self.stage(self.args.warmup)
        writes = [self.put_file(source) for source in sources]
        for source in self.stage(self.args.warmup):
            self.floor_one(source)
        self.events.wait([w["key"] for w in writes], self.args.timeout)
        self.settle()


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy so far."""
    return busy_seconds(psutil.cpu_times())


def _summary(seconds: list[float]) -> dict:
    return {"p50_ms": percentile(seconds, 50) * 1000, "p99_ms": percentile(seconds, 99) * 1000,
            "mean_ms": statistics.fmean(seconds) * 1000, "n": len(seconds)}


def run(args, env: Environment) -> dict:
    bench = Bench(args, env)
    try:
        print("warming up ...", file=sys.stderr, flush=True)
        bench.warm_up()
        n = args.files
        sets = [bench.stage(n) for _ in range(3)] + [bench.stage(args.single) for _ in range(2)]
        print("measuring: floor, store (8 writers), floor, one writer, one floor thread ...", file=sys.stderr, flush=True)
        floor_before = bench.floor(sets[0], args.writers)
        store = bench.store(sets[1], args.writers)
        floor_after = bench.floor(sets[2], args.writers)
        single_put = bench.one_writer(sets[3])
        single_floor = bench.floor(sets[4], 1)
    finally:
        bench.events.stop()
    if env.profiles:
        store["profile_ms_per_file"] = env.profiles.breakdown(
            {name: value for name, value in by_service(store["cpu_s_per_file"]).items() if name not in NOT_SERVICES})
    floor_rate = (floor_before["files_per_s"] + floor_after["files_per_s"]) / 2
    floor_cpu = {name: (floor_before["cpu_s_per_file"].get(name, 0) + floor_after["cpu_s_per_file"].get(name, 0)) / 2
                 for name in set(floor_before["cpu_s_per_file"]) | set(floor_after["cpu_s_per_file"])}
    return {
        "floor_before": floor_before, "store": store, "floor_after": floor_after,
        "one_writer_put": single_put, "one_thread_floor": single_floor,
        "floor_files_per_s": floor_rate,
        "floor_cpu_s_per_file": {k: round(v, 5) for k, v in sorted(floor_cpu.items(), key=lambda i: -i[1])},
        "throughput_ratio": store["files_per_s"] / floor_rate,
        "put_p50_ratio": single_put["p50_ms"] / single_floor["per_file"]["p50_ms"],
        "s3_requests_per_file": store["requests_per_file"].get("S3", 0.0),
        "client_bound": _client_bound(floor_before, floor_after, store),
    }


def _client_bound(floor_before: dict, floor_after: dict, store: dict) -> dict | None:
    """The least CPU the services can spend per file with the floor's client libraries: the floor
    client's CPU per S3 or GCS request (checksums included) times the S3 and GCS requests a file of
    the store must make (the floor's, plus the replicator's reads). No HTTP, no bus, no SQS or
    Pub/Sub counted: a bound from below."""
    def requests_of(result):
        return sum(result["requests_per_file"].get(kind, 0.0) for kind in ("S3", "GCS"))
    floor_requests = (requests_of(floor_before) + requests_of(floor_after)) / 2
    floor_client = (floor_before["cpu_s_per_file"].get("bench", 0.0) + floor_after["cpu_s_per_file"].get("bench", 0.0)) / 2
    if not floor_requests or not floor_client:
        return None
    per_request = floor_client / floor_requests
    return {"floor_client_ms_per_request": round(per_request * 1000, 3), "store_requests_per_file": round(
        requests_of(store), 2), "ms_per_file": round(per_request * requests_of(store) * 1000, 2)}


def print_summary(r: dict) -> None:
    store, one = r["store"], r["one_writer_put"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(f"\n{store['files']} x {r['args']['kib']} KiB, {store['writers']} writers: store {store['files_per_s']:.1f} "
          f"files/s (PUT {store['put_per_s']:.1f}/s, lag p50 {store['lag']['p50_s'] * 1000:.0f} ms), floor "
          f"{r['floor_files_per_s']:.1f} files/s (before {r['floor_before']['files_per_s']:.1f}, after "
          f"{r['floor_after']['files_per_s']:.1f}): ratio {r['throughput_ratio']:.2f} "
          f"(target >= {TARGETS['throughput_ratio']}: {verdict(r['throughput_ratio'] >= TARGETS['throughput_ratio'])})")
    print(f"one writer: PUT /files p50 {one['p50_ms']:.1f} ms (p99 {one['p99_ms']:.1f}) vs the floor's "
          f"{r['one_thread_floor']['per_file']['p50_ms']:.1f} ms per file: {r['put_p50_ratio']:.2f}x "
          f"(target <= {TARGETS['put_p50_ratio']}x: {verdict(r['put_p50_ratio'] <= TARGETS['put_p50_ratio'])})")
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in store["requests_per_file"].items())
    floor_kinds = ", ".join(f"{k} {v:.2f}" for k, v in r["floor_before"]["requests_per_file"].items())
    print(f"requests per file: store {kinds} (S3 target <= {TARGETS['s3_per_file']}: "
          f"{verdict(r['s3_requests_per_file'] <= TARGETS['s3_per_file'])}); floor {floor_kinds}")
    print("  store by operation: " + ", ".join(f"{k} {v}" for k, v in store["requests_per_file_by_operation"].items()))
    cpu = store["cpu_s_per_file"]
    print(f"CPU ms per file: services {store['services_cpu_s_per_file'] * 1000:.1f} ("
          + ", ".join(f"{n} {v * 1000:.1f}" for n, v in cpu.items() if service_of(n) not in NOT_SERVICES and v > 0)
          + "); others " + ", ".join(f"{n} {v * 1000:.1f}" for n, v in cpu.items()
                                    if service_of(n) in NOT_SERVICES and v > 0))
    print("  floor: " + ", ".join(f"{n} {v * 1000:.1f}" for n, v in r["floor_cpu_s_per_file"].items() if v > 0))
    print(f"  all processes: store {sum(cpu.values()) * 1000:.1f}, floor {sum(r['floor_cpu_s_per_file'].values()) * 1000:.1f}")
    bound = r.get("client_bound")
    if bound:
        print(f"services' least CPU with these clients: {bound['store_requests_per_file']:.2f} S3 and GCS requests per "
              f"file x the floor client's {bound['floor_client_ms_per_request']:.2f} ms per request = "
              f"{bound['ms_per_file']:.1f} ms per file (the services: {store['services_cpu_s_per_file'] * 1000:.1f})")
    if "profile_ms_per_file" in store:
        _print_profile(store["profile_ms_per_file"])
    print("peak RSS MiB: " + ", ".join(f"{n} {v:.0f}" for n, v in store["peak_rss_mib"].items()))
    until_verified = store.get("machine_busy_cores_until_verified")
    print(f"machine: {os.cpu_count()} cores; busy {until_verified or 0:.2f} while the store wrote and replicated (until the "
          f"last file was verified), {store['machine_busy_cores']:.2f} over its window with the settling, "
          f"{r['floor_before']['machine_busy_cores']:.2f} and {r['floor_after']['machine_busy_cores']:.2f} during the "
          f"floor's passes; load {r['load_before']['load_1m']:.1f} -> {store['load_1m']:.1f}")


def _print_profile(breakdown: dict[str, dict[str, float]]) -> None:
    summed = totals(breakdown)
    cloud = sum(v for k, v in summed.items() if k in CLOUD)
    print(f"services' CPU ms per file by kind of work (sampled; the sampler itself costs ~1 ms): cloud client calls "
          f"{cloud:.1f} of {sum(summed.values()):.1f}")
    print("  all services: " + ", ".join(f"{k} {v:.1f}" for k, v in summed.items() if v >= 0.05))
    for service, categories in sorted(breakdown.items(), key=lambda item: -sum(item[1].values())):
        if sum(categories.values()) >= 0.5:
            print(f"  {service}: " + ", ".join(f"{k} {v:.1f}" for k, v in categories.items() if v >= 0.05))


def print_table(runs: list[dict]) -> None:
    """The markdown table docs/scaling.md shows: one column per run (``--table`` of saved results)."""
    def services(r):
        return {n: v for n, v in r["store"]["cpu_s_per_file"].items() if service_of(n) not in NOT_SERVICES}

    def bound(r):  # from the phases, so that results saved before these figures existed show them too
        return _client_bound(r["floor_before"], r["floor_after"], r["store"])

    names = sorted({n for r in runs for n in services(r)}, key=lambda n: -max(services(r).get(n, 0) for r in runs))
    kinds = sorted({k for r in runs for k in r["store"]["requests_per_file"]})
    rows = [
        ("run", lambda r: f"{r.get('args', {}).get('label') or ''} ({r.get('commit', '')})"),
        ("store files/s (8 writers, until verified in gcp)", lambda r: f"{r['store']['files_per_s']:.1f}"),
        ("floor files/s (8 threads; mean of before and after)", lambda r: f"{r['floor_files_per_s']:.1f}"),
        ("**ratio store / floor** (target >= 0.5)", lambda r: f"**{r['throughput_ratio']:.2f}**"),
        ("one writer: PUT /files p50", lambda r: f"{r['one_writer_put']['p50_ms']:.0f} ms"),
        ("floor, one thread: time per file p50", lambda r: f"{r['one_thread_floor']['per_file']['p50_ms']:.0f} ms"),
        ("**PUT p50 / floor per file** (target <= 3)", lambda r: f"**{r['put_p50_ratio']:.2f}**"),
        *((f"{'**S3**' if k == 'S3' else k} requests per file" + (" (target <= 7)" if k == "S3" else ""),
           (lambda k: lambda r: f"{r['store']['requests_per_file'].get(k, 0):.2f}")(k)) for k in kinds),
        ("**services CPU ms per file**", lambda r: f"**{r['store']['services_cpu_s_per_file'] * 1000:.1f}**"),
        *((f"  {n}", (lambda n: lambda r: f"{services(r).get(n, 0) * 1000:.1f}")(n)) for n in names),
        *((f"  {n} (not a service)", (lambda n: lambda r: f"{r['store']['cpu_s_per_file'].get(n, 0) * 1000:.1f}")(n))
          for n in ("moto", "pubsub", "rabbitmq", "fake-gcs")),
        ("**services' least CPU ms per file with these clients** (floor client per request x S3 + GCS requests)",
         lambda r: f"**{bound(r)['ms_per_file']:.1f}**"),
        ("all processes' CPU ms per file: store; floor", lambda r: f"{sum(r['store']['cpu_s_per_file'].values()) * 1000:.1f}; "
                                                                   f"{sum(r['floor_cpu_s_per_file'].values()) * 1000:.1f}"),
        ("floor CPU ms per file (its client, moto, fake-gcs)", lambda r: ", ".join(
            f"{r['floor_cpu_s_per_file'].get(n, 0) * 1000:.1f}" for n in ("bench", "moto", "fake-gcs"))),
        ("store lag p50 (PUT answered to verified in gcp)", lambda r: f"{r['store']['lag']['p50_s'] * 1000:.0f} ms"),
        ("peak RSS MiB: replicator, files, checkout", lambda r: ", ".join(
            f"{r['store']['peak_rss_mib'].get(n, 0):.0f}" for n in ("replicator", "files", "checkout"))),
        ("machine: cores busy until verified; over the store's window; during the floor", lambda r: (
            f"{r['store'].get('machine_busy_cores_until_verified') or 0:.2f}; {r['store']['machine_busy_cores']:.2f}; "
            f"{(r['floor_before']['machine_busy_cores'] + r['floor_after']['machine_busy_cores']) / 2:.2f}")),
        ("load 1m after the store", lambda r: f"{r['store']['load_1m']:.1f}"),
    ]
    print("| | " + " | ".join(str(i + 1) for i in range(len(runs))) + " |")
    print("|---|" + "---|" * len(runs))
    for title, cell in rows:
        print(f"| {title} | " + " | ".join(cell(r) for r in runs) + " |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=300, help="files of the 8-writer store and of each floor pass")
    parser.add_argument("--single", type=int, default=100, help="files of the one-writer PUT and one-thread floor")
    parser.add_argument("--kib", type=int, default=4)
    parser.add_argument("--writers", type=int, default=8, help="writers of the store and threads of the floor")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the store's replication")
    parser.add_argument("--amqp-uri", default="amqp://guest:guest@127.0.0.1:5697/",
                        help="the private broker the stack is started with (and its RabbitMQ if none answers)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--profile", action="store_true",
                        help="sample the services' stacks during the 8-writer store (bench/sampling) and split their "
                             "CPU by kind of work; the samples are kept beside the results")
    parser.add_argument("--label", default="", help="a note stored with the results (e.g. the commit measured)")
    parser.add_argument("--table", nargs="+", type=pathlib.Path, metavar="JSON",
                        help="print the table of earlier runs (var/bench/small-files-*.json) and stop")
    args = parser.parse_args(argv)
    if args.table:
        print_table([json.loads(path.read_text()) for path in args.table])
        return
    os.chdir(ROOT)  # relative settings (the token issuer's key) resolve against the repo root
    before = running_stack()
    if before:
        print(f"stopping the running stack (SCALE={before['scale']} BROKER={before['broker']}); it is started "
              "again at the end", file=sys.stderr, flush=True)
        stack(["down"], before["amqp_uri"])
    saved_environ = dict(os.environ)
    stamp = time.strftime('%Y%m%dT%H%M%S')
    profile_dir = ROOT / "var" / "bench" / f"small-files-{stamp}-profile" if args.profile else None
    results = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(), "args": vars(args),
               "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True).stdout.strip(),
               "command": " ".join([os.path.relpath(sys.executable, ROOT), *sys.argv]), "load_before": machine_load()}
    with tempfile.TemporaryDirectory(prefix="dss-bench-small-") as workdir:
        env = Environment(args, pathlib.Path(workdir), profile_dir)
        try:
            env.start()
            check_stack_health(env.gateway)
            results.update(run(args, env))
        finally:
            env.stop()
            os.environ.clear()
            os.environ.update(saved_environ)
            if before:
                stack(["up", "--scale", str(before["scale"]), "--broker", before["broker"]], before["amqp_uri"])
    out = ROOT / "var" / "bench" / f"small-files-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    if args.json:
        print(json.dumps(results, indent=2))
    print_summary(results)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
