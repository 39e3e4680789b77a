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

from shared.blobstore import (BlobAlreadyExists, BlobInfo, BlobNotFound, BlobPreconditionFailed, BlobStore,
                              BlobStoreError, BlobStoreUnavailable)
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
    unreachable endpoint would.

    Held to the blob-store conformance suite (tests/conformance/test_blobstore.py) like the real
    stores, so that unit tests cannot pass on behaviour no real store has: every write of new
    content makes a new revision (conditional reads and copies check it), metadata keys are
    lower-cased, a stream of the wrong size or refused by ``before_commit`` writes nothing,
    ``if_absent`` refuses an existing key, writes are stamped (``clock``, epoch seconds, else the
    time). Revisions are those of the replica's cloud: on aws the S3 ETag (the MD5, or the multipart
    ETag of an upload or copy in parts of ``part_size``), which the checkout service's copy
    verification relies on; on gcp a generation per write, with the CRC32C GCS keeps. ``buckets`` maps bucket -> key -> (bytes, content type, metadata); tests may edit it
    (a key removed there is gone; one added there gets a revision when first looked at)."""

    def __init__(self, replica: str, clock=None):
        import itertools
        import time
        self.replica = replica
        self.scheme = {"aws": "s3", "gcp": "gs"}[replica]
        self.buckets: dict[str, dict[str, tuple[bytes, str, dict]]] = {}
        self.clock = clock or time.time
        self.modified: dict[tuple[str, str], float] = {}
        # (bucket, key) -> (revision, the stored tuple it names): a tuple replaced behind the
        # store's back (a test editing ``buckets``) is a new revision too.
        self._revisions: dict[tuple[str, str], tuple[str, tuple]] = {}
        self._generations = itertools.count(1)
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

    def _store(self, bucket: str, key: str, data: bytes, content_type: str, metadata,
               part_size: int | None = None) -> BlobInfo:
        stored = (bytes(data), content_type, {name.lower(): value for name, value in (metadata or {}).items()})
        self.buckets[bucket][key] = stored
        self._revisions[(bucket, key)] = (self._new_revision(stored[0], part_size), stored)
        self.modified[(bucket, key)] = self.clock()
        return self._info(bucket, key, stored)

    def _new_revision(self, data: bytes, part_size: int | None) -> str:
        if self.replica == "gcp":
            return str(next(self._generations))
        if part_size is None or len(data) <= part_size:
            return hashlib.md5(data).hexdigest()
        part_size = max(part_size, -(-len(data) // 10_000))  # as S3BlobStore grows it for 10,000 parts
        digests = [hashlib.md5(data[start:start + part_size]).digest() for start in range(0, len(data), part_size)]
        return hashlib.md5(b"".join(digests)).hexdigest() + f"-{len(digests)}"

    def _revision(self, bucket: str, key: str, stored: tuple) -> str:
        known = self._revisions.get((bucket, key))
        if known is None or known[1] is not stored:
            known = self._revisions[(bucket, key)] = (self._new_revision(stored[0], None), stored)
        return known[0]

    def _info(self, bucket: str, key: str, stored: tuple) -> BlobInfo:
        data, content_type, metadata = stored
        stamp = self.modified.get((bucket, key))
        last_modified = datetime.datetime.fromtimestamp(self.clock() if stamp is None else stamp,
                                                        datetime.timezone.utc)
        crc32c = None
        if self.replica == "gcp":  # GCS keeps every object's CRC32C; S3 only when asked to
            import google_crc32c
            crc32c = google_crc32c.Checksum(data).digest().hex()
        return BlobInfo(key, len(data), content_type, dict(metadata), self._revision(bucket, key, stored), crc32c,
                        last_modified)

    def _check_revision(self, bucket: str, key: str, stored: tuple, revision: str | None) -> None:
        if revision is not None and self._revision(bucket, key, stored) != revision:
            raise BlobPreconditionFailed(f"{bucket}/{key} is no longer revision {revision}")

    def stat(self, bucket, key):
        return self._info(bucket, key, self._object(bucket, key, "stat"))

    def get_tags(self, bucket, key):
        self._object(bucket, key, "get_tags")
        return {}

    def get_bytes(self, bucket, key):
        return self._object(bucket, key, "get_bytes")[0]

    def iter_chunks(self, bucket, key, chunk_size, revision=None):
        stored = self._object(bucket, key, "iter_chunks")
        self._check_revision(bucket, key, stored, revision)
        data = stored[0]  # the revision the read began with, whatever replaces it meanwhile
        return iter([data[start:start + chunk_size] for start in range(0, len(data), chunk_size)])

    def list_keys(self, bucket, prefix="", start_after=None):
        objects = self._objects(bucket, "list_keys")
        return iter(sorted(key for key in objects
                           if key.startswith(prefix) and (start_after is None or key > start_after)))

    def put_bytes(self, bucket, key, data, content_type="application/octet-stream", metadata=None, if_absent=False):
        objects = self._objects(bucket, "put_bytes")
        if if_absent and key in objects:
            raise BlobAlreadyExists(f"{bucket}/{key}")
        return self._store(bucket, key, data, content_type, metadata)

    def put_stream(self, bucket, key, chunks, size, content_type="application/octet-stream", metadata=None,
                   part_size=64 * 1024 * 1024, *, concurrency=1, before_commit=None):
        self._objects(bucket, "put_stream")
        data = bytearray()
        for chunk in chunks:
            data += chunk
            if len(data) > size:
                raise BlobStoreError(f"the stream of {bucket}/{key} has more than the {size} bytes announced")
        if len(data) != size:
            raise BlobStoreError(f"the stream of {bucket}/{key} ended after {len(data)} of {size} bytes")
        if before_commit is not None:
            before_commit()  # raising: nothing is written
        return self._store(bucket, key, data, content_type, metadata, part_size)

    def copy(self, src_bucket, src_key, dst_bucket, dst_key, *, if_source_revision=None, content_type=None,
             metadata=None, part_size=64 * 1024 * 1024, source_size=None):
        stored = self._object(src_bucket, src_key, "copy")
        self._check_revision(src_bucket, src_key, stored, if_source_revision)
        data, source_type, source_metadata = stored
        if dst_bucket not in self.buckets:
            raise BlobNotFound(dst_bucket)
        return self._store(dst_bucket, dst_key, data, content_type or source_type,
                           source_metadata if metadata is None else metadata, part_size)

    def delete(self, bucket, key):
        self._objects(bucket, "delete").pop(key, None)
        self._revisions.pop((bucket, key), None)
        self.modified.pop((bucket, key), None)

    def presigned_url(self, bucket, key, expires_in, content_disposition=None):
        from urllib.parse import quote, urlencode
        query = {"expires_in": expires_in, **({"response-content-disposition": content_disposition}
                                              if content_disposition else {})}
        return f"memory://{bucket}/{quote(key)}?{urlencode(query)}"

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
