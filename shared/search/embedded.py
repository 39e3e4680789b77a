"""The embedded search index: tantivy on local disk, one directory per replica.

Layout under ``{DSS_INDEX_DIR}/{replica}/``: ``g000001/``, ``g000002/``… one tantivy index per
generation; ``CURRENT`` names the live one (replaced atomically by ``switch_to``);
``subscriptions.json`` holds the stored subscription queries (outside the generations, so a
reindex keeps them).

What a document becomes (see ``documents.flatten``; every field is derived from that one view, so
the Python evaluator of percolation and this engine agree):

| field | tokens | serves |
|---|---|---|
| ``id`` | the doc id (raw) | ids, delete / replace |
| ``k1 k2 k3`` | the id as integers (uuid high, low; version µs), fast | sort and search_after cursor |
| ``st`` | ``live`` / ``dead`` | tombstones never returned |
| ``ex`` | every path holding a value (and its parents) | exists |
| ``pv`` | ``{path}\\x1f{lower-cased value}`` | keyword term, prefix, wildcard, string range |
| ``pt`` | ``{path}\\x1f{token}`` | prefix, wildcard and range on `.text` |
| ``t`` | JSON ``{path: [strings]}``, default analyser, positions | match / phrase on `.text` |
| ``n`` | JSON ``{path: [numbers as order-preserving int64]}``, fast | numeric term and range |
| ``d`` | JSON ``{path: [dates as epoch microseconds]}``, fast | date range |
| ``ak`` / ``at`` | every keyword / every analysed string | query_string without a field |
| ``src`` | the document (stored bytes) | get, raw search output |

Gotchas this design avoids (measured on tantivy 0.27): regex and range queries refuse JSON paths
(hence ``pv``/``pt``, and ranges through the query parser); a float bound on an integer column
panics (hence every number mapped to an ordered int64); RFC 3339 strings in a JSON field are taken
for dates and not tokenised (hence the trailing space added to date-like strings in ``t``); a
search of limit 0 panics; one writer per index (``LockBusy``): the indexer writes, other processes
only read and pick up commits and generation switches on their next call.

Threads: searches run beside writes. The object's locks are the operating system's (never
eventlet's green ones, which a native thread cannot wait on): one guards the open index and its
generation and is held only for moments, the other serialises writes through their commit; a
search takes only the first, so a slow search never holds up a write (nor a write a search,
beyond the moment a commit is picked up). tantivy releases the GIL while it searches.

Bounded work: queries are parsed under ``QueryLimits``; wildcards and prefixes become regular
expressions for tantivy's automaton (Rust: linear time, and refused past its state limit, which
is a 400 ``query_too_complex`` here); a search checks its ``timeout`` between its steps;
percolation evaluates each stored query under a ``WorkBudget`` of ``percolate_max_work``.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Iterable

import tantivy
from eventlet.patcher import original
from prometheus_client import Counter

from shared.exceptions import InvalidParameter
from shared.search import query as q
from shared.search.base import Deadline, IndexBackend, Refused, SearchPage, SearchUnavailable
from shared.search.documents import (canonical_number, flatten, fqid_from_key, fqid_key, is_tombstone,
                                     sortable_int, term_forms)
from shared.search.evaluate import WorkBudget, matches
from shared.search.query import ElasticsearchBadRequest, QueryLimits, QueryTooComplex, parse_search

logger = logging.getLogger(__name__)

_os_threading = original("threading")  # real locks, whether or not eventlet patched `threading`

PERCOLATION_REFUSED = Counter("dss_percolation_refused_total",
                              "Stored subscription queries percolation could not evaluate within the limits.",
                              ["replica"])

SEP = "\x1f"  # between a path and its value in pv / pt: a character no path or query contains
_GEN_RE = re.compile(r"^g(\d{6})$")
WRITER_HEAP_BYTES = 128_000_000
BULK_COMMIT_EVERY = 5_000  # documents per commit in bulk_put: bounds the work a crash loses


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("id", tokenizer_name="raw", index_option="basic")
    for key in ("k1", "k2", "k3"):
        builder.add_unsigned_field(key, indexed=True, fast=True)
    builder.add_text_field("st", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("ex", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("pv", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("pt", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("ak", tokenizer_name="raw", index_option="basic")
    builder.add_text_field("at", tokenizer_name="default", index_option="position")
    builder.add_json_field("t", tokenizer_name="default", index_option="position", expand_dots_enabled=True)
    builder.add_json_field("n", fast=True, tokenizer_name="raw", index_option="basic", expand_dots_enabled=True)
    builder.add_json_field("d", fast=True, tokenizer_name="raw", index_option="basic", expand_dots_enabled=True)
    builder.add_bytes_field("src", stored=True)
    return builder.build()


SCHEMA = _schema()


def _safe_text(value: str) -> str:
    # tantivy takes an RFC 3339 string in a JSON field for a date and does not tokenise it.
    return value + " " if value[:4].isdigit() else value


def _rust_escape(text: str) -> str:
    """Escape for tantivy's regex syntax (Rust `regex`): every meta character, backslashed."""
    return "".join("\\" + c if c in "\\.+*?()|[]{}^$#&-~" else c for c in text)


