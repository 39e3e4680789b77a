"""One behaviour for both search backends: every test runs on the embedded engine (tantivy in a
temporary directory) and on OpenSearch.

OpenSearch is `openmock` here (no server can run on this machine); with ``OPENSEARCH_URL`` set the
same tests run against that cluster instead, on throw-away indexes deleted afterwards:

    OPENSEARCH_URL=http://127.0.0.1:9200 .venv/bin/pytest tests/conformance/test_search_backends.py

openmock only imitates a little of OpenSearch: its queries compare `_source` values in Python,
case-sensitively, cannot walk a path through an array of objects (every HCA metadata path does),
know no `ids`, `prefix`, `wildcard`, `match_phrase`, `query_string` or `percolate`, ignore
`search_after`, and cannot list indexes by pattern. Tests (and rows of the query table: the
``mock_ok`` column) that need those are marked ``needs_real_opensearch``: on the OpenSearch backend
they are collected only with ``OPENSEARCH_URL`` set (the root conftest.py leaves them out otherwise,
and the summary at the end of the run says how many and why), so none of them reports a pass it did
not check. Everything else (writes, gets, bulk, tombstones, sort, totals, the first page's cursor,
storing and deleting subscriptions, the alias switch, the typed 400s) runs on openmock too.
"""
from __future__ import annotations

import json
import os
import uuid as uuidlib
from unittest import mock

import pytest

from shared.search import ElasticsearchBadRequest, QueryTooComplex, SearchTimeout
from shared.search.documents import flatten
from shared.search.embedded import EmbeddedIndex
from shared.search.evaluate import matches
from shared.search.opensearch import OpenSearchIndex
from shared.search.query import parse_search

OPENSEARCH_URL = os.environ.get("OPENSEARCH_URL", "")
# On the OpenSearch backend, only a real cluster can answer this (see the module docstring).
needs_real_opensearch = pytest.mark.needs_real_opensearch

# --- the corpus: 30 HCA-like bundles -------------------------------------------------------------
# name, species, organs, organism_age (a string, as in HCA), sex, library construction,
# paired_end, total_estimated_cells, submission_date, project title
ROWS = [
    ("b01", "Homo sapiens", ["liver"], "45", "female", "10X v2 sequencing", False, 5000, "2018-01-10", "Liver cell atlas of adult donors"),
    ("b02", "Homo sapiens", ["liver", "kidney"], "32", "male", "Smart-seq2", True, 384, "2018-02-20T09:30:00Z", "Kidney and liver single cell survey"),
    ("b03", "Mus musculus", ["brain"], "2", "female", "10X v2 sequencing", False, 12000, "2018-03-05", "Mouse brain development"),
    ("b04", "Mus musculus", ["brain", "spinal cord"], "1", "male", "Drop-seq", False, 8000, "2018-04-01", "Mouse nervous system atlas"),
    ("b05", "Homo sapiens", ["blood"], "60", "female", "10X 3' v3 sequencing", False, 20000, "2018-05-12", "Immune cells of human blood"),
    ("b06", "Homo sapiens", ["lung"], "71", "male", "Smart-seq2", True, 96, "2018-06-30", "Lung epithelium in aging"),
    ("b07", "Homo sapiens", ["heart"], "29", "female", "10X v2 sequencing", False, 7000, "2018-07-04", "Human heart cell atlas"),
    ("b08", "Mus musculus", ["heart"], "0.5", "male", "Smart-seq2", True, 192, "2018-08-15", "Mouse cardiac development"),
    ("b09", "Homo sapiens", ["pancreas"], "50", "female", "CEL-seq2", True, 2500, "2018-09-09", "Pancreatic islet cells"),
    ("b10", "Homo sapiens", ["skin"], "38", "unknown", "10X v2 sequencing", False, 9000, "2018-10-01", "Skin fibroblasts in wound healing"),
    ("b11", "Homo sapiens", ["kidney"], "55", "male", "10X v2 sequencing", False, 11000, "2018-11-20", "Kidney cell atlas"),
    ("b12", "Mus musculus", ["liver"], "3", "female", "Smart-seq2", True, 384, "2018-12-01", "Mouse liver zonation"),
    ("b13", "Homo sapiens", ["brain"], "80", "female", "Smart-seq2", True, 480, "2019-01-15", "Human cortex in aging"),
    ("b14", "Homo sapiens", ["bone marrow"], "25", "male", "10X 3' v3 sequencing", False, 30000, "2019-02-02", "Bone marrow hematopoiesis"),
    ("b15", "Homo sapiens", ["lung", "trachea"], "66", "female", "10X v2 sequencing", False, 14000, "2019-03-03", "Airway cell atlas"),
    ("b16", "Mus musculus", ["lung"], "1", "female", "Drop-seq", False, 6000, "2019-04-04", "Mouse lung development"),
    ("b17", "Homo sapiens", ["eye"], "44", "male", "Smart-seq2", True, 300, "2019-05-05", "Retina single cell survey"),
    ("b18", "Homo sapiens", ["liver"], "unknown", "unknown", None, None, 4000, "2019-06-06", "Liver cancer biopsies"),
    ("b19", "Homo sapiens", ["blood"], "35", "female", "CEL-seq2", True, 1000, "2019-07-07", "Blood dendritic cells"),
    ("b20", "Mus musculus", ["blood"], "2", "male", "10X 3' v3 sequencing", False, 16000, "2019-08-08", "Mouse immune atlas"),
    ("b21", "Homo sapiens", ["kidney"], "9", "female", "Drop-seq", False, 5500, "2019-09-09", "Pediatric kidney"),
    ("b22", "Homo sapiens", ["heart", "lung"], "58", "male", "10X v2 sequencing", False, 10000, "2019-10-10", "Heart and lung of adult donors"),
    ("b23", "Homo sapiens", ["pancreas"], "47", "male", "Smart-seq2", True, 350, "2019-11-11", "Islet beta cells in diabetes"),
    ("b24", "Mus musculus", ["kidney"], "4", "female", "CEL-seq2", True, 900, "2019-12-12", "Mouse kidney injury"),
    ("b25", "Homo sapiens", ["skin"], "31", "female", "10X 3' v3 sequencing", False, 13000, "2020-01-01", "Skin immune cells"),
    ("b26", "Homo sapiens", ["brain"], "72", "male", "10X v2 sequencing", False, 18000, "2020-02-02", "Human brain atlas"),
    ("b27", "Homo sapiens", ["liver"], "41", "female", "Smart-seq2", True, 200, "2020-03-03T12:00:00Z", "Liver sinusoid cells"),
    ("b28", "Mus musculus", ["brain"], "1", "female", "10X v2 sequencing", False, 25000, "2020-04-04", "Mouse cortex cell atlas"),
    ("b29", "Homo sapiens", ["stomach"], "63", "male", "Drop-seq", False, 3000, "2020-05-05", "Gastric epithelium"),
    ("b30", "Homo sapiens", ["colon"], "27", "female", "10X v2 sequencing", False, 8500, "2020-06-06", "Colon cell atlas"),
]


