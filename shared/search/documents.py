"""How an index document is seen by a query: flattened paths, typed leaf values and tokens.

Both the embedded engine (``embedded.py``, which indexes what ``flatten`` returns) and the Python
evaluator (``evaluate.py``: percolation and the benchmark's baseline) read documents through this
module, so the two can never disagree about what a document contains.

The view follows Elasticsearch's default (non-nested) object mapping with the mapping the
OpenSearch backend installs: an object array is flattened, every leaf is reachable by its dotted
path without array indices, and a clause on a path matches if any element matches. A string is a
lower-cased keyword (whole value) at its path and an analysed text at ``{path}.text``.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import re
import struct
from typing import Any, Iterator

# Keyword values longer than this are not indexed as keywords (the OpenSearch mapping's
# `ignore_above`): Lucene refuses terms over 32 KiB, and exact matches on such values are useless.
KEYWORD_MAX_CHARS = 10_000

# Top-level field names the backends add to an indexed document; never part of a returned source.
RESERVED_FIELDS = ("dss_fqid", "dss_tombstone")

_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
# Elasticsearch's `strict_date_optional_time` from the day on (a year alone, or a year and month,
# stays a number / a string: those are far more often ages, counts and codes than dates).
_DATE_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt](\d{2})(?::(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?)?"
    r"([Zz]|[+-]\d{2}:?\d{2})?$")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def is_tombstone(document: Any) -> bool:
    """A document replaced by tombstone fields: searches and percolation never return it.

    Tombstones carry ``admin_deleted`` (the contract's tombstone fields) or ``"tombstone": true``."""
    if not isinstance(document, dict):
        return False
    return document.get("tombstone") is True or document.get("admin_deleted") is not None


def number_value(value: Any) -> float | None:
    """The number a leaf or query value stands for: numbers, and strings that look like numbers.

    Number-like strings count as numbers so that ranges see HCA's string-typed ages and counts."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and _NUMBER_RE.match(value.strip()):
        number = float(value)
    else:
        return None
    return number if math.isfinite(number) else None


def term_forms(value: Any) -> tuple[str | None, float | None]:
    """(text, number) a `term` value can match as: booleans as `true`/`false`, number-like strings
    as both text and number, numbers as numbers only."""
    if isinstance(value, bool):
        return ("true" if value else "false"), None
    return (value if isinstance(value, str) else None), number_value(value)


def canonical_number(number: float) -> str:
    """One spelling per number (45 and 45.0 are both "45"), for the all-fields keyword set."""
    return str(int(number)) if number.is_integer() and abs(number) < 2 ** 63 else repr(number)


def sortable_int(number: float) -> int:
    """A signed 64-bit integer ordered like the float: the engine's ranges run on integers only
    (tantivy 0.27 panics on a float bound over an integer column, so every number is mapped)."""
    bits = struct.unpack(">q", struct.pack(">d", number + 0.0))[0]  # + 0.0: -0.0 equals 0.0
    return bits if bits >= 0 else bits ^ 0x7FFF_FFFF_FFFF_FFFF


def date_micros(value: Any, round_up: bool = False) -> int | None:
    """Microseconds since the epoch (UTC) of an ISO-8601 date or date-time string, else None.

    ``round_up`` fills the components the string leaves out with their largest value, as
    Elasticsearch does for `gt` and `lte` bounds (``lte: "2018-01-01"`` includes that whole day)."""
    if not isinstance(value, str):
        return None
    match = _DATE_RE.match(value.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        moment = datetime.datetime(int(year), int(month), int(day), tzinfo=datetime.timezone.utc)
    except ValueError:
        return None
    parts = [(hour, 24, datetime.timedelta(hours=1)), (minute, 60, datetime.timedelta(minutes=1)),
             (second, 60, datetime.timedelta(seconds=1))]
    last_unit = datetime.timedelta(days=1)
    for text, limit, unit in parts:
        if text is None:
            break
        if int(text) >= limit:
            return None
        moment += int(text) * unit
        last_unit = unit
    micros = 0
    if fraction is not None:
        micros = int(fraction[:6].ljust(6, "0"))
        last_unit = datetime.timedelta(microseconds=10 ** (6 - min(len(fraction), 6)))
    if zone and zone not in "Zz":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        moment -= sign * datetime.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    result = (moment - _EPOCH) // datetime.timedelta(microseconds=1) + micros
    if round_up:
        result += last_unit // datetime.timedelta(microseconds=1) - 1
    return result


class Analyzer:
    """The analysis of text fields: tantivy's `default` analyser (split on anything that is not a
    letter or digit, drop tokens over 40 bytes, lower-case), used on both sides so that query
    tokens and indexed tokens always agree. Close to Elasticsearch's `standard` analyser."""

    _instance = None

    def __init__(self):
        import tantivy
        self._analyzer = (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
                          .filter(tantivy.Filter.remove_long(40))
                          .filter(tantivy.Filter.lowercase()).build())

    @classmethod
    def get(cls) -> "Analyzer":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def tokens(self, text: str) -> list[str]:
        return self._analyzer.analyze(text)


