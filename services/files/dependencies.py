"""The files service's dependency provider: ``FileStore`` injects a ``FileStoreAPI`` over both
replicas, whose parts do the work: ``ingest`` (``ingest.py``), ``files`` (``metadata.py``) and
``claims`` of background copies (``claims.py``)."""
from __future__ import annotations

from shared.storage import Replicas, StorageProvider

from services.files.claims import BackgroundCopyClaims
from services.files.ingest import Ingester
from services.files.metadata import FileDocuments
from services.files.sources import IngestSources


class FileStoreAPI:
    """What a files worker is given: its parts, the settings and the replicas' health."""

    def __init__(self, replicas: Replicas, settings, sources: IngestSources):
        self.replicas = replicas
        self.settings = settings
        self.ingest = Ingester(replicas, settings, sources)
        self.files = FileDocuments(replicas)
        self.claims = BackgroundCopyClaims(replicas)

    def health(self) -> dict:
        return self.replicas.health()


class FileStore(StorageProvider):
    api_class = FileStoreAPI

    def setup(self):
        super().setup()
        # Parsed once: a malformed DSS_INGEST_SOURCES stops the service at its start.
        self.sources = IngestSources.from_settings(self.settings)

    def get_dependency(self, worker_ctx):
        return FileStoreAPI(self.replicas, self.settings, self.sources)
