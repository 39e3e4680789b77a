"""Checkout benchmark: the checkout service against the running `make up` stack, through the gateway.

    DSS_CHECKOUT_DESTINATIONS='dss-bench-*' make up && .venv/bin/python bench/checkout.py   # or: make bench
    .venv/bin/python bench/checkout.py --only bundle_checkout     # one scenario

Scenarios (each its own function in SCENARIOS; `--only NAME` runs that one, repeatable):
  - bundle_checkout: a bundle of 100 x 1 MiB + 2 x 256 MiB files, stored through the gateway (PUT
    /files, PUT /bundles), checked out with POST /v1/bundles/{uuid}/checkout?replica=aws to a bucket
    of its own, timed until GET /v1/bundles/checkout/{id} says SUCCEEDED; against `rclone copy` of
    the same blobs from the same main bucket to the same kind of destination bucket on the same S3
    emulator, measured in the same run (runs alternate which goes first); the ratio (target <=
    1.5x) and the peak RSS of the checkout service (with children) during its checkouts.
  - file_first_read: N fresh 4 KiB files, each PUT through the gateway (staged on S3) and read at
    once with GET /v1/files/{uuid}?replica=aws, redirects not followed, anonymously as clients read.
    Every answer must be a 302 into the checkout bucket (a 301 would cost the client a second round
    trip: the scenario fails); latency p50/p99 (target: p50 < 50 ms), and how the checkout service
    made the copies (inline in the read, or warmed on `file_created` before it);
  - file_repeat_read: R more reads of each of those files (of N new ones read once, when run
    alone); latency p50/p99 (target: p50 < 15 ms).
  - file_first_read_inline: N fresh 4 KiB files, each PUT (aws) and read with replica=gcp as soon
    as the replicator wrote it there (awaited on the bucket itself): nothing warms the replica a
    file is copied to, so each read makes its copy inline (lookup of the latest version, the
    document, a look at the checkout bucket, the copy). Latency p50/p99, no target; the prefix
    listing of the latest-version lookup timed alone, since emulators list by scanning the bucket.
  Both file scenarios measure, in the same run and on the same copies, the least a redirect to a
  checked-out copy costs: boto3 head_object of the copy + generate_presigned_url against the stack's
  moto (p50/p99, and the ratio); a sample of the redirects is followed and the bytes' SHA-256 checked.

Reports a stdout summary and JSON in var/bench/checkout-<time>.json. Not part of `make test`.
Needs rclone for the baseline (Debian: apt-get install -y rclone); without it the checkout is still
timed and the ratio left out.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
import urllib.parse
import uuid as uuid_module
import warnings

# eventlet (imported by the blob stores) warns about its own deprecation on import: noise here.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

import psutil  # noqa: E402
import requests  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import PeakRSS, check_stack_health, open_rclone, percentile  # noqa: E402
from devtools.fakes import stage_large_object, stage_object  # noqa: E402
from devtools.tokens import mint_token_for_settings  # noqa: E402
from services.checkout.bundle_jobs.jobs import destination_allowed  # noqa: E402
from shared.checksums import Checksums  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.identifiers import new_uuid, new_version  # noqa: E402
from shared.storage import open_replicas  # noqa: E402

MiB = 1024 * 1024
TARGET_BUNDLE_CHECKOUT_RATIO = 1.5
TARGET_FIRST_READ_P50_S = 0.050
TARGET_REPEAT_READ_P50_S = 0.015
SHA256_SAMPLE = 10  # redirects of a file scenario followed, the bytes checked


class Stack:
    """The running `make up` stack as every scenario uses it: the gateway over HTTP (a token of the
    local issuer), the aws replica's buckets, the services' processes."""

    def __init__(self, args, workdir: pathlib.Path):
        self.args = args
        self.workdir = workdir
        self.settings = Settings.from_config({})
        self.gateway = args.gateway.rstrip("/")
        replicas = open_replicas(self.settings)
        self.aws, self.gcp = replicas["aws"], replicas["gcp"]
        self.store = self.aws.store
        self.staging = self.settings.bucket("aws", "staging")
        self.http = requests.Session()
        self.http.headers["Authorization"] = "Bearer " + mint_token_for_settings(self.settings, "bench@example.org",
                                                                                  ["dbio"])
        self.run = uuid_module.uuid4().hex[:8]  # names this run's buckets
        self.read_files: list[dict] = []  # the files file_first_read wrote, read again by file_repeat_read
        self.rclone = open_rclone(args, self.settings, workdir)

    def check_health(self) -> None:
        check_stack_health(self.gateway)

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
    view = stack.wait(ended, f"checkout job {job_id}", interval=0.1)  # as a client polls, only faster
    elapsed = time.monotonic() - started
    if view["status"] != "SUCCEEDED":
        raise RuntimeError(f"checkout job {job_id} FAILED: {view.get('cause')}")
    return elapsed


def empty_bucket(stack: Stack, bucket: str) -> None:
    """Delete what a measurement copied (the emulator keeps it all in memory)."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: stack.store.delete(bucket, key), list(stack.store.list_keys(bucket))))


