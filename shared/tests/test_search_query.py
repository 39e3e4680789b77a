"""The query-DSL parser, the query_string syntax, value normalisation and the evaluator's agreement
with the embedded engine on the fine points (phrase slop, date rounding, minimum_should_match)."""
import itertools
import random
import re
import time

import pytest
from nameko.exceptions import deserialize, serialize
from prometheus_client import REGISTRY

from shared.search.documents import (canonical_number, date_micros, flatten, fqid_from_key, fqid_key,
                                     is_tombstone, number_value, sortable_int)
from shared.search.base import SearchTimeout
from shared.search.embedded import EmbeddedIndex, glob_to_regex
from shared.search.evaluate import compile_glob, matches, phrase_in
from shared.search.query import (Bool, ElasticsearchBadRequest, Exists, Ids, KeywordTerm, MatchAll, MatchNone,
                                 Phrase, Prefix, QueryLimits, QueryTooComplex, Range, TokenTerm, Wildcard,
                                 minimum_should_match, parse_search)


def parse(clause):
    return parse_search({"query": clause})


def either(field, keyword_node, text_node):
    """What `{field}.text` parses to: the keyword leaf `text` or the analysed subfield."""
    return Bool(should=(keyword_node, text_node), minimum_should_match=1)


# --- the DSL -----------------------------------------------------------------------------------

def test_term_lowercases_keywords_and_keeps_numbers():
    assert parse({"term": {"a.b": "Homo Sapiens"}}) == KeywordTerm("a.b", "homo sapiens")
    assert parse({"term": {"a.b": {"value": 45, "boost": 2}}}) == KeywordTerm("a.b", 45)
    assert parse({"term": {"_id": "x"}}) == Ids(("x",))


def test_a_dot_text_field_is_the_analysed_subfield_or_a_text_leaf():
    assert parse({"match": {"a.text": "Liver Cells"}}) == either(
        "a", KeywordTerm("a.text", "liver cells"),
        Bool(should=(TokenTerm("a", "liver"), TokenTerm("a", "cells")), minimum_should_match=1))
    assert parse({"match_phrase": {"a.text": "liver cells"}}).should[1] == Phrase("a", ("liver", "cells"))


def test_match_operator_and_minimum_should_match():
    tokens = tuple(TokenTerm("t", w) for w in ("a", "b", "c", "d"))
    assert parse({"match": {"t.text": {"query": "a b c d", "operator": "and"}}}).should[1] == Bool(must=tokens)
    node = parse({"match": {"t.text": {"query": "a b c d", "minimum_should_match": "75%"}}}).should[1]
    assert node == Bool(should=tokens, minimum_should_match=3)
    assert parse({"match": {"t.text": "!!!"}}).should[1] == MatchNone()
    assert parse({"match": {"t.text": {"query": "!!!", "zero_terms_query": "all"}}}).should[1] == MatchAll()


@pytest.mark.parametrize("spec,optional,expected", [
    (2, 4, 2), (-1, 4, 3), ("75%", 4, 3), ("-25%", 4, 3), ("50%", 3, 1), ("-50%", 3, 2), (5, 4, 5), ("-7", 4, 0),
])
def test_minimum_should_match_like_elasticsearch(spec, optional, expected):
    assert minimum_should_match(spec, optional) == expected


def test_bool_defaults():
    should_only = parse({"bool": {"should": [{"match_all": {}}]}})
    assert should_only.minimum_should_match == 1
    with_must = parse({"bool": {"must": {"match_all": {}}, "should": [{"match_all": {}}]}})
    assert with_must.minimum_should_match == 0
    with_filter = parse({"bool": {"filter": [{"match_all": {}}], "should": {"match_all": {}}}})
    assert with_filter.minimum_should_match == 0
    assert parse({"bool": {}}) == Bool()


