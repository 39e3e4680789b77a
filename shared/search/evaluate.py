"""The query tree evaluated over one document in Python.

The embedded backend percolates with it (a new document against every stored subscription: one
flattening, then a walk of each small tree, well under a millisecond per query), and the benchmark
uses it as the brute-force baseline. It reads documents through ``documents.flatten``, exactly
what the embedded engine indexes, so both give the same answers; the conformance suite checks
that on its whole query table.
"""
from __future__ import annotations

import functools
import re

from shared.search import query as q
from shared.search.documents import FlatDocument, canonical_number, term_forms


def matches(node: q.Node, doc: FlatDocument, doc_id: str = "") -> bool:
    return _EVALUATORS[type(node)](node, doc, doc_id)


def _bool(node: q.Bool, doc, doc_id) -> bool:
    for child in node.must:
        if not matches(child, doc, doc_id):
            return False
    for child in node.filter:
        if not matches(child, doc, doc_id):
            return False
    for child in node.must_not:
        if matches(child, doc, doc_id):
            return False
    needed = node.minimum_should_match
    if needed <= 0:
        return True
    if needed > len(node.should):
        return False
    for child in node.should:
        if matches(child, doc, doc_id):
            needed -= 1
            if needed == 0:
                return True
    return False


def _keyword_term(node: q.KeywordTerm, doc, doc_id) -> bool:
    text, number = term_forms(node.value)
    if node.path is None:
        return (text is not None and text in doc.all_keywords) or (
            number is not None and canonical_number(number) in doc.all_keywords)
    if text is not None and text in doc.keywords.get(node.path, ()):
        return True
    return number is not None and number in doc.numbers.get(node.path, ())


def _token_term(node: q.TokenTerm, doc, doc_id) -> bool:
    if node.path is None:
        return any(node.token in tokens for tokens in doc.all_texts)
    return any(node.token in tokens for tokens in doc.texts.get(node.path, ()))


def _phrase(node: q.Phrase, doc, doc_id) -> bool:
    values = doc.all_texts if node.path is None else doc.texts.get(node.path, ())
    return any(phrase_in(node.tokens, tokens, node.slop) for tokens in values)


def phrase_in(phrase: tuple[str, ...], tokens: list[str], slop: int) -> bool:
    """The phrase occurs in one value's tokens with Lucene's sloppy-phrase rule: a distinct position
    p_i for each word i such that max(p_i - i) - min(p_i - i) <= slop. Slop 0 is the exact phrase;
    swapping two adjacent words costs 2. tantivy agrees for the phrases the parser lets through
    (any exact phrase, two words with slop; the tests check it against the engine)."""
    positions: dict[str, list[int]] = {}
    for position, token in enumerate(tokens):
        positions.setdefault(token, []).append(position)
    if any(word not in positions for word in phrase):
        return False

    def search(index: int, used: tuple[int, ...], low: int, high: int) -> bool:
        if index == len(phrase):
            return True
        for position in positions[phrase[index]]:
            if position in used:
                continue
            offset = position - index
            new_low, new_high = min(low, offset), max(high, offset)
            if new_high - new_low <= slop and search(index + 1, used + (position,), new_low, new_high):
                return True
        return False

    return search(0, (), 1 << 30, -(1 << 30))


def _range(node: q.Range, doc, doc_id) -> bool:
    if node.type == "number":
        values = doc.numbers.get(node.path, ())
    elif node.type == "date":
        values = doc.dates.get(node.path, ())
    elif node.kind == "text":
        values = doc.tokens(node.path)
    else:
        values = doc.keywords.get(node.path, ())
    return any(_within(node, value) for value in values)


def _within(node: q.Range, value) -> bool:
    if node.lower is not None:
        if value < node.lower or (value == node.lower and not node.include_lower):
            return False
    if node.upper is not None:
        if value > node.upper or (value == node.upper and not node.include_upper):
            return False
    return True


def _exists(node: q.Exists, doc, doc_id) -> bool:
    if node.kind == "text":
        return node.path in doc.texts
    return node.path in doc.exists


def _values(path: str | None, kind: str, doc: FlatDocument):
    if kind == "text":
        return doc.tokens(path)
    return doc.all_keywords if path is None else doc.keywords.get(path, ())


def _prefix(node: q.Prefix, doc, doc_id) -> bool:
    return any(v.startswith(node.prefix) for v in _values(node.path, node.kind, doc))


def _wildcard(node: q.Wildcard, doc, doc_id) -> bool:
    pattern = wildcard_regex(node.pattern)
    return any(pattern.fullmatch(v) for v in _values(node.path, node.kind, doc))


@functools.lru_cache(maxsize=4096)
def wildcard_regex(pattern: str) -> re.Pattern:
    return re.compile(wildcard_to_regex(pattern, re.escape), re.DOTALL)


def wildcard_to_regex(pattern: str, escape) -> str:
    """A wildcard pattern (`*`, `?`, backslash escapes) as a regular expression body."""
    out, escaped = [], False
    for char in pattern:
        if escaped:
            out.append(escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append(escape(char))
    if escaped:
        out.append(escape("\\"))
    return "".join(out)


def _ids(node: q.Ids, doc, doc_id) -> bool:
    return doc_id in node.values


_EVALUATORS = {
    q.MatchAll: lambda node, doc, doc_id: True,
    q.MatchNone: lambda node, doc, doc_id: False,
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
