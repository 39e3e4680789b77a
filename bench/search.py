"""Search benchmark of the embedded engine (tantivy), against a brute-force Python evaluation of the
same queries over the same documents, measured in the same run.

    .venv/bin/python bench/search.py                     # 100,000 bundles (a few minutes)
    .venv/bin/python bench/search.py --bundles 10000     # quicker

Needs no running stack. Reports (stdout summary + JSON in var/bench/search-<time>.json):
  - indexing: bundles/s of `bulk_put` of N synthetic HCA-like bundle documents into a fresh index
    (commits included), and the index size on disk;
  - search: p50/p99 latency of `search()` (first page of 100 ids, sorted by id, with the total) for
    ten query shapes, each run with varied values, overall and per shape;
  - baseline: the same queries answered by evaluating the query tree over every document in
    Python (documents flattened beforehand, so the baseline is not charged for that), p50 per
    shape and the ratio of medians;
  - percolation: one new document against 1,000 stored subscriptions (the same ten shapes with
    varied values), p50/p99 over repeated runs.
Targets (issue 4): search p50 < 20 ms at 100,000 bundles, >= 50x faster than brute force,
indexing >= 500 bundles/s, percolation < 50 ms.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid as uuid_module

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.search.documents import flatten  # noqa: E402
from shared.search.embedded import EmbeddedIndex  # noqa: E402
from shared.search.evaluate import matches  # noqa: E402
from shared.search.query import parse_search  # noqa: E402

SPECIES = [("Homo sapiens", 9606), ("Mus musculus", 10090), ("Danio rerio", 7955)]
ORGANS = ["liver", "kidney", "brain", "heart", "lung", "blood", "skin", "pancreas", "spleen", "colon",
          "stomach", "eye", "bone marrow", "thymus", "lymph node", "adipose tissue", "muscle", "bladder",
          "prostate", "breast"]
LIBRARIES = ["10X v2 sequencing", "10X 3' v3 sequencing", "Smart-seq2", "Drop-seq", "CEL-seq2", "inDrop"]
WORDS = ["atlas", "cell", "single", "immune", "development", "aging", "tumor", "stromal", "epithelium",
         "human", "mouse", "fetal", "adult", "survey", "response", "niche", "progenitor", "regeneration",
         "inflammation", "landscape", "map", "profiling", "zonation", "injury", "disease", "healthy"]
SEXES = ["female", "male", "unknown"]
SHAPES = ["term", "terms", "match", "match_phrase", "range_number", "range_string_age", "range_date",
          "bool", "prefix_wildcard", "query_string"]

TITLE = "files.project_json.project_core.project_title.text"
ORGAN = "files.specimen_from_organism_json.organ.text"
SPECIES_PATH = "files.donor_organism_json.genus_species.text"
SEX = "files.donor_organism_json.sex"
AGE = "files.donor_organism_json.organism_age"
CELLS = "files.cell_suspension_json.total_estimated_cells"
DATE = "files.project_json.submission_date"
LIBRARY = "files.library_preparation_protocol_json.library_construction_approach.text"


def bundle(rng: random.Random, n: int) -> tuple[str, dict]:
    uuid = str(uuid_module.UUID(int=rng.getrandbits(128), version=4))
    when = datetime.datetime(2016, 1, 1) + datetime.timedelta(seconds=rng.randrange(5 * 365 * 86400))
    version = when.strftime("%Y-%m-%dT%H%M%S.%fZ")
    species, taxon = rng.choices(SPECIES, weights=[6, 3, 1])[0]
    organs = rng.sample(ORGANS, rng.choice([1, 1, 1, 2, 3]))
    title = " ".join(rng.sample(WORDS, rng.randint(3, 7))).capitalize()
    files = {
        "donor_organism_json": [{
            "genus_species": [{"text": species, "ontology": f"NCBITaxon:{taxon}"}],
            "organism_age": str(rng.randint(0, 90)),
            "organism_age_unit": {"text": "year"},
            "sex": rng.choice(SEXES),
            "biomaterial_core": {"biomaterial_id": f"donor_{n}", "ncbi_taxon_id": [taxon]},
        }],
        "specimen_from_organism_json": [
            {"organ": {"text": organ}, "biomaterial_core": {"biomaterial_id": f"specimen_{n}_{i}"}}
            for i, organ in enumerate(organs)],
        "library_preparation_protocol_json": [{
            "library_construction_approach": {"text": rng.choice(LIBRARIES)},
            "paired_end": rng.random() < 0.4,
            "protocol_core": {"protocol_id": f"lib_{n}"},
        }],
        "cell_suspension_json": [{"total_estimated_cells": rng.randint(50, 50000)}],
        "project_json": [{"project_core": {"project_title": title, "project_short_name": f"project_{n % 2000}"},
                          "submission_date": when.strftime("%Y-%m-%dT%H:%M:%SZ")}],
    }
    manifest = {"version": version, "creator_uid": 8000 + n % 50,
                "files": [{"name": f"{key.removesuffix('_json')}_0.json", "uuid": str(uuid_module.UUID(int=rng.getrandbits(128), version=4)),
                           "version": version, "indexed": True, "content-type": "application/json",
                           "size": rng.randint(500, 5000)} for key in files]}
    return f"{uuid}.{version}", {"uuid": uuid, "manifest": manifest, "files": files}


def query(rng: random.Random, shape: str) -> dict:
    if shape == "term":
        body = {"term": {SPECIES_PATH: rng.choice(SPECIES)[0]}}
    elif shape == "terms":
        body = {"terms": {ORGAN: rng.sample(ORGANS, 2)}}
    elif shape == "match":
        body = {"match": {TITLE: rng.choice(WORDS)}}
    elif shape == "match_phrase":
        body = {"match_phrase": {TITLE: " ".join(rng.sample(WORDS, 2))}}
    elif shape == "range_number":
        low = rng.randint(0, 45000)
        body = {"range": {CELLS: {"gte": low, "lt": low + rng.randint(500, 5000)}}}
    elif shape == "range_string_age":
        low = rng.randint(0, 80)
        body = {"range": {AGE: {"gte": low, "lte": low + 10}}}
    elif shape == "range_date":
        start = datetime.date(2016, 1, 1) + datetime.timedelta(days=rng.randrange(1700))
        body = {"range": {DATE: {"gte": start.isoformat(), "lt": (start + datetime.timedelta(days=30)).isoformat()}}}
    elif shape == "bool":
        body = {"bool": {
            "must": [{"term": {SPECIES_PATH: "homo sapiens"}}],
            "filter": [{"range": {CELLS: {"gte": rng.randint(1000, 40000)}}}],
            "must_not": [{"term": {SEX: rng.choice(SEXES)}}],
            "should": [{"match": {TITLE: rng.choice(WORDS)}}, {"terms": {ORGAN: rng.sample(ORGANS, 3)}}],
            "minimum_should_match": 1}}
    elif shape == "prefix_wildcard":
        body = rng.choice([{"prefix": {LIBRARY: rng.choice(["10x", "smart", "drop", "cel"])}},
                           {"wildcard": {ORGAN: rng.choice(["*ver", "b*n", "*ea*", "l?ng"])}}])
    elif shape == "query_string":
        low = rng.randint(0, 60)
        body = {"query_string": {"query": f"{SEX}:{rng.choice(SEXES)} AND {AGE}:[{low} TO {low + 20}] "
                                          f"AND {rng.choice(WORDS)}"}}
    else:
        raise ValueError(shape)
    return {"query": body}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=int, default=100_000)
    parser.add_argument("--queries-per-shape", type=int, default=50)
    parser.add_argument("--baseline-queries-per-shape", type=int, default=3)
    parser.add_argument("--subscriptions", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--dir", help="index directory (default: a temporary one, removed after)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    directory = pathlib.Path(args.dir) if args.dir else pathlib.Path(tempfile.mkdtemp(prefix="dss-bench-search-"))
    # Other work on the machine slows every figure: the load is part of the report.
    report: dict = {"bundles": args.bundles, "seed": args.seed, "cpus": os.cpu_count(),
                    "load_average_at_start": os.getloadavg()}
    try:
        print(f"generating {args.bundles} bundles...", flush=True)
        docs = [bundle(rng, n) for n in range(args.bundles)]

        index = EmbeddedIndex(directory, "aws")
        started = time.perf_counter()
        index.bulk_put(docs)
        index.refresh()
        elapsed = time.perf_counter() - started
        size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
        report["indexing"] = {"seconds": round(elapsed, 2), "bundles_per_second": round(args.bundles / elapsed),
                              "index_bytes": size}
        print(f"indexing: {args.bundles} bundles in {elapsed:.1f} s = {args.bundles / elapsed:,.0f} bundles/s; "
              f"{size / 1e6:.0f} MB on disk", flush=True)

        # Warm-up: the first searches open files and fill caches.
        for shape in SHAPES:
            index.search(query(rng, shape), size=100)

        queries = {shape: [query(rng, shape) for _ in range(args.queries_per_shape)] for shape in SHAPES}
        latencies: dict[str, list[float]] = {shape: [] for shape in SHAPES}
        totals: dict[str, list[int]] = {shape: [0] * args.queries_per_shape for shape in SHAPES}
        order = [(shape, i) for shape in SHAPES for i in range(args.queries_per_shape)]
        rng.shuffle(order)  # a mix, not one shape at a time
        for shape, i in order:
            t = time.perf_counter()
            page = index.search(queries[shape][i], size=100)
            latencies[shape].append((time.perf_counter() - t) * 1000)
            totals[shape][i] = page["total"]
        everything = [v for values in latencies.values() for v in values]

        print("flattening the documents for the brute-force baseline...", flush=True)
        flat = [(doc_id, flatten(doc)) for doc_id, doc in docs]
        baseline: dict[str, list[float]] = {shape: [] for shape in SHAPES}
        for shape in SHAPES:
            for i in range(args.baseline_queries_per_shape):
                t = time.perf_counter()
                node = parse_search(queries[shape][i])
                hits = sorted((doc_id for doc_id, f in flat if matches(node, f, doc_id)), reverse=True)
                baseline[shape].append((time.perf_counter() - t) * 1000)
                if len(hits) != totals[shape][i]:  # the two must agree, or the ratio means nothing
                    raise SystemExit(f"{shape} #{i}: engine {totals[shape][i]} hits, brute force {len(hits)}")
        base_all = [v for values in baseline.values() for v in values]

        report["search"] = {
            "p50_ms": round(statistics.median(everything), 3), "p99_ms": round(pct(everything, 99), 3),
            "baseline_p50_ms": round(statistics.median(base_all), 1),
            "speedup_p50": round(statistics.median(base_all) / statistics.median(everything), 1),
            "shapes": {shape: {"p50_ms": round(statistics.median(latencies[shape]), 3),
                               "p99_ms": round(pct(latencies[shape], 99), 3),
                               "median_hits": int(statistics.median(totals[shape])),
                               "baseline_p50_ms": round(statistics.median(baseline[shape]), 1),
                               "speedup": round(statistics.median(baseline[shape]) / statistics.median(latencies[shape]), 1)}
                       for shape in SHAPES},
        }
        print(f"\nsearch (first page of 100, sorted, with total) over {args.bundles} bundles:")
        print(f"  {'shape':<18}{'p50 ms':>9}{'p99 ms':>9}{'hits':>8}{'brute p50 ms':>14}{'speedup':>9}")
        for shape, figures in report["search"]["shapes"].items():
            print(f"  {shape:<18}{figures['p50_ms']:>9.2f}{figures['p99_ms']:>9.2f}{figures['median_hits']:>8}"
                  f"{figures['baseline_p50_ms']:>14.1f}{figures['speedup']:>8.0f}x")
        s = report["search"]
        print(f"  {'all':<18}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}{'':>8}{s['baseline_p50_ms']:>14.1f}"
              f"{s['speedup_p50']:>8.0f}x")

        for n in range(args.subscriptions):
            index.put_subscription(f"sub{n:04d}", query(rng, SHAPES[n % len(SHAPES)]))
        probe = bundle(rng, args.bundles + 1)[1]
        index.percolate(probe)  # parses and caches the stored queries
        runs = []
        matched = 0
        for _ in range(30):
            document = bundle(rng, args.bundles + 2)[1]
            t = time.perf_counter()
            matched = len(index.percolate(document))
            runs.append((time.perf_counter() - t) * 1000)
        report["percolation"] = {"subscriptions": args.subscriptions, "p50_ms": round(statistics.median(runs), 2),
                                 "p99_ms": round(pct(runs, 99), 2), "last_matched": matched}
        print(f"\npercolation: one document against {args.subscriptions} subscriptions: "
              f"p50 {report['percolation']['p50_ms']:.1f} ms, p99 {report['percolation']['p99_ms']:.1f} ms")
        index.close()

        targets = {
            "search_p50_under_20ms": s["p50_ms"] < 20,
            "speedup_at_least_50x": s["speedup_p50"] >= 50,
            "indexing_at_least_500_per_s": report["indexing"]["bundles_per_second"] >= 500,
            "percolation_under_50ms": report["percolation"]["p50_ms"] < 50,
        }
        report["targets"] = targets
        report["load_average_at_end"] = os.getloadavg()
        print(f"load average (start / end): {report['load_average_at_start'][0]:.1f} / "
              f"{report['load_average_at_end'][0]:.1f} on {os.cpu_count()} CPUs")
        print("\ntargets: " + ", ".join(f"{name} {'OK' if ok else 'MISSED'}" for name, ok in targets.items()))
        out = ROOT / "var" / "bench"
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"search-{datetime.datetime.now():%Y%m%dT%H%M%S}.json"
        path.write_text(json.dumps(report, indent=2))
        print(f"report: {path}")
        return 0 if all(targets.values()) else 1
    finally:
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
