"""The bundles service's dependency provider: ``BundleStore`` injects a ``BundleStoreAPI`` over both
replicas, whose parts do the work: ``bundles`` (``manifests.py``) and ``collections``
(``collection_documents.py``)."""
from __future__ import annotations

from shared.concurrency import ExpiringCache
from shared.storage import Replicas, StorageProvider

from services.bundles.collection_documents import CollectionDocuments, new_owner_cache
from services.bundles.manifests import BundleManifests


class BundleStoreAPI:
    """What a bundles worker is given: its parts, the settings and the replicas' health."""

    def __init__(self, replicas: Replicas, settings, owners: ExpiringCache | None = None):
        self.replicas = replicas
        self.settings = settings
        self.bundles = BundleManifests(replicas)
        self.collections = CollectionDocuments(replicas, self.bundles, owners)

    def health(self) -> dict:
        return self.replicas.health()


class BundleStore(StorageProvider):
    """Injects a ``BundleStoreAPI`` over both replicas, sharing one (bounded) collection-owner cache."""

    api_class = BundleStoreAPI

    def setup(self):
        super().setup()
        self.owners = new_owner_cache()

    def get_dependency(self, worker_ctx):
        return self.api_class(self.replicas, self.settings, self.owners)
