"""Search indexes of the replicas behind one interface (``base.IndexBackend``).

``open_index_backend(settings, replica)`` picks the implementation named by ``DSS_INDEX_BACKEND``:
``embedded`` (tantivy under ``DSS_INDEX_DIR``, the default) or ``opensearch``
(``DSS_OPENSEARCH_URL``). Engines are imported only when chosen.
"""
from shared.search.base import (Hit, IndexBackend, Refused, SearchBusy, SearchPage, SearchTimeout,
                                SearchUnavailable)
from shared.search.documents import is_tombstone
from shared.search.query import ElasticsearchBadRequest, QueryLimits, QueryTooComplex, parse_search

REPLICAS = ("aws", "gcp")


def open_index_backend(settings, replica: str) -> IndexBackend:
    """The search index of ``replica`` configured from ``shared.config.Settings``."""
    if replica not in REPLICAS:
        raise ValueError(f"unknown replica {replica!r}")
    kind = settings.index_backend
    limits = QueryLimits.from_settings(settings)
    if kind == "embedded":
        from shared.search.embedded import EmbeddedIndex
        return EmbeddedIndex(settings.index_dir, replica, limits=limits,
                             percolate_max_work=settings.percolate_max_work)
    if kind == "opensearch":
        from shared.search.opensearch import OpenSearchIndex
        if not settings.opensearch_url:
            raise ValueError("DSS_INDEX_BACKEND=opensearch needs DSS_OPENSEARCH_URL")
        return OpenSearchIndex(settings.opensearch_url, replica, prefix=settings.opensearch_index_prefix,
                               limits=limits)
    raise ValueError(f"unknown DSS_INDEX_BACKEND {kind!r}: embedded or opensearch")


__all__ = ["ElasticsearchBadRequest", "Hit", "IndexBackend", "QueryLimits", "QueryTooComplex", "Refused",
           "SearchBusy", "SearchPage", "SearchTimeout", "SearchUnavailable", "is_tombstone", "open_index_backend",
           "parse_search"]