def test_range_types():
    assert parse({"range": {"n": {"gte": 10, "lt": "20"}}}) == Range("n", "keyword", "number", 10.0, True, 20.0, False)
    node = parse({"range": {"d": {"gt": "2019-01-01", "lte": "2019-01-02"}}})
    day = 86_400_000_000
    assert node.type == "date"
    assert node.lower == date_micros("2019-01-01") + day - 1  # gt a day: after the whole day
    assert node.upper == date_micros("2019-01-02") + day - 1  # lte a day: up to its end
    node = parse({"range": {"d": {"gte": "2019-01-01", "lt": "2019-01-02T10:00"}}})
    assert (node.lower, node.upper) == (date_micros("2019-01-01"), date_micros("2019-01-02T10:00:00Z"))
    assert parse({"range": {"s": {"gte": "M", "lt": "n"}}}) == Range("s", "keyword", "string", "m", True, "n", False)
    assert parse({"range": {"s": {}}}) == Exists("s")


def test_terms_prefix_wildcard_ids_exists_multi_match():
    assert parse({"terms": {"a": ["X", 2]}}) == Bool(should=(KeywordTerm("a", "x"), KeywordTerm("a", 2)),
                                                     minimum_should_match=1)
    assert parse({"terms": {"a": []}}) == MatchNone()
    assert parse({"prefix": {"a": "HOM"}}) == Prefix("a", "keyword", "hom")
    assert parse({"wildcard": {"a": {"wildcard": "H?m*"}}}) == Wildcard("a", "keyword", "h?m*")
    assert parse({"ids": {"values": ["a", "b"]}}) == Ids(("a", "b"))
    assert parse({"exists": {"field": "a"}}) == Exists("a")
    assert parse({"multi_match": {"query": "x", "fields": ["a^3", "b"]}}) == Bool(
        should=(KeywordTerm("a", "x"), KeywordTerm("b", "x")), minimum_should_match=1)


BAD = [
    ({"fuzzy": {"a": "b"}}, "[fuzzy]"),
    ({"match_none": {}}, "[match_none]"),
    ({"more_like_this": {}}, "[more_like_this]"),
    ({"geo_distance": {}}, "[geo_distance]"),
    ({"term": {"a": {"value": "b", "fuzziness": 1}}}, "fuzziness"),
    ({"term": {"a": ["b"]}}, "[term]"),
    ({"terms": {"a": {"index": "x", "id": "1", "path": "p"}}}, "terms lookup"),
    ({"match": {"a": {"query": "b", "analyzer": "x"}}}, "analyzer"),
    ({"match": {"a": {"query": "b", "operator": "xor"}}}, "operator"),
    ({"multi_match": {"query": "x", "fields": ["a"], "type": "cross_fields"}}, "cross_fields"),
    ({"multi_match": {"query": "x"}}, "fields"),
    ({"multi_match": {"query": "x", "fields": ["files.*"]}}, "patterns"),
    ({"range": {"a": {"gte": 1, "gt": 2}}}, "one lower bound"),
    ({"range": {"a": {"gte": "now-1d/d"}}}, "date math"),
    ({"range": {"a": {"gte": "2019||+1d"}}}, "date math"),
    ({"range": {"a": {"gte": 1, "format": "x"}}}, "format"),
    ({"bool": {"must": "x"}}, "bool.must"),
    ({"bool": {"should": [], "minimum_should_match": "3<90%"}}, "minimum_should_match"),
    ({"bool": {"must": [{"match_all": {}}], "boosting": 1}}, "boosting"),
    ({"exists": {}}, "[exists]"),
    ({"ids": {"values": "a"}}, "[ids]"),
    ({"match_all": {}, "term": {"a": "b"}}, "exactly one"),
    ({"query_string": {"query": "a~"}}, "fuzzy"),
    ({"query_string": {"query": "/a.*/"}}, "regular expressions"),
    ({"query_string": {"query": "(a"}}, "query_string"),
    ({"query_string": {"query": "AND a"}}, "AND"),
    ({"query_string": {"query": "[1 TO 2]"}}, "needs a field"),
    ({"query_string": {"query": "a", "default_operator": "xor"}}, "default_operator"),
    ({"query_string": {"query": "a", "phrase_slop": 1}}, "phrase_slop"),
]


@pytest.mark.parametrize("clause,named", BAD, ids=[named for _, named in BAD])
def test_unsupported_or_malformed_clauses_are_400s_naming_them(clause, named):
    with pytest.raises(ElasticsearchBadRequest) as caught:
        parse(clause)
    assert named in caught.value.title
    assert caught.value.error_code == "elasticsearch_bad_request"