def analyze(text: str) -> list[str]:
    return Analyzer.get().tokens(text)


def leaves(document: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, scalar) for every non-null leaf; array elements share their array's path."""
    if isinstance(document, dict):
        for key, value in document.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(document, (list, tuple)):
        for value in document:
            yield from leaves(value, prefix)
    elif document is not None and prefix:
        yield prefix, document


@dataclasses.dataclass
class FlatDocument:
    """A document as queries see it (see the module docstring)."""

    exists: set[str] = dataclasses.field(default_factory=set)
    keywords: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    numbers: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    dates: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    # Per path, the token list of each string value (phrases never span two values).
    texts: dict[str, list[list[str]]] = dataclasses.field(default_factory=dict)
    # Raw strings per path, for the engine's analysed field.
    strings: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    all_keywords: set[str] = dataclasses.field(default_factory=set)
    all_texts: list[list[str]] = dataclasses.field(default_factory=list)

    def tokens(self, path: str | None) -> set[str]:
        if path is None:
            return {t for tokens in self.all_texts for t in tokens}
        return {t for tokens in self.texts.get(path, ()) for t in tokens}


def flatten(document: dict) -> FlatDocument:
    # Written for speed (the indexer's and the benchmark's hot loop): one recursive walk, type
    # checks by identity, the number and date parsers only for strings that could be either.
    flat = FlatDocument()
    exists, keywords, numbers, dates = flat.exists, flat.keywords, flat.numbers, flat.dates
    texts, strings, all_keywords, all_texts = flat.texts, flat.strings, flat.all_keywords, flat.all_texts
    tokenize = Analyzer.get().tokens

    def leaf(path: str, value) -> None:
        if path not in exists:
            _mark_exists(exists, path)
        kind = type(value)
        if kind is str:
            lowered = value.lower()
            if len(value) <= KEYWORD_MAX_CHARS:
                keywords.setdefault(path, set()).add(lowered)
                all_keywords.add(lowered)
            first = value[:1]
            if first.isdigit() or first in "+-.":
                number = number_value(value)
                if number is not None:
                    numbers.setdefault(path, []).append(number)
                    all_keywords.add(canonical_number(number))
                elif len(value) >= 10 and value[4:5] == "-":
                    micros = date_micros(value)
                    if micros is not None:
                        dates.setdefault(path, []).append(micros)
            tokens = tokenize(value)
            texts.setdefault(path, []).append(tokens)
            strings.setdefault(path, []).append(value)
            all_texts.append(tokens)
        elif kind is bool:
            text = "true" if value else "false"
            keywords.setdefault(path, set()).add(text)
            all_keywords.add(text)
        else:
            number = number_value(value)
            if number is not None:
                numbers.setdefault(path, []).append(number)
                all_keywords.add(canonical_number(number))
            else:
                # Any other scalar (JSON has none) is indexed by its text, like a keyword.
                text = str(value).lower()
                keywords.setdefault(path, set()).add(text)
                all_keywords.add(text)

    def walk(value, path: str) -> None:
        kind = type(value)
        if kind is dict:
            for key, child in value.items():
                walk(child, f"{path}.{key}" if path else str(key))
        elif kind is list or kind is tuple:
            for child in value:
                walk(child, path)
        elif value is not None and path:
            if isinstance(value, dict):  # dict subclasses
                walk(dict(value), path)
            else:
                leaf(path, value)

    walk(document, "")
    return flat


def _mark_exists(exists: set[str], path: str) -> None:
    # A leaf makes every enclosing object exist too (ES `exists` on an object path).
    while path and path not in exists:
        exists.add(path)
        path = path.rpartition(".")[0]


_FQID_RE = re.compile(r"^([0-9a-f]{8})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{4})-([0-9a-f]{12})\.(.+)$")


def fqid_key(doc_id: str) -> tuple[int, int, int] | None:
    """(uuid high 64 bits, uuid low 64 bits, version in epoch microseconds) of a document id
    `{uuid}.{version}`, ordered exactly like the id string; None for any other id.

    The embedded engine sorts and pages on these integers: sorting on the id text itself costs
    microseconds per hit (milliseconds per query at 100,000 bundles)."""
    from shared.identifiers import VERSION_FORMAT, is_version
    match = _FQID_RE.match(doc_id) if isinstance(doc_id, str) else None
    if not match or not is_version(match.group(6)):
        return None
    hexdigits = "".join(match.groups()[:5])
    when = datetime.datetime.strptime(match.group(6), VERSION_FORMAT).replace(tzinfo=datetime.timezone.utc)
    micros = (when - _EPOCH) // datetime.timedelta(microseconds=1)
    if micros < 0:
        return None
    return int(hexdigits[:16], 16), int(hexdigits[16:], 16), micros


def fqid_from_key(high: int, low: int, micros: int) -> str:
    from shared.identifiers import VERSION_FORMAT
    digits = f"{high:016x}{low:016x}"
    uuid = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
    when = _EPOCH + datetime.timedelta(microseconds=micros)
    return f"{uuid}.{when.strftime(VERSION_FORMAT)}"
