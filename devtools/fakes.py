"""Fakes and fixtures of stored data for tests and benchmarks: objects staged the way the DSS clients
stage them, bundles written straight to a main bucket, an in-memory blob store, and a spy on a
store's reads."""
from __future__ import annotations

import collections
import datetime
import hashlib
import json
import os
import uuid as uuid_module

from shared.blobstore import BlobAlreadyExists, BlobInfo, BlobNotFound, BlobStore, BlobStoreUnavailable
from shared.checksums import Checksums, checksum_bytes


def stage_object(store, bucket: str, data: bytes, *, key: str | None = None, prefix: str = "dss-",
                 as_tags: bool = False, content_type: str = "application/octet-stream",
                 declared: dict | None = None, metadata: dict | None = None) -> tuple[str, Checksums]:
    """Upload ``data`` to a staging bucket the way the DSS clients do, with its four checksums
    as metadata (or S3 tags) named ``{prefix}{name}``. ``declared`` overrides what is declared;
    ``metadata`` is more user metadata for the object. Returns (source_url, true checksums)."""
    key = key or f"staging/{uuid_module.uuid4()}/{os.urandom(3).hex()}.bin"
    checksums = checksum_bytes(data)
    labels = {f"{prefix}{name}": value for name, value in (declared or checksums.as_api()).items()}
    store.put_bytes(bucket, key, data, content_type=content_type,
                    metadata={**(metadata or {}), **({} if as_tags else labels)})
    if as_tags:
        client = store.client
        client.put_object_tagging(Bucket=bucket, Key=key,
                                  Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in labels.items()]})
    return f"{store.scheme}://{bucket}/{key}", checksums


