"""Scale-out benchmark: the small-file ingest + replication scenario with SCALE=1 and SCALE=3, on a
one-node and a three-node broker, each against a baseline of raw PUT + copy of the same files
measured in the same run. It starts and stops the stack itself (`python -m devtools.stack up|down`
with --scale / --broker); a stack of this worktree already running is stopped first and started
again, as it was, at the end.

    .venv/bin/python bench/scaling.py                       # 4 configurations x 2 runs x 300 files
    .venv/bin/python bench/scaling.py --config 3:cluster --repeat 1 --files 100

For each run it reports (stdout table + JSON in var/bench/scaling-<time>.json):
  - files/s: files written through the gateway (PUT /files, --writers at once) divided by the time
    from the first PUT to the last `object_replicated` event (verified in gcp); the PUT rate alone;
  - lag p50/p99: from each PUT's answer to its `object_replicated` event;
  - CPU seconds per file of each service (summed over its instances), of the emulators, the broker
    and this script, from /proc/<pid>/stat of the processes in var/run (and their children) read
    before and after; the busiest single process in cores (near 1.0: that instance is saturated);
  - peak RSS of each service (summed over its instances);
  - the baseline: the same bytes PUT into the aws staging bucket, read back and written to a gcp
    scratch bucket by as many threads (what ingest + replication must at least do, without the
    store), its files/s and CPU per file, and the ratio of the store's time to it;
  - the load average before and after (other work on the machine skews every figure).
The single broker is a private one on --single-uri (not the broker `make test` uses on 5672,
whose other consumers would share the services' queues); the cluster is on --cluster-uri.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import pathlib
import subprocess
import sys
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

from bench._common import (thread_session, StackPeakRSS, StackProcesses, check_stack_health, machine_load,  # noqa: E402
                           put_file_via_gateway)
from bench.replication import DEFAULT_AMQP_URI, BusWatch, distribution  # noqa: E402
from devtools.fakes import stage_object  # noqa: E402
from ops.broker import management_urls  # noqa: E402
from devtools.tokens import mint_token_for_settings  # noqa: E402
from shared.blobstore import open_blobstore  # noqa: E402
from shared import events  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.identifiers import new_version  # noqa: E402

RUN_DIR = ROOT / "var" / "run"
SCRATCH_BUCKET = "dss-bench-scaling"
CONFIGS = ("1:single", "3:single", "1:cluster", "3:cluster")
# What is not a service of the store: the emulators, the broker, this script.
NOT_SERVICES = ("moto", "fake-gcs", "gcs", "pubsub", "rabbitmq", "epmd", "bench")


def running_stack() -> dict | None:
    """The scale, broker mode and AMQP_URI of this worktree's running stack (var/run/stack.json and
    the caller's environment), or None when none runs."""
    if not (RUN_DIR / "gateway.pid").exists():
        return None
    try:
        state = json.loads((RUN_DIR / "stack.json").read_text())
    except (OSError, ValueError):
        state = {}
    return {"scale": state.get("scale", 1), "broker": state.get("broker", "single"),
            "amqp_uri": os.environ.get("AMQP_URI", DEFAULT_AMQP_URI)}


def broker_messages(uri: str) -> dict[str, int]:
    """The broker's cumulative message counts (/api/overview of the first node's management API:
    the whole cluster's). Its statistics lag by up to 5 s (the collection interval)."""
    try:
        stats = requests.get(f"{management_urls(uri)[0]}/api/overview", timeout=10).json().get("message_stats", {})
    except (requests.RequestException, ValueError):
        return {}
    return {name: stats.get(name, 0) for name in ("publish", "deliver_get", "ack")}


def busy_seconds(times) -> float:
    return sum(times) - times.idle - getattr(times, "iowait", 0)


def stack(command: list[str], amqp_uri: str) -> None:
    """`python -m devtools.stack COMMAND` with AMQP_URI; stops with its output when it fails."""
    env = dict(os.environ, AMQP_URI=amqp_uri)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "devtools.stack", *command], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    print(f"  stack {' '.join(command)}: {result.returncode} in {time.monotonic() - started:.0f} s",
          file=sys.stderr, flush=True)
    if result.returncode != 0:
        raise SystemExit(f"python -m devtools.stack {' '.join(command)} failed:\n{result.stdout[-3000:]}"
                         f"{result.stderr[-3000:]}")


