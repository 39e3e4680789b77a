"""API description benchmark: GET /v1/swagger.json against the running `make up` stack.

    make up && .venv/bin/python bench/api_description.py            # or: make bench
    .venv/bin/python bench/api_description.py --gateway https://127.0.0.1:8080 --requests 2000

Every DSS CLI invocation may read the description first, so it should cost about what a static
answer costs. Measured over one keep-alive connection, N requests each, after a warm-up:
  - the description (about 50 KB of JSON), as a client without a copy gets it (200);
  - the description revalidated with its ETag (`If-None-Match`: a bodyless 304);
  - the page at / (the Swagger UI page, a small static answer);
  - a 404 answered by the router before any worker runs: the least any answer costs.
Latency p50/p99 per case, stdout table + JSON in var/bench/api_description-<time>.json. Not part
of `make test`.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import requests

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import check_stack_health, percentile  # noqa: E402


def measure(session: requests.Session, url: str, n: int, headers: dict | None = None) -> dict:
    for _ in range(min(n, 20)):  # warm-up: connection, caches
        session.get(url, headers=headers, timeout=30)
    times, status, size = [], None, 0
    for _ in range(n):
        start = time.perf_counter()
        response = session.get(url, headers=headers, timeout=30)
        times.append((time.perf_counter() - start) * 1000)
        status, size = response.status_code, len(response.content)
    return {"n": n, "status": status, "bytes": size,
            "p50_ms": round(percentile(times, 50), 2), "p99_ms": round(percentile(times, 99), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", default=os.environ.get("DSS_BENCH_GATEWAY", "http://127.0.0.1:8080"))
    parser.add_argument("--requests", type=int, default=1000, help="requests per case")
    parser.add_argument("--ca-file", default=str(ROOT / "var" / "tls" / "ca.pem"),
                        help="CA of an https gateway (default: the development CA of `make up TLS=1`)")
    args = parser.parse_args()
    gateway = args.gateway.rstrip("/")
    if gateway.startswith("https:"):  # requests (and check_stack_health) trust this CA only
        os.environ["REQUESTS_CA_BUNDLE"] = args.ca_file
    check_stack_health(gateway)
    with requests.Session() as session:
        etag = session.get(f"{gateway}/v1/swagger.json", timeout=30).headers.get("ETag")
        cases = {"swagger.json": measure(session, f"{gateway}/v1/swagger.json", args.requests)}
        if etag:
            cases["swagger.json If-None-Match"] = measure(session, f"{gateway}/v1/swagger.json", args.requests,
                                                          {"If-None-Match": etag})
        cases["page /"] = measure(session, f"{gateway}/", args.requests)
        cases["404 (router)"] = measure(session, f"{gateway}/v1/no-such-route", args.requests)
    print(f"{'case':28} {'status':>6} {'bytes':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for name, case in cases.items():
        print(f"{name:28} {case['status']:>6} {case['bytes']:>7} {case['p50_ms']:>8} {case['p99_ms']:>8}")
    out = ROOT / "var" / "bench" / f"api_description-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"gateway": gateway, "cases": cases}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
