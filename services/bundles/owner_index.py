"""Each replica's index of collections by owner, so that listing a caller's collections
(GET /collections) lists and reads only theirs, not every collection of the replica.

The index is one small marker per (owner, collection uuid): ``collections-by-owner/{h}/{uuid}``,
``h`` the sha256 of the owner's e-mail (fixed length, no e-mail in key listings), holding
``{"owner": e-mail}``. A marker only says where to look: whether the collection is live and
whose its latest version is are judged from the collection's own keys when listing, so a stale
marker (a crash between a tombstone and the marker's removal) is skipped, never shown.

The markers are derived data, kept per replica: they are outside the replicated layout
(``shared.keys.PREFIXES``), so the replicator neither copies nor compares them. The bundles
service writes a marker after each collection version it writes and removes it after the
collection's tombstone; a collection copied in by the replicator is indexed from its
``object_replicated`` event (``CollectionDocuments.index_collection``). Stores written before the index
existed are indexed once by ``dss-ops collections index`` (``rebuild``), which also drops stale
markers.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Iterator

from shared.storage import ReplicaStorage

logger = logging.getLogger(__name__)

PREFIX = "collections-by-owner/"


def owner_hash(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()


def owner_prefix(owner: str) -> str:
    return f"{PREFIX}{owner_hash(owner)}/"


def marker_key(owner: str, uuid: str) -> str:
    return owner_prefix(owner) + uuid


def add(storage: ReplicaStorage, owner: str, uuid: str) -> None:
    """Record that ``owner`` has collection ``uuid`` (idempotent)."""
    storage.write_json_once(marker_key(owner, uuid), {"owner": owner})


def remove(storage: ReplicaStorage, owner: str, uuid: str) -> None:
    storage.delete(marker_key(owner, uuid))


def indexed_uuids(storage: ReplicaStorage, owner: str) -> Iterator[str]:
    """The uuids of the collections indexed under ``owner``, in uuid order (one listing, lazily paged)."""
    prefix = owner_prefix(owner)
    return (key[len(prefix):] for key in storage.list_keys(prefix))


def markers(storage: ReplicaStorage) -> Iterator[tuple[str, str, str]]:
    """(key, owner hash, uuid) of every marker of the replica."""
    for key in storage.list_keys(PREFIX):
        digest, _, uuid = key[len(PREFIX):].partition("/")
        yield key, digest, uuid
