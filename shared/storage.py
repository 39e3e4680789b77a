"""The main bucket of each replica as the services see it: JSON documents and blobs under the
keys of ``shared.identifiers.Keys``, written once and never changed.

``StorageProvider`` is the base of every service's storage dependency: it opens both replicas'
blob stores in ``setup()`` from the container config, and injects the service's own domain API
(``api_class``) built on ``ReplicaStorage``.
"""
from __future__ import annotations

import json
import logging
from typing import Iterable, Iterator

from nameko.extensions import DependencyProvider

from shared.blobstore import BlobAlreadyExists, BlobNotFound, BlobStore, BlobStoreUnavailable, open_blobstore
from shared.config import Settings
from shared.exceptions import InvalidParameter, NotFound
from shared.identifiers import REPLICAS, TOMBSTONE_SUFFIX

logger = logging.getLogger(__name__)

JSON = "application/json"


ALL_VERSIONS = "*"  # what ``split_versions`` reports for the tombstone of every version


def split_versions(suffixes: Iterable[str]) -> tuple[list[str], set[str]]:
    """Sort the key suffixes of one uuid (what follows ``{kind}/{uuid}.``), in listing order, into
    its versions and its tombstoned versions (``"*"`` for the bare ``dead`` of every version)."""
    versions: list[str] = []
    dead: set[str] = set()
    for suffix in suffixes:
        if suffix == TOMBSTONE_SUFFIX:
            dead.add(ALL_VERSIONS)
        elif suffix.endswith("." + TOMBSTONE_SUFFIX):
            dead.add(suffix[: -len(TOMBSTONE_SUFFIX) - 1])
        else:
            versions.append(suffix)
    return versions, dead


def _json_bytes(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class ReplicaStorage:
    """One replica's main and checkout buckets."""

    def __init__(self, replica: str, store: BlobStore, settings: Settings):
        self.replica = replica
        self.store = store
        self.settings = settings
        self.bucket = settings.bucket(replica, "main")
        self.checkout_bucket = settings.bucket(replica, "checkout")

    # --- JSON documents ------------------------------------------------------------------------
    def read_json(self, key: str) -> dict:
        """The document at ``key``; raises ``NotFound``."""
        try:
            return json.loads(self.store.get_bytes(self.bucket, key))
        except BlobNotFound:
            raise NotFound(f"{key} does not exist in replica {self.replica}") from None

    def find_json(self, key: str) -> dict | None:
        try:
            return self.read_json(key)
        except NotFound:
            return None

    def write_json_once(self, key: str, doc: dict) -> dict | None:
        """Write ``doc`` unless the key exists. Returns None if written, else the document already there."""
        data = _json_bytes(doc)
        try:
            self.store.put_bytes(self.bucket, key, data, content_type=JSON, if_absent=True)
            return None
        except BlobAlreadyExists:
            return self.read_json(key)

    def write_json(self, key: str, doc: dict) -> None:
        """Write ``doc``, replacing what is there. Only for keys outside the write-once layout
        (e.g. the indexer's ``announced/`` markers)."""
        data = _json_bytes(doc)
        self.store.put_bytes(self.bucket, key, data, content_type=JSON)

    def exists(self, key: str) -> bool:
        return self.store.exists(self.bucket, key)

    def delete(self, key: str) -> None:
        """Remove ``key``; an absent key is not an error. Only for keys outside the write-once
        layout (e.g. the notifier's ``subscriptions/``)."""
        self.store.delete(self.bucket, key)

    def list_keys(self, prefix: str, start_after: str | None = None) -> Iterator[str]:
        return self.store.list_keys(self.bucket, prefix, start_after)

    def versions(self, prefix: str) -> tuple[list[str], set[str]]:
        """Versions stored under ``{prefix}`` (e.g. ``bundles/{uuid}.``) in ascending order, and the
        versions carrying a versioned tombstone (``{version}.dead``; a bare ``dead`` key is reported
        as the version ``"*"``)."""
        return split_versions(key[len(prefix):] for key in self.list_keys(prefix))

    def live_version(self, prefix: str, version: str | None = None) -> str | None:
        """``version`` (the latest if None) when it is stored under ``prefix`` and no tombstone hides
        it, else None: the one rule of which bundle versions a reader may see."""
        versions, dead = self.versions(prefix)
        live = [] if ALL_VERSIONS in dead else [v for v in versions if v not in dead]
        if version is None:
            return live[-1] if live else None
        return version if version in live else None

    # --- addressing ----------------------------------------------------------------------------
    def presigned_url(self, key: str, content_disposition: str | None = None, bucket: str | None = None) -> str:
        return self.store.presigned_url(bucket or self.bucket, key, self.settings.presigned_url_ttl,
                                        content_disposition=content_disposition)

    def direct_url(self, key: str, bucket: str | None = None) -> str:
        return self.store.direct_url(bucket or self.bucket, key)

    def health(self) -> dict:
        try:
            ok = self.store.bucket_exists(self.bucket)
        except BlobStoreUnavailable as error:
            return {"ok": False, "detail": f"unreachable: {error}"}
        return {"ok": ok, "detail": f"bucket {self.bucket}" + ("" if ok else " missing")}


class Replicas:
    """The two replicas by name; an unknown name is a 400 ``unknown_replica``."""

    def __init__(self, replicas: dict[str, ReplicaStorage]):
        self._replicas = replicas

    def __getitem__(self, replica: str) -> ReplicaStorage:
        try:
            return self._replicas[replica]
        except KeyError:
            raise InvalidParameter(f"unknown replica `{replica}`; use one of {', '.join(REPLICAS)}",
                                   "unknown_replica") from None

    def items(self):
        return self._replicas.items()

    def health(self) -> dict:
        return {name: replica.health() for name, replica in self._replicas.items()}


def open_replicas(settings: Settings) -> Replicas:
    return Replicas({name: ReplicaStorage(name, open_blobstore(name, settings), settings) for name in REPLICAS})


class StorageProvider(DependencyProvider):
    """Opens both replicas from config in ``setup()``; injects ``api_class(replicas, settings)``."""

    api_class: type = None

    def setup(self):
        self.settings = Settings.from_config(self.container.config)
        self.replicas = open_replicas(self.settings)

    def get_dependency(self, worker_ctx):
        return self.api_class(self.replicas, self.settings)