def bundle_checkout(stack: Stack) -> dict:
    args = stack.args
    files, staged = stage_bundle_files(stack)
    uuid, version = stack.put_bundle(files)
    # Replication to gcp reads the same objects from the same S3 emulator: let it finish first (the
    # bundle is in gcp once every file is), so that neither measurement shares the emulator with it.
    stack.wait(lambda: stack.http.get(f"{stack.gateway}/v1/bundles/{uuid}",
                                      params={"replica": "gcp", "version": version}).status_code == 200,
               f"bundle {uuid} replicated to gcp", interval=0.5)
    blob_keys = sorted({checksums.blob_key() for _, checksums in staged})
    total_bytes = (args.small_count * args.small_mib + args.large_count * args.large_mib) * MiB
    pid = stack.service_pid("checkout")
    allowed = stack.service_settings("checkout", "checkout_destinations")["checkout_destinations"]
    if not destination_allowed(f"dss-bench-checkout-{stack.run}-0", "s3", allowed):
        raise RuntimeError("the checkout service does not allow the benchmark's buckets as destinations: start "
                           "the stack with DSS_CHECKOUT_DESTINATIONS='dss-bench-*'")
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
            if not args.keep:
                empty_bucket(stack, bucket)
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


# --- GET /files: first and repeat reads of small files ---------------------------------------------------

def distribution(seconds: list[float]) -> dict:
    return {"p50_s": percentile(seconds, 50), "p99_s": percentile(seconds, 99), "max_s": max(seconds),
            "mean_s": statistics.fmean(seconds), "n": len(seconds)}


def checkout_copies(stack: Stack, replica: str = "aws") -> dict[str, float] | None:
    """``dss_checkout_copies_total`` of ``replica`` by reason, from the checkout service's
    exporter; None when it cannot be reached."""
    try:
        text = requests.get(stack.args.checkout_metrics, timeout=5).text
    except requests.RequestException:
        return None
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dss_checkout_copies_total" and sample.labels.get("replica") == replica:
                counts[sample.labels["reason"]] = counts.get(sample.labels["reason"], 0) + sample.value
    return counts


def put_small_file(stack: Stack) -> dict:
    """A fresh small file, staged on S3 and PUT through the gateway: uuid, blob key, sha256."""
    source_url, checksums = stage_object(stack.store, stack.staging, os.urandom(stack.args.file_kib * 1024))
    ref = stack.put_file(source_url)
    return {"uuid": ref["uuid"], "version": ref["version"], "blob_key": checksums.blob_key(),
            "sha256": checksums.sha256}


