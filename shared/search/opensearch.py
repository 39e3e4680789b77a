"""The OpenSearch index of a replica (opensearch-py).

Names, with ``prefix`` = ``DSS_OPENSEARCH_INDEX_PREFIX``: the alias ``{prefix}-{replica}`` points at
the live generation ``{prefix}-{replica}-g{YYYYmmddHHMMSSffffff}``; subscriptions live in
``{prefix}-{replica}-subscriptions`` (a percolator index, outside the generations).

The mapping (``MAPPING``): every string is a keyword lower-cased by a normaliser (whole-value
matches, case-insensitive) with an analysed ``.text`` subfield; every number a double (ES would
map the first integer it meets as `long` and then truncate 2.5 to 2); date-like strings are dates
(ES date detection); malformed values are ignored rather than failing the document. Two fields are
added to every indexed document and removed from whatever is returned: ``dss_fqid`` (the id,
a plain keyword: the sort key and the search_after cursor) and ``dss_tombstone`` (searches skip
tombstones).

Queries are validated with ``query.parse_search`` (the same subset as the embedded engine, the
same 400 for the rest) and then sent unchanged, so the cluster gives Elasticsearch's own semantics.

Percolation: a query can only be stored once every field it names is mapped in the percolator
index, so ``put_subscription`` first copies the mapping of those fields from the live documents
index, and maps the fields the documents do not have yet from the query itself (a number is a
double, a date-like string a date, anything else a keyword with `.text`).

Searches carry the time budget to the cluster (the body's ``timeout``, and the request's): one
that runs over it is a ``SearchTimeout``, whatever part of the hits came back. Percolation pages
through every matching subscription with a scroll (``percolate_page_size`` per page, at most the
cluster's 10,000-hit window), so no match beyond the first page is ever lost.

``opensearchpy.OpenSearch`` is looked up when the client is made (not imported by name), so that
``openmock``'s patch of that attribute takes effect in tests.
"""
from __future__ import annotations

import datetime
import logging
import re
from typing import Any, Iterable

from shared import tracing
from shared.search.base import IndexBackend, Refused, SearchPage, SearchUnavailable, timed_out
from shared.search.documents import RESERVED_FIELDS, date_micros, is_tombstone, number_value
from shared.search.query import ElasticsearchBadRequest, QueryLimits, parse_search

logger = logging.getLogger(__name__)

BULK_CHUNK = 500  # documents per bulk request
PERCOLATE_PAGE_SIZE = 10_000  # the cluster's default max_result_window
SCROLL_KEEP_ALIVE = "2m"  # how long the cluster keeps a percolation's scroll between two pages
# The HTTP request of a search waits this much beyond the cluster's own timeout (which it honours
# between shards' phases, not within one) before giving up.
TIMEOUT_GRACE_S = 5

SETTINGS = {
    "index": {
        "mapping": {"ignore_malformed": True, "total_fields": {"limit": 20000}},
        # Percolated documents may name fields no stored query mapped: keep them as text.
        "percolator": {"map_unmapped_fields_as_text": True},
    },
    "analysis": {"normalizer": {"dss_lowercase": {"type": "custom", "filter": ["lowercase"]}}},
}
KEYWORD = {"type": "keyword", "normalizer": "dss_lowercase", "ignore_above": 10000,
           "fields": {"text": {"type": "text"}}}
MAPPING = {
    "date_detection": True,
    "dynamic_date_formats": ["strict_date_optional_time"],
    "dynamic_templates": [
        {"strings": {"match_mapping_type": "string", "mapping": KEYWORD}},
        {"integers": {"match_mapping_type": "long", "mapping": {"type": "double"}}},
    ],
    "properties": {
        "dss_fqid": {"type": "keyword"},
        "dss_tombstone": {"type": "boolean"},
    },
}
_GENERATION_RE = re.compile(r"^g\d{20}$")


def _client(url: str, **options):
    import opensearchpy  # looked up at call time: openmock patches opensearchpy.OpenSearch
    if tracing.enabled:  # over requests, whose instrumentation makes each call a span of its worker
        options.setdefault("connection_class", opensearchpy.RequestsHttpConnection)
    return opensearchpy.OpenSearch(hosts=[url], **options)