class Run:
    """One measured run of the scenario against the stack running now."""

    def __init__(self, args, settings: Settings, watch: BusWatch, token: str):
        self.args, self.settings, self.events = args, settings, watch
        self.gateway = args.gateway.rstrip("/")
        self.s3 = open_blobstore("aws", settings)
        self.gcs = open_blobstore("gcp", settings)
        self.staging = settings.bucket("aws", "staging")
        self.token = token
        self._local = threading.local()
        self.run = uuid_module.uuid4().hex[:8]

    def http(self) -> requests.Session:
        return thread_session(self._local, self.token)

    def put_file(self, source_url: str) -> dict:
        uuid = f"{self.run}{str(uuid_module.uuid4())[8:]}"
        return put_file_via_gateway(self.http(), self.gateway, uuid, new_version(), source_url)

    def baseline_one(self, data: bytes) -> None:
        """What ingest + replication of one file must do at least, without the store: PUT it to S3,
        read it back, write it to GCS."""
        key = f"bench-scaling/{self.run}/{uuid_module.uuid4().hex}"
        self.s3.put_bytes(self.staging, key, data)
        self.gcs.put_bytes(SCRATCH_BUCKET, key, self.s3.get_bytes(self.staging, key))

    def measure(self, work, items) -> tuple[float, dict, dict, dict, list]:
        """Run ``work`` over ``items`` with --writers threads; seconds, CPU seconds per service,
        per instance, peak RSS per service, results."""
        processes = StackProcesses(RUN_DIR)
        machine_before = psutil.cpu_times()
        before, before_instances = processes.cpu(), processes.instance_cpu()
        with StackPeakRSS(processes) as rss:
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(self.args.writers) as pool:
                results = list(pool.map(work, items))
            if work == self.put_file:
                arrived = self.events.wait([r["key"] for r in results], self.args.timeout)
                for r in results:
                    r["verified"] = arrived[r["key"]][0]
            elapsed = time.monotonic() - started
        after, after_instances = processes.cpu(), processes.instance_cpu()
        machine_after = psutil.cpu_times()
        cpu = {name: after[name] - before.get(name, 0.0) for name in after}
        # Busy CPU of the whole machine, ours and everyone else's, as "cores" in the last entry.
        cpu["(machine busy)"] = busy_seconds(machine_after) - busy_seconds(machine_before)
        instances = {name: (after_instances[name] - before_instances.get(name, 0.0)) / elapsed
                     for name in after_instances}
        return elapsed, cpu, instances, rss.peak, results

    def __call__(self) -> dict:
        count, size = self.args.files, self.args.kib * 1024
        payloads = [os.urandom(size) for _ in range(count)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            sources = list(pool.map(lambda data: stage_object(self.s3, self.staging, data)[0], payloads))
        load_before = machine_load()
        messages_before = broker_messages(self.args.amqp_uri)
        elapsed, cpu, cores, peak, writes = self.measure(self.put_file, sources)
        lags = [w["verified"] - w["written"] for w in writes]
        # Where the lag goes: until the file document's S3 notification is on the bus as
        # object_changed (moto -> SQS -> the replicator's bridge), then until its copy is verified.
        notified = [self.events.first(events.OBJECT_CHANGED, w["key"]) for w in writes]
        to_bus = [n[0] - w["written"] for n, w in zip(notified, writes) if n is not None]
        to_verified = [w["verified"] - n[0] for n, w in zip(notified, writes) if n is not None]
        machine = cpu.pop("(machine busy)")
        stack_cpu = sum(cpu.values())
        first = min(w["started"] for w in writes)
        write_span = max(w["written"] for w in writes) - first
        base_elapsed, base_cpu, _, _, _ = self.measure(self.baseline_one, payloads)
        base_machine = base_cpu.pop("(machine busy)")
        load_after = machine_load()
        # Read after the baseline, which does not use the broker: by then the statistics of the run
        # have been collected.
        messages_after = broker_messages(self.args.amqp_uri)
        span = max(w["verified"] for w in writes) - first
        return {
            "files": count, "kib": self.args.kib, "writers": self.args.writers, "run_prefix": self.run,
            "files_per_s": count / span, "put_per_s": count / write_span, "span_s": span,
            "lag": distribution(lags), "lag_to_object_changed": distribution(to_bus),
            "lag_object_changed_to_verified": distribution(to_verified),
            "machine_busy_cores": machine / elapsed, "stack_cores": stack_cpu / elapsed,
            "other_cores": max(0.0, (machine - stack_cpu) / elapsed),
            "cpu_s_per_file": {name: seconds / count for name, seconds in sorted(cpu.items())},
            "services_cpu_s_per_file": sum(s for n, s in cpu.items() if n not in NOT_SERVICES) / count,
            "instance_cores": {name: round(value, 3) for name, value in sorted(cores.items())},
            "peak_rss_mib": {name: round(value / 2**20, 1) for name, value in sorted(peak.items())},
            "baseline": {"files_per_s": count / base_elapsed, "span_s": base_elapsed,
                         "machine_busy_cores": base_machine / base_elapsed,
                         "cpu_s_per_file": {name: seconds / count for name, seconds in sorted(base_cpu.items())
                                            if seconds > 0}},
            "ratio_vs_baseline": span / base_elapsed,
            "broker_messages_per_file": {name: (messages_after[name] - messages_before.get(name, 0)) / count
                                         for name in messages_after},
            "load_before": load_before, "load_after": load_after,
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
            "measured_s": elapsed,
        }


def idle_cores(seconds: float) -> dict[str, float]:
    """The CPU each service uses with no work (cores, over ``seconds``): pollers, timers, heartbeats."""
    if seconds <= 0:
        return {}
    processes = StackProcesses(RUN_DIR)
    before = processes.cpu()
    time.sleep(seconds)
    after = processes.cpu()
    return {name: round((after[name] - before.get(name, 0.0)) / seconds, 4) for name in after}


def run_config(args, scale: int, mode: str, results: list) -> None:
    uri = args.cluster_uri if mode == "cluster" else args.single_uri
    os.environ["AMQP_URI"] = uri  # Settings and the token issuer of this process follow the stack's
    stack(["up", "--scale", str(scale), "--broker", mode], uri)
    args = argparse.Namespace(**{**vars(args), "amqp_uri": uri})
    settings = Settings.from_config({})
    check_stack_health(args.gateway.rstrip("/"))
    gcs = open_blobstore("gcp", settings)
    if not gcs.bucket_exists(SCRATCH_BUCKET):
        gcs.create_bucket(SCRATCH_BUCKET)
    token = mint_token_for_settings(settings, "bench@example.org", ["dbio"])
    watch = BusWatch(uri.split(";")[0]).start()
    try:
        if args.warmup:  # first requests of fresh processes (imports, connections) are not the steady state
            Run(argparse.Namespace(**{**vars(args), "files": args.warmup}), settings, watch, token)()
        idle = idle_cores(args.idle)
        for repeat in range(args.repeat):
            print(f"SCALE={scale} BROKER={mode} run {repeat + 1}/{args.repeat} ...", file=sys.stderr, flush=True)
            try:
                result = Run(args, settings, watch, token)()
            except (RuntimeError, TimeoutError) as error:
                print(f"  failed: {error}", file=sys.stderr, flush=True)
                result = {"error": str(error), "load_before": machine_load()}
            result.update(scale=scale, broker=mode, repeat=repeat + 1, idle_cores=idle)
            if "error" not in result:
                # Without what the processes burn when nothing happens (timers, heartbeats, pollers).
                result["net_cpu_s_per_file"] = {
                    name: max(0.0, value - idle.get(name, 0.0) * result["measured_s"] / result["files"])
                    for name, value in result["cpu_s_per_file"].items()}
            results.append(result)
            if "error" not in result:
                print(f"  {row(result)}", file=sys.stderr, flush=True)
    finally:
        watch.stop()


def row(r: dict) -> str:
    cpu = r["cpu_s_per_file"]
    services = sorted((n for n in cpu if n not in NOT_SERVICES), key=lambda n: -cpu[n])
    busiest = max(((n, c) for n, c in r["instance_cores"].items() if n != "bench"), key=lambda item: item[1])
    return (f"{r['files_per_s']:.1f} files/s (PUT {r['put_per_s']:.1f}/s), lag p50 {r['lag']['p50_s'] * 1000:.0f} ms "
            f"p99 {r['lag']['p99_s'] * 1000:.0f} ms (p50 {_ms(r['lag_to_object_changed'])} to the bus, "
            f"{_ms(r['lag_object_changed_to_verified'])} to verified); machine {r['machine_busy_cores']:.2f} cores "
            f"busy, stack {r['stack_cores']:.2f}; baseline {r['baseline']['files_per_s']:.0f} files/s "
            f"(x{r['ratio_vs_baseline']:.1f}); CPU ms/file: "
            + ", ".join(f"{n} {cpu[n] * 1000:.1f}" for n in services)
            + f"; moto {cpu.get('moto', 0) * 1000:.1f}, gcs {cpu.get('fake-gcs', cpu.get('gcs', 0)) * 1000:.1f}, "
              f"broker {(cpu.get('rabbitmq', 0)) * 1000:.1f}; busiest process "
              f"{busiest[0]} {busiest[1]:.2f} cores; load {r['load_before']['load_1m']:.1f}->"
              f"{r['load_after']['load_1m']:.1f}")


def _ms(dist: dict | None) -> str:
    return f"{dist['p50_s'] * 1000:.0f} ms" if dist else "-"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", choices=CONFIGS,
                        help="SCALE:BROKER to run (repeat; default all four)")
    parser.add_argument("--repeat", type=int, default=2, help="measured runs of each configuration")
    parser.add_argument("--files", type=int, default=300, help="small files per run")
    parser.add_argument("--kib", type=int, default=4, help="size of each file")
    parser.add_argument("--writers", type=int, default=8, help="concurrent PUTs (and baseline threads)")
    parser.add_argument("--warmup", type=int, default=20, help="files written, unmeasured, after each `up`")
    parser.add_argument("--idle", type=float, default=15,
                        help="seconds the idle stack's CPU is measured after each `up` (0: not at all)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for a run's replication")
    parser.add_argument("--gateway", default="http://127.0.0.1:8080")
    parser.add_argument("--single-uri", default="amqp://guest:guest@127.0.0.1:5691/",
                        help="AMQP_URI of the one-node broker (a private one is started there)")
    parser.add_argument("--cluster-uri", default="amqp://guest:guest@127.0.0.1:5741/",
                        help="AMQP_URI of the three-node cluster (its first node; the next two ports follow)")
    parser.add_argument("--keep-up", action="store_true",
                        help="leave the last configuration's stack running (unless one ran before)")
    parser.add_argument("--table", nargs="+", type=pathlib.Path, metavar="JSON",
                        help="print the table of earlier runs (var/bench/scaling-*.json) and stop")
    args = parser.parse_args(argv)
    if args.table:
        print_table([run for path in args.table for run in json.loads(path.read_text())["runs"]])
        return
    os.chdir(ROOT)  # relative settings (the token issuer's key) resolve against the repo root
    # A stack already running (`make bench` starts one) is stopped first and brought back at the
    # end as it was: this benchmark needs the stack of each configuration to itself.
    before = running_stack()
    if before:
        print(f"stopping the running stack (SCALE={before['scale']} BROKER={before['broker']}); it is "
              f"started again at the end", file=sys.stderr, flush=True)
        stack(["down"], before["amqp_uri"])
    configs = [(int(c.split(":")[0]), c.split(":")[1]) for c in (args.config or CONFIGS)]
    results: list[dict] = []
    report = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(), "args": vars(args),
              "command": " ".join([os.path.relpath(sys.executable, ROOT), *sys.argv]), "runs": results}
    out = ROOT / "var" / "bench" / f"scaling-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    mode_up = None
    try:
        for scale, mode in configs:
            if mode_up not in (None, mode):  # switching broker needs a `down` first
                stack(["down"], args.cluster_uri if mode_up == "cluster" else args.single_uri)
            mode_up = mode
            run_config(args, scale, mode, results)
            out.write_text(json.dumps(report, indent=2))
    finally:
        if mode_up and (not args.keep_up or before):
            stack(["down"], args.cluster_uri if mode_up == "cluster" else args.single_uri)
        if before:
            stack(["up", "--scale", str(before["scale"]), "--broker", before["broker"]], before["amqp_uri"])
        out.write_text(json.dumps(report, indent=2))
    print_table(results)
    print(f"results: {out}")