def read_file(stack: Stack, reader: requests.Session, file: dict, replica: str = "aws") -> tuple[float, str]:
    """One anonymous GET /files/{uuid}?replica=..., redirects not followed: (seconds, Location). A 302
    into the replica's checkout bucket or RuntimeError."""
    started = time.perf_counter()
    answer = reader.get(f"{stack.gateway}/v1/files/{file['uuid']}", params={"replica": replica},
                        allow_redirects=False)
    elapsed = time.perf_counter() - started
    if answer.status_code == 301:
        raise RuntimeError(f"GET /files/{file['uuid']} answered 301 (Retry-After "
                           f"{answer.headers.get('Retry-After')}): a small file must be served at once")
    if answer.status_code != 302:
        raise RuntimeError(f"GET /files/{file['uuid']} answered {answer.status_code}: {answer.text[:300]}")
    location = answer.headers["Location"]
    if stack.settings.bucket(replica, "checkout") not in urllib.parse.urlsplit(location).path:
        raise RuntimeError(f"GET /files/{file['uuid']} redirects outside the checkout bucket: {location[:200]}")
    return elapsed, location


def check_bytes(samples: list[tuple[str, dict]]) -> int:
    """Follow some redirects (untimed) and check the bytes' SHA-256; how many were checked."""
    for location, file in samples[:SHA256_SAMPLE]:
        if hashlib.sha256(requests.get(location, timeout=30).content).hexdigest() != file["sha256"]:
            raise RuntimeError(f"the copy behind {location[:120]} does not hold the file's bytes")
    return min(len(samples), SHA256_SAMPLE)


def head_and_presign(stack: Stack, files: list[dict], replica: str = "aws") -> dict:
    """The baseline: a stat of each file's checkout copy and its presigned URL, by the cloud's own
    client (boto3 head_object on moto; google-cloud-storage get_blob on fake-gcs-server)."""
    bucket, seconds = stack.settings.bucket(replica, "checkout"), []
    store = stack.store if replica == "aws" else stack.gcp.store
    for file in files:
        started = time.perf_counter()
        if replica == "aws":
            store.client.head_object(Bucket=bucket, Key=file["blob_key"])
            store.client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": file["blob_key"]},
                                                ExpiresIn=stack.settings.presigned_url_ttl)
        else:
            store.client.bucket(bucket).get_blob(file["blob_key"])
            store.presigned_url(bucket, file["blob_key"], stack.settings.presigned_url_ttl)
        seconds.append(time.perf_counter() - started)
    return distribution(seconds)


def file_read_result(stack: Stack, what: str, seconds: list[float], samples: list, target: float | None,
                     files: list[dict] | None = None, replica: str = "aws", **extra) -> dict:
    files = stack.read_files if files is None else files
    latency, baseline = distribution(seconds), head_and_presign(stack, files, replica)
    ratio = latency["p50_s"] / baseline["p50_s"]
    if target is None:
        goal = "no target"
    else:
        goal = f"target p50 < {target * 1000:.0f} ms: " + ("met" if latency["p50_s"] < target else "NOT met")
    cloud = {"aws": "S3 HEAD", "gcp": "GCS stat"}[replica]
    return {"files": len(files), "size_kib": stack.args.file_kib, "replica": replica, "latency": latency,
            "baseline_head_presign": baseline, "ratio_p50_vs_baseline": ratio,
            "sha256_checked": check_bytes(samples), **extra,
            "summary": f"{what} of {len(files)} x {stack.args.file_kib} KiB files: p50 "
                       f"{latency['p50_s'] * 1000:.1f} ms, p99 {latency['p99_s'] * 1000:.1f} ms ({goal}); "
                       f"{cloud} + presign p50 {baseline['p50_s'] * 1000:.1f} ms, "
                       f"p99 {baseline['p99_s'] * 1000:.1f} ms: ratio {ratio:.2f}x"}


def file_first_read(stack: Stack) -> dict:
    """Each fresh file read once, right after its PUT answered: a 302 every time."""
    copies_before, reader = checkout_copies(stack), requests.Session()
    seconds, samples = [], []
    for _ in range(stack.args.file_count):
        file = put_small_file(stack)
        elapsed, location = read_file(stack, reader, file)
        seconds.append(elapsed)
        samples.append((location, file))
        stack.read_files.append(file)
    copies_after = checkout_copies(stack)
    made = None if copies_before is None or copies_after is None else \
        {reason: count - copies_before.get(reason, 0) for reason, count in copies_after.items()
         if count - copies_before.get(reason, 0)}
    result = file_read_result(stack, "first reads", seconds, samples, TARGET_FIRST_READ_P50_S,
                              status_302=len(seconds), copies_by_reason=made)
    result["summary"] += f"; all {len(seconds)} answers 302; copies made: {made if made is not None else '?'}"
    return result


