"""The two documents a bundle version is seen through after it is written: the index document
(what searches and Elasticsearch subscriptions match) and the bundle event document (what JMESPath
subscriptions match, the journal keeps and GET /events returns).

index document::

    {"uuid": ..., "manifest": {...the stored manifest...}, "files": {<index key>: [json, ...]}}

bundle event document::

    {"event_type": "CREATE" | "TOMBSTONE" | "DELETE", "bundle_info": {"uuid", "version"},
     "manifest": {...}, "files": {<index key>: [json, ...]}}

``files`` holds the parsed content of every manifest entry marked ``indexed`` whose content type
is JSON, under ``index_key(name)``; the indexer builds it (``services/indexer``), the notifier only
reads it. One module so that the indexer, the notifier and the journal can never disagree about
the shape.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

CREATE, TOMBSTONE, DELETE = "CREATE", "TOMBSTONE", "DELETE"
EVENT_TYPES = (CREATE, TOMBSTONE, DELETE)

_TRAILING_NUMBER = re.compile(r"_\d+$")


def index_key(name: str) -> str:
    """The key a file's JSON sits under in ``files``: dots become underscores; a ``.json`` name
    loses a trailing ``_<number>`` segment and gains ``_json`` (``cell_suspension_0.json`` ->
    ``cell_suspension_json``, ``a.b.txt`` -> ``a_b_txt``)."""
    if name.endswith(".json"):
        stem = _TRAILING_NUMBER.sub("", name[: -len(".json")])
        return stem.replace(".", "_") + "_json"
    return name.replace(".", "_")


def is_json_content_type(content_type: str | None) -> bool:
    """``application/json``, with or without parameters (``; dcp-type=...``, ``; charset=...``)."""
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"


def index_document(uuid: str, manifest: Mapping[str, Any], files: Mapping[str, list]) -> dict:
    return {"uuid": uuid, "manifest": dict(manifest), "files": dict(files)}


def event_document(event_type: str, uuid: str, version: str, manifest: Mapping[str, Any] | None,
                   files: Mapping[str, list] | None) -> dict:
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown bundle event type {event_type!r}")
    return {"event_type": event_type, "bundle_info": {"uuid": uuid, "version": version},
            "manifest": dict(manifest or {}), "files": dict(files or {})}


def index_document_of(event: Mapping[str, Any]) -> dict:
    """The index document a CREATE event document stands for (what percolation matches)."""
    return index_document(event["bundle_info"]["uuid"], event.get("manifest") or {}, event.get("files") or {})