def bundle_uuid(n: int) -> str:
    # Fixed width, so the id order is the numeric order of n.
    return f"{n:08x}-0000-4000-8000-{n:012x}"


def bundle_document(row, n: int, version: str, **changes) -> dict:
    name, species, organs, age, sex, library, paired, cells, date, title = row
    values = dict(zip(("species", "organs", "age", "sex", "library", "paired", "cells", "date", "title"),
                      row[1:]))
    values.update(changes)
    taxon = 9606 if values["species"] == "Homo sapiens" else 10090
    files = {
        "donor_organism_json": [{
            "genus_species": [{"text": values["species"], "ontology": f"NCBITaxon:{taxon}"}],
            "organism_age": values["age"],
            "organism_age_unit": {"text": "year"},
            "sex": values["sex"],
            "biomaterial_core": {"biomaterial_id": f"donor_{n}", "ncbi_taxon_id": [taxon]},
        }],
        "specimen_from_organism_json": [
            {"organ": {"text": organ}, "biomaterial_core": {"biomaterial_id": f"specimen_{n}_{i}"}}
            for i, organ in enumerate(values["organs"])],
        "cell_suspension_json": [{"total_estimated_cells": values["cells"]}],
        "project_json": [{"project_core": {"project_title": values["title"], "project_short_name": f"project{n}"},
                          "submission_date": values["date"]}],
    }
    if values["library"] is not None:
        files["library_preparation_protocol_json"] = [{
            "library_construction_approach": {"text": values["library"]},
            "paired_end": values["paired"],
            "protocol_core": {"protocol_id": f"lib_{n}"},
        }]
    return {
        "uuid": bundle_uuid(n),
        "manifest": {"version": version, "creator_uid": 8000 + n,
                     "files": [{"name": f"{key.removesuffix('_json')}_0.json", "indexed": True,
                                "content-type": "application/json"} for key in files]},
        "files": files,
    }


V2 = "2020-07-01T120000.000000Z"
V1 = "2018-01-01T000000.000000Z"
BUNDLES: dict[str, tuple[str, dict]] = {}  # name -> (doc id, document)
for index, row in enumerate(ROWS, start=1):
    BUNDLES[row[0]] = (f"{bundle_uuid(index)}.{V2}", bundle_document(row, index, V2))