def file_repeat_read(stack: Stack) -> dict:
    """Every file read again, ``--repeats`` times."""
    reader = requests.Session()
    if not stack.read_files:  # run alone: files of its own, read once first
        for _ in range(stack.args.file_count):
            file = put_small_file(stack)
            read_file(stack, reader, file)
            stack.read_files.append(file)
    seconds, samples = [], []
    for _ in range(stack.args.repeats):
        for file in stack.read_files:
            elapsed, location = read_file(stack, reader, file)
            seconds.append(elapsed)
            samples.append((location, file))
    return file_read_result(stack, f"repeat reads ({stack.args.repeats} per file)", seconds, samples,
                            TARGET_REPEAT_READ_P50_S, reads_per_file=stack.args.repeats)


def listing_latency(stack: Stack, replica: str) -> dict:
    """What the lookup of a file's latest version costs on its own: a prefix listing of the main
    bucket (``files/{uuid}.``), as the checkout service makes it, timed 20 times."""
    storage = stack.aws if replica == "aws" else stack.gcp
    seconds = []
    for _ in range(20):
        started = time.perf_counter()
        storage.versions(f"files/{new_uuid()}.")
        seconds.append(time.perf_counter() - started)
    return distribution(seconds)


def file_first_read_inline(stack: Stack) -> dict:
    """Each fresh file read once from gcp, the replica it was copied to, as soon as the replicator
    wrote it there: nothing warms that replica's checkout bucket, so every read makes its copy inline.
    Replication is awaited on the bucket itself, so the checkout service learns nothing beforehand."""
    copies_before, reader, gcs = checkout_copies(stack, "gcp"), requests.Session(), stack.gcp.store
    main_bucket = stack.settings.bucket("gcp")
    seconds, samples, files = [], [], []
    for _ in range(stack.args.file_count):
        file = put_small_file(stack)
        stack.wait(lambda: gcs.exists(main_bucket, f"files/{file['uuid']}.{file['version']}"),
                   f"file {file['uuid']} replicated to gcp", interval=0.01)
        elapsed, location = read_file(stack, reader, file, "gcp")
        seconds.append(elapsed)
        samples.append((location, file))
        files.append(file)
    copies_after = checkout_copies(stack, "gcp")
    made = None if copies_before is None or copies_after is None else \
        {reason: count - copies_before.get(reason, 0) for reason, count in copies_after.items()
         if count - copies_before.get(reason, 0)}
    result = file_read_result(stack, "first reads from gcp (inline copies)", seconds, samples, None, files=files,
                              replica="gcp", status_302=len(seconds), copies_by_reason=made,
                              latest_version_listing=listing_latency(stack, "gcp"))
    result["summary"] += (f"; all {len(seconds)} answers 302; copies made: {made if made is not None else '?'}; "
                          f"the latest-version listing alone p50 "
                          f"{result['latest_version_listing']['p50_s'] * 1000:.1f} ms")
    return result


SCENARIOS = {"bundle_checkout": bundle_checkout, "file_first_read": file_first_read,
             "file_repeat_read": file_repeat_read, "file_first_read_inline": file_first_read_inline}


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
    parser.add_argument("--keep", action="store_true", help="keep the copies in the dss-bench-* buckets")
    parser.add_argument("--file-count", type=int, default=200, help="file_first_read / file_repeat_read: files")
    parser.add_argument("--file-kib", type=int, default=4, help="file_first_read / file_repeat_read: file size")
    parser.add_argument("--repeats", type=int, default=5, help="file_repeat_read: reads of each file")
    parser.add_argument("--checkout-metrics", default="http://127.0.0.1:9106/metrics",
                        help="file_first_read: the checkout service's Prometheus exporter")
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
