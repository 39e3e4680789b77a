"""The unit-test world of file reads: both replicas in memory (main and checkout buckets), a
clock the test moves, and workers of the checkout service built with nameko's worker_factory over
the real ``FileReadsAPI`` and ``Sweeper`` (only the cloud is faked)."""
from __future__ import annotations

import json

from nameko.testing.services import worker_factory

from shared.checksums import checksum_bytes
from shared.config import Settings
from shared.identifiers import Keys, new_uuid, new_version
from shared.schemas import FileMetadata
from shared.storage import ReplicaStorage, Replicas
from devtools.fakes import MemoryBlobStore

from services.checkout.file_reads.blobs import Blob
from services.checkout.file_reads.reads import CheckoutState, FileReadsAPI
from services.checkout.lifetime import CHECKED_OUT_METADATA, DAY, rfc3339
from services.checkout.service import CheckoutService
from services.checkout.sweeping import Sweeper

KiB = 1024
START = 1_800_000_000.0  # the fake clock's start (2027)


class Clock:
    def __init__(self, now: float = START):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def advance_days(self, days: float) -> None:
        self.advance(days * DAY)


class FileWorld:
    """Both replicas in memory and workers of the checkout service over them."""

    def __init__(self, **overrides):
        config = {"DSS_CHECKOUT_INLINE_BYTES": 64 * KiB, "DSS_CHECKOUT_WARM_BYTES": 4 * KiB,
                  "DSS_CHECKOUT_KEEP_JSON_BYTES": 2 * KiB, **overrides}
        self.settings = Settings.from_config(config, environ={})
        self.clock = Clock()
        self.stores = {name: MemoryBlobStore(name, clock=self.clock) for name in ("aws", "gcp")}
        for name, store in self.stores.items():
            store.create_bucket(self.settings.bucket(name))
            store.create_bucket(self.settings.bucket(name, "checkout"))
        self.replicas = Replicas({name: ReplicaStorage(name, store, self.settings)
                                  for name, store in self.stores.items()})
        self.state = CheckoutState(self.settings.checkout_cache_seconds, clock=self.clock)
        self.service = self.new_worker()

    def api(self) -> FileReadsAPI:
        return FileReadsAPI(self.replicas, self.settings, self.state)

    def new_worker(self):
        """A fresh worker sharing the process state, as nameko gives each call."""
        return worker_factory(CheckoutService, file_reads=self.api(),
                              sweeper=Sweeper(self.replicas, self.settings, self.state))

    # --- buckets -----------------------------------------------------------------------------------
    def main(self, replica="aws") -> dict:
        return self.stores[replica].buckets[self.settings.bucket(replica)]

    def checkout(self, replica="aws") -> dict:
        return self.stores[replica].buckets[self.settings.bucket(replica, "checkout")]

    def add_file(self, data: bytes, replica="aws", uuid=None, version=None, content_type="application/octet-stream",
                 blob: bytes | None = None) -> dict:
        """A file as the files service stores it (``blob``: other bytes under its blob key)."""
        uuid, version = uuid or new_uuid(), version or new_version()
        checksums = checksum_bytes(data)
        self.main(replica)[checksums.blob_key()] = (data if blob is None else blob, content_type, {})
        doc = FileMetadata().dump({"creator_uid": 7, "version": version, "content_type": content_type,
                                   "size": len(data), **checksums.as_api()})
        self.main(replica)[Keys.file(uuid, version)] = (json.dumps(doc).encode(), "application/json", {})
        return {**doc, "uuid": uuid}

    def add_bundle(self, files: list[dict], replica="aws", uuid=None, version=None) -> tuple[str, str, dict]:
        uuid, version = uuid or new_uuid(), version or new_version()
        manifest = {"format": "0.0.1", "version": version, "creator_uid": 7, "files": [
            {"name": f"file{i}.bin", "uuid": doc["uuid"], "version": doc["version"], "indexed": False,
             **{name: doc[name] for name in ("content-type", "size", "sha256", "sha1", "s3-etag", "crc32c")}}
            for i, doc in enumerate(files)]}
        self.main(replica)[Keys.bundle(uuid, version)] = (json.dumps(manifest).encode(), "application/json", {})
        return uuid, version, manifest

    def dispatched(self, worker, name: str) -> list[dict]:
        return [call.args[1] for call in worker.dispatch.call_args_list if call.args[0] == name]


def copy_of(world, doc, replica="aws"):
    """(bytes, content type, metadata) of a file's checkout copy, or None."""
    return world.checkout(replica).get(Blob.of_file(doc).key)


def make_old(world, doc, days, replica="aws"):
    """Pretend the file's checkout copy was made ``days`` ago."""
    key = Blob.of_file(doc).key
    data, content_type, metadata = world.checkout(replica)[key]
    world.checkout(replica)[key] = (data, content_type,
                                    {**metadata, CHECKED_OUT_METADATA: rfc3339(world.clock.now - days * 86400)})