def _errors():
    import opensearchpy.exceptions as errors
    return errors


class OpenSearchIndex(IndexBackend):
    def __init__(self, url: str, replica: str, prefix: str = "dss", generation: str | None = None,
                 client=None, timeout: float = 30, limits: QueryLimits | None = None,
                 percolate_page_size: int = PERCOLATE_PAGE_SIZE):
        self.url = url
        self.replica = replica
        self.prefix = prefix
        self.limits = limits or QueryLimits.defaults()
        self.percolate_page_size = percolate_page_size
        self.alias = f"{prefix}-{replica}"
        self.subscription_index = f"{self.alias}-subscriptions"
        self.generation = generation
        self.client = client or _client(url, timeout=timeout)
        if generation is None:
            self._ensure_alias()

    # --- plumbing ----------------------------------------------------------------------------------
    def _call(self, what: str, function, *args, on_timeout: Exception | None = None, **kwargs):
        """One client call, its failures as the store's typed errors (``on_timeout``, if given, for
        a request that ran over its time)."""
        errors = _errors()
        try:
            return function(*args, **kwargs)
        except errors.RequestError as error:  # 400: the cluster refused the query or the mapping
            raise ElasticsearchBadRequest(f"{what}: {_reason(error)}") from None
        except errors.ConnectionTimeout:
            if on_timeout is not None:
                raise on_timeout from None
            raise SearchUnavailable(f"{what}: OpenSearch did not answer in time") from None
        except errors.ConnectionError as error:
            raise SearchUnavailable(f"{what}: OpenSearch unreachable ({error})") from None
        except errors.TransportError as error:
            if isinstance(error, errors.NotFoundError):
                raise
            raise SearchUnavailable(f"{what}: OpenSearch answered {error.status_code} ({_reason(error)})") from None

    @property
    def _target(self) -> str:
        """Where reads and writes go: the pinned generation's index, else the alias."""
        return self._index_name(self.generation) if self.generation else self.alias

    def _concrete(self) -> str:
        """The index writes and gets go to: the pinned generation's, else the one behind the alias
        (resolved per call, so a switch by another process is followed at once)."""
        if self.generation:
            return self._index_name(self.generation)
        return self._index_name(self.current_generation())

    def _index_name(self, generation: str) -> str:
        return f"{self.alias}-{generation}"

    def _create_index(self, name: str, mappings: dict) -> None:
        errors = _errors()
        try:
            self._call(f"create index {name}", self.client.indices.create, index=name,
                       body={"settings": SETTINGS, "mappings": mappings})
        except ElasticsearchBadRequest as error:
            if "already_exists" not in str(error) and "already exists" not in str(error):
                raise
        except errors.NotFoundError:
            raise

    def _ensure_alias(self) -> None:
        if self._call("alias exists", self.client.indices.exists_alias, name=self.alias):
            return
        generation = self._new_generation_name()
        self._create_index(self._index_name(generation), MAPPING)
        self._call("create alias", self.client.indices.update_aliases,
                   body={"actions": [{"add": {"index": self._index_name(generation), "alias": self.alias}}]})
        logger.info("opensearch %s: created %s behind %s", self.replica, self._index_name(generation), self.alias)

    @staticmethod
    def _new_generation_name() -> str:
        return "g" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S%f")

    @staticmethod
    def _indexed(doc_id: str, document: dict) -> dict:
        body = {k: v for k, v in document.items() if k not in RESERVED_FIELDS}
        body["dss_fqid"] = doc_id
        body["dss_tombstone"] = is_tombstone(document)
        return body

    @staticmethod
    def _source(source: dict) -> dict:
        return {k: v for k, v in source.items() if k not in RESERVED_FIELDS}

    # --- documents ---------------------------------------------------------------------------------
    def put(self, doc_id: str, document: dict) -> None:
        self._call(f"index {doc_id}", self.client.index, index=self._concrete(), id=self._check_doc_id(doc_id),
                   body=self._indexed(doc_id, document))

    def bulk_put(self, items: Iterable[tuple[str, dict]]) -> int:
        count, actions, target = 0, [], self._concrete()
        for doc_id, document in items:
            actions.append({"index": {"_index": target, "_id": self._check_doc_id(doc_id)}})
            actions.append(self._indexed(doc_id, document))
            count += 1
            if len(actions) >= 2 * BULK_CHUNK:
                self._bulk(actions)
                actions = []
        if actions:
            self._bulk(actions)
        return count

    def _bulk(self, actions: list) -> None:
        result = self._call("bulk index", self.client.bulk, body=actions)
        if result.get("errors"):
            failed = [item for item in result.get("items", [])
                      if any("error" in outcome for outcome in item.values())]
            raise SearchUnavailable(f"bulk index: {len(failed)} document(s) refused, first: {failed[:1]}")

    def delete(self, doc_id: str) -> None:
        try:
            self._call(f"delete {doc_id}", self.client.delete, index=self._concrete(), id=self._check_doc_id(doc_id))
        except _errors().NotFoundError:
            pass

    def get(self, doc_id: str) -> dict | None:
        try:
            found = self._call(f"get {doc_id}", self.client.get, index=self._concrete(), id=self._check_doc_id(doc_id))
        except _errors().NotFoundError:
            return None
        return self._source(found["_source"]) if found.get("found", True) else None

    def refresh(self) -> None:
        self._call("refresh", self.client.indices.refresh, index=self._target)

    # --- searching -------------------------------------------------------------------------------
    def search(self, es_query: dict, size: int = 100, search_after: str | None = None,
               include_source: bool = False, timeout: float | None = None) -> SearchPage:
        self._check_page(size, search_after)
        parse_search(es_query, self.limits)  # the supported subset only, the same 400 as the embedded engine
        user_query = es_query.get("query", {"match_all": {}})
        body: dict[str, Any] = {
            "query": {"bool": {"filter": [user_query], "must_not": [{"term": {"dss_tombstone": True}}]}},
            "sort": [{"dss_fqid": {"order": "desc"}}],
            "size": size + 1,  # one more than asked: tells whether there is a next page
            "track_total_hits": True,
            "_source": include_source,
        }
        if search_after is not None:
            body["search_after"] = [search_after]
        options = {}
        if timeout is not None:
            body["timeout"] = f"{max(int(timeout * 1000), 1)}ms"
            options = {"request_timeout": timeout + TIMEOUT_GRACE_S, "on_timeout": timed_out(timeout)}
        result = self._call("search", self.client.search, index=self._target, body=body, **options)
        if result.get("timed_out"):  # the hits are partial: never answered as if they were all
            raise timed_out(timeout)
        raw_hits = result["hits"]["hits"]
        hits = []
        for raw in raw_hits[:size]:
            hit = {"id": raw["_id"], "score": None}
            if include_source:
                hit["source"] = self._source(raw.get("_source", {}))
            hits.append(hit)
        total = result["hits"]["total"]
        total = total["value"] if isinstance(total, dict) else int(total)
        more = len(raw_hits) > size
        return {"hits": hits, "total": total, "next": hits[-1]["id"] if more and hits else None}

    # --- subscriptions ---------------------------------------------------------------------------
    def _ensure_subscription_index(self) -> None:
        if not self._call("exists", self.client.indices.exists, index=self.subscription_index):
            mappings = dict(MAPPING, properties=dict(MAPPING["properties"], query={"type": "percolator"}))
            self._create_index(self.subscription_index, mappings)

    def put_subscription(self, sub_id: str, es_query: dict) -> None:
        node = parse_search(es_query, self.limits)
        self._ensure_subscription_index()
        fields = self._fields_to_map(node, es_query)
        if fields:
            self._call("map subscription fields", self.client.indices.put_mapping,
                       index=self.subscription_index, body={"properties": fields})
        self._call(f"store subscription {sub_id}", self.client.index, index=self.subscription_index,
                   id=self._check_id(sub_id), body={"query": es_query.get("query", {"match_all": {}})},
                   refresh=True)

    def _fields_to_map(self, node, es_query: dict) -> dict:
        """Mapping (nested `properties`) of the fields the query names that the percolator index
        does not map yet: as the documents map them or, for fields no document has yet, as the
        query's values suggest."""
        paths = set(_compared_paths(node))
        if not paths:
            return {}
        mapped = self._mapped(self.subscription_index, paths)
        paths -= mapped.keys()
        known = self._mapped(self.alias, paths)
        values = _values_by_path(es_query)
        chosen = dict(known)
        # `a.b.text` is the analysed subfield of the string `a.b`, or the leaf `text` of the object
        # `a.b` (HCA's ontology terms): a path is never mapped both as a leaf and as an object.
        # Unknown, the deeper reading (HCA's) wins.
        taken = set(mapped) | set(known)
        for path in sorted(paths - known.keys(), key=lambda p: (-p.count("."), p)):
            if any(other.startswith(path + ".") or path.startswith(other + ".") for other in taken):
                continue
            chosen[path] = _guess_mapping(values.get(path, []))
            taken.add(path)
        properties: dict = {}
        for path, mapping in chosen.items():
            _insert(properties, path, mapping)
        return properties

    def _mapped(self, index: str, paths: set[str]) -> dict[str, dict]:
        """The leaf mappings among ``paths`` that ``index`` has; object paths count as mapped too."""
        try:
            found = self._call("mappings", self.client.indices.get_mapping, index=index)
        except _errors().NotFoundError:
            return {}
        result = {}
        for index_mapping in (found or {}).values():
            properties = index_mapping.get("mappings", {}).get("properties", {})
            for path in paths:
                mapping = _lookup(properties, path)
                if mapping is not None:
                    result[path] = mapping
        return result

    def delete_subscription(self, sub_id: str) -> bool:
        try:
            self._call(f"delete subscription {sub_id}", self.client.delete, index=self.subscription_index,
                       id=self._check_id(sub_id), refresh=True)
        except _errors().NotFoundError:
            return False
        return True

    def percolate(self, document: dict, refused: Refused | None = None) -> list[str]:
        """Every matching subscription, page after page of one scroll (a consistent view of the
        subscriptions, however many match). The cluster evaluates the queries: none is refused."""
        if is_tombstone(document):
            return []
        self._ensure_subscription_index()
        body = {"query": {"percolate": {"field": "query", "document": self._source(document)}},
                "size": self.percolate_page_size, "_source": False, "sort": ["_doc"]}
        result = self._call("percolate", self.client.search, index=self.subscription_index, body=body,
                            scroll=SCROLL_KEEP_ALIVE)
        matched: set[str] = set()
        scroll_id = result.get("_scroll_id")
        try:
            while True:
                hits = result["hits"]["hits"]
                matched.update(hit["_id"] for hit in hits)
                if len(hits) < self.percolate_page_size or scroll_id is None:
                    break
                result = self._call("percolate (next page)", self.client.scroll, scroll_id=scroll_id,
                                    scroll=SCROLL_KEEP_ALIVE)
                scroll_id = result.get("_scroll_id") or scroll_id
        finally:
            if scroll_id is not None:
                self._clear_scroll(scroll_id)
        return sorted(matched)

    def _clear_scroll(self, scroll_id: str) -> None:
        try:
            self.client.clear_scroll(scroll_id=scroll_id)
        except Exception as error:  # noqa: BLE001 - the cluster drops it after its keep-alive anyway
            logger.warning("could not clear a percolation scroll of %s: %s", self.replica, error)

    # --- generations -------------------------------------------------------------------------------
    def current_generation(self) -> str:
        found = self._call("get alias", self.client.indices.get_alias, name=self.alias)
        names = sorted(found)
        if len(names) != 1:
            raise SearchUnavailable(f"alias {self.alias} points at {names}, not one index")
        return names[0][len(self.alias) + 1:]

    def generations(self) -> list[str]:
        found = self._call("list indexes", self.client.indices.get_alias, index=f"{self.alias}-g*")
        start = len(self.alias) + 1
        return sorted(name[start:] for name in found if _GENERATION_RE.match(name[start:]))

    def new_generation(self) -> "OpenSearchIndex":
        generation = self._new_generation_name()
        self._create_index(self._index_name(generation), MAPPING)
        logger.info("opensearch %s: new generation %s", self.replica, generation)
        return OpenSearchIndex(self.url, self.replica, self.prefix, generation=generation, client=self.client,
                               limits=self.limits, percolate_page_size=self.percolate_page_size)

    def switch_to(self, generation: str) -> None:
        if not _GENERATION_RE.match(generation) or not self._call(
                "exists", self.client.indices.exists, index=self._index_name(generation)):
            raise ValueError(f"no generation {generation!r} of {self.alias}")
        current = self.current_generation()
        actions = [{"add": {"index": self._index_name(generation), "alias": self.alias}}]
        if current != generation:
            actions.insert(0, {"remove": {"index": self._index_name(current), "alias": self.alias}})
        # One request: searches see the old index or the new one, never neither.
        self._call("switch alias", self.client.indices.update_aliases, body={"actions": actions})
        logger.info("opensearch %s: %s is live", self.replica, generation)

    def drop_generation(self, generation: str) -> None:
        if generation == self.current_generation():
            raise ValueError(f"{generation} is the live generation of {self.alias}")
        if not _GENERATION_RE.match(generation):
            raise ValueError(f"illegal generation {generation!r}")
        try:
            self._call("delete index", self.client.indices.delete, index=self._index_name(generation))
        except _errors().NotFoundError:
            pass

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close:
            close()