def test_the_top_level_body():
    assert parse_search({}) == MatchAll()
    with pytest.raises(ElasticsearchBadRequest, match="sort"):
        parse_search({"query": {"match_all": {}}, "sort": ["x"]})


def test_the_error_travels_typed_over_rpc():
    error = ElasticsearchBadRequest("unsupported query clause [fuzzy]")
    again = deserialize(serialize(error))
    assert type(again) is ElasticsearchBadRequest
    assert (again.error_code, again.title) == ("elasticsearch_bad_request", error.title)


# --- query_string ----------------------------------------------------------------------------------

def qs(text, **options):
    return parse({"query_string": dict(options, query=text)})


def any_field(word):
    return Bool(should=(KeywordTerm(None, word), TokenTerm(None, word)), minimum_should_match=1)


def test_query_string_lucene_clause_semantics():
    a, b, c = any_field("a"), any_field("b"), any_field("c")
    assert qs("a") == a
    assert qs("a b") == Bool(should=(a, b), minimum_should_match=1)
    assert qs("a AND b") == Bool(must=(a, b))
    assert qs("a && b || c") == Bool(must=(a, b), should=(c,))
    assert qs("+a -b c") == Bool(must=(a,), should=(c,), must_not=(b,))
    assert qs("a AND NOT b") == Bool(must=(a,), must_not=(b,))
    assert qs("NOT a") == Bool(must_not=(a,))
    assert qs("a b", default_operator="AND") == Bool(must=(a, b))
    assert qs("a OR b", default_operator="AND") == Bool(should=(a, b), minimum_should_match=1)
    assert qs("(a OR b) AND c") == Bool(must=(Bool(should=(a, b), minimum_should_match=1), c))


def test_query_string_fields_phrases_ranges_wildcards():
    assert qs("x.y:Homo") == KeywordTerm("x.y", "homo")
    assert qs('x.y:"Homo sapiens"') == KeywordTerm("x.y", "homo sapiens")
    assert qs('x.text:"homo sapiens"~2').should[1] == Phrase("x", ("homo", "sapiens"), 2)
    assert qs("x:[10 TO 20}") == Range("x", "keyword", "number", 10.0, True, 20.0, False)
    assert qs("x:{* TO 5]") == Range("x", "keyword", "number", None, False, 5.0, True)
    assert qs("x:[-5 TO 5]") == Range("x", "keyword", "number", -5.0, True, 5.0, True)
    assert qs("x:>=2018-01-01").type == "date"
    assert (qs("x:<b").type, qs("x:<b").upper, qs("x:<b").include_upper) == ("string", "b", False)
    assert qs("x:hom*") == Prefix("x", "keyword", "hom")
    assert qs("x:h?m*") == Wildcard("x", "keyword", "h?m*")
    assert qs(r"x:a\:b") == KeywordTerm("x", "a:b")
    assert qs("x:(a b)") == Bool(should=(KeywordTerm("x", "a"), KeywordTerm("x", "b")), minimum_should_match=1)
    assert qs("_exists_:x.y") == Exists("x.y")
    assert qs("_id:abc") == Ids(("abc",))
    assert qs("a^2 x:b^0.5") == Bool(should=(any_field("a"), KeywordTerm("x", "b")), minimum_should_match=1)


def test_query_string_default_field_and_fields():
    assert qs("Homo", default_field="x") == KeywordTerm("x", "homo")
    assert qs("homo", fields=["x^2", "y"]) == Bool(should=(KeywordTerm("x", "homo"), KeywordTerm("y", "homo")),
                                                   minimum_should_match=1)


# --- values -------------------------------------------------------------------------------------------

