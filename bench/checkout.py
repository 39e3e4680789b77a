"""Checkout benchmark: the checkout service against the running `make up` stack, through the gateway.

    make up && .venv/bin/python bench/checkout.py                 # or: make bench
    .venv/bin/python bench/checkout.py --only bundle_checkout     # one scenario

Scenarios (each its own function in SCENARIOS; `--only NAME` runs that one, repeatable):
  - bundle_checkout: a bundle of 100 x 1 MiB + 2 x 256 MiB files, stored through the gateway (PUT
    /files, PUT /bundles), checked out with POST /v1/bundles/{uuid}/checkout?replica=aws to a bucket
    of its own, timed until GET /v1/bundles/checkout/{id} says SUCCEEDED; against `rclone copy` of
    the same blobs from the same main bucket to the same kind of destination bucket on the same S3
    emulator, measured in the same run (runs alternate which goes first); the ratio (target <=
    1.5x) and the peak RSS of the checkout service (with children) during its checkouts.

Reports a stdout summary and JSON in var/bench/checkout-<time>.json. Not part of `make test`.
Needs rclone for the baseline (Debian: apt-get install -y rclone); without it the checkout is still
timed and the ratio left out.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
import uuid as uuid_module
import warnings

# eventlet (imported by the blob stores) warns about its own deprecation on import: noise here.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

import psutil  # noqa: E402
import requests  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import RCLONE_INSTALL, PeakRSS, Rclone  # noqa: E402
from shared.auth_local import mint_token_for_settings  # noqa: E402
from shared.checksums import Checksums  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.identifiers import new_uuid, new_version  # noqa: E402
from shared.storage import open_replicas  # noqa: E402
from shared.testing import stage_large_object, stage_object  # noqa: E402

MiB = 1024 * 1024
TARGET_BUNDLE_CHECKOUT_RATIO = 1.5


class Stack:
    """The running `make up` stack as every scenario uses it: the gateway over HTTP (a token of the
    local issuer), the aws replica's buckets, the services' processes."""

    def __init__(self, args, workdir: pathlib.Path):
        self.args = args
        self.workdir = workdir
        self.settings = Settings.from_config({})
        self.gateway = args.gateway.rstrip("/")
        self.aws = open_replicas(self.settings)["aws"]
        self.store = self.aws.store
        self.staging = self.settings.bucket("aws", "staging")
        self.http = requests.Session()
        self.http.headers["Authorization"] = "Bearer " + mint_token_for_settings(self.settings, "bench@example.org",
                                                                                  ["dbio"])
        self.run = uuid_module.uuid4().hex[:8]  # names this run's buckets
        self.rclone = None
        if not args.no_rclone:
            binary = shutil.which(args.rclone)
            if binary is None:
                print(RCLONE_INSTALL, file=sys.stderr, flush=True)
            else:
                self.rclone = Rclone(binary, self.settings, workdir, args.rclone_flag)

    def check_health(self) -> None:
        """Stop with the reason when a service is down: its figures would be nonsense."""
        try:
            answer = requests.get(f"{self.gateway}/internal/health", timeout=30)
        except requests.RequestException as error:
            raise SystemExit(f"the gateway does not answer ({error}): start the stack with `make up`") from None
        if answer.status_code != 200:
            raise SystemExit(f"the stack is not healthy (`make status`; `make up` restarts what stopped): "
                             f"{answer.text[:500]}")

    def service_pid(self, name: str) -> int:
        pid_file = ROOT / "var" / "run" / f"{name}.pid"
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            raise SystemExit(f"no running {name} service ({pid_file}): start the stack with `make up`") from None

    def service_settings(self, name: str, prefix: str) -> dict:
        """The settings a service runs with: those of its environment, not of ours."""
        environ = psutil.Process(self.service_pid(name)).environ()
        effective = Settings.from_config({}, environ=environ)
        return {key: value for key, value in sorted(effective.values.items()) if key.startswith(prefix)}

    # --- the API -------------------------------------------------------------------------------------
    def put_file(self, source_url: str) -> dict:
        """PUT /files of a staged object, waiting for a 202's background copy; its bundle reference."""
        uuid, version = new_uuid(), new_version()
        answer = self.http.put(f"{self.gateway}/v1/files/{uuid}", params={"version": version},
                               json={"source_url": source_url, "creator_uid": 1})
        if answer.status_code not in (200, 201, 202):
            raise RuntimeError(f"PUT /files answered {answer.status_code}: {answer.text[:500]}")
        if answer.status_code == 202:
            self.wait(lambda: self.http.head(f"{self.gateway}/v1/files/{uuid}",
                                             params={"replica": "aws", "version": version}).status_code == 200,
                      f"file {uuid} ingested")
        return {"uuid": uuid, "version": version}

    def put_bundle(self, files: list[dict]) -> tuple[str, str]:
        uuid, version = new_uuid(), new_version()
        answer = self.http.put(f"{self.gateway}/v1/bundles/{uuid}", params={"version": version, "replica": "aws"},
                               json={"creator_uid": 1, "files": files})
        if answer.status_code not in (200, 201):
            raise RuntimeError(f"PUT /bundles answered {answer.status_code}: {answer.text[:500]}")
        return uuid, version

    def wait(self, predicate, what: str, interval: float = 0.05):
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"{what}: not within {self.args.timeout:.0f}s")