def _compared_paths(node):
    """Paths whose values a query compares; `exists` alone needs no mapping (and may name an object)."""
    from shared.search import query as q
    if isinstance(node, q.Exists):
        return
    if getattr(node, "path", None) is not None:
        yield node.path
    for child in node.children():
        yield from _compared_paths(child)


def _reason(error) -> str:
    info = getattr(error, "info", None)
    if isinstance(info, dict):
        err = info.get("error")
        if isinstance(err, dict):
            root = (err.get("root_cause") or [{}])[0]
            return root.get("reason") or err.get("reason") or str(err)
        if err:
            return str(err)
    return str(getattr(error, "error", error))


def _values_by_path(clause: Any, out: dict | None = None) -> dict[str, list]:
    """Scalar values a query compares each field with (for guessing unmapped fields' types)."""
    out = {} if out is None else out
    if isinstance(clause, dict):
        for key, value in clause.items():
            if isinstance(value, dict):
                for field, spec in value.items():
                    if isinstance(spec, (str, int, float)) and not isinstance(spec, bool):
                        out.setdefault(field, []).append(spec)
                    elif isinstance(spec, dict):
                        out.setdefault(field, []).extend(
                            v for k, v in spec.items() if k in ("value", "query", "gt", "gte", "lt", "lte")
                            and isinstance(v, (str, int, float)) and not isinstance(v, bool))
                _values_by_path(value, out)
            elif isinstance(value, list):
                for item in value:
                    _values_by_path(item, out)
    elif isinstance(clause, list):
        for item in clause:
            _values_by_path(item, out)
    return {path.removesuffix(".text"): values for path, values in out.items()}


def _guess_mapping(values: list) -> dict:
    if values and all(not isinstance(v, str) and number_value(v) is not None for v in values):
        return {"type": "double"}
    if values and all(isinstance(v, str) and date_micros(v) is not None for v in values):
        return {"type": "date"}
    return KEYWORD


def _lookup(properties: dict, path: str) -> dict | None:
    """The mapping of the field at a dotted path of a mapping's `properties` (an object's too),
    else None."""
    parts = path.split(".")
    for part in parts[:-1]:
        properties = properties.get(part, {}).get("properties")
        if properties is None:
            return None
    return properties.get(parts[-1]) or None


def _insert(properties: dict, path: str, mapping: dict) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        properties = properties.setdefault(part, {}).setdefault("properties", {})
    properties.setdefault(parts[-1], mapping)
