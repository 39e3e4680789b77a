"""The Elasticsearch query-DSL subset the store answers, parsed into one small query tree.

``parse_search(body)`` takes the `es_query` of POST /search and subscriptions (``{"query": ...}``)
and returns a tree of the node classes below, or raises ``ElasticsearchBadRequest`` (400
``elasticsearch_bad_request``) naming the clause or option it does not support. The subset:
`bool` (must, should, must_not, filter, minimum_should_match), `match`, `match_phrase`,
`multi_match`, `term`, `terms`, `range`, `exists`, `prefix`, `wildcard`, `ids`, `match_all` and
`query_string` (the classic Lucene syntax without fuzzy and regex terms). `boost` and `_name` are
accepted everywhere and ignored: results are ordered by bundle id, never by score.

The tree is already resolved to what a clause means under the OpenSearch backend's mapping, where
a string field is a lower-cased keyword (whole value) and its `.text` subfield is analysed text:
``match`` on `a.b` compares the whole lower-cased value, on `a.b.text` it matches analysed tokens.
The embedded engine translates the tree to tantivy (``embedded.py``); the evaluator
(``evaluate.py``) runs it over one document in Python. The OpenSearch backend validates with this
parser and sends the original query unchanged.

Limits (``QueryLimits``, from the settings ``DSS_SEARCH_MAX_DEPTH``, ``DSS_SEARCH_MAX_CLAUSES`` and
``DSS_SEARCH_MAX_PATTERN_LENGTH``): clauses nest at most ``max_depth`` deep (a `bool` in a `bool`,
a parenthesised group of a query_string), a query expands to at most ``max_clauses`` nodes (every
term, phrase, range, `bool`..., the tokens of a `match` and the values of a `terms` included), and
a `prefix` or `wildcard` pattern is at most ``max_pattern_length`` characters. Beyond them the
parser stops at once (it counts as it goes, so neither its stack nor its memory grows with the
input) and raises ``QueryTooComplex`` (400 ``query_too_complex``).

Known differences from Elasticsearch: number-like
strings are numbers for `range` and `term` (ES compares a keyword "9" with "10" as text); a string
of four digits is a number, not a year; date math (`now-1d`, `||`) is refused; a phrase with slop
has at most two distinct words.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import re
import reprlib
from typing import Any, Iterator

from nameko.exceptions import deserialize_to_instance

from shared.exceptions import InvalidRequest
from shared.schemas import nested_deeper_than
from shared.search.documents import analyze, date_micros, number_value


@deserialize_to_instance
class ElasticsearchBadRequest(InvalidRequest):
    """A search or subscription query outside the supported subset, or malformed (400)."""

    code = "elasticsearch_bad_request"

    def __init__(self, title: str, code: str | None = None):
        super().__init__(title, code or self.code)


@deserialize_to_instance
class QueryTooComplex(ElasticsearchBadRequest):
    """A query nested too deep, with too many clauses or too long a pattern (400): refused before
    it costs the engines anything."""

    code = "query_too_complex"


def bad(message: str) -> ElasticsearchBadRequest:
    return ElasticsearchBadRequest(message)


@dataclasses.dataclass(frozen=True)
class QueryLimits:
    """What one query may ask for (see the module docstring)."""
    max_depth: int
    max_clauses: int
    max_pattern_length: int

    @classmethod
    def from_settings(cls, settings) -> "QueryLimits":
        return cls(settings.search_max_depth, settings.search_max_clauses, settings.search_max_pattern_length)

    @classmethod
    def defaults(cls) -> "QueryLimits":
        from shared.config import describe  # the settings table's defaults: one definition
        return cls(*(describe(name).default for name in (
            "DSS_SEARCH_MAX_DEPTH", "DSS_SEARCH_MAX_CLAUSES", "DSS_SEARCH_MAX_PATTERN_LENGTH")))

    @property
    def max_json_depth(self) -> int:
        """JSON nesting of an `es_query` that ``max_depth`` levels of clauses never need (a `bool`
        level is three: its clause, its body, a list), checked before anything else walks it."""
        return 4 * self.max_depth + 8


class _Budget:
    """The running count of one parse against its limits (a context variable: parsing never
    yields, and each native thread has its own)."""

    def __init__(self, limits: QueryLimits):
        self.limits = limits
        self.depth = 0
        self.clauses = 0

    def add_node(self) -> None:
        self.clauses += 1
        if self.clauses > self.limits.max_clauses:
            raise QueryTooComplex(f"the query has more than {self.limits.max_clauses} clauses "
                                  f"(terms, tokens and values count one each)")

    @contextlib.contextmanager
    def nested(self):
        self.depth += 1
        if self.depth > self.limits.max_depth:
            raise QueryTooComplex(f"the query nests clauses more than {self.limits.max_depth} deep")
        try:
            yield
        finally:
            self.depth -= 1

    def check_pattern(self, clause: str, pattern: str) -> None:
        if len(pattern) > self.limits.max_pattern_length:
            raise QueryTooComplex(f"[{clause}] patterns are at most {self.limits.max_pattern_length} characters, "
                                  f"got {len(pattern)}")


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("dss_query_budget", default=None)


@contextlib.contextmanager
def _nested():
    budget = _BUDGET.get()
    if budget is None:
        yield
    else:
        with budget.nested():
            yield


def _check_pattern(clause: str, pattern: str) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.check_pattern(clause, pattern)


def check_nesting(value: Any, limit: int) -> None:
    """QueryTooComplex if JSON ``value`` nests deeper than ``limit`` (a value nested deeper than
    Python's stack included)."""
    if nested_deeper_than(value, limit):
        raise QueryTooComplex(f"es_query is nested more than {limit} levels deep")


# --- the tree ---------------------------------------------------------------------------------
# `path` is a dotted document path; None means "any field" (query_string without a field).
# `kind` is "keyword" (the whole lower-cased value) or "text" (analysed tokens of `{path}.text`).

class Node:
    def __post_init__(self):
        budget = _BUDGET.get()
        if budget is not None:
            budget.add_node()

    def children(self) -> tuple["Node", ...]:
        return ()

    def paths(self) -> Iterator[tuple[str, str]]:
        """(path, kind) of every field the query reads, for mappings that must exist first."""
        path = getattr(self, "path", None)
        if path is not None:
            yield path, getattr(self, "kind", "keyword")
        for child in self.children():
            yield from child.paths()


@dataclasses.dataclass(frozen=True)
class MatchAll(Node):
    pass


@dataclasses.dataclass(frozen=True)
class MatchNone(Node):
    pass


@dataclasses.dataclass(frozen=True)
class Bool(Node):
    must: tuple[Node, ...] = ()
    should: tuple[Node, ...] = ()
    must_not: tuple[Node, ...] = ()
    filter: tuple[Node, ...] = ()
    # Resolved: how many `should` clauses must match (0: they are optional).
    minimum_should_match: int = 0

    def children(self):
        return self.must + self.should + self.must_not + self.filter


@dataclasses.dataclass(frozen=True)
class KeywordTerm(Node):
    """The whole value equals ``value`` (a lower-cased string, a number or a bool); a number-like
    string also equals that number."""
    path: str | None
    value: Any
    kind: str = "keyword"


@dataclasses.dataclass(frozen=True)
class TokenTerm(Node):
    """An analysed text contains the token ``token``."""
    path: str | None
    token: str
    kind: str = "text"


@dataclasses.dataclass(frozen=True)
class Phrase(Node):
    """The tokens appear in order in one analysed value, at most ``slop`` positions displaced."""
    path: str | None
    tokens: tuple[str, ...]
    slop: int = 0
    kind: str = "text"


@dataclasses.dataclass(frozen=True)
class Range(Node):
    """``type`` is "number" (bounds are floats), "date" (bounds are epoch microseconds, already
    rounded as Elasticsearch rounds missing date components) or "string" (lower-cased keywords or
    tokens, compared as text). A None bound is open."""
    path: str
    kind: str
    type: str
    lower: Any = None
    include_lower: bool = True
    upper: Any = None
    include_upper: bool = True


@dataclasses.dataclass(frozen=True)
class Exists(Node):
    path: str
    kind: str = "keyword"


@dataclasses.dataclass(frozen=True)
class Prefix(Node):
    path: str | None
    kind: str
    prefix: str


@dataclasses.dataclass(frozen=True)
class Wildcard(Node):
    """``pattern`` with `*` (any run of characters) and `?` (one character), matched against the
    whole keyword or a whole token; backslash escapes the next character."""
    path: str | None
    kind: str
    pattern: str


@dataclasses.dataclass(frozen=True)
class Ids(Node):
    values: tuple[str, ...]


# --- parsing the DSL ----------------------------------------------------------------------------

_IGNORED_OPTIONS = {"boost", "_name"}


def parse_search(body: Any, limits: QueryLimits | None = None) -> Node:
    """The query of an `es_query` body: ``{"query": {...}}``; ``{}`` matches every document.
    ``limits``: the settings' (``QueryLimits.from_settings``); None, their defaults."""
    if not isinstance(body, dict):
        raise bad("es_query must be a JSON object")
    unknown = set(body) - {"query"}
    if unknown:
        raise bad(f"unsupported es_query field(s) {sorted(unknown)}: only 'query' is accepted")
    limits = limits or QueryLimits.defaults()
    check_nesting(body, limits.max_json_depth)
    if "query" not in body:
        return MatchAll()
    token = _BUDGET.set(_Budget(limits))
    try:
        return parse_query(body["query"])
    finally:
        _BUDGET.reset(token)


def parse_query(clause: Any) -> Node:
    """One query clause, e.g. ``{"term": {"files.x.y": "z"}}``."""
    if not isinstance(clause, dict) or len(clause) != 1:
        raise bad(f"a query clause must be an object with exactly one query type, got {_show(clause)}")
    (name, body), = clause.items()
    parser = _PARSERS.get(name)
    if parser is None:
        raise bad(f"unsupported query clause [{name}]; supported: {', '.join(sorted(_PARSERS))}")
    with _nested():
        return parser(body)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


def _show(value: Any) -> str:
    text = _REPR.repr(value)  # bounded depth: a deeply nested value never overflows the stack
    return text if len(text) <= 80 else text[:77] + "..."


def field_kind(field: str) -> tuple[str, str]:
    """(path, kind) of a field name: `a.b.text` is the analysed subfield of the keyword `a.b`."""
    if not isinstance(field, str) or not field or field.startswith(".") or field.endswith("."):
        raise bad(f"illegal field name {_show(field)}")
    if "*" in field or "?" in field:
        raise bad(f"field name patterns are not supported: {field!r}")
    if field.endswith(".text"):
        return field[:-5], "text"
    return field, "keyword"


def on_field(field: str, build) -> Node:
    """``build(path, kind)`` for a field name. `a.b.text` is ambiguous: the analysed subfield of the
    string `a.b`, or the keyword leaf `text` of the object `a.b` (HCA's ontology terms are
    `{"text": ..., "ontology": ...}`). Elasticsearch knows which from its mapping, where one field
    cannot be both; here either may match, which gives the same answers."""
    path, kind = field_kind(field)
    if kind == "keyword":
        return build(path, kind)
    return Bool(should=(build(field, "keyword"), build(path, kind)), minimum_should_match=1)


def _options(clause: str, body: Any, allowed: set[str]) -> dict:
    if not isinstance(body, dict):
        raise bad(f"[{clause}] expects an object, got {_show(body)}")
    unknown = set(body) - allowed - _IGNORED_OPTIONS
    if unknown:
        raise bad(f"[{clause}] does not support {sorted(unknown)}")
    _check_ignored(clause, body)
    return body


def _check_ignored(clause: str, body: dict) -> None:
    # Ignored, but still checked: nothing unparsed rides along to the cluster or the mappings.
    for option in _IGNORED_OPTIONS & set(body):
        value = body[option]
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad(f"[{clause}] {option} must be a number or a string, got {_show(value)}")


def _single_field(clause: str, body: Any, value_key: str, allowed: set[str]) -> tuple[str, Any, dict]:
    """The `{field: value}` or `{field: {value_key: value, ...options}}` shape of field clauses."""
    if not isinstance(body, dict):
        raise bad(f"[{clause}] expects an object, got {_show(body)}")
    fields = [k for k in body if k not in _IGNORED_OPTIONS]
    if len(fields) != 1:
        raise bad(f"[{clause}] expects exactly one field, got {_show(fields)}")
    _check_ignored(clause, body)
    field = fields[0]
    spec = body[field]
    if isinstance(spec, dict):
        options = _options(f"{clause}.{field}", spec, allowed | {value_key})
        if value_key not in options:
            raise bad(f"[{clause}] on {field!r} needs '{value_key}'")
        return field, options[value_key], options
    return field, spec, {}


def _scalar(clause: str, value: Any) -> Any:
    if isinstance(value, bool) or isinstance(value, (int, float)) or isinstance(value, str):
        return value
    raise bad(f"[{clause}] expects a string, number or boolean, got {_show(value)}")


def _clauses(name: str, value: Any) -> tuple[Node, ...]:
    if isinstance(value, dict):
        return (parse_query(value),)
    if isinstance(value, list):
        return tuple(parse_query(v) for v in value)
    raise bad(f"[bool.{name}] expects a clause or a list of clauses, got {_show(value)}")


def minimum_should_match(spec: Any, optional: int) -> int:
    """Elasticsearch's `minimum_should_match` for ``optional`` clauses: 2, -1, "75%", "-25%"."""
    text = str(spec).strip() if not isinstance(spec, bool) else ""
    try:
        if text.endswith("%"):
            percent = int(text[:-1])
            calc = optional * percent / 100
            result = optional + int(calc) if calc < 0 else int(calc)
        else:
            number = int(text)
            result = optional + number if number < 0 else number
    except ValueError:
        raise bad(f"unsupported minimum_should_match {spec!r}: an integer or a percentage") from None
    return max(result, 0)


def _bool(body: Any) -> Node:
    options = _options("bool", body, {"must", "should", "must_not", "filter", "minimum_should_match"})
    parts = {name: _clauses(name, options[name]) if name in options else ()
             for name in ("must", "should", "must_not", "filter")}
    if "minimum_should_match" in options:
        msm = minimum_should_match(options["minimum_should_match"], len(parts["should"]))
    else:
        msm = 1 if parts["should"] and not parts["must"] and not parts["filter"] else 0
    return Bool(parts["must"], parts["should"], parts["must_not"], parts["filter"], msm)


def _match_all(body: Any) -> Node:
    _options("match_all", body, set())
    return MatchAll()


def _term(body: Any) -> Node:
    field, value, _ = _single_field("term", body, "value", {"case_insensitive"})
    return term_node(field, _scalar("term", value))


def term_node(field: str, value: Any) -> Node:
    if field == "_id":
        return Ids((str(value),))

    def build(path, kind):
        if kind == "text":
            # A term is not analysed: on text it must equal one indexed (lower-cased) token.
            return TokenTerm(path, value if isinstance(value, str) else _keyword(value))
        return KeywordTerm(path, _keyword(value))
    return on_field(field, build)


def _keyword(value: Any) -> Any:
    # The keyword normaliser lower-cases strings at index and at query time.
    return value.lower() if isinstance(value, str) else value


def _terms(body: Any) -> Node:
    if not isinstance(body, dict):
        raise bad(f"[terms] expects an object, got {_show(body)}")
    fields = [k for k in body if k not in _IGNORED_OPTIONS]
    if len(fields) != 1:
        raise bad(f"[terms] expects exactly one field, got {_show(fields)}")
    _check_ignored("terms", body)
    values = body[fields[0]]
    if not isinstance(values, list):
        raise bad("[terms] expects a list of values (terms lookup is not supported)")
    nodes = tuple(term_node(fields[0], _scalar("terms", v)) for v in values)
    return Bool(should=nodes, minimum_should_match=1) if nodes else MatchNone()


def _match(body: Any) -> Node:
    field, query, options = _single_field("match", body, "query",
                                          {"operator", "minimum_should_match", "zero_terms_query"})
    operator = str(options.get("operator", "or")).lower()
    if operator not in ("or", "and"):
        raise bad(f"[match] operator must be 'or' or 'and', got {operator!r}")
    zero = str(options.get("zero_terms_query", "none")).lower()
    if zero not in ("none", "all"):
        raise bad(f"[match] zero_terms_query must be 'none' or 'all', got {zero!r}")
    return match_node(field, _scalar("match", query), operator, options.get("minimum_should_match"), zero)


def match_node(field: str, query: Any, operator: str = "or", msm: Any = None, zero: str = "none") -> Node:
    if field == "_id":
        return Ids((str(query),))

    def build(path, kind):
        if kind == "keyword" or not isinstance(query, str):
            # The keyword normaliser turns the whole query into one term.
            return KeywordTerm(path, _keyword(query)) if kind == "keyword" else TokenTerm(path, _keyword(query))
        return token_query(path, analyze(query), operator, msm, zero)
    return on_field(field, build)


def token_query(path: str | None, tokens: list[str], operator: str = "or", msm: Any = None,
                zero: str = "none") -> Node:
    if not tokens:
        return MatchAll() if zero == "all" else MatchNone()
    nodes = tuple(TokenTerm(path, t) for t in dict.fromkeys(tokens))
    if len(nodes) == 1:
        return nodes[0]
    if operator == "and":
        return Bool(must=nodes)
    required = 1 if msm is None else minimum_should_match(msm, len(nodes))
    return Bool(should=nodes, minimum_should_match=max(required, 1))


def _match_phrase(body: Any) -> Node:
    field, query, options = _single_field("match_phrase", body, "query", {"slop"})
    return phrase_node(field, _scalar("match_phrase", query), _slop(options.get("slop", 0)))


def _slop(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad(f"slop must be a non-negative integer, got {_show(value)}")
    return value


def phrase_node(field: str, query: Any, slop: int = 0) -> Node:
    def build(path, kind):
        if kind == "keyword" or not isinstance(query, str):
            return KeywordTerm(path, _keyword(query)) if kind == "keyword" else TokenTerm(path, _keyword(query))
        tokens = analyze(query)
        if not tokens:
            return MatchNone()
        if len(tokens) == 1:
            return TokenTerm(path, tokens[0])
        if slop and (len(tokens) > 2 or tokens[0] == tokens[1]):
            # tantivy chains sloppy positions in its own term order (and lets one position serve
            # a repeated word), unlike Lucene beyond two distinct words: refused rather than
            # answered differently from percolation.
            raise bad(f"slop on a phrase of more than two (distinct) words is not supported: {query!r}")
        return Phrase(path, tuple(tokens), slop)
    return on_field(field, build)


def _multi_match(body: Any) -> Node:
    options = _options("multi_match", body, {"query", "fields", "type", "operator", "minimum_should_match",
                                             "slop", "tie_breaker", "zero_terms_query"})
    if "query" not in options:
        raise bad("[multi_match] needs 'query'")
    fields = options.get("fields")
    if not isinstance(fields, list) or not fields:
        raise bad("[multi_match] needs a non-empty list of 'fields'")
    kind = options.get("type", "best_fields")
    query = _scalar("multi_match", options["query"])
    nodes = []
    for field in fields:
        if not isinstance(field, str):
            raise bad(f"[multi_match] field names must be strings, got {_show(field)}")
        field = field.split("^", 1)[0]  # a per-field boost changes scores only
        if kind in ("best_fields", "most_fields"):
            nodes.append(match_node(field, query, str(options.get("operator", "or")).lower(),
                                    options.get("minimum_should_match"),
                                    str(options.get("zero_terms_query", "none")).lower()))
        elif kind == "phrase":
            nodes.append(phrase_node(field, query, _slop(options.get("slop", 0))))
        else:
            raise bad(f"[multi_match] type {kind!r} is not supported (best_fields, most_fields, phrase)")
    return nodes[0] if len(nodes) == 1 else Bool(should=tuple(nodes), minimum_should_match=1)


def _range(body: Any) -> Node:
    if not isinstance(body, dict):
        raise bad(f"[range] expects an object, got {_show(body)}")
    fields = [k for k in body if k not in _IGNORED_OPTIONS]
    if len(fields) != 1:
        raise bad(f"[range] expects exactly one field, got {_show(fields)}")
    _check_ignored("range", body)
    options = _options(f"range.{fields[0]}", body[fields[0]], {"gt", "gte", "lt", "lte"})
    if "gt" in options and "gte" in options or "lt" in options and "lte" in options:
        raise bad("[range] takes one lower bound (gt or gte) and one upper bound (lt or lte)")
    lower_key = "gt" if "gt" in options else "gte"
    upper_key = "lt" if "lt" in options else "lte"
    return range_node(fields[0], options.get(lower_key), lower_key == "gte",
                      options.get(upper_key), upper_key == "lte")


def range_node(field: str, lower: Any, include_lower: bool, upper: Any, include_upper: bool) -> Node:
    return on_field(field, lambda path, kind: _range_on(path, kind, lower, include_lower, upper, include_upper))


def _range_on(path: str, kind: str, lower: Any, include_lower: bool, upper: Any, include_upper: bool) -> Node:
    bounds = [b for b in (lower, upper) if b is not None]
    for bound in bounds:
        _scalar("range", bound)
        if isinstance(bound, bool):
            raise bad("[range] bounds must be numbers or strings")
        if isinstance(bound, str) and ("||" in bound or bound.strip().lower().startswith("now")):
            raise bad(f"[range] date math is not supported: {bound!r}")
    if not bounds:
        return Exists(path, kind)
    if kind == "keyword" and all(number_value(b) is not None for b in bounds):
        return Range(path, kind, "number",
                     None if lower is None else number_value(lower), include_lower,
                     None if upper is None else number_value(upper), include_upper)
    if kind == "keyword" and all(isinstance(b, str) and date_micros(b) is not None for b in bounds):
        # A `gt` / `lte` bound without some components covers the whole unit it names.
        return Range(path, kind, "date",
                     None if lower is None else date_micros(lower, round_up=not include_lower), include_lower,
                     None if upper is None else date_micros(upper, round_up=include_upper), include_upper)
    return Range(path, kind, "string",
                 None if lower is None else str(lower).lower(), include_lower,
                 None if upper is None else str(upper).lower(), include_upper)


def _exists(body: Any) -> Node:
    options = _options("exists", body, {"field"})
    if "field" not in options:
        raise bad("[exists] needs 'field'")
    if options["field"] == "_id":
        return MatchAll()
    return on_field(options["field"], Exists)


def _prefix(body: Any) -> Node:
    field, value, _ = _single_field("prefix", body, "value", {"case_insensitive", "rewrite"})
    if not isinstance(value, str):
        raise bad(f"[prefix] expects a string, got {_show(value)}")
    _check_pattern("prefix", value)
    return on_field(field, lambda path, kind: Prefix(path, kind, value.lower()))


def _wildcard(body: Any) -> Node:
    if isinstance(body, dict) and len(body) == 1:
        (field, spec), = body.items()
        if isinstance(spec, dict) and "wildcard" in spec and "value" not in spec:
            spec = {("value" if k == "wildcard" else k): v for k, v in spec.items()}
            body = {field: spec}
    field, value, _ = _single_field("wildcard", body, "value", {"case_insensitive", "rewrite"})
    if not isinstance(value, str):
        raise bad(f"[wildcard] expects a string, got {_show(value)}")
    _check_pattern("wildcard", value)
    return on_field(field, lambda path, kind: Wildcard(path, kind, value.lower()))


def _ids(body: Any) -> Node:
    options = _options("ids", body, {"values", "type"})
    values = options.get("values")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise bad("[ids] needs 'values', a list of document ids")
    return Ids(tuple(values)) if values else MatchNone()


def _query_string(body: Any) -> Node:
    options = _options("query_string", body, {"query", "default_field", "fields", "default_operator",
                                              "analyze_wildcard", "allow_leading_wildcard", "lenient"})
    if not isinstance(options.get("query"), str):
        raise bad("[query_string] needs 'query', a string")
    operator = str(options.get("default_operator", "or")).lower()
    if operator not in ("or", "and"):
        raise bad(f"[query_string] default_operator must be OR or AND, got {operator!r}")
    if "fields" in options:
        fields = options["fields"]
        if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
            raise bad("[query_string] fields must be a non-empty list of field names")
        fields = [f.split("^", 1)[0] for f in fields]
    else:
        default = options.get("default_field", "*")
        if not isinstance(default, str):
            raise bad("[query_string] default_field must be a string")
        fields = [default]
    fields = [None if f == "*" else f for f in fields]
    return LuceneParser(options["query"], fields, operator).parse()


_PARSERS = {
    "bool": _bool, "match_all": _match_all, "term": _term, "terms": _terms, "match": _match,
    "match_phrase": _match_phrase, "multi_match": _multi_match, "range": _range, "exists": _exists,
    "prefix": _prefix, "wildcard": _wildcard, "ids": _ids, "query_string": _query_string,
}


# --- query_string: the classic Lucene syntax ---------------------------------------------------

_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<and>&&|AND(?=[\s()"]|$))
  | (?P<or>\|\||OR(?=[\s()"]|$))
  | (?P<not>NOT(?=[\s()"]|$))
  | (?P<op>[+\-!()])
  | (?P<phrase>"(?:[^"\\]|\\.)*")
  | (?P<range>[\[{])
  | (?P<regex>/)
  | (?P<cmp>(?:>=|<=|>|<))
  | (?P<term>(?:[^\s+\-!():^\[\]"{}~\\/<>=&|]|\\.)(?:[^\s!():^\[\]"{}~\\/<>]|\\.)*)
  | (?P<close>[\]}])
  | (?P<colon>:)
  | (?P<caret>\^)
  | (?P<tilde>~)
""", re.VERBOSE)


class LuceneParser:
    """A recursive-descent parser of query_string queries with Lucene's clause semantics (its
    recursion is a parenthesised group, which counts against the query's nesting limit).

    ``a AND b``, ``+a -b``, ``NOT a``, ``(…)``, ``field:term``, ``field:"a phrase"~2``,
    ``field:[a TO b}``, ``field:>=10``, ``_exists_:field``, wildcards `*` `?` in terms. Fuzzy terms
    (``term~``) and regular expressions (``/re/``) are refused."""

    def __init__(self, text: str, fields: list[str | None], operator: str):
        self.text = text
        self.fields = fields
        self.operator = operator
        self.tokens = self._tokenize(text)
        self.pos = 0

    def _tokenize(self, text: str) -> list[tuple[str, str]]:
        tokens, pos = [], 0
        while pos < len(text):
            match = _TOKEN_RE.match(text, pos)
            if not match or match.end() == pos:
                raise bad(f"[query_string] cannot parse {text!r} at position {pos}")
            kind = match.lastgroup
            if kind == "regex":
                raise bad("[query_string] regular expressions are not supported")
            if kind != "ws":
                tokens.append((kind, match.group()))
            pos = match.end()
        return tokens

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise bad(f"[query_string] unexpected end of {self.text!r}")
        self.pos += 1
        return token

    def parse(self) -> Node:
        node = self.query()
        if self.peek() is not None:
            raise bad(f"[query_string] unexpected {self.peek()[1]!r} in {self.text!r}")
        return node

    def query(self) -> Node:
        # Lucene's QueryParserBase.addClause: conjunctions rewrite the clause before them.
        clauses: list[list] = []  # [occur, node]
        while True:
            token = self.peek()
            if token is None or token == ("op", ")"):
                break
            conj = None
            if self.peek()[0] in ("and", "or"):
                conj = self.take()[0]
                if not clauses:
                    raise bad(f"[query_string] {conj.upper()} without a left operand in {self.text!r}")
            modifier = None
            if self.peek() and (self.peek()[0] == "not" or self.peek() in (("op", "+"), ("op", "-"), ("op", "!"))):
                kind, value = self.take()
                modifier = "+" if value == "+" else "-"
            node = self.clause()
            if clauses and conj == "and" and clauses[-1][0] != "must_not":
                clauses[-1][0] = "must"
            if clauses and self.operator == "and" and conj == "or" and clauses[-1][0] != "must_not":
                clauses[-1][0] = "should"
            if self.operator == "or":
                prohibited = modifier == "-"
                required = modifier == "+" or (conj == "and" and not prohibited)
            else:
                prohibited = modifier == "-"
                required = not prohibited and conj != "or"
            clauses.append(["must_not" if prohibited else "must" if required else "should", node])
        if not clauses:
            raise bad(f"[query_string] empty query {self.text!r}")
        if len(clauses) == 1 and clauses[0][0] != "must_not":
            return clauses[0][1]
        parts = {"must": [], "should": [], "must_not": []}
        for occur, node in clauses:
            parts[occur].append(node)
        msm = 1 if parts["should"] and not parts["must"] else 0
        return Bool(tuple(parts["must"]), tuple(parts["should"]), tuple(parts["must_not"]), (), msm)

    def clause(self) -> Node:
        token = self.peek()
        fields = self.fields
        if token and token[0] == "term" and self.peek(1) and self.peek(1)[0] == "colon":
            name = _unescape(self.take()[1])
            self.take()
            if name == "_exists_":
                kind, value = self.take()
                if kind != "term":
                    raise bad(f"[query_string] _exists_ needs a field name in {self.text!r}")
                return on_field(_unescape(value), Exists)
            fields = [None if name == "*" else name]
        token = self.take()
        kind, value = token
        if kind == "op" and value == "(":
            saved, self.fields = self.fields, fields
            with _nested():
                node = self.query()
            self.fields = saved
            if self.take() != ("op", ")"):
                raise bad(f"[query_string] missing ')' in {self.text!r}")
            self._boost()
            return node
        if kind == "phrase":
            slop = 0
            if self.peek() and self.peek()[0] == "tilde":
                self.take()
                slop = self._number("proximity")
            self._boost()
            return self._each(fields, lambda f: self._phrase(f, _unescape(value[1:-1]), slop))
        if kind == "range":
            return self._range(fields, value)
        if kind == "cmp":
            bound_kind, bound = self.take()
            if bound_kind not in ("term", "phrase"):
                raise bad(f"[query_string] {value} needs a value in {self.text!r}")
            bound = _unescape(bound[1:-1] if bound_kind == "phrase" else bound)
            self._boost()
            lower = bound if value.startswith(">") else None
            upper = bound if value.startswith("<") else None
            return self._each(fields, lambda f: self._range_field(f, lower, value == ">=", upper, value == "<="))
        if kind == "term":
            if self.peek() and self.peek()[0] == "tilde":
                raise bad("[query_string] fuzzy terms (term~) are not supported")
            self._boost()
            return self._each(fields, lambda f: self._term(f, value))
        raise bad(f"[query_string] unexpected {value!r} in {self.text!r}")

    def _boost(self) -> None:
        if self.peek() and self.peek()[0] == "caret":
            self.take()
            self._number("boost", allow_float=True)

    def _number(self, what: str, allow_float: bool = False) -> float:
        token = self.peek()
        if token and token[0] == "term":
            try:
                number = float(token[1]) if allow_float else int(token[1])
            except ValueError:
                number = None
            if number is not None:
                self.take()
                return number
        raise bad(f"[query_string] {what} needs a number in {self.text!r}")

    @staticmethod
    def _each(fields: list[str | None], build) -> Node:
        nodes = tuple(build(f) for f in fields)
        return nodes[0] if len(nodes) == 1 else Bool(should=nodes, minimum_should_match=1)

    def _term(self, field: str | None, raw: str) -> Node:
        wildcard = _has_wildcard(raw)
        if wildcard:
            _check_pattern("query_string", raw)
        value = _unescape(raw) if not wildcard else raw
        if field is None:
            if wildcard:
                return Bool(should=(Wildcard(None, "keyword", raw.lower()), Wildcard(None, "text", raw.lower())),
                            minimum_should_match=1)
            return Bool(should=(KeywordTerm(None, value.lower()),
                                token_query(None, analyze(value), self.operator)), minimum_should_match=1)
        if field == "_id":
            return Ids((value,))

        def build(path, kind):
            if wildcard:
                if raw.endswith("*") and not _has_wildcard(raw[:-1]):
                    return Prefix(path, kind, _unescape(raw[:-1]).lower())
                return Wildcard(path, kind, raw.lower())
            if kind == "keyword":
                return KeywordTerm(path, value.lower())
            return token_query(path, analyze(value), self.operator)
        return on_field(field, build)

    def _phrase(self, field: str | None, text: str, slop: int) -> Node:
        tokens = analyze(text)
        if field is None:
            if slop and (len(tokens) > 2 or len(tokens) == 2 and tokens[0] == tokens[1]):
                raise bad(f"slop on a phrase of more than two (distinct) words is not supported: {text!r}")
            phrase = Phrase(None, tuple(tokens), slop) if len(tokens) > 1 else (
                TokenTerm(None, tokens[0]) if tokens else MatchNone())
            return Bool(should=(KeywordTerm(None, text.lower()), phrase), minimum_should_match=1)
        return phrase_node(field, text, slop)

    def _range(self, fields: list[str | None], opener: str) -> Node:
        lower = self._bound()
        token = self.take()
        if token != ("term", "TO"):
            raise bad(f"[query_string] a range needs 'TO' in {self.text!r}")
        upper = self._bound()
        closer = self.take()
        if closer[0] != "close":
            raise bad(f"[query_string] unterminated range in {self.text!r}")
        self._boost()
        return self._each(fields, lambda f: self._range_field(
            f, None if lower == "*" else lower, opener == "[", None if upper == "*" else upper, closer[1] == "]"))

    def _bound(self) -> str:
        kind, value = self.take()
        if (kind, value) == ("op", "-") and self.peek() and self.peek()[0] == "term":
            return "-" + _unescape(self.take()[1])  # a negative number, not a prohibited clause
        if kind == "phrase":
            return _unescape(value[1:-1])
        if kind == "term":
            return _unescape(value) if value != "*" else "*"
        raise bad(f"[query_string] bad range bound {value!r} in {self.text!r}")

    def _range_field(self, field, lower, include_lower, upper, include_upper) -> Node:
        if field is None:
            raise bad("[query_string] a range needs a field (no default field is set)")
        return range_node(field, lower, include_lower, upper, include_upper)


def _has_wildcard(raw: str) -> bool:
    escaped = False
    for char in raw:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "*?":
            return True
    return False


def _unescape(raw: str) -> str:
    return re.sub(r"\\(.)", r"\1", raw)
