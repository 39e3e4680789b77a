"""The one search-index interface of a replica, with two interchangeable implementations.

``EmbeddedIndex`` (``embedded.py``: tantivy, on disk under ``DSS_INDEX_DIR``; the default) and
``OpenSearchIndex`` (``opensearch.py``: an OpenSearch cluster at ``DSS_OPENSEARCH_URL``). Both are
checked by the conformance suite in ``tests/conformance/test_search_backends.py``.

Documents are the index documents of the contract (``{uuid, manifest, files: {...}}``) under the
id ``{uuid}.{version}``. A document replaced by tombstone fields (``documents.is_tombstone``) stays
readable by ``get`` but is never returned by ``search`` nor ``percolate``.

Queries are Elasticsearch `es_query` bodies (``{"query": {...}}``) in the subset of ``query.py``;
anything else raises ``ElasticsearchBadRequest`` (400 ``elasticsearch_bad_request``), and a query
beyond the backend's ``QueryLimits`` (depth, clauses, pattern length) ``QueryTooComplex`` (400
``query_too_complex``). A search given a ``timeout`` that runs over it raises ``SearchTimeout``
(400 ``search_timeout``); percolation returns every match, and reports the stored queries it
could not evaluate within the limits instead of failing the others.

Results are ordered by document id descending, i.e. uuid descending then version descending
(uuids are fixed width); paging is by cursor (``search_after``: the id of the last hit of the
previous page), never by offset. A hit's score is None: the order is not by relevance.

Writes are durable when the call returns. They are visible to searches after ``refresh()`` (the
embedded engine: at once to its own process, to another process's search on its next call;
OpenSearch: within its refresh interval, or at once after ``refresh()``).

Reindexing without downtime: ``new_generation()`` returns an index bound to a new, empty,
not-yet-live generation; fill it, ``close()`` it (the embedded engine's writer lock), then
``switch_to(builder.generation)`` makes it the one every
search and write of the replica uses, atomically (an alias swap on OpenSearch, an atomically
replaced pointer file on the embedded engine); ``drop_generation`` removes an old one. Stored
subscriptions are not part of a generation: a reindex keeps them.

One process writes an index (the indexer); any number of processes search it.
"""
from __future__ import annotations

import abc
import time
from typing import Any, Callable, Iterable, TypedDict

from nameko.exceptions import deserialize_to_instance

from shared.exceptions import InvalidParameter, InvalidRequest, Unavailable
from shared.search.query import ElasticsearchBadRequest, QueryTooComplex

MAX_PAGE_SIZE = 10_000


@deserialize_to_instance
class SearchUnavailable(Unavailable):
    """The search engine cannot be reached or failed (503, worth retrying)."""

    code = "search_unavailable"


@deserialize_to_instance
class SearchBusy(Unavailable):
    """Every search slot stayed taken for the whole time budget (503 with Retry-After: load, not
    the query, is the cause)."""

    code = "search_busy"


@deserialize_to_instance
class SearchTimeout(InvalidRequest):
    """A search ran over its time budget (400). Not a 5xx: the clients retry those, and a query
    that already cost a whole budget would cost it again each time; the answer says to narrow it."""

    code = "search_timeout"


