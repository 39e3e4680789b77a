"""Whether a stored copy holds what its key names, and whether the two replicas agree on a key.

A blob's key names its four checksums, so a copy can be judged against its key alone: from the
store's metadata when that says enough (GCS keeps a CRC32C; an S3 ETag is the key's ``s3_etag``
when the part layouts agree), else by reading and hashing it. JSON documents are judged by their
bytes and, when two copies differ, by which one is a valid document of its kind (the source of
truth). Used by the replicator and checkout services (``services.checkout.copies``) and `dss-ops replicas`.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable

import google_crc32c

from shared.blobstore import BlobInfo, BlobNotFound, BlobStore
from shared.checksums import ChecksumPass, Checksums
from shared.exceptions import InvalidParameter
from shared.identifiers import REPLICAS, Replica
from shared.keys import BLOB, ReplicaKey, is_valid_document, parse_key

# --- judging a stored copy -------------------------------------------------------------------------

def blob_verdict(info: BlobInfo, expected: Checksums) -> bool | None:
    """Whether a stored blob holds the bytes its key names, judged from its metadata alone: True or
    False, or None when only reading it can tell (an S3 ETag from another part layout)."""
    if info.crc32c is not None:
        return info.crc32c == expected.crc32c
    etag = info.revision
    if etag == expected.s3_etag:
        return True
    if "-" not in etag and "-" not in expected.s3_etag:  # both the MD5 of the whole object
        return False
    return None


def document_verdict(info: BlobInfo, data: bytes) -> bool:
    """Whether a stored document holds exactly ``data``, from its metadata (written in one request,
    an S3 object's ETag is its MD5; GCS keeps a CRC32C)."""
    if info.size != len(data):
        return False
    if info.crc32c is not None:
        return info.crc32c == google_crc32c.Checksum(data).digest().hex()
    return info.revision == hashlib.md5(data).hexdigest()


def hash_object(store: BlobStore, bucket: str, key: str, chunk_size: int,
                on_chunk: Callable[[int], None] = lambda count: None) -> tuple[Checksums, int]:
    """Read ``key`` once and compute its four checksums (bounded memory, hashing on threads)."""
    info = store.stat(bucket, key)
    checksum_pass = ChecksumPass(info.size)
    for chunk in store.iter_chunks(bucket, key, chunk_size, revision=info.revision):
        checksum_pass.update(chunk)
        on_chunk(len(chunk))
    return checksum_pass.result(), checksum_pass.size


# --- comparing the replicas ------------------------------------------------------------------------

MISSING = {"aws": "missing_in_aws", "gcp": "missing_in_gcp"}
DIFFERENT = "different"


@dataclasses.dataclass(frozen=True)
class Finding:
    """A key that is not the same in both replicas. ``source`` is the replica holding the correct
    copy (None: neither can be trusted, an operator must look). ``remove`` names a damaged blob
    copy that only reading reveals: the replicator judges a copy by its metadata, so a repair
    deletes that one before asking for it again."""
    key: str
    status: str  # missing_in_aws, missing_in_gcp or different
    source: str | None
    detail: str = ""
    remove: str | None = None


class Comparer:
    """Judges one key present in both replicas (``stores`` and ``buckets`` by replica name)."""

    def __init__(self, stores: dict[str, BlobStore], buckets: dict[str, str], chunk_size: int, deep: bool = False):
        self.stores, self.buckets = stores, buckets
        self.chunk_size, self.deep = chunk_size, deep

    def compare(self, key: str, present: dict[str, bool]) -> tuple[Finding | None, bool]:
        """(the finding or None, whether the key could be checked only by size)."""
        missing = [name for name in REPLICAS if not present[name]]
        if missing:
            other = Replica(missing[0]).other.value
            return Finding(key, MISSING[missing[0]], other, f"only in {other}"), False
        try:
            target = parse_key(key)
        except InvalidParameter:
            target = None  # judged as an opaque object
        try:
            infos = {name: self.stores[name].stat(self.buckets[name], key) for name in REPLICAS}
        except BlobNotFound:  # written or never there after all: the next run sees it settled
            return None, False
        if target is None:
            if infos["aws"].size != infos["gcp"].size:
                return Finding(key, DIFFERENT, None, "sizes differ; not a DSS key, not repaired"), False
            return None, False
        if target.kind == BLOB:
            return self._compare_blob(target, infos)
        return self._compare_document(target, infos), False

    def _hash_verdict(self, name: str, target: ReplicaKey) -> bool:
        actual, _ = hash_object(self.stores[name], self.buckets[name], target.key, self.chunk_size)
        return actual == target.checksums

    def _compare_blob(self, target: ReplicaKey, infos: dict[str, BlobInfo]) -> tuple[Finding | None, bool]:
        cheap = {name: blob_verdict(info, target.checksums) for name, info in infos.items()}
        if self.deep:
            verdicts = {name: self._hash_verdict(name, target) for name in REPLICAS}
        else:
            verdicts = cheap
        same_size = infos["aws"].size == infos["gcp"].size
        if same_size and False not in verdicts.values():
            return None, None in verdicts.values()
        # Which copy is right decides which way a repair goes: read whatever metadata cannot judge.
        verdicts = {name: self._hash_verdict(name, target) if verdict is None else verdict
                    for name, verdict in verdicts.items()}
        good = [name for name in REPLICAS if verdicts[name]]
        bad = [name for name in REPLICAS if not verdicts[name]]
        if not bad:  # both hash right yet sizes differ: impossible for real stores; report it
            return Finding(target.key, DIFFERENT, None, "sizes differ, checksums match"), False
        detail = ", ".join(f"{name} does not match the key ({infos[name].size} bytes)" for name in bad)
        if not good:
            return Finding(target.key, DIFFERENT, None, detail), False
        hidden = same_size and cheap[bad[0]] is not False  # its size and metadata look right
        return Finding(target.key, DIFFERENT, good[0], detail, remove=bad[0] if hidden else None), False

    def _compare_document(self, target: ReplicaKey, infos: dict[str, BlobInfo]) -> Finding | None:
        if infos["aws"].size == infos["gcp"].size and not self.deep:
            return None  # documents are written once; --deep compares their bytes
        data = {name: self.stores[name].get_bytes(self.buckets[name], target.key) for name in REPLICAS}
        if data["aws"] == data["gcp"]:
            return None
        valid = [name for name in REPLICAS if is_valid_document(target, data[name])]
        if len(valid) == 1:
            invalid = Replica(valid[0]).other.value
            return Finding(target.key, DIFFERENT, valid[0], f"the {invalid} copy is not a valid {target.kind}")
        detail = "both copies are valid documents" if valid else "neither copy is a valid document"
        return Finding(target.key, DIFFERENT, None, f"{detail}; an operator must choose")