def test_values_and_keys():
    assert number_value("45") == 45.0 and number_value(" -1.5e2") == -150.0
    assert number_value("45 years") is None and number_value(True) is None and number_value("nan") is None
    assert canonical_number(45.0) == "45" and canonical_number(2.5) == "2.5"
    numbers = [-1e300, -2.5, -1, -0.0, 0, 1e-9, 1, 2.5, 45, 1e300]
    assert [sortable_int(n) for n in numbers] == sorted(sortable_int(n) for n in numbers)
    assert sortable_int(-0.0) == sortable_int(0)
    assert date_micros("2018") is None and date_micros("2018-13-01") is None
    assert date_micros("2018-01-01T01:00:00+01:00") == date_micros("2018-01-01T00:00:00Z")
    assert date_micros("2018-01-01T00:00:00.5Z") == date_micros("2018-01-01") + 500_000
    doc_id = "0b6f2c1e-0000-4000-8000-00000000000a.2017-06-20T214506.766634Z"
    assert fqid_from_key(*fqid_key(doc_id)) == doc_id
    assert fqid_key("x.1") is None and fqid_key("0B6F2C1E-0000-4000-8000-00000000000A.2017-06-20T214506.766634Z") is None
    assert is_tombstone({"admin_deleted": False}) and is_tombstone({"tombstone": True})
    assert not is_tombstone({"admin_deleted": None}) and not is_tombstone({"uuid": "x"})


def test_flatten_follows_the_non_nested_object_mapping():
    flat = flatten({"a": [{"b": "X y", "c": 1}, {"b": ["z"], "c": "2"}], "d": None, "e": {}, "f": True})
    assert flat.keywords == {"a.b": {"x y", "z"}, "a.c": {"2"}, "f": {"true"}}
    assert flat.numbers == {"a.c": [1.0, 2.0]}
    assert flat.texts == {"a.b": [["x", "y"], ["z"]], "a.c": [["2"]]}
    assert flat.exists == {"a", "a.b", "a.c", "f"}  # neither the null nor the empty object


# --- the evaluator agrees with tantivy on the fine points -------------------------------------

def fqid(n):
    return f"{n:08x}-0000-4000-8000-{n:012x}.2020-01-01T000000.000000Z"


TEXTS = ["a b c d", "a x b c", "a x y b", "b a", "a b", "c a b", "a x x x b", "a c x b y d", "a x b x c",
         "b x a", "c b a", "a a b", "b a c", "a c b", "c a x b", "a b x x c"]
PHRASES = [("a", "b"), ("a", "c"), ("b", "a"), ("a", "d"), ("c", "b")]


def test_sloppy_phrases_agree_with_the_engine(tmp_path):
    index = EmbeddedIndex(tmp_path, "aws")
    try:
        index.bulk_put([(fqid(n), {"t": text}) for n, text in enumerate(TEXTS)])
        for phrase, slop in itertools.product(PHRASES, range(4)):
            query = {"query": {"match_phrase": {"t.text": {"query": " ".join(phrase), "slop": slop}}}}
            engine = {h["id"] for h in index.search(query, size=100)["hits"]}
            python = {fqid(n) for n, text in enumerate(TEXTS) if phrase_in(phrase, text.split(), slop)}
            assert engine == python, (phrase, slop)
        for phrase in [("a", "b", "c"), ("a", "b", "d")]:  # exact phrases of any length
            query = {"query": {"match_phrase": {"t.text": " ".join(phrase)}}}
            engine = {h["id"] for h in index.search(query, size=100)["hits"]}
            assert engine == {fqid(n) for n, text in enumerate(TEXTS) if phrase_in(phrase, text.split(), 0)}
    finally:
        index.close()


def test_slop_beyond_two_words_is_refused():
    with pytest.raises(ElasticsearchBadRequest, match="slop on a phrase"):
        parse({"match_phrase": {"t.text": {"query": "a b c", "slop": 1}}})
    with pytest.raises(ElasticsearchBadRequest, match="slop on a phrase"):
        qs('"a b c"~1')
    with pytest.raises(ElasticsearchBadRequest, match="slop on a phrase"):
        parse({"match_phrase": {"t.text": {"query": "a a", "slop": 2}}})