# An older version of b01: the same uuid sorts it right after b01.
BUNDLES["b01v1"] = (f"{bundle_uuid(1)}.{V1}", bundle_document(ROWS[0], 1, V1, age="44", cells=4800))
TOMBSTONE = {"email": "admin@example.org", "reason": "withdrawn", "details": None, "admin_deleted": True}
# Two tombstoned bundles: one whose document was replaced after being searchable, one indexed as such.
DEAD = {"t1": (f"{bundle_uuid(31)}.{V2}", bundle_document(ROWS[0], 31, V2)),
        "t2": (f"{bundle_uuid(32)}.{V2}", TOMBSTONE)}
ID_TO_NAME = {doc_id: name for name, (doc_id, _) in BUNDLES.items()}
LIVE = sorted(BUNDLES)
MALES = ["b02", "b04", "b06", "b08", "b11", "b14", "b17", "b20", "b22", "b23", "b26", "b29"]
MICE = ["b03", "b04", "b08", "b12", "b16", "b20", "b24", "b28"]

TITLE = "files.project_json.project_core.project_title.text"
ORGAN = "files.specimen_from_organism_json.organ.text"
SPECIES = "files.donor_organism_json.genus_species.text"
SEX = "files.donor_organism_json.sex"
CELLS = "files.cell_suspension_json.total_estimated_cells"
DATE = "files.project_json.submission_date"
LIBRARY = "files.library_preparation_protocol_json.library_construction_approach.text"
PAIRED = "files.library_preparation_protocol_json.paired_end"

