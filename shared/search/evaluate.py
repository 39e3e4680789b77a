"""The query tree evaluated over one document in Python.

The embedded backend percolates with it (a new document against every stored subscription: one
flattening, then a walk of each small tree, well under a millisecond per query), and the benchmark
uses it as the brute-force baseline. It reads documents through ``documents.flatten``, exactly
what the embedded engine indexes, so both give the same answers; the conformance suite checks
that on its whole query table.

Every leaf takes time linear in what it reads (wildcards by a greedy glob matcher, never by a
backtracking regular expression; phrases by position lookups). A ``WorkBudget`` passed to
``matches`` bounds one query's work on one document: past it, ``QueryTooCostly``.
"""
from __future__ import annotations

import bisect
import dataclasses
import functools

from shared.search import query as q
from shared.search.documents import FlatDocument, canonical_number, term_forms


class QueryTooCostly(q.QueryTooComplex):
    """A query whose evaluation on one document passed its ``WorkBudget``."""


class WorkBudget:
    """Work one evaluation may do: about one unit per value, token or character compared."""

    def __init__(self, limit: int):
        self.limit = limit
        self.left = limit

    def spend(self, amount: int) -> None:
        self.left -= amount
        if self.left < 0:
            raise QueryTooCostly(f"the query needs more than {self.limit} units of work to match one bundle")


def matches(node: q.Node, doc: FlatDocument, doc_id: str = "", budget: WorkBudget | None = None) -> bool:
    return _EVALUATORS[type(node)](node, doc, doc_id, budget)


def _spend(budget: WorkBudget | None, amount: int) -> None:
    if budget is not None:
        budget.spend(amount)


def _bool(node: q.Bool, doc, doc_id, budget) -> bool:
    for child in node.must:
        if not matches(child, doc, doc_id, budget):
            return False
    for child in node.filter:
        if not matches(child, doc, doc_id, budget):
            return False
    for child in node.must_not:
        if matches(child, doc, doc_id, budget):
            return False
    needed = node.minimum_should_match
    if needed <= 0:
        return True
    if needed > len(node.should):
        return False
    for child in node.should:
        if matches(child, doc, doc_id, budget):
            needed -= 1
            if needed == 0:
                return True
    return False


def _keyword_term(node: q.KeywordTerm, doc, doc_id, budget) -> bool:
    text, number = term_forms(node.value)
    if node.path is None:
        _spend(budget, 1)
        return (text is not None and text in doc.all_keywords) or (
            number is not None and canonical_number(number) in doc.all_keywords)
    if text is not None and text in doc.keywords.get(node.path, ()):
        return True
    numbers = doc.numbers.get(node.path, ())
    _spend(budget, 1 + len(numbers))
    return number is not None and number in numbers


def _token_lists(path: str | None, doc: FlatDocument, budget) -> list[list[str]]:
    lists = doc.all_texts if path is None else doc.texts.get(path, ())
    _spend(budget, len(lists) + sum(map(len, lists)))
    return lists


def _token_term(node: q.TokenTerm, doc, doc_id, budget) -> bool:
    return any(node.token in tokens for tokens in _token_lists(node.path, doc, budget))


def _phrase(node: q.Phrase, doc, doc_id, budget) -> bool:
    return any(phrase_in(node.tokens, tokens, node.slop) for tokens in _token_lists(node.path, doc, budget))


def phrase_in(phrase: tuple[str, ...], tokens: list[str], slop: int) -> bool:
    """The phrase occurs in one value's tokens with Lucene's sloppy-phrase rule: a distinct position
    p_i for each word i such that max(p_i - i) - min(p_i - i) <= slop. Slop 0 is the exact phrase;
    swapping two adjacent words costs 2. tantivy agrees for the phrases the parser lets through
    (any exact phrase, two distinct words with slop; the tests check it against the engine), the
    only ones answered here: in time linear in the tokens (times the phrase's length, or the log
    of a word's occurrences)."""
    if not phrase:
        return False
    if slop == 0:
        first, length = phrase[0], len(phrase)
        return any(token == first and tuple(tokens[start:start + length]) == phrase
                   for start, token in enumerate(tokens))
    if len(phrase) != 2 or phrase[0] == phrase[1]:
        raise ValueError("slop is answered for phrases of two distinct words only")
    seconds = [position for position, token in enumerate(tokens) if token == phrase[1]]
    if not seconds:
        return False
    for position, token in enumerate(tokens):
        if token == phrase[0]:
            # The second word at p1 with |(p1 - 1) - position| <= slop (never at `position`: distinct words).
            found = bisect.bisect_left(seconds, position + 1 - slop)
            if found < len(seconds) and seconds[found] <= position + 1 + slop:
                return True
    return False