def test_dates_numbers_and_strings_agree_with_the_engine(tmp_path):
    docs = {fqid(n): doc for n, doc in enumerate([
        {"d": "2019-01-01", "n": "9", "s": "Alpha"},
        {"d": "2019-01-01T23:59:59.999999Z", "n": 10, "s": "beta"},
        {"d": "2019-01-02T00:00:00Z", "n": [10.5, "x"], "s": ["Gamma", "alpha beta"]},
        {"d": "2018-12-31T23:00:00-02:00", "n": -3, "s": "ALPHA"},
        {"d": "not a date", "n": "1e3", "s": ""},
    ])}
    queries = [
        {"range": {"d": {"lte": "2019-01-01"}}}, {"range": {"d": {"gt": "2019-01-01"}}},
        {"range": {"d": {"gte": "2019-01-01T12:00", "lt": "2019-01-02"}}},
        {"range": {"n": {"gt": 9, "lte": 1000}}}, {"range": {"n": {"lt": "0"}}},
        {"term": {"n": 10}}, {"term": {"n": "1000"}}, {"match": {"n": "10.5"}},
        {"range": {"s": {"gte": "alpha", "lt": "beta"}}}, {"range": {"s.text": {"gt": "alpha"}}},
        {"term": {"s": "ALPHA"}}, {"term": {"s": ""}}, {"prefix": {"s": "al"}}, {"wildcard": {"s.text": "*ph*"}},
        {"exists": {"field": "s.text"}}, {"query_string": {"query": "alpha"}}, {"query_string": {"query": "1000"}},
        {"bool": {"should": [{"term": {"s": "beta"}}, {"term": {"n": 10}}, {"term": {"s": "gamma"}}],
                  "minimum_should_match": 2}},
        {"bool": {"must_not": [{"exists": {"field": "n"}}]}},
    ]
    index = EmbeddedIndex(tmp_path, "aws")
    try:
        index.bulk_put(docs.items())
        for clause in queries:
            body = {"query": clause}
            engine = sorted(h["id"] for h in index.search(body, size=100)["hits"])
            node = parse_search(body)
            python = sorted(doc_id for doc_id, doc in docs.items() if matches(node, flatten(doc), doc_id))
            assert engine == python, clause
    finally:
        index.close()


# --- choosing a backend; the percolator's mappings -----------------------------------------------

def test_open_index_backend_follows_the_settings(tmp_path, monkeypatch):
    import openmock

    from shared.config import Settings
    from shared.search import open_index_backend
    from shared.search.opensearch import OpenSearchIndex

    embedded = open_index_backend(Settings.from_config({"DSS_INDEX_DIR": str(tmp_path)}, environ={}), "gcp")
    try:
        assert isinstance(embedded, EmbeddedIndex) and embedded.root == tmp_path / "gcp"
    finally:
        embedded.close()
    fake = openmock.FakeOpenSearch()
    monkeypatch.setattr("opensearchpy.OpenSearch", lambda *args, **kwargs: fake)
    settings = Settings.from_config({"DSS_INDEX_BACKEND": "opensearch", "DSS_OPENSEARCH_URL": "http://os.invalid:9200",
                                     "DSS_OPENSEARCH_INDEX_PREFIX": "t"}, environ={})
    backend = open_index_backend(settings, "aws")
    assert isinstance(backend, OpenSearchIndex) and backend.alias == "t-aws"
    with pytest.raises(ValueError):
        open_index_backend(Settings.from_config({"DSS_INDEX_BACKEND": "opensearch"}, environ={}), "aws")
    with pytest.raises(ValueError):
        open_index_backend(Settings.from_config({"DSS_INDEX_BACKEND": "sqlite"}, environ={}), "aws")
    with pytest.raises(ValueError):
        open_index_backend(Settings.from_config({}, environ={}), "azure")


def test_percolator_mappings_are_complete_and_never_conflict(monkeypatch):
    import openmock

    from shared.search.opensearch import KEYWORD, OpenSearchIndex

    fake = openmock.FakeOpenSearch()
    monkeypatch.setattr("opensearchpy.OpenSearch", lambda *args, **kwargs: fake)
    backend = OpenSearchIndex("http://os.invalid:9200", "aws", prefix="m")
    backend.put_subscription("s1", {"query": {"bool": {"must": [
        {"term": {"files.donor.genus_species.text": "homo sapiens"}},
        {"range": {"files.cells.total": {"gte": 10}}},
        {"range": {"files.project.date": {"lt": "2019-01-01"}}},
        {"exists": {"field": "files.library"}}]}}})
    properties = fake.indices.get_mapping(index="m-aws-subscriptions")["m-aws-subscriptions"]["mappings"]["properties"]
    files = properties["files"]["properties"]
    # HCA's ontology leaf `text`, not a keyword `genus_species` with a `.text` subfield.
    assert files["donor"]["properties"]["genus_species"]["properties"]["text"] == KEYWORD
    assert files["cells"]["properties"]["total"] == {"type": "double"}
    assert files["project"]["properties"]["date"] == {"type": "date"}
    assert "library" not in files and properties["query"] == {"type": "percolator"}
    # Mapped fields are not mapped again (a second mapping of a field could conflict).
    backend.put_subscription("s2", {"query": {"match": {"files.donor.genus_species.text": "mus"}}})
    assert backend.delete_subscription("s2") is True