def stage_large_object(store, bucket: str, size: int, *, chunk: int = 8 * 1024 * 1024, seed: bytes = b"",
                       key: str | None = None, metadata: dict | None = None) -> tuple[str, Checksums]:
    """Stream ``size`` pseudo-random bytes to a staging object without holding them in memory
    (``metadata``: more user metadata beside the checksums)."""
    from shared.checksums import ChecksumPass
    key = key or f"staging/{uuid_module.uuid4()}/large.bin"
    block = (seed or os.urandom(16)) * (chunk // 16)

    def chunks():
        remaining = size
        while remaining:
            piece = block[: min(chunk, remaining)]
            remaining -= len(piece)
            yield piece

    checksum_pass = ChecksumPass(size)
    for piece in chunks():
        checksum_pass.update(piece)
    checksums = checksum_pass.result()
    labels = {f"dss-{name}": value for name, value in checksums.as_api().items()}
    store.put_stream(bucket, key, chunks(), size, metadata={**(metadata or {}), **labels})
    return f"{store.scheme}://{bucket}/{key}", checksums


def store_bundle(store, bucket: str, contents: dict[str, bytes], content_type: str = "application/octet-stream",
                 concurrency: int = 16) -> tuple[str, str, dict]:
    """A bundle of files named and filled as ``contents``, written straight to a main bucket as the
    files and bundles services lay it out (blobs, ``files/``, then the manifest; no events), the
    writes ``concurrency`` at a time on green threads. Returns (uuid, version, manifest)."""
    import eventlet

    from shared.identifiers import Keys, new_uuid, new_version
    from shared.schemas import BUNDLE_FORMAT, FileMetadata

    uuid, version = new_uuid(), new_version()

    def store_file(item):
        name, data = item
        sums, file_uuid = checksum_bytes(data), new_uuid()
        store.put_bytes(bucket, sums.blob_key(), data, content_type=content_type)
        metadata = FileMetadata().dump({"creator_uid": 1, "version": version, "content_type": content_type,
                                        "size": len(data), **sums.as_api()})
        store.put_bytes(bucket, Keys.file(file_uuid, version), json.dumps(metadata).encode(),
                        content_type="application/json")
        return {"name": name, "uuid": file_uuid, "version": version, "indexed": False, "content-type": content_type,
                "size": len(data), **sums.as_stored()}

    entries = list(eventlet.GreenPool(concurrency).imap(store_file, contents.items()))
    manifest = {"format": BUNDLE_FORMAT, "version": version, "creator_uid": 1, "files": entries}
    store.put_bytes(bucket, Keys.bundle(uuid, version), json.dumps(manifest).encode(), content_type="application/json")
    return uuid, version, manifest


# --- an in-memory blob store, for unit tests -----------------------------------------------------

class MemoryBlobStore(BlobStore):
    """A replica's buckets in a dict, counting calls; ``unavailable`` makes every call fail as an
    unreachable endpoint would."""

    def __init__(self, replica: str, clock=None):
        self.replica = replica
        self.scheme = {"aws": "s3", "gcp": "gs"}[replica]
        self.buckets: dict[str, dict[str, tuple[bytes, str, dict]]] = {}
        # With a clock (epoch seconds), writes through the API are stamped and `stat` reports it.
        self.clock = clock
        self.modified: dict[tuple[str, str], float] = {}
        self.calls = collections.Counter()
        self.unavailable = False

    def _objects(self, bucket: str, call: str) -> dict:
        self.calls[call] += 1
        if self.unavailable:
            raise BlobStoreUnavailable(f"{self.replica} is unreachable")
        try:
            return self.buckets[bucket]
        except KeyError:
            raise BlobNotFound(bucket) from None

    def _object(self, bucket: str, key: str, call: str) -> tuple[bytes, str, dict]:
        try:
            return self._objects(bucket, call)[key]
        except KeyError:
            raise BlobNotFound(f"{bucket}/{key}") from None

    def stat(self, bucket, key):
        data, content_type, metadata = self._object(bucket, key, "stat")
        stamp = self.modified.get((bucket, key))
        last_modified = None if stamp is None else datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc)
        return BlobInfo(key, len(data), content_type, dict(metadata), hashlib.md5(data).hexdigest(), None,
                        last_modified)

    def get_tags(self, bucket, key):
        self._object(bucket, key, "get_tags")
        return {}

    def get_bytes(self, bucket, key):
        return self._object(bucket, key, "get_bytes")[0]

    def iter_chunks(self, bucket, key, chunk_size, revision=None):
        data = self._object(bucket, key, "iter_chunks")[0]
        return iter([data[start:start + chunk_size] for start in range(0, len(data), chunk_size)])

    def list_keys(self, bucket, prefix="", start_after=None):
        objects = self._objects(bucket, "list_keys")
        return iter(sorted(key for key in objects
                           if key.startswith(prefix) and (start_after is None or key > start_after)))

    def put_bytes(self, bucket, key, data, content_type="application/octet-stream", metadata=None, if_absent=False):
        objects = self._objects(bucket, "put_bytes")
        if if_absent and key in objects:
            raise BlobAlreadyExists(f"{bucket}/{key}")
        objects[key] = (bytes(data), content_type, dict(metadata or {}))
        if self.clock is not None:
            self.modified[(bucket, key)] = self.clock()

    def put_stream(self, bucket, key, chunks, size, content_type="application/octet-stream", metadata=None,
                   part_size=64 * 1024 * 1024):
        self.put_bytes(bucket, key, b"".join(chunks), content_type, metadata)

    def copy(self, src_bucket, src_key, dst_bucket, dst_key, *, if_source_revision=None, content_type=None,
             metadata=None, part_size=64 * 1024 * 1024, source_size=None):
        data, source_type, source_metadata = self._object(src_bucket, src_key, "copy")
        new_type, new_metadata = content_type or source_type, source_metadata if metadata is None else metadata
        if dst_bucket not in self.buckets:
            raise BlobNotFound(dst_bucket)
        self.buckets[dst_bucket][dst_key] = (data, new_type, dict(new_metadata))
        if self.clock is not None:
            self.modified[(dst_bucket, dst_key)] = self.clock()
        return BlobInfo(dst_key, len(data), new_type, dict(new_metadata), hashlib.md5(data).hexdigest(), None, None)

    def delete(self, bucket, key):
        self._objects(bucket, "delete").pop(key, None)

    def presigned_url(self, bucket, key, expires_in, content_disposition=None):
        return f"memory://{bucket}/{key}?expires_in={expires_in}"

    def bucket_exists(self, bucket):
        try:
            self._objects(bucket, "bucket_exists")
        except BlobNotFound:
            return False
        return True

    def create_bucket(self, bucket):
        self.buckets.setdefault(bucket, {})


class StorageSpy:
    """Records the keys a blob store (any, real or in memory) reads and the prefixes it lists, and
    lets each call through; ``monkeypatch`` (pytest's) puts the store back after the test."""

    def __init__(self, monkeypatch, store: BlobStore):
        self.read: list[str] = []
        self.listed: list[str] = []
        get_bytes, list_keys = store.get_bytes, store.list_keys

        def spy_get_bytes(bucket, key, *args, **kwargs):
            self.read.append(key)
            return get_bytes(bucket, key, *args, **kwargs)

        def spy_list_keys(bucket, prefix="", *args, **kwargs):
            self.listed.append(prefix)
            return list_keys(bucket, prefix, *args, **kwargs)

        monkeypatch.setattr(store, "get_bytes", spy_get_bytes)
        monkeypatch.setattr(store, "list_keys", spy_list_keys)

    def clear(self) -> None:
        self.read.clear()
        self.listed.clear()