# name, es_query, expected bundle names, mock_ok (openmock answers it as OpenSearch would)
QUERIES = [
    ("match_all", {"query": {"match_all": {}}}, LIVE, True),
    ("empty body", {}, LIVE, True),
    ("term on a top-level keyword", {"query": {"term": {"uuid": bundle_uuid(5)}}}, ["b05"], True),
    ("range on manifest numbers", {"query": {"bool": {"filter": [{"range": {"manifest.creator_uid": {"gte": 8010, "lt": 8013}}}]}}},
     ["b10", "b11", "b12"], True),
    ("term through an object array", {"query": {"term": {SPECIES: "Mus musculus"}}}, MICE, False),
    ("term is case-insensitive on keywords", {"query": {"term": {SPECIES: "MUS MUSCULUS"}}}, MICE, False),
    ("match on analysed text", {"query": {"match": {TITLE: "atlas"}}},
     ["b01", "b01v1", "b04", "b07", "b11", "b15", "b20", "b26", "b28", "b30"], False),
    ("match with operator and", {"query": {"match": {TITLE: {"query": "cell atlas", "operator": "and"}}}},
     ["b01", "b01v1", "b07", "b11", "b15", "b28", "b30"], False),
    ("match_phrase", {"query": {"match_phrase": {TITLE: "single cell survey"}}}, ["b02", "b17"], False),
    ("match_phrase with slop", {"query": {"match_phrase": {TITLE: {"query": "liver cells", "slop": 1}}}}, ["b27"], False),
    ("multi_match over title and organ", {"query": {"multi_match": {"query": "kidney", "fields": [TITLE, ORGAN]}}},
     ["b02", "b11", "b21", "b24"], False),
    ("multi_match phrase", {"query": {"multi_match": {"query": "cell atlas", "type": "phrase", "fields": [TITLE]}}},
     ["b01", "b01v1", "b07", "b11", "b15", "b28", "b30"], False),
    ("terms", {"query": {"terms": {ORGAN: ["heart", "Lung"]}}}, ["b06", "b07", "b08", "b15", "b16", "b22"], False),
    ("numeric range on string ages", {"query": {"range": {"files.donor_organism_json.organism_age": {"gte": 60, "lt": 72}}}},
     ["b05", "b06", "b15", "b29"], False),
    ("numeric range", {"query": {"range": {CELLS: {"gt": 15000}}}}, ["b05", "b14", "b20", "b26", "b28"], False),
    ("date range, lte covers the day", {"query": {"range": {DATE: {"gte": "2019-01-01", "lte": "2019-03-03"}}}},
     ["b13", "b14", "b15"], False),
    ("date range with a time", {"query": {"range": {DATE: {"gt": "2020-03-03T11:00:00Z", "lt": "2020-05-01"}}}},
     ["b27", "b28"], False),
    ("string range", {"query": {"range": {SEX: {"gte": "m", "lt": "n"}}}}, MALES, False),
    ("missing field", {"query": {"bool": {"must_not": {"exists": {"field": LIBRARY}}}}}, ["b18"], False),
    ("exists", {"query": {"bool": {"filter": {"exists": {"field": PAIRED}}, "must_not": {"term": {PAIRED: False}}}}},
     ["b02", "b06", "b08", "b09", "b12", "b13", "b17", "b19", "b23", "b24", "b27"], False),
    ("prefix", {"query": {"prefix": {LIBRARY: "10x 3"}}}, ["b05", "b14", "b20", "b25"], False),
    ("wildcard *", {"query": {"wildcard": {ORGAN: "*ea*"}}}, ["b07", "b08", "b09", "b15", "b22", "b23"], False),
    ("wildcard ?", {"query": {"wildcard": {SEX: {"value": "?ale"}}}}, MALES, False),
    ("ids", {"query": {"ids": {"values": [BUNDLES["b03"][0], BUNDLES["b01v1"][0], "absent.id"]}}}, ["b01v1", "b03"], False),
    ("bool must/filter/must_not/should", {"query": {"bool": {
        "must": {"term": {SPECIES: "homo sapiens"}},
        "filter": [{"range": {CELLS: {"gte": 5000}}}],
        "must_not": [{"terms": {ORGAN: ["liver"]}}],
        "should": [{"match": {TITLE: "atlas"}}, {"term": {SEX: "female"}}],
        "minimum_should_match": 1}}},
     ["b05", "b07", "b11", "b15", "b21", "b25", "b26", "b30"], False),
    ("should with minimum_should_match 2", {"query": {"bool": {"should": [
        {"term": {SEX: "female"}}, {"match": {TITLE: "cell"}}, {"term": {PAIRED: True}}], "minimum_should_match": 2}}},
     ["b01", "b01v1", "b02", "b07", "b09", "b12", "b13", "b15", "b17", "b19", "b24", "b27", "b28", "b30"], False),
    ("clauses on different array elements", {"query": {"bool": {"must": [{"term": {ORGAN: "kidney"}}, {"term": {ORGAN: "liver"}}]}}},
     ["b02"], False),
    ("number in an array matched by a string", {"query": {"match": {"files.donor_organism_json.biomaterial_core.ncbi_taxon_id": "10090"}}},
     MICE, False),
    ("query_string fields with AND", {"query": {"query_string": {"query": f"{SEX}:female AND {ORGAN}:brain"}}},
     ["b03", "b13", "b28"], False),
    ("query_string phrase on all fields", {"query": {"query_string": {"query": '"immune cells"'}}}, ["b05", "b25"], False),
    ("query_string range and NOT", {"query": {"query_string": {"query": f"{CELLS}:[1000 TO 5000] AND NOT {SEX}:male"}}},
     ["b01", "b01v1", "b09", "b18", "b19"], False),
    ("query_string wildcard", {"query": {"query_string": {"query": f"{TITLE}:pancrea*"}}}, ["b09"], False),
    ("tombstone fields are never found", {"query": {"term": {"admin_deleted": True}}}, [], True),
]


# --- backends --------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["embedded", pytest.param("opensearch", marks=pytest.mark.opensearch)])
def kind(request):
    return request.param


def make_backend(kind: str, directory):
    """A fresh, empty index of the kind; with a cleanup callable."""
    if kind == "embedded":
        backend = EmbeddedIndex(directory, "aws")
        return backend, backend.close
    prefix = f"dsstest-{uuidlib.uuid4().hex[:12]}"
    if OPENSEARCH_URL:
        backend = OpenSearchIndex(OPENSEARCH_URL, "aws", prefix=prefix)

        def cleanup():
            # By name: clusters may refuse wildcard deletes (action.destructive_requires_name).
            for name in [f"{prefix}-aws-{g}" for g in backend.generations()] + [f"{prefix}-aws-subscriptions"]:
                backend.client.indices.delete(index=name, ignore=[404])
        return backend, cleanup
    import openmock
    fake = openmock.FakeOpenSearch()
    # What openmock's decorator does, for a fixture: every client made is the fake.
    patcher = mock.patch("opensearchpy.OpenSearch", lambda *args, **kwargs: fake)
    patcher.start()
    try:
        backend = OpenSearchIndex("http://openmock.invalid:9200", "aws", prefix=prefix)
    except Exception:
        patcher.stop()
        raise
    return backend, patcher.stop