# --- bounded work ------------------------------------------------------------------------------

def nested(depth):
    query = {"match_all": {}}
    for _ in range(depth - 1):
        query = {"bool": {"must": [query]}}
    return query


def too_complex(body, limits=None):
    with pytest.raises(QueryTooComplex) as caught:
        parse_search(body, limits)
    assert caught.value.error_code == "query_too_complex" and isinstance(caught.value, ElasticsearchBadRequest)
    return caught.value.title


def test_queries_beyond_the_limits_are_refused_before_any_work():
    assert parse_search({"query": nested(32)}) is not None
    assert "32 deep" in too_complex({"query": nested(33)})
    too_complex({"query": nested(100_000)})  # never a RecursionError
    deep_value = []
    for _ in range(100_000):
        deep_value = [deep_value]
    too_complex({"query": {"term": {"a": {"value": "x", "boost": 1, "_name": deep_value}}}})
    assert parse(qs_body("(" * 30 + "a" + ")" * 30)) is not None
    too_complex({"query": qs_body("(" * 32 + "a" + ")" * 32)})
    too_complex({"query": qs_body("(" * 50_000 + "a" + ")" * 50_000)})
    assert "1024 clauses" in too_complex({"query": {"terms": {"a": list(range(1024))}}})
    assert parse({"terms": {"a": list(range(1023))}}) is not None
    too_complex({"query": {"match": {"a.text": " ".join(f"w{i}" for i in range(2000))}}})
    too_complex({"query": {"query_string": {"query": " OR ".join(f"w{i}" for i in range(600))}}})
    assert "256 characters" in too_complex({"query": {"wildcard": {"a": "*" * 257}}})
    too_complex({"query": {"prefix": {"a": "p" * 257}}})
    too_complex({"query": qs_body("a:" + "b?" * 200)})
    assert parse({"wildcard": {"a": "*" * 256}}) is not None
    # The limits are settings.
    limits = QueryLimits(max_depth=3, max_clauses=5, max_pattern_length=4)
    assert parse_search({"query": nested(3)}, limits) is not None
    too_complex({"query": nested(4)}, limits)
    too_complex({"query": {"terms": {"a": [1, 2, 3, 4, 5]}}}, limits)
    too_complex({"query": {"wildcard": {"a": "abcd*"}}}, limits)
    from shared.config import Settings
    assert QueryLimits.from_settings(Settings.from_config({}, environ={})) == QueryLimits.defaults() == QueryLimits(
        32, 1024, 256)
    assert QueryLimits.from_settings(Settings.from_config({"DSS_SEARCH_MAX_DEPTH": "5"}, environ={})).max_depth == 5
    # Ignored options are still checked: nothing unparsed rides along.
    with pytest.raises(ElasticsearchBadRequest, match="boost"):
        parse({"match_all": {"boost": {"x": 1}}})


def qs_body(text):
    return {"query_string": {"query": text}}


def test_query_too_complex_travels_typed_over_rpc():
    error = QueryTooComplex("the query nests clauses more than 32 deep")
    again = deserialize(serialize(error))
    assert type(again) is QueryTooComplex and again.error_code == "query_too_complex"


def test_pathological_wildcards_are_matched_in_linear_time():
    node = parse({"wildcard": {"a": "*?*?*?*?*?*?*?*?*?*!"}})  # hours for a backtracking regex on 64 characters
    for value, expected in (("a" * 64, False), ("a" * 9_000, False), ("a" * 9_000 + "!", True)):
        started = time.perf_counter()
        assert matches(node, flatten({"a": value})) is expected
        assert time.perf_counter() - started < 0.2
    # The matcher's worst case: a long segment with `?` looked for everywhere (value x segment).
    node = parse({"wildcard": {"a": "*" + "a?" * 100 + "b*"}})
    started = time.perf_counter()
    assert matches(node, flatten({"a": "a" * 9_000})) is False
    assert time.perf_counter() - started < 2