def glob_to_regex(pattern: str) -> str:
    """A wildcard pattern (`*`, `?`, backslash escapes; a trailing backslash is itself) as a Rust
    regular expression body."""
    out, escaped = [], False
    for char in pattern:
        if escaped:
            out.append(_rust_escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append(_rust_escape(char))
    if escaped:
        out.append(_rust_escape("\\"))
    return "".join(out)


def _regex_query(field: str, regex: str, clause: str, pattern: str) -> tantivy.Query:
    try:
        return tantivy.Query.regex_query(SCHEMA, field, regex)
    except ValueError as error:  # the automaton would pass tantivy's state limit
        raise QueryTooComplex(f"[{clause}] pattern {pattern[:60]!r} is too complex for the index "
                              f"({str(error)[-80:]})") from None


def _parser_escape(path: str) -> str:
    """A document path as a field of tantivy's query parser: dots separate, the rest is escaped."""
    return ".".join("".join(c if c.isalnum() or c == "_" else "\\" + c for c in part)
                    for part in path.split("."))


def to_tantivy_document(doc_id: str, document: dict) -> tantivy.Document:
    doc = tantivy.Document()
    doc.add_text("id", doc_id)
    for name, value in zip(("k1", "k2", "k3"), fqid_key(doc_id)):
        doc.add_unsigned(name, value)
    doc.add_bytes("src", json.dumps(document, separators=(",", ":")).encode())
    if is_tombstone(document):
        doc.add_text("st", "dead")
        return doc
    doc.add_text("st", "live")
    flat = flatten(document)
    for path in flat.exists:
        doc.add_text("ex", path)
    for path in flat.texts:
        doc.add_text("ex", SEP + path)  # `exists` on `{path}.text`: a string is there
    for path, values in flat.keywords.items():
        for value in values:
            doc.add_text("pv", f"{path}{SEP}{value}")
    for path, token_lists in flat.texts.items():
        for token in {t for tokens in token_lists for t in tokens}:
            doc.add_text("pt", f"{path}{SEP}{token}")
    for value in flat.all_keywords:
        doc.add_text("ak", value)
    for values in flat.strings.values():
        for value in values:
            doc.add_text("at", value)
    if flat.strings:
        doc.add_json("t", {path: [_safe_text(v) for v in values] for path, values in flat.strings.items()})
    if flat.numbers:
        doc.add_json("n", {path: [sortable_int(v) for v in values] for path, values in flat.numbers.items()})
    if flat.dates:
        doc.add_json("d", flat.dates)
    return doc


class Translator:
    """The query tree (``query.py``) as a tantivy query over one searcher."""

    def __init__(self, index: tantivy.Index, searcher: tantivy.Searcher, deadline: Deadline | None = None):
        self.index = index
        self.searcher = searcher
        self.deadline = deadline or Deadline(None)

    def translate(self, node: q.Node) -> tantivy.Query:
        return getattr(self, "_" + type(node).__name__)(node)

    def _MatchAll(self, node):
        return tantivy.Query.all_query()

    def _MatchNone(self, node):
        return tantivy.Query.empty_query()

    def _Bool(self, node: q.Bool):
        clauses = [(tantivy.Occur.Must, self.translate(c)) for c in node.must + node.filter]
        clauses += [(tantivy.Occur.MustNot, self.translate(c)) for c in node.must_not]
        msm = node.minimum_should_match
        if msm > len(node.should):
            return tantivy.Query.empty_query()
        if msm >= 1:
            shoulds = [(tantivy.Occur.Should, self.translate(c)) for c in node.should]
            if msm == len(shoulds):
                clauses += [(tantivy.Occur.Must, query) for _, query in shoulds]
            elif msm == 1 and not clauses:
                clauses += shoulds
            else:
                clauses.append((tantivy.Occur.Must, tantivy.Query.boolean_query(shoulds, msm)))
        # Optional `should` clauses change scores only, and scores are not used: left out.
        if not any(occur == tantivy.Occur.Must for occur, _ in clauses) and not (msm >= 1):
            # Only must_not (or nothing): Elasticsearch matches everything else.
            clauses.append((tantivy.Occur.Must, tantivy.Query.all_query()))
        if len(clauses) == 1 and clauses[0][0] == tantivy.Occur.Must:
            return clauses[0][1]
        return tantivy.Query.boolean_query(clauses)

    def _KeywordTerm(self, node: q.KeywordTerm):
        text, number = term_forms(node.value)
        queries = []
        if node.path is None:
            terms = {t for t in (text, None if number is None else canonical_number(number)) if t is not None}
            queries = [tantivy.Query.term_query(SCHEMA, "ak", t) for t in terms]
        else:
            if text is not None:
                queries.append(tantivy.Query.term_query(SCHEMA, "pv", f"{node.path}{SEP}{text}"))
            if number is not None:
                queries.append(tantivy.Query.term_query(SCHEMA, f"n.{node.path}", sortable_int(number)))
        return self._any(queries)

    @staticmethod
    def _any(queries: list) -> tantivy.Query:
        if not queries:
            return tantivy.Query.empty_query()
        if len(queries) == 1:
            return queries[0]
        return tantivy.Query.boolean_query([(tantivy.Occur.Should, query) for query in queries])

    def _TokenTerm(self, node: q.TokenTerm):
        field = "at" if node.path is None else f"t.{node.path}"
        return tantivy.Query.term_query(SCHEMA, field, node.token)

    def _Phrase(self, node: q.Phrase):
        field = "at" if node.path is None else f"t.{node.path}"
        return tantivy.Query.phrase_query(SCHEMA, field, list(node.tokens), slop=node.slop)

    def _Range(self, node: q.Range):
        if node.type in ("number", "date"):
            encode = sortable_int if node.type == "number" else int
            lower = "*" if node.lower is None else str(encode(node.lower))
            upper = "*" if node.upper is None else str(encode(node.upper))
            field = ("n." if node.type == "number" else "d.") + _parser_escape(node.path)
            text = (f"{field}:{'[' if node.include_lower else '{'}{lower} TO "
                    f"{upper}{']' if node.include_upper else '}'}")
            return self.index.parse_query(text)
        # Strings: the path's distinct values, compared in Python (cost grows with their number;
        # numbers and dates, the common ranges, go through the fast fields above).
        field = "pt" if node.kind == "text" else "pv"
        prefix = f"{node.path}{SEP}"
        self.deadline.check()
        terms = [term for term, _ in self.searcher.terms_with_prefix(field, prefix)
                 if _within(node, term[len(prefix):])]
        self.deadline.check()
        if not terms:
            return tantivy.Query.empty_query()
        return tantivy.Query.term_set_query(SCHEMA, field, terms)

    def _Exists(self, node: q.Exists):
        token = SEP + node.path if node.kind == "text" else node.path
        return tantivy.Query.term_query(SCHEMA, "ex", token)

    def _field_and_prefix(self, path: str | None, kind: str) -> tuple[str, str]:
        if path is None:
            return ("at" if kind == "text" else "ak"), ""
        return ("pt" if kind == "text" else "pv"), f"{path}{SEP}"

    def _Prefix(self, node: q.Prefix):
        field, prefix = self._field_and_prefix(node.path, node.kind)
        return _regex_query(field, _rust_escape(prefix + node.prefix) + ".*", "prefix", node.prefix)

    def _Wildcard(self, node: q.Wildcard):
        field, prefix = self._field_and_prefix(node.path, node.kind)
        return _regex_query(field, _rust_escape(prefix) + glob_to_regex(node.pattern), "wildcard", node.pattern)

    def _Ids(self, node: q.Ids):
        return tantivy.Query.term_set_query(SCHEMA, "id", list(node.values))


def _within(node: q.Range, value: str) -> bool:
    if node.lower is not None and (value < node.lower or value == node.lower and not node.include_lower):
        return False
    if node.upper is not None and (value > node.upper or value == node.upper and not node.include_upper):
        return False
    return True


class SubscriptionStore:
    """Subscription queries in one JSON file, parsed once and re-read when another process changed
    it (its stat changes). Writers take an flock, so processes never lose each other's updates."""

    def __init__(self, path: Path, limits: QueryLimits):
        self.path = path
        self.limits = limits
        self._stamp = None
        self._queries: dict[str, q.Node | ElasticsearchBadRequest] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _exclusive(self):
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def _write(self, data: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as out:
            json.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)

    def put(self, sub_id: str, es_query: dict) -> None:
        parse_search(es_query, self.limits)  # refuse before storing
        with self._lock, self._exclusive():
            data = self._read()
            data[sub_id] = es_query
            self._write(data)

    def delete(self, sub_id: str) -> bool:
        with self._lock, self._exclusive():
            data = self._read()
            if sub_id not in data:
                return False
            del data[sub_id]
            self._write(data)
            return True

    def queries(self) -> dict[str, q.Node | ElasticsearchBadRequest]:
        """Each stored query parsed, or the error parsing it gives today (one stored before the
        limits were lowered): never a reason to fail the others."""
        with self._lock:
            try:
                st = self.path.stat()
                stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
            except FileNotFoundError:
                stamp = None
            if stamp != self._stamp:
                self._queries = {sub_id: self._parsed(body) for sub_id, body in self._read().items()}
                self._stamp = stamp
            return self._queries

    def _parsed(self, body) -> q.Node | ElasticsearchBadRequest:
        try:
            return parse_search(body, self.limits)
        except ElasticsearchBadRequest as error:
            return error


class EmbeddedIndex(IndexBackend):
    """See the module docstring. Thread-safe; one instance per process and replica."""

    def __init__(self, directory: str | os.PathLike, replica: str, generation: str | None = None,
                 limits: QueryLimits | None = None, percolate_max_work: int | None = None):
        self.root = Path(directory) / replica
        self.replica = replica
        self.generation = generation
        self.limits = limits or QueryLimits.defaults()
        if percolate_max_work is None:
            from shared.config import describe  # the settings table's default: one definition
            percolate_max_work = describe("DSS_PERCOLATE_MAX_WORK").default
        self.percolate_max_work = percolate_max_work
        self._lock = _os_threading.RLock()  # the open index, its generation and reader: held for moments
        self._write_lock = _os_threading.RLock()  # one write at a time, through its commit
        self._index: tantivy.Index | None = None
        self._index_generation: str | None = None
        self._meta_stamp = None
        self._pointer_stamp = None
        self._pointer_value: str | None = None
        self._writer = None
        self._stale_writers: list = []  # writers of a generation no longer served, closed by the next write
        self.root.mkdir(parents=True, exist_ok=True)
        self.subscriptions = SubscriptionStore(self.root / "subscriptions.json", self.limits)
        if generation is None and not (self.root / "CURRENT").exists():
            with self._exclusive():
                if not (self.root / "CURRENT").exists():
                    first = self._create_generation()
                    self._write_pointer(first)

    # --- generations -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _exclusive(self):
        with open(self.root / "generations.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def generations(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _GEN_RE.match(p.name))

    def _create_generation(self) -> str:
        existing = self.generations()
        number = int(existing[-1][1:]) + 1 if existing else 1
        name = f"g{number:06d}"
        (self.root / name).mkdir()
        tantivy.Index(SCHEMA, path=str(self.root / name), reuse=False)
        return name

    def _write_pointer(self, generation: str) -> None:
        tmp = self.root / "CURRENT.tmp"
        with open(tmp, "w") as out:
            out.write(generation + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.root / "CURRENT")
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself survives a crash
        finally:
            os.close(fd)

    def current_generation(self) -> str:
        pointer = self.root / "CURRENT"
        st = pointer.stat()
        stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
        if stamp != self._pointer_stamp:
            self._pointer_value = pointer.read_text().strip()
            self._pointer_stamp = stamp
        return self._pointer_value

    def new_generation(self) -> "EmbeddedIndex":
        with self._exclusive():
            name = self._create_generation()
        logger.info("embedded index %s: new generation %s", self.replica, name)
        return EmbeddedIndex(self.root.parent, self.replica, generation=name, limits=self.limits,
                             percolate_max_work=self.percolate_max_work)

    def switch_to(self, generation: str) -> None:
        if generation not in self.generations():
            raise ValueError(f"no generation {generation!r} in {self.root}")
        with self._exclusive():
            self._write_pointer(generation)
        logger.info("embedded index %s: %s is live", self.replica, generation)

    def drop_generation(self, generation: str) -> None:
        if generation == self.current_generation():
            raise ValueError(f"{generation} is the live generation of {self.replica}")
        if not _GEN_RE.match(generation):
            raise ValueError(f"illegal generation {generation!r}")
        with self._write_lock, self._lock:
            if self._index_generation == generation:
                self._release()
            self._close_stale_writers()
        shutil.rmtree(self.root / generation, ignore_errors=True)

    # --- opening ---------------------------------------------------------------------------------
    def _open(self) -> tantivy.Index:
        """The index of the generation this object serves (the live one unless pinned), reopened
        when another process switched generations. Caller holds ``_lock``."""
        target = self.generation or self.current_generation()
        if target != self._index_generation:
            self._release()
            path = self.root / target
            self._index = tantivy.Index.open(str(path))
            self._index.config_reader(reload_policy="manual")
            self._index_generation = target
            self._meta_stamp = None
        return self._index

    def _release(self) -> None:
        """Forget the open index. Its writer may be in use by a write in progress (a search can get
        here, without the write lock): it is closed by the next write, or by ``close``."""
        if self._writer is not None:
            self._stale_writers.append(self._writer)
            self._writer = None
        self._index = None
        self._index_generation = None

    def _close_stale_writers(self) -> None:
        """Caller holds ``_write_lock`` (no write in progress) and ``_lock``."""
        while self._stale_writers:
            self._stale_writers.pop().__exit__(None, None, None)  # drops the writer and its lock

    def close(self) -> None:
        with self._write_lock, self._lock:
            self._release()
            self._close_stale_writers()

    def _searcher(self) -> tuple[tantivy.Index, tantivy.Searcher]:
        with self._lock:
            index = self._open()
            st = (self.root / self._index_generation / "meta.json").stat()
            stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
            if stamp != self._meta_stamp:
                index.reload()  # a commit (ours or the writer process's) since the last look
                self._meta_stamp = stamp
            return index, index.searcher()

    def _writer_of(self):
        """The writer of the served generation. Caller holds ``_write_lock`` and ``_lock``."""
        index = self._open()
        self._close_stale_writers()
        if self._writer is None:
            try:
                self._writer = index.writer(WRITER_HEAP_BYTES)
            except ValueError as error:
                if "LockBusy" in str(error):
                    raise SearchUnavailable(f"the {self.replica} index is being written by another process",
                                            "search_index_locked") from None
                raise
        return self._writer

    # --- documents ---------------------------------------------------------------------------------
    def put(self, doc_id: str, document: dict) -> None:
        self.bulk_put([(doc_id, document)])

    def bulk_put(self, items: Iterable[tuple[str, dict]]) -> int:
        count = 0
        with self._write_lock:
            with self._lock:
                writer = self._writer_of()
            pending = 0
            for doc_id, document in items:
                self._check_doc_id(doc_id)
                tantivy_doc = to_tantivy_document(doc_id, document)
                writer.delete_documents_by_term("id", doc_id)  # replace: ops apply in order
                writer.add_document(tantivy_doc)
                count += 1
                pending += 1
                if pending >= BULK_COMMIT_EVERY:
                    writer.commit()
                    pending = 0
            if pending:
                writer.commit()
        return count

    def delete(self, doc_id: str) -> None:
        with self._write_lock:
            with self._lock:
                writer = self._writer_of()
            writer.delete_documents_by_term("id", self._check_doc_id(doc_id))
            writer.commit()

    def get(self, doc_id: str) -> dict | None:
        index, searcher = self._searcher()
        result = searcher.search(tantivy.Query.term_query(SCHEMA, "id", self._check_doc_id(doc_id)), 1)
        if not result.hits:
            return None
        return json.loads(bytes(searcher.doc(result.hits[0][1])["src"][0]))

    def refresh(self) -> None:
        with self._lock:
            self._meta_stamp = None
        self._searcher()

    def count(self) -> int:
        """Live documents (tombstones excluded)."""
        index, searcher = self._searcher()
        return searcher.search(tantivy.Query.term_query(SCHEMA, "st", "live"), 1, count=True).count

    # --- searching -------------------------------------------------------------------------------
    def search(self, es_query: dict, size: int = 100, search_after: str | None = None,
               include_source: bool = False, timeout: float | None = None) -> SearchPage:
        deadline = Deadline(timeout)
        self._check_page(size, search_after)
        node = parse_search(es_query, self.limits)
        index, searcher = self._searcher()
        query = Translator(index, searcher, deadline).translate(node)
        live = tantivy.Query.boolean_query([(tantivy.Occur.Must, query),
                                            (tantivy.Occur.Must, tantivy.Query.term_query(SCHEMA, "st", "live"))])
        total = searcher.search(live, 1, count=True).count
        deadline.check()
        keys = self._page_keys(searcher, live, size + 1, search_after)
        hits = []
        for key, address in keys[:size]:
            deadline.check()
            hit = {"id": fqid_from_key(*key), "score": None}
            if include_source:
                hit["source"] = json.loads(bytes(searcher.doc(address)["src"][0]))
            hits.append(hit)
        more = len(keys) > size
        return {"hits": hits, "total": total, "next": hits[-1]["id"] if more and hits else None}

    @staticmethod
    def _keys(searcher, addresses: list) -> list[tuple[tuple[int, int, int], object]]:
        if not addresses:
            return []
        columns = [searcher.fast_field_values(name, addresses) for name in ("k1", "k2", "k3")]
        return [((a, b, c), address) for a, b, c, address in zip(*columns, addresses)]

    def _page_keys(self, searcher, query, limit: int, search_after: str | None):
        """The first ``limit`` matches in id order (descending) after the cursor, as (key, address).

        tantivy sorts on one fast field: k1 (the uuid's high half) does the work; documents that
        share a k1 value with the page's boundary (versions of one bundle) are all fetched and
        ordered on the whole key here, so the order is exact."""
        must, unsigned = tantivy.Occur.Must, tantivy.FieldType.Unsigned
        candidates = []
        page_query = query
        if search_after is not None:
            cursor = fqid_key(search_after)
            if cursor is None:
                raise InvalidParameter(f"search_after must be a document id {{uuid}}.{{version}}: {search_after!r}",
                                       "illegal_search_after")
            before = tantivy.Query.range_query(SCHEMA, "k1", unsigned, upper_bound=cursor[0], include_upper=False)
            page_query = tantivy.Query.boolean_query([(must, query), (must, before)])
            candidates += [item for item in self._with_k1(searcher, query, cursor[0]) if item[0] < cursor]
        top = searcher.search(page_query, limit, count=False, order_by_field="k1", order=tantivy.Order.Desc).hits
        if top:
            boundary = top[-1][0]
            candidates += [item for item in self._keys(searcher, [address for k1, address in top])
                           if item[0][0] != boundary]
            candidates += [item for item in self._with_k1(searcher, page_query, boundary)]
        candidates.sort(key=lambda item: item[0], reverse=True)
        return candidates[:limit]

    def _with_k1(self, searcher, query, k1: int):
        same = tantivy.Query.boolean_query([(tantivy.Occur.Must, query),
                                            (tantivy.Occur.Must, tantivy.Query.term_query(SCHEMA, "k1", k1))])
        count = searcher.search(same, 1, count=True).count  # every version of the bundle, however many
        if not count:
            return []
        return self._keys(searcher, [address for _, address in searcher.search(same, count, count=False).hits])

    # --- subscriptions ---------------------------------------------------------------------------
    def put_subscription(self, sub_id: str, es_query: dict) -> None:
        self.subscriptions.put(self._check_id(sub_id), es_query)

    def delete_subscription(self, sub_id: str) -> bool:
        return self.subscriptions.delete(sub_id)

    def percolate(self, document: dict, refused: Refused | None = None) -> list[str]:
        if is_tombstone(document):
            return []
        flat = flatten(document)
        matched = []
        for sub_id, node in self.subscriptions.queries().items():
            try:
                if isinstance(node, ElasticsearchBadRequest):
                    raise node
                if matches(node, flat, budget=WorkBudget(self.percolate_max_work)):
                    matched.append(sub_id)
            except ElasticsearchBadRequest as error:
                PERCOLATION_REFUSED.labels(self.replica).inc()
                logger.warning("subscription %s of %s not matched: %s", sub_id, self.replica, error)
                if refused is not None:
                    refused(sub_id, error)
        return sorted(matched)
