"""The least CPU nameko itself spends per message on this machine: what a service pays for each
event it consumes, each event it dispatches from a worker and each RPC it answers, with handlers
that do nothing else (bench/_nameko_floor_service.py: plain nameko, none of the store's metrics,
tracing or retry layers). It bounds from below what the store's services spend per file on the bus.

    .venv/bin/python bench/nameko_floor.py                 # 2000 messages of each kind, ~1 min
    .venv/bin/python bench/nameko_floor.py --messages 500 --amqp-uri amqp://guest:guest@127.0.0.1:5672/

It starts the service with `nameko run` against the broker given (RabbitMQ must run there), then:
  - publishes N events to a handler that does nothing (consumed: delivery, worker, acknowledgement);
  - publishes N events to a handler that dispatches one event (as above, plus a publish with
    publisher confirms from inside the worker);
  - makes N RPC calls, 8 callers at a time, to a method that returns None (request consumed,
    worker, reply published).
and reads the service process's CPU seconds (/proc/<pid>/stat) before and after each phase, less
what it spends idle over the same time. Results: stdout and var/bench/nameko-floor-<time>.json.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kombu import Connection, Exchange  # noqa: E402
from nameko.standalone.rpc import ClusterRpcProxy  # noqa: E402

from bench._common import proc_cpu_seconds  # noqa: E402
from bench._nameko_floor_service import SOURCE  # noqa: E402
from devtools.waiting import wait_until  # noqa: E402

SERVICE = "bench._nameko_floor_service"
SERVICE_NAME = "bench_nameko_floor"
CALLERS = 8


def publish_events(uri: str, event_type: str, count: int) -> None:
    """``count`` events as nameko's dispatcher sends them (its exchange, its routing key), with
    publisher confirms, from this process."""
    exchange = Exchange(f"{SOURCE}.events", type="topic", durable=True)
    with Connection(uri, transport_options={"confirm_publish": True}) as connection:
        producer = connection.Producer(exchange=exchange, serializer="json")
        for number in range(count):
            producer.publish({"number": number}, routing_key=event_type, delivery_mode=2, declare=[exchange])


class FloorService:
    def __init__(self, uri: str, workdir: pathlib.Path):
        self.uri = uri
        config = workdir / "config.yml"
        config.write_text(f"AMQP_URI: '{uri}'\nmax_workers: 10\n")
        nameko = pathlib.Path(sys.executable).parent / "nameko"
        self.process = subprocess.Popen([str(nameko), "run", "--config", str(config), SERVICE], cwd=ROOT,
                                        stdout=subprocess.DEVNULL, stderr=open(workdir / "service.log", "wb"))
        self.config = {"AMQP_URI": uri}
        wait_until(self._answers, timeout=60, what="the floor service answering RPC")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise SystemExit(f"`nameko run {SERVICE}` ended ({self.process.returncode}): is RabbitMQ at {self.uri}?")
        try:
            with ClusterRpcProxy(self.config, timeout=2) as cluster:
                getattr(cluster, SERVICE_NAME).nothing()
            return True
        except Exception:
            return False

    def cpu(self) -> float:
        return proc_cpu_seconds(self.process.pid)

    def handled(self) -> dict:
        with ClusterRpcProxy(self.config, timeout=30) as cluster:
            return getattr(cluster, SERVICE_NAME).handled()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def idle_rate(service: FloorService, seconds: float = 3.0) -> float:
    """CPU seconds per second the service spends doing nothing (its consumers' heartbeats, timers)."""
    before = service.cpu()
    time.sleep(seconds)
    return (service.cpu() - before) / seconds


def measured(service: FloorService, idle: float, count: int, run) -> dict:
    before, started = service.cpu(), time.monotonic()
    run()
    elapsed = time.monotonic() - started
    cpu = service.cpu() - before - idle * elapsed
    return {"messages": count, "seconds": round(elapsed, 3), "cpu_ms_per_message": round(cpu / count * 1000, 4)}


def events_phase(service: FloorService, uri: str, event_type: str, count: int):
    def run():
        already = service.handled()[event_type]
        publish_events(uri, event_type, count)
        wait_until(lambda: service.handled()[event_type] >= already + count, timeout=300,
                   what=f"{count} {event_type} events handled", interval=0.2)
    return run


def rpc_phase(service: FloorService, count: int):
    def caller(calls: int) -> None:
        with ClusterRpcProxy(service.config, timeout=30) as cluster:
            proxy = getattr(cluster, SERVICE_NAME)
            for _ in range(calls):
                proxy.nothing()

    def run():
        shares = [count // CALLERS + (1 if k < count % CALLERS else 0) for k in range(CALLERS)]
        with concurrent.futures.ThreadPoolExecutor(CALLERS) as pool:
            list(pool.map(caller, shares))
    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000, help="messages of each kind")
    parser.add_argument("--amqp-uri", default=os.environ.get("AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/"))
    args = parser.parse_args(argv)
    # py-amqp warns of the confirms that arrive while a proxy's channel closes: noise here.
    logging.getLogger("amqp").setLevel(logging.ERROR)
    results = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(), "args": vars(args),
               "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True).stdout.strip()}
    with tempfile.TemporaryDirectory(prefix="dss-bench-nameko-") as workdir:
        service = FloorService(args.amqp_uri, pathlib.Path(workdir))
        try:
            # Warm up: first messages of a fresh process (imports, channels) are not the steady state.
            events_phase(service, args.amqp_uri, "nothing_happened", 200)()
            events_phase(service, args.amqp_uri, "something_to_pass_on", 200)()
            rpc_phase(service, 200)()
            idle = idle_rate(service)
            n = args.messages
            results.update(
                idle_cpu_per_second=round(idle, 5),
                event_consumed=measured(service, idle, n, events_phase(service, args.amqp_uri, "nothing_happened", n)),
                event_consumed_and_one_dispatched=measured(
                    service, idle, n, events_phase(service, args.amqp_uri, "something_to_pass_on", n)),
                rpc_answered=measured(service, idle, n, rpc_phase(service, n)))
        finally:
            service.stop()
    out = ROOT / "var" / "bench" / f"nameko-floor-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    consumed = results["event_consumed"]["cpu_ms_per_message"]
    passed_on = results["event_consumed_and_one_dispatched"]["cpu_ms_per_message"]
    print(f"nameko's least CPU per message (the service process, idle {results['idle_cpu_per_second'] * 1000:.1f} ms/s "
          f"taken off): an event consumed by a handler that does nothing {consumed:.3f} ms; consumed and one event "
          f"dispatched {passed_on:.3f} ms (the dispatch {passed_on - consumed:.3f} ms); an RPC answered "
          f"{results['rpc_answered']['cpu_ms_per_message']:.3f} ms")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