class Deadline:
    """The end of a search's time budget (None: no end), checked between the engine's steps."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.end = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        return None if self.end is None else max(self.end - time.monotonic(), 0.0)

    def check(self) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise timed_out(self.seconds)


def timed_out(seconds: float | None) -> SearchTimeout:
    budget = "its time budget" if seconds is None else f"its time budget of {seconds:g} s"
    return SearchTimeout(f"the search ran over {budget}; narrow the query")


# ``percolate``'s report of a subscription it could not evaluate: (subscription id, the error).
Refused = Callable[[str, ElasticsearchBadRequest], None]


class Hit(TypedDict, total=False):
    id: str
    score: float | None
    source: dict  # only with include_source


class SearchPage(TypedDict):
    hits: list[Hit]
    total: int           # every live match of the query, whatever the cursor
    next: str | None     # cursor of the next page; None on the last page


class IndexBackend(abc.ABC):
    """The search index of one replica."""

    replica: str
    generation: str | None  # the generation this object is bound to; None: whichever is live

    # --- documents -------------------------------------------------------------------------------
    @abc.abstractmethod
    def put(self, doc_id: str, document: dict) -> None:
        """Index (or replace) one document."""

    @abc.abstractmethod
    def bulk_put(self, items: Iterable[tuple[str, dict]]) -> int:
        """Index many documents in as few engine round trips / commits as possible; the count."""

    @abc.abstractmethod
    def delete(self, doc_id: str) -> None:
        """Remove a document; removing an absent one is not an error."""

    @abc.abstractmethod
    def get(self, doc_id: str) -> dict | None:
        """The stored document (tombstone fields for a tombstoned one), or None."""

    @abc.abstractmethod
    def refresh(self) -> None:
        """Make every write so far visible to searches."""

    # --- searching -------------------------------------------------------------------------------
    @abc.abstractmethod
    def search(self, es_query: dict, size: int = 100, search_after: str | None = None,
               include_source: bool = False, timeout: float | None = None) -> SearchPage:
        """One page of live documents matching ``es_query``, ids descending, after the cursor.
        ``timeout``: seconds the search may take (None: no limit), else ``SearchTimeout``."""

    # --- subscriptions (percolation) ---------------------------------------------------------
    @abc.abstractmethod
    def put_subscription(self, sub_id: str, es_query: dict) -> None:
        """Store (or replace) a subscription's query; ElasticsearchBadRequest if unsupported."""

    @abc.abstractmethod
    def delete_subscription(self, sub_id: str) -> bool:
        """Forget a subscription; False if it was not there."""

    @abc.abstractmethod
    def percolate(self, document: dict, refused: Refused | None = None) -> list[str]:
        """Ids (sorted) of the subscriptions whose query matches ``document``, all of them however
        many; [] for a tombstone. A subscription whose query cannot be evaluated within the limits
        (``QueryTooComplex``: a stored query beyond today's limits, or too costly on this document)
        is left out, logged and counted, and reported to ``refused`` when given: the others are
        still matched."""

    # --- generations -------------------------------------------------------------------------------
    @abc.abstractmethod
    def current_generation(self) -> str:
        """The live generation."""

    @abc.abstractmethod
    def generations(self) -> list[str]:
        """Every generation that exists, oldest first."""

    @abc.abstractmethod
    def new_generation(self) -> "IndexBackend":
        """A new empty generation, not live, and an index bound to it to fill."""

    @abc.abstractmethod
    def switch_to(self, generation: str) -> None:
        """Make ``generation`` the live one, atomically."""

    @abc.abstractmethod
    def drop_generation(self, generation: str) -> None:
        """Delete a generation that is not live (ValueError for the live one)."""

    def close(self) -> None:
        """Release the engine (the embedded writer's lock, connections)."""

    # --- helpers shared by the implementations ----------------------------------------------------
    @staticmethod
    def _check_page(size: int, search_after: str | None) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidParameter(f"size must be an integer from 1 to {MAX_PAGE_SIZE}", "illegal_size")
        from shared.search.documents import fqid_key
        if search_after is not None and fqid_key(search_after) is None:
            raise InvalidParameter(f"search_after must be a document id {{uuid}}.{{version}}: {search_after!r}",
                                   "illegal_search_after")

    @staticmethod
    def _check_doc_id(doc_id: Any) -> str:
        """Document ids are `{uuid}.{version}`: the sort order and the cursors rely on it."""
        from shared.search.documents import fqid_key
        if fqid_key(doc_id) is None:
            raise InvalidParameter(f"a document id is {{uuid}}.{{version}}, not {doc_id!r}", "illegal_document_id")
        return doc_id

    @staticmethod
    def _check_id(doc_id: Any) -> str:
        if not isinstance(doc_id, str) or not doc_id or doc_id != doc_id.strip():
            raise InvalidParameter(f"illegal document id {doc_id!r}", "illegal_document_id")
        return doc_id


__all__ = ["Deadline", "ElasticsearchBadRequest", "Hit", "IndexBackend", "MAX_PAGE_SIZE", "QueryTooComplex", "Refused",
           "SearchBusy", "SearchPage", "SearchTimeout", "SearchUnavailable"]
