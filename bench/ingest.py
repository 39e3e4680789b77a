"""Ingest benchmark: PUT /files and GET /bundles through the gateway, against raw boto3 baselines
measured in the same run on the same S3 emulator.

    make up && .venv/bin/python bench/ingest.py            # or: make bench

Reports (stdout table + JSON in var/bench/ingest-<time>.json):
  - 4 KiB PUT /files latency p50/p99 and throughput vs raw `copy_object` of the same objects;
  - 256 MiB ingest time (PUT 202 -> HEAD 200) vs reading the object once with `get_object`;
  - GET /bundles latency for a 1000-file bundle (first page and all pages);
  - peak RSS of the files service process while ingesting a 1 GiB file.
Not part of `make test`.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import pathlib
import statistics
import sys
import time

import boto3
import psutil
import requests

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import PeakRSS, percentile  # noqa: E402
from devtools.fakes import stage_large_object, stage_object  # noqa: E402
from devtools.tokens import mint_token_for_settings  # noqa: E402
from shared.blobstore import open_blobstore  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.identifiers import new_uuid, new_version  # noqa: E402

MiB = 1024 * 1024


def summary(values):
    return {"p50_ms": percentile(values, 50) * 1000, "p99_ms": percentile(values, 99) * 1000,
            "mean_ms": statistics.fmean(values) * 1000, "n": len(values)}


class Bench:
    def __init__(self, args):
        self.args = args
        self.settings = Settings.from_config({})
        self.gateway = args.gateway.rstrip("/")
        self.store = open_blobstore("aws", self.settings)
        self.staging = self.settings.bucket("aws", "staging")
        self.main = self.settings.bucket("aws", "main")
        self.s3 = boto3.client("s3", endpoint_url=self.settings.s3_endpoint or None, region_name=self.settings.s3_region,
                               aws_access_key_id=self.settings.s3_access_key_id or "test",
                               aws_secret_access_key=self.settings.s3_secret_access_key or "test")
        token = mint_token_for_settings(self.settings, "bench@example.org", ["dbio"])
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    # --- operations ----------------------------------------------------------------------------
    def put_file(self, source_url, uuid=None, version=None):
        uuid, version = uuid or new_uuid(), version or new_version()
        started = time.perf_counter()
        response = self.http.put(f"{self.gateway}/v1/files/{uuid}", params={"version": version},
                                 json={"source_url": source_url, "creator_uid": 1})
        elapsed = time.perf_counter() - started
        if response.status_code not in (200, 201, 202):
            raise RuntimeError(f"PUT /files answered {response.status_code}: {response.text}")
        return uuid, version, elapsed, response.status_code

    def wait_for_file(self, uuid, version, timeout=600):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.http.head(f"{self.gateway}/v1/files/{uuid}", params={"replica": "aws", "version": version})
            if response.status_code == 200:
                return
            time.sleep(0.02)
        raise TimeoutError(f"file {uuid} not ingested within {timeout}s")

    def raw_copy(self, source_url):
        key = source_url.split("/", 3)[3]
        started = time.perf_counter()
        self.s3.copy_object(Bucket=self.main, Key=f"bench-baseline/{new_uuid()}",
                            CopySource={"Bucket": self.staging, "Key": key})
        return time.perf_counter() - started

    def raw_read(self, source_url):
        key = source_url.split("/", 3)[3]
        started = time.perf_counter()
        body = self.s3.get_object(Bucket=self.staging, Key=key)["Body"]
        while body.read(8 * MiB):
            pass
        return time.perf_counter() - started

    # --- scenarios -----------------------------------------------------------------------------
    def small_files(self):
        count, data = self.args.small_count, os.urandom(4096)
        sources = [stage_object(self.store, self.staging, data + i.to_bytes(4, "big"))[0] for i in range(count * 2)]
        # interleave service and baseline so drift on a shared machine affects both alike
        service, raw = [], []
        for source in sources[:count]:
            service.append(self.put_file(source)[2])
            raw.append(self.raw_copy(source))
        concurrency = self.args.concurrency
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            started = time.perf_counter()
            list(pool.map(self.put_file, sources[count:]))
            service_tput = count / (time.perf_counter() - started)
            started = time.perf_counter()
            list(pool.map(self.raw_copy, sources[count:]))
            raw_tput = count / (time.perf_counter() - started)
        return {"put_files": summary(service), "raw_copy_object": summary(raw),
                "p50_ratio": percentile(service, 50) / percentile(raw, 50),
                "throughput_files_per_s": service_tput, "raw_throughput_per_s": raw_tput,
                "throughput_ratio": raw_tput / service_tput, "concurrency": concurrency}

    def large_files(self):
        size = self.args.large_mib * MiB
        results = []
        for _ in range(self.args.large_count):
            source, _ = stage_large_object(self.store, self.staging, size)
            read = self.raw_read(source)
            copy = self.raw_copy(source)
            uuid, version, _, status = self.put_file(source)
            started = time.perf_counter()
            self.wait_for_file(uuid, version)
            ingest = time.perf_counter() - started
            results.append({"read_s": read, "copy_object_s": copy, "status": status,
                            "ingest_s": ingest + 0.0, "ratio_vs_read": ingest / read})
        ingest = [r["ingest_s"] for r in results]
        reads = [r["read_s"] for r in results]
        floor = [r["read_s"] + r["copy_object_s"] for r in results]
        return {"size_mib": self.args.large_mib, "runs": results,
                "ingest_mib_per_s": size / MiB / statistics.median(ingest),
                "read_mib_per_s": size / MiB / statistics.median(reads),
                "ratio_vs_read": statistics.median(ingest) / statistics.median(reads),
                # Verification needs one read and the layout one copy: their raw sum is the floor.
                "ratio_vs_read_plus_copy": statistics.median(ingest) / statistics.median(floor)}

    def huge_file_rss(self):
        pid = int((ROOT / "var/run/files.pid").read_text())
        size = self.args.huge_mib * MiB
        source, _ = stage_large_object(self.store, self.staging, size)
        baseline = psutil.Process(pid).memory_info().rss
        with PeakRSS(pid) as rss:
            uuid, version, _, _ = self.put_file(source)
            started = time.perf_counter()
            self.wait_for_file(uuid, version)
            elapsed = time.perf_counter() - started
        return {"size_mib": self.args.huge_mib, "ingest_s": elapsed, "rss_before_mib": baseline / MiB,
                "peak_rss_mib": rss.peak / MiB}

    def bundle_reads(self):
        count = self.args.bundle_files
        sources = [stage_object(self.store, self.staging, os.urandom(64))[0] for _ in range(count)]
        with concurrent.futures.ThreadPoolExecutor(self.args.concurrency) as pool:
            files = list(pool.map(self.put_file, sources))
        body = {"creator_uid": 1, "files": [{"uuid": u, "version": v, "name": f"file_{i:04d}.bin", "indexed": False}
                                            for i, (u, v, _, _) in enumerate(files)]}
        uuid, version = new_uuid(), new_version()
        response = self.http.put(f"{self.gateway}/v1/bundles/{uuid}", params={"replica": "aws", "version": version},
                                 json=body)
        response.raise_for_status()
        first_page, all_pages = [], []
        for _ in range(self.args.bundle_reads):
            started = time.perf_counter()
            response = requests.get(f"{self.gateway}/v1/bundles/{uuid}", params={"replica": "aws"})
            first_page.append(time.perf_counter() - started)
            got = len(response.json()["bundle"]["files"])
            while "next" in response.links:
                response = requests.get(response.links["next"]["url"])
                got += len(response.json()["bundle"]["files"])
            all_pages.append(time.perf_counter() - started)
            assert got == count, got
        return {"files": count, "first_page": summary(first_page), "all_pages": summary(all_pages)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", default=os.environ.get("DSS_BENCH_GATEWAY", "http://127.0.0.1:8080"))
    parser.add_argument("--small-count", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--large-mib", type=int, default=256)
    parser.add_argument("--large-count", type=int, default=3)
    parser.add_argument("--huge-mib", type=int, default=1024)
    parser.add_argument("--bundle-files", type=int, default=1000)
    parser.add_argument("--bundle-reads", type=int, default=30)
    args = parser.parse_args(argv)
    bench = Bench(args)
    results = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(), "args": vars(args)}
    for name in ("small_files", "large_files", "huge_file_rss", "bundle_reads"):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = getattr(bench, name)()
        print(json.dumps({name: results[name]}, indent=2), flush=True)
    out = ROOT / "var" / "bench" / f"ingest-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    small, large, huge = results["small_files"], results["large_files"], results["huge_file_rss"]
    print(f"\n4 KiB PUT /files p50 {small['put_files']['p50_ms']:.1f} ms (raw copy_object "
          f"{small['raw_copy_object']['p50_ms']:.1f} ms, ratio {small['p50_ratio']:.2f}x; target <= 5x); "
          f"p99 {small['put_files']['p99_ms']:.1f} ms; {small['throughput_files_per_s']:.0f} files/s "
          f"(raw {small['raw_throughput_per_s']:.0f}/s)")
    print(f"{large['size_mib']} MiB ingest {large['ingest_mib_per_s']:.0f} MiB/s vs read-once "
          f"{large['read_mib_per_s']:.0f} MiB/s: ratio {large['ratio_vs_read']:.2f}x (target <= 2x); "
          f"vs raw read + raw copy_object: {large['ratio_vs_read_plus_copy']:.2f}x")
    print(f"{huge['size_mib']} MiB ingest: files-service peak RSS {huge['peak_rss_mib']:.0f} MiB (target < 300)")
    print(f"GET /bundles ({results['bundle_reads']['files']} files): first page p50 "
          f"{results['bundle_reads']['first_page']['p50_ms']:.1f} ms, all pages p50 "
          f"{results['bundle_reads']['all_pages']['p50_ms']:.1f} ms")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