def print_table(results: list[dict]) -> None:
    """The markdown table docs/scaling.md shows: one row per run."""
    print("| SCALE | broker | run | files/s | PUT/s | lag p50 | lag p99 | p50 to the bus | baseline files/s | ratio | "
          "services CPU ms/file | moto | gcs | pubsub | broker | stack cores | machine cores | "
          "busiest process (cores) | load 1m |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['scale']} | {r['broker']} | {r['repeat']} | failed: {r['error'][:80]} |")
            continue
        cpu = r["cpu_s_per_file"]
        busiest = max(((n, c) for n, c in r["instance_cores"].items() if n != "bench"), key=lambda item: item[1])
        print(f"| {r['scale']} | {r['broker']} | {r['repeat']} | {r['files_per_s']:.1f} | {r['put_per_s']:.1f} | "
              f"{r['lag']['p50_s'] * 1000:.0f} ms | {r['lag']['p99_s'] * 1000:.0f} ms | "
              f"{_ms(r.get('lag_to_object_changed'))} | {r['baseline']['files_per_s']:.0f} | {r['ratio_vs_baseline']:.1f}x | "
              f"{r['services_cpu_s_per_file'] * 1000:.1f} | {cpu.get('moto', 0) * 1000:.1f} | "
              f"{cpu.get('fake-gcs', cpu.get('gcs', 0)) * 1000:.1f} | "
              f"{cpu.get('pubsub', 0) * 1000:.1f} | {(cpu.get('rabbitmq', 0)) * 1000:.1f} | "
              f"{r['stack_cores']:.2f} | {r['machine_busy_cores']:.2f} | {busiest[0]} ({busiest[1]:.2f}) | {r['load_before']['load_1m']:.1f} |")
    print()
    print("CPU ms per file by service (mean over runs):")
    by_config: dict = {}
    for r in results:
        if "error" not in r:
            by_config.setdefault((r["scale"], r["broker"]), []).append(r)
    for (scale, mode), runs in by_config.items():
        names = sorted({n for r in runs for n in r["cpu_s_per_file"]})
        mean = {n: sum(r["cpu_s_per_file"].get(n, 0) for r in runs) / len(runs) * 1000 for n in names}
        rss = {n: max(r["peak_rss_mib"].get(n, 0) for r in runs) for n in names}
        print(f"  SCALE={scale} {mode}: " + ", ".join(f"{n} {mean[n]:.1f} ({rss[n]:.0f} MiB)"
                                                   for n in sorted(names, key=lambda n: -mean[n])))
        if all("net_cpu_s_per_file" in r for r in runs):
            net = {n: sum(r["net_cpu_s_per_file"].get(n, 0) for r in runs) / len(runs) * 1000 for n in names}
            idle = runs[0]["idle_cores"]
            print("    net of idle: " + ", ".join(f"{n} {net[n]:.1f} (idle {idle.get(n, 0):.3f} cores)"
                                                for n in sorted(names, key=lambda n: -net[n])))
        messages = [r["broker_messages_per_file"] for r in runs if r.get("broker_messages_per_file")]
        if messages:
            print("    broker messages per file: " + ", ".join(
                f"{k} {sum(m.get(k, 0) for m in messages) / len(messages):.1f}" for k in messages[0]))


if __name__ == "__main__":
    main()