# --- bundle checkout ---------------------------------------------------------------------------------

def stage_bundle_files(stack: Stack) -> tuple[list[dict], list[tuple[str, Checksums]]]:
    """The scenario's files staged and stored through the gateway: (bundle file references,
    [(staged url, checksums)])."""
    args = stack.args
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        small = list(pool.map(lambda _: stage_object(stack.store, stack.staging, os.urandom(args.small_mib * MiB)),
                              range(args.small_count)))
    large = [stage_large_object(stack.store, stack.staging, args.large_mib * MiB) for _ in range(args.large_count)]
    staged = small + large
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        refs = list(pool.map(lambda item: stack.put_file(item[0]), staged))
    files = [{**ref, "name": f"{'large' if i >= len(small) else 'small'}/{i:03d}.bin", "indexed": False}
             for i, ref in enumerate(refs)]
    return files, staged


def checkout_through_the_api(stack: Stack, uuid: str, version: str, bucket: str) -> float:
    """POST /bundles/{uuid}/checkout to ``bucket``, then GET its job until SUCCEEDED; seconds taken."""
    started = time.monotonic()
    answer = stack.http.post(f"{stack.gateway}/v1/bundles/{uuid}/checkout",
                             params={"replica": "aws", "version": version}, json={"destination": f"s3://{bucket}"})
    if answer.status_code != 200:
        raise RuntimeError(f"POST /bundles/{uuid}/checkout answered {answer.status_code}: {answer.text[:500]}")
    job_id = answer.json()["checkout_job_id"]

    def ended():
        view = stack.http.get(f"{stack.gateway}/v1/bundles/checkout/{job_id}", params={"replica": "aws"}).json()
        return view if view.get("status") in ("SUCCEEDED", "FAILED") else None
    view = stack.wait(ended, f"checkout job {job_id}", interval=0.02)
    elapsed = time.monotonic() - started
    if view["status"] != "SUCCEEDED":
        raise RuntimeError(f"checkout job {job_id} FAILED: {view.get('cause')}")
    return elapsed