@pytest.fixture(scope="module")
def loaded(kind, tmp_path_factory):
    """The corpus indexed once per backend: bulk writes, a replacement by a tombstone."""
    backend, cleanup = make_backend(kind, tmp_path_factory.mktemp("index"))
    try:
        backend.bulk_put(list(BUNDLES.values()) + [DEAD["t1"]])
        backend.put(*DEAD["t2"])
        backend.put(DEAD["t1"][0], TOMBSTONE)  # t1 was live; now tombstoned
        backend.refresh()
        yield backend
    finally:
        cleanup()


@pytest.fixture
def fresh(kind, tmp_path):
    backend, cleanup = make_backend(kind, tmp_path)
    try:
        yield backend
    finally:
        cleanup()


def names(page) -> list[str]:
    return sorted(ID_TO_NAME.get(hit["id"], hit["id"]) for hit in page["hits"])


# --- the query table -----------------------------------------------------------------------------

QUERY_ROWS = [pytest.param(*row, id=row[0], marks=() if row[3] else needs_real_opensearch) for row in QUERIES]


@pytest.mark.parametrize("name,es_query,expected,mock_ok", QUERY_ROWS)
def test_query_table(loaded, name, es_query, expected, mock_ok):
    page = loaded.search(es_query, size=100)
    assert names(page) == sorted(expected)
    assert page["total"] == len(expected)
    assert page["next"] is None


@pytest.mark.parametrize("name,es_query,expected,mock_ok", QUERIES, ids=[row[0] for row in QUERIES])
def test_query_table_by_the_percolation_evaluator(name, es_query, expected, mock_ok):
    # The evaluator percolates for the embedded backend: it must give the table's answers too.
    node = parse_search(es_query)
    found = [name for name, (doc_id, doc) in BUNDLES.items() if matches(node, flatten(doc), doc_id)]
    assert sorted(found) == sorted(expected)


def test_results_come_sorted_by_uuid_then_version_descending(loaded):
    page = loaded.search({"query": {"match_all": {}}}, size=100, include_source=True)
    ids = [hit["id"] for hit in page["hits"]]
    assert ids == sorted((doc_id for doc_id, _ in BUNDLES.values()), reverse=True)
    assert ids[-2:] == [BUNDLES["b01"][0], BUNDLES["b01v1"][0]]  # same uuid: newer version first
    assert page["hits"][0]["source"] == BUNDLES["b30"][1]
    assert all(hit["score"] is None for hit in page["hits"])
    assert "source" not in loaded.search({}, size=1)["hits"][0]


def test_a_page_short_of_the_total_says_where_the_next_begins(loaded):
    first = loaded.search({}, size=7)
    assert first["total"] == len(LIVE) and len(first["hits"]) == 7 and first["next"] == first["hits"][-1]["id"]
    assert [hit["id"] for hit in first["hits"]] == sorted((doc_id for doc_id, _ in BUNDLES.values()),
                                                          reverse=True)[:7]