def test_the_glob_matcher_agrees_with_regular_expressions():
    alphabet, rng = "ab?*\\", random.Random(11)
    for _ in range(3000):
        pattern = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
        regex = re.compile(glob_to_regex(pattern), re.DOTALL)  # tantivy's reading, as a Python regex
        for _ in range(5):
            value = "".join(rng.choice("ab?*\\") for _ in range(rng.randint(0, 8)))
            assert compile_glob(pattern).match(value) == bool(regex.fullmatch(value)), (pattern, value)


def test_phrases_are_matched_in_linear_time():
    many_a = ["a"] * 5000
    started = time.perf_counter()
    assert phrase_in(("a",) * 50 + ("b",), many_a, 0) is False
    assert phrase_in(("a", "c"), many_a + ["x"] * 10 + ["c"] * 5000, 2) is False
    assert phrase_in(("a", "c"), many_a + ["x", "c"], 2) is True
    assert time.perf_counter() - started < 1


def test_a_wildcard_the_engine_cannot_build_is_a_400_and_others_answer_at_once(tmp_path):
    index = EmbeddedIndex(tmp_path, "aws")
    try:
        index.put(fqid(1), {"a": "a" * 64})
        with pytest.raises(QueryTooComplex, match="too complex for the index"):
            index.search({"query": {"wildcard": {"a": "*a" + "?" * 20}}})  # an automaton of 2^20 states
        started = time.perf_counter()
        assert index.search({"query": {"wildcard": {"a": "*?*?*?*?*?*?*?*?*?*!"}}})["total"] == 0
        assert index.search({"query": {"wildcard": {"a": "*?*?*?*?*?*?*?*?*?*a"}}})["total"] == 1
        assert time.perf_counter() - started < 2
    finally:
        index.close()


def test_a_search_past_its_deadline_is_a_search_timeout(tmp_path):
    index = EmbeddedIndex(tmp_path, "aws")
    try:
        index.bulk_put([(fqid(n), {"s": f"value {n}"}) for n in range(50)])
        with pytest.raises(SearchTimeout):
            index.search({"query": {"range": {"s": {"gte": "value 1"}}}}, timeout=1e-9)
        assert index.search({"query": {"range": {"s": {"gte": "value 1"}}}}, timeout=30)["total"] == 49
    finally:
        index.close()


def test_percolation_skips_and_reports_queries_beyond_its_limits(tmp_path):
    document = {"files": {"f_json": [{"name": "a" * 1000, "n": list(range(2000))}]}}
    before = REGISTRY.get_sample_value("dss_percolation_refused_total", {"replica": "aws"}) or 0
    roomy = EmbeddedIndex(tmp_path, "aws")
    roomy.put_subscription("deep", {"query": nested(20)})
    roomy.put_subscription("costly", {"query": {"wildcard": {"files.f_json.name": "*a?a?a?a?a?a?a?b"}}})
    roomy.put_subscription("plain", {"query": {"exists": {"field": "files.f_json.name"}}})
    assert roomy.percolate(document) == ["deep", "plain"]
    roomy.close()
    # Reopened with lower limits (a setting changed): the deep one no longer parses, the costly one
    # runs over its work budget; the plain one still matches, and both are reported.
    strict = EmbeddedIndex(tmp_path, "aws", limits=QueryLimits(10, 100, 64), percolate_max_work=10_000)
    refused = {}
    try:
        assert strict.percolate(document, refused=lambda sub_id, error: refused.update({sub_id: error})) == ["plain"]
        assert set(refused) == {"deep", "costly"}
        assert all(isinstance(error, QueryTooComplex) for error in refused.values())
        assert "nested" in refused["deep"].title and "work" in refused["costly"].title
        assert strict.percolate(document) == ["plain"]  # without a callback: logged and counted
        after = REGISTRY.get_sample_value("dss_percolation_refused_total", {"replica": "aws"})
        assert after - before == 4
    finally:
        strict.close()
