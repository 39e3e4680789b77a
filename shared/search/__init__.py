"""Search indexes of the replicas behind one interface (``base.IndexBackend``).

``open_index_backend(settings, replica)`` picks the implementation named by ``DSS_INDEX_BACKEND``:
``embedded`` (tantivy under ``DSS_INDEX_DIR``, the default) or ``opensearch``
(``DSS_OPENSEARCH_URL``). Engines are imported only when chosen.
"""
from shared.search.base import Hit, IndexBackend, SearchPage, SearchUnavailable
from shared.search.documents import is_tombstone
from shared.search.query import ElasticsearchBadRequest, parse_search

REPLICAS = ("aws", "gcp")


def open_index_backend(settings, replica: str) -> IndexBackend:
    """The search index of ``replica`` configured from ``shared.config.Settings``."""
    if replica not in REPLICAS:
        raise ValueError(f"unknown replica {replica!r}")
    kind = settings.index_backend
    if kind == "embedded":
        from shared.search.embedded import EmbeddedIndex
        return EmbeddedIndex(settings.index_dir, replica)
    if kind == "opensearch":
        from shared.search.opensearch import OpenSearchIndex
        if not settings.opensearch_url:
            raise ValueError("DSS_INDEX_BACKEND=opensearch needs DSS_OPENSEARCH_URL")
        return OpenSearchIndex(settings.opensearch_url, replica, prefix=settings.opensearch_index_prefix)
    raise ValueError(f"unknown DSS_INDEX_BACKEND {kind!r}: embedded or opensearch")


__all__ = ["ElasticsearchBadRequest", "Hit", "IndexBackend", "SearchPage", "SearchUnavailable",
           "is_tombstone", "open_index_backend", "parse_search"]