def _range(node: q.Range, doc, doc_id, budget) -> bool:
    if node.type == "number":
        values = doc.numbers.get(node.path, ())
    elif node.type == "date":
        values = doc.dates.get(node.path, ())
    elif node.kind == "text":
        values = _tokens(node.path, doc, budget)
    else:
        values = doc.keywords.get(node.path, ())
    _spend(budget, len(values))
    return any(_within(node, value) for value in values)


def _within(node: q.Range, value) -> bool:
    if node.lower is not None:
        if value < node.lower or (value == node.lower and not node.include_lower):
            return False
    if node.upper is not None:
        if value > node.upper or (value == node.upper and not node.include_upper):
            return False
    return True


def _exists(node: q.Exists, doc, doc_id, budget) -> bool:
    if node.kind == "text":
        return node.path in doc.texts
    return node.path in doc.exists


def _tokens(path: str | None, doc: FlatDocument, budget) -> set[str]:
    return {t for tokens in _token_lists(path, doc, budget) for t in tokens}


def _values(path: str | None, kind: str, doc: FlatDocument, budget):
    if kind == "text":
        return _tokens(path, doc, budget)
    return doc.all_keywords if path is None else doc.keywords.get(path, ())


def _prefix(node: q.Prefix, doc, doc_id, budget) -> bool:
    values = _values(node.path, node.kind, doc, budget)
    _spend(budget, len(values))
    return any(v.startswith(node.prefix) for v in values)


def _wildcard(node: q.Wildcard, doc, doc_id, budget) -> bool:
    glob = compile_glob(node.pattern)
    for value in _values(node.path, node.kind, doc, budget):
        _spend(budget, 1 + len(value) * glob.cost)
        if glob.match(value):
            return True
    return False


# --- wildcards ------------------------------------------------------------------------------------
ANY_ONE = None  # `?` in a segment


@dataclasses.dataclass(frozen=True)
class Glob:
    """A wildcard pattern as the segments between its stars (``None`` in a segment: `?`).

    ``match`` anchors the first segment at the start and the last at the end, and finds each one
    between at its leftmost place: a segment is of fixed length, so the leftmost place leaves the
    most room to the segments after it, and no choice is ever revisited (no backtracking). Time:
    the value's length times the longest segment holding a `?` (``cost``); literal segments are
    found by ``str.find``."""
    segments: tuple[tuple, ...]
    starred: bool  # False: the pattern has no `*`, its one segment is the whole value
    cost: int

    def match(self, text: str) -> bool:
        segments = self.segments
        if not self.starred:
            return len(text) == len(segments[0]) and _at(segments[0], text, 0)
        head, tail = segments[0], segments[-1]
        end = len(text) - len(tail)
        if end < len(head) or not _at(head, text, 0) or not _at(tail, text, end):
            return False
        position = len(head)
        for segment in segments[1:-1]:
            found = _find(segment, text, position, end)
            if found < 0:
                return False
            position = found + len(segment)
        return True


def _at(segment: tuple, text: str, start: int) -> bool:
    for offset, char in enumerate(segment):
        if char is not ANY_ONE and text[start + offset] != char:
            return False
    return True


def _find(segment: tuple, text: str, start: int, end: int) -> int:
    """The leftmost place from ``start`` where ``segment`` matches and ends by ``end``; -1 if none."""
    if ANY_ONE not in segment:
        return text.find("".join(segment), start, end)
    for position in range(start, end - len(segment) + 1):
        if _at(segment, text, position):
            return position
    return -1


@functools.lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> Glob:
    """A wildcard pattern (`*`, `?`, backslash escapes; a trailing backslash is itself) as a ``Glob``."""
    segments, current, escaped = [], [], False
    for char in pattern:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "*":
            segments.append(tuple(current))
            current = []
        elif char == "?":
            current.append(ANY_ONE)
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    segments.append(tuple(current))
    starred = len(segments) > 1
    if starred:  # empty segments between stars (`**`) match anywhere: dropped
        segments = [segments[0]] + [s for s in segments[1:-1] if s] + [segments[-1]]
    cost = max([len(s) for s in segments if ANY_ONE in s] or [1])
    return Glob(tuple(segments), starred, cost)


def _ids(node: q.Ids, doc, doc_id, budget) -> bool:
    return doc_id in node.values


_EVALUATORS = {
    q.MatchAll: lambda node, doc, doc_id, budget: True,
    q.MatchNone: lambda node, doc, doc_id, budget: False,
    q.Bool: _bool,
    q.KeywordTerm: _keyword_term,
    q.TokenTerm: _token_term,
    q.Phrase: _phrase,
    q.Range: _range,
    q.Exists: _exists,
    q.Prefix: _prefix,
    q.Wildcard: _wildcard,
    q.Ids: _ids,
}