@needs_real_opensearch  # openmock ignores search_after
def test_search_after_pages_through_everything_once(loaded):
    seen, cursor, pages = [], None, 0
    while True:
        page = loaded.search({"query": {"match_all": {}}}, size=7, search_after=cursor)
        assert page["total"] == len(LIVE)
        seen += [hit["id"] for hit in page["hits"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert pages == 5  # 31 documents: 4 full pages, then 3
    assert seen == sorted((doc_id for doc_id, _ in BUNDLES.values()), reverse=True)
    # A page that is exactly full still says whether more follow.
    assert loaded.search({}, size=len(LIVE))["next"] is None
    # Pages of one across the versions of one bundle (one uuid: the cursor falls between them).
    query = {"query": {"ids": {"values": [BUNDLES[n][0] for n in ("b01", "b01v1", "b02", "b03")]}}}
    seen, cursor = [], None
    for _ in range(4):
        page = loaded.search(query, size=1, search_after=cursor)
        seen += names(page)
        cursor = page["next"]
    assert seen == ["b03", "b02", "b01", "b01v1"] and cursor is None


def test_tombstoned_documents_are_never_returned(fresh):
    doc_id, document = BUNDLES["b05"]
    fresh.put(doc_id, document)
    fresh.refresh()
    assert [h["id"] for h in fresh.search({"query": {"term": {"uuid": bundle_uuid(5)}}})["hits"]] == [doc_id]
    fresh.put(doc_id, TOMBSTONE)  # the indexer replaces the document on bundle_tombstoned
    fresh.refresh()
    assert fresh.search({"query": {"match_all": {}}})["total"] == 0
    assert fresh.search({"query": {"exists": {"field": "reason"}}})["hits"] == []
    assert fresh.get(doc_id) == TOMBSTONE
    fresh.put(f"{bundle_uuid(40)}.{V1}", {"tombstone": True, "uuid": bundle_uuid(40)})
    fresh.refresh()
    assert fresh.search({})["total"] == 0


def test_put_replaces_and_delete_removes(fresh):
    doc_id, document = BUNDLES["b07"]
    fresh.put(doc_id, document)
    fresh.put(doc_id, dict(document, uuid="replaced"))
    fresh.refresh()
    assert fresh.get(doc_id)["uuid"] == "replaced"
    assert fresh.search({})["total"] == 1
    fresh.delete(doc_id)
    fresh.delete(doc_id)  # absent: no error
    fresh.refresh()
    assert fresh.get(doc_id) is None
    assert fresh.search({})["total"] == 0


BAD_QUERIES = [
    ({"query": {"fuzzy": {"a": "b"}}}, "[fuzzy]"),
    ({"query": {"regexp": {"a": "b.*"}}}, "[regexp]"),
    ({"query": {"nested": {"path": "a", "query": {"match_all": {}}}}}, "[nested]"),
    ({"query": {"bool": {"must": [{"script": {"script": "1"}}]}}}, "[script]"),
    ({"query": {"match_all": {}}, "aggs": {"x": {}}}, "aggs"),
    ({"query": {"term": {"a": {"value": "b", "fuzziness": 2}}}}, "fuzziness"),
    ({"query": {"range": {"a": {"gte": "now-1d"}}}}, "date math"),
    ({"query": {"bool": {"should": [{"match_all": {}}], "minimum_should_match": "2<50%"}}}, "minimum_should_match"),
    ({"query": {"query_string": {"query": "a~2"}}}, "fuzzy"),
    ({"query": {"query_string": {"query": "/ab+/"}}}, "regular expressions"),
    ({"query": {"query_string": {"query": "a AND (b"}}}, "query_string"),
    ({"query": {"match": {"a": "x", "b": "y"}}}, "[match]"),
    ({"query": [{"match_all": {}}]}, "query clause"),
    ("not an object", "es_query"),
]


@pytest.mark.parametrize("es_query,named", BAD_QUERIES, ids=[str(named) for _, named in BAD_QUERIES])
def test_bad_queries_are_a_typed_400_naming_the_clause(loaded, es_query, named):
    with pytest.raises(ElasticsearchBadRequest) as caught:
        loaded.search(es_query)
    assert caught.value.error_code == "elasticsearch_bad_request"
    assert named in caught.value.title
    with pytest.raises(ElasticsearchBadRequest):
        loaded.put_subscription("bad", es_query)


def test_subscriptions_are_stored_until_deleted(fresh):
    fresh.put_subscription("mice", {"query": {"term": {SPECIES: "mus musculus"}}})
    fresh.put_subscription("all", {})
    assert fresh.delete_subscription("mice") is True
    assert fresh.delete_subscription("mice") is False  # already gone
    assert fresh.delete_subscription("never-stored") is False
    assert fresh.delete_subscription("all") is True


@needs_real_opensearch  # openmock has no percolate query
def test_percolation_matches_each_document_with_the_subscriptions_that_find_it(fresh):
    subscriptions = {f"s{i:02d}": row for i, row in enumerate(QUERIES)}
    fresh.bulk_put(list(BUNDLES.values()))  # mappings for the percolator come from documents
    fresh.refresh()
    for sub_id, (_, es_query, _, _) in subscriptions.items():
        fresh.put_subscription(sub_id, es_query)
    for name, (doc_id, document) in BUNDLES.items():
        expected = sorted(sub_id for sub_id, (qname, es_query, found, _) in subscriptions.items()
                          if name in found and "ids" not in es_query.get("query", {}))
        assert fresh.percolate(document) == expected, name
    assert fresh.percolate(TOMBSTONE) == []
    assert fresh.delete_subscription("s00") is True
    assert fresh.delete_subscription("s00") is False
    assert "s00" not in fresh.percolate(BUNDLES["b01"][1])


@needs_real_opensearch  # openmock has no percolate query
def test_percolating_before_any_document_was_indexed(fresh):
    fresh.put_subscription("mice", {"query": {"term": {SPECIES: "mus musculus"}}})
    fresh.put_subscription("cells", {"query": {"range": {CELLS: {"gte": 10000}}}})
    assert fresh.percolate(BUNDLES["b03"][1]) == ["cells", "mice"]
    assert fresh.percolate(BUNDLES["b01"][1]) == []


def test_a_new_generation_is_built_aside_then_switched_to_atomically(fresh):
    old_id, old_doc = BUNDLES["b01"]
    fresh.put(old_id, old_doc)
    fresh.refresh()
    old = fresh.current_generation()
    builder = fresh.new_generation()
    assert builder.generation != old
    builder.bulk_put([BUNDLES["b02"], BUNDLES["b03"]])
    builder.refresh()
    # Until the switch, searches and writes still use the live generation.
    assert fresh.current_generation() == old
    assert [h["id"] for h in fresh.search({})["hits"]] == [old_id]
    builder.close()
    fresh.switch_to(builder.generation)
    assert fresh.current_generation() == builder.generation
    assert names(fresh.search({})) == ["b02", "b03"]
    fresh.put(*BUNDLES["b04"])  # writes follow the switch
    fresh.refresh()
    assert names(fresh.search({})) == ["b02", "b03", "b04"]
    fresh.drop_generation(old)
    with pytest.raises(ValueError):
        fresh.drop_generation(builder.generation)
    with pytest.raises(ValueError):
        fresh.switch_to(old)  # dropped


@needs_real_opensearch  # openmock cannot list indexes by pattern
def test_generations_are_listed_until_dropped(fresh):
    fresh.put(*BUNDLES["b01"])
    fresh.refresh()
    old = fresh.current_generation()
    assert fresh.generations() == [old]
    builder = fresh.new_generation()
    builder.close()
    assert fresh.generations() == sorted([old, builder.generation])
    fresh.switch_to(builder.generation)
    fresh.drop_generation(old)
    assert fresh.generations() == [builder.generation]


@needs_real_opensearch  # openmock has no percolate query
def test_subscriptions_survive_a_reindex(fresh):
    fresh.put_subscription("mice", {"query": {"term": {SPECIES: "mus musculus"}}})
    builder = fresh.new_generation()
    builder.close()
    fresh.switch_to(builder.generation)
    assert fresh.percolate(BUNDLES["b03"][1]) == ["mice"]


# --- the embedded engine across processes ------------------------------------------------------

def test_embedded_readers_see_the_writers_commits_and_switches(tmp_path):
    writer = EmbeddedIndex(tmp_path, "gcp")
    reader = EmbeddedIndex(tmp_path, "gcp")  # another process in production: no shared state
    try:
        assert reader.search({})["total"] == 0
        writer.put(*BUNDLES["b01"])
        assert names(reader.search({})) == ["b01"]  # no refresh needed across instances
        builder = writer.new_generation()
        builder.put(*BUNDLES["b02"])
        builder.close()
        writer.switch_to(builder.generation)
        assert names(reader.search({})) == ["b02"]
        writer.put(*BUNDLES["b03"])
        assert names(reader.search({})) == ["b02", "b03"]
        reader.put_subscription("all", {})
        assert writer.percolate(BUNDLES["b04"][1]) == ["all"]
    finally:
        writer.close()
        reader.close()


def test_embedded_index_is_persistent(tmp_path):
    first = EmbeddedIndex(tmp_path, "aws")
    first.bulk_put([BUNDLES["b05"], BUNDLES["b06"]])
    first.put_subscription("blood", {"query": {"term": {ORGAN: "blood"}}})
    first.close()
    again = EmbeddedIndex(tmp_path, "aws")
    try:
        assert names(again.search({"query": {"match_all": {}}})) == ["b05", "b06"]
        assert again.percolate(BUNDLES["b05"][1]) == ["blood"]
    finally:
        again.close()


# --- bounded work --------------------------------------------------------------------------------

def nested_bools(depth: int) -> dict:
    query = {"match_all": {}}
    for _ in range(depth - 1):
        query = {"bool": {"must": [query]}}
    return query


TOO_COMPLEX = [
    ("nested one level too deep", {"query": nested_bools(33)}),
    ("nested deeper than Python's stack", {"query": nested_bools(20_000)}),
    ("groups of a query_string too deep", {"query": {"query_string": {"query": "(" * 5000 + "a" + ")" * 5000}}}),
    ("too many clauses", {"query": {"terms": {SEX: [f"v{i}" for i in range(2000)]}}}),
    ("too long a pattern", {"query": {"wildcard": {SEX: "*" + "a" * 300}}}),
]


@pytest.mark.parametrize("es_query", [q for _, q in TOO_COMPLEX], ids=[name for name, _ in TOO_COMPLEX])
def test_queries_beyond_the_limits_are_a_typed_400_query_too_complex(loaded, es_query):
    for call in (lambda: loaded.search(es_query), lambda: loaded.put_subscription("complex", es_query)):
        with pytest.raises(QueryTooComplex) as caught:
            call()
        assert caught.value.error_code == "query_too_complex"
    assert names(loaded.search({"query": nested_bools(32)})) == LIVE  # within the limits


def test_a_search_has_a_time_budget(loaded):
    assert loaded.search({"query": {"match_all": {}}}, timeout=30)["total"] == len(LIVE)
    if isinstance(loaded, EmbeddedIndex):
        # The engine checks its deadline between its steps: one already past stops the search.
        with pytest.raises(SearchTimeout) as caught:
            loaded.search({"query": {"range": {SEX: {"gte": "a"}}}}, timeout=1e-9)
        assert caught.value.error_code == "search_timeout"


class RecordingCluster:
    """An OpenSearch client standing in for a cluster in these unit tests: it answers `search` and
    `scroll` from ``pages`` (lists of hit ids) and records every call."""

    def __init__(self, pages=(), timed_out=False):
        self.pages = [list(page) for page in pages]
        self.timed_out = timed_out
        self.calls = []
        self.indices = mock.Mock()
        self.indices.exists_alias.return_value = True
        self.indices.exists.return_value = True

    def _page(self):
        ids = self.pages.pop(0) if self.pages else []
        return {"_scroll_id": "scroll-1", "timed_out": self.timed_out,
                "hits": {"total": {"value": 0}, "hits": [{"_id": i} for i in ids]}}

    def search(self, **kwargs):
        self.calls.append(("search", kwargs))
        return self._page()

    def scroll(self, **kwargs):
        self.calls.append(("scroll", kwargs))
        return self._page()

    def clear_scroll(self, **kwargs):
        self.calls.append(("clear_scroll", kwargs))


def test_opensearch_percolation_pages_until_every_match_is_returned():
    # One page of the cluster's 10,000-hit window, then more: every match comes back.
    first = [f"sub-{i:05d}" for i in range(10_000)]
    cluster = RecordingCluster(pages=[first, ["sub-10000", "sub-10001"]])
    backend = OpenSearchIndex("http://cluster.invalid:9200", "aws", client=cluster)
    matched = backend.percolate(BUNDLES["b03"][1])
    assert len(matched) == 10_002 and matched == sorted(first + ["sub-10000", "sub-10001"])
    kinds = [kind for kind, _ in cluster.calls]
    assert kinds == ["search", "scroll", "clear_scroll"]
    assert cluster.calls[0][1]["scroll"] and cluster.calls[0][1]["body"]["size"] == 10_000
    # A smaller page size pages more often; an exactly full last page ends with an empty one.
    cluster = RecordingCluster(pages=[["a", "b"], ["c", "d"], []])
    backend = OpenSearchIndex("http://cluster.invalid:9200", "aws", client=cluster, percolate_page_size=2)
    assert backend.percolate(BUNDLES["b03"][1]) == ["a", "b", "c", "d"]
    assert [kind for kind, _ in cluster.calls] == ["search", "scroll", "scroll", "clear_scroll"]


def test_opensearch_searches_carry_their_time_budget_and_refuse_partial_hits():
    cluster = RecordingCluster(pages=[["x"]])
    backend = OpenSearchIndex("http://cluster.invalid:9200", "aws", client=cluster)
    backend.search({}, size=10, timeout=2.5)
    _, call = cluster.calls[-1]
    assert call["body"]["timeout"] == "2500ms" and call["request_timeout"] > 2.5
    cluster = RecordingCluster(pages=[["x"]], timed_out=True)
    backend = OpenSearchIndex("http://cluster.invalid:9200", "aws", client=cluster)
    with pytest.raises(SearchTimeout):
        backend.search({}, size=10, timeout=2.5)


@needs_real_opensearch  # openmock has no percolate query (the paging itself: the two tests above)
def test_percolation_returns_every_match_past_ten_thousand(fresh):
    if isinstance(fresh, EmbeddedIndex):
        # 10,001 stored subscriptions (written as the store keeps them: one put each would rewrite
        # the file 10,001 times) and one that does not match.
        stored = {f"sub-{i:05d}": {"query": {"term": {SPECIES: "mus musculus"}}} for i in range(10_001)}
        stored["other"] = {"query": {"term": {SPECIES: "homo sapiens"}}}
        fresh.subscriptions.path.write_text(json.dumps(stored))
        matched = fresh.percolate(BUNDLES["b03"][1])
        assert len(matched) == 10_001 and "other" not in matched
        return
    fresh.percolate_page_size = 5  # the paging, on a real cluster, without 10,000 subscriptions
    for i in range(12):
        fresh.put_subscription(f"sub-{i:02d}", {"query": {"term": {SPECIES: "mus musculus"}}})
    fresh.put_subscription("other", {"query": {"term": {SPECIES: "homo sapiens"}}})
    assert fresh.percolate(BUNDLES["b03"][1]) == [f"sub-{i:02d}" for i in range(12)]