def bundle_checkout(stack: Stack) -> dict:
    args = stack.args
    files, staged = stage_bundle_files(stack)
    uuid, version = stack.put_bundle(files)
    blob_keys = sorted({checksums.blob_key() for _, checksums in staged})
    total_bytes = (args.small_count * args.small_mib + args.large_count * args.large_mib) * MiB
    pid = stack.service_pid("checkout")
    checkouts, baselines, peak_rss = [], [], 0
    for run in range(args.runs):
        order = ("checkout", "rclone") if run % 2 == 0 else ("rclone", "checkout")
        for which in order:
            bucket = f"dss-bench-{which}-{stack.run}-{run}"  # a fresh bucket: nothing there to skip
            stack.store.create_bucket(bucket)
            if which == "checkout":
                with PeakRSS(pid) as rss:
                    elapsed = checkout_through_the_api(stack, uuid, version, bucket)
                checkouts.append(elapsed)
                peak_rss = max(peak_rss, rss.peak)
                copied = list(stack.store.list_keys(bucket, f"bundles/{uuid}.{version}/"))
                if len(copied) != len(files):
                    raise RuntimeError(f"the checkout left {len(copied)} of {len(files)} files in {bucket}")
            elif stack.rclone is not None:
                elapsed = stack.rclone.copy(f"s3local:{stack.aws.bucket}", blob_keys, f"s3local:{bucket}",
                                            stack.workdir)
                baselines.append(elapsed)
                if len(list(stack.store.list_keys(bucket, "blobs/"))) != len(blob_keys):
                    raise RuntimeError(f"rclone did not copy every blob to {bucket}")
            else:
                continue
            print(f"  run {run + 1} {which}: {elapsed:.2f} s", file=sys.stderr, flush=True)
    checkout_s = statistics.median(checkouts)
    result = {"files": len(files), "bytes": total_bytes, "bundle": f"{uuid}.{version}", "runs": args.runs,
              "checkout_s": checkouts, "checkout_median_s": checkout_s,
              "checkout_mib_per_s": total_bytes / MiB / checkout_s, "checkout_peak_rss_mib": peak_rss / MiB,
              "checkout_settings": stack.service_settings("checkout", "checkout_job_")}
    if baselines:
        rclone_s = statistics.median(baselines)
        result.update(rclone_s=baselines, rclone_median_s=rclone_s, rclone_mib_per_s=total_bytes / MiB / rclone_s,
                      ratio_vs_rclone=checkout_s / rclone_s, rclone_version=stack.rclone.version())
    verdict = ""
    if "ratio_vs_rclone" in result:
        met = "met" if result["ratio_vs_rclone"] <= TARGET_BUNDLE_CHECKOUT_RATIO else "NOT met"
        verdict = (f"; rclone copy {result['rclone_median_s']:.2f} s: ratio {result['ratio_vs_rclone']:.2f}x "
                   f"(target <= {TARGET_BUNDLE_CHECKOUT_RATIO}x: {met})")
    result["summary"] = (f"bundle checkout of {len(files)} files ({total_bytes / MiB:.0f} MiB): "
                         f"{checkout_s:.2f} s median of {args.runs}{verdict}; checkout service peak RSS "
                         f"{peak_rss / MiB:.0f} MiB")
    return result


SCENARIOS = {"bundle_checkout": bundle_checkout}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", default=os.environ.get("DSS_BENCH_GATEWAY", "http://127.0.0.1:8080"))
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="run only these scenarios")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for one operation")
    parser.add_argument("--small-count", type=int, default=100, help="bundle_checkout: small files")
    parser.add_argument("--small-mib", type=int, default=1, help="bundle_checkout: size of a small file")
    parser.add_argument("--large-count", type=int, default=2, help="bundle_checkout: large files")
    parser.add_argument("--large-mib", type=int, default=256, help="bundle_checkout: size of a large file")
    parser.add_argument("--runs", type=int, default=2,
                        help="bundle_checkout: timed checkouts and rclone copies (alternating which goes first)")
    parser.add_argument("--rclone", default="rclone", help="the rclone binary")
    parser.add_argument("--rclone-flag", action="append", default=[],
                        help="an extra rclone copy argument (repeat), e.g. --rclone-flag=--transfers=8")
    parser.add_argument("--no-rclone", action="store_true", help="skip the rclone baseline")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # relative settings (the token issuer's key) resolve against the repo root
    results = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(), "args": vars(args)}
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dss-bench-checkout-") as workdir:
        stack = Stack(args, pathlib.Path(workdir))
        for name in args.only or SCENARIOS:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            stack.check_health()
            try:
                results[name] = SCENARIOS[name](stack)
            except (RuntimeError, TimeoutError) as error:  # keep the other scenarios' figures
                print(f"{name} failed: {error}", file=sys.stderr, flush=True)
                failed.append(name)
                results[name] = {"error": str(error)}
    out = ROOT / "var" / "bench" / f"checkout-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"checkout benchmark ({out.relative_to(ROOT)}):")
    for name in args.only or SCENARIOS:
        print(f"  {name}: {results[name].get('summary') or results[name].get('error')}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
