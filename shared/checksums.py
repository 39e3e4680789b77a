"""The four checksums of the DSS, computed in one streaming pass.

``ChecksumPass`` is fed the bytes of an object chunk by chunk. The hashing of one chunk runs on
real OS threads (hashlib releases the GIL) while the caller fetches the next one, so reading and
hashing overlap and a service's eventlet loop is never blocked by CPU work. Memory is bounded by
two chunks whatever the object size.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

import google_crc32c

from shared.exceptions import Unprocessable

MiB = 1024 * 1024
S3_MIN_PART_SIZE = 64 * MiB
S3_MAX_PARTS = 10000
INLINE_BYTES = 256 * 1024  # chunks smaller than this are hashed on the calling thread

CHECKSUM_NAMES = ("sha256", "sha1", "s3_etag", "crc32c")
_PATTERNS = {
    "sha256": re.compile(r"^[0-9a-f]{64}$"),
    "sha1": re.compile(r"^[0-9a-f]{40}$"),
    "crc32c": re.compile(r"^[0-9a-f]{8}$"),
    "s3_etag": re.compile(r"^[0-9a-f]{32}(-([2-9]|[1-9][0-9]{1,3}|10000))?$"),
}


def s3_part_size(size: int) -> int:
    """Part size the DSS clients use for an object of ``size`` bytes (64 MiB, grown in whole MiB)."""
    if size <= S3_MAX_PARTS * S3_MIN_PART_SIZE:
        return S3_MIN_PART_SIZE
    per_part = -(-size // S3_MAX_PARTS)
    return -(-per_part // MiB) * MiB


@dataclasses.dataclass(frozen=True)
class Checksums:
    sha256: str
    sha1: str
    s3_etag: str
    crc32c: str

    @classmethod
    def parse(cls, declared: dict[str, str]) -> "Checksums":
        """Validate declared checksums (names as in the API); raises 422 missing/invalid_checksum."""
        missing = [name for name in CHECKSUM_NAMES if not declared.get(name)]
        if missing:
            raise Unprocessable(f"checksums missing: {', '.join(missing)}", "missing_checksum")
        values = {name: str(declared[name]).strip().lower() for name in CHECKSUM_NAMES}
        bad = [name for name, value in values.items() if not _PATTERNS[name].match(value)]
        if bad:
            raise Unprocessable(f"malformed checksums: {', '.join(bad)}", "invalid_checksum")
        return cls(**values)

    def as_api(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    def as_stored(self) -> dict[str, str]:
        """Field names as written in `files/` and `bundles/` JSON (note `s3-etag`)."""
        return {"sha256": self.sha256, "sha1": self.sha1, "s3-etag": self.s3_etag, "crc32c": self.crc32c}

    @classmethod
    def from_stored(cls, doc: dict) -> "Checksums":
        return cls(sha256=doc["sha256"], sha1=doc["sha1"], s3_etag=doc["s3-etag"], crc32c=doc["crc32c"])

    def blob_key(self) -> str:
        return f"blobs/{self.sha256}.{self.sha1}.{self.s3_etag}.{self.crc32c}"

    def mismatches(self, actual: "Checksums") -> list[str]:
        """Names of the checksums that differ from ``actual``."""
        return [name for name in CHECKSUM_NAMES if getattr(self, name) != getattr(actual, name)]


class _S3Etag:
    def __init__(self, part_size: int):
        self.part_size = part_size
        self.part_digests: list[bytes] = []
        self.current = hashlib.md5()
        self.current_len = 0

    def update(self, data: memoryview) -> None:
        while len(data):
            room = self.part_size - self.current_len
            piece, data = data[:room], data[room:]
            self.current.update(piece)
            self.current_len += len(piece)
            if self.current_len == self.part_size:
                self.part_digests.append(self.current.digest())
                self.current, self.current_len = hashlib.md5(), 0

    def hexdigest(self) -> str:
        digests = self.part_digests + ([self.current.digest()] if self.current_len or not self.part_digests else [])
        if len(digests) == 1:
            return digests[0].hex()
        return hashlib.md5(b"".join(digests)).hexdigest() + f"-{len(digests)}"


class _Crc32c:
    def __init__(self):
        self.value = google_crc32c.Checksum()

    def update(self, data: memoryview) -> None:
        self.value.update(bytes(data) if not isinstance(data, (bytes, bytearray)) else data)

    def hexdigest(self) -> str:
        return self.value.digest().hex()


def _default_executor() -> Callable:
    """A `submit(fn, *args) -> waitable` on real threads, whether or not eventlet is patched in."""
    try:
        from eventlet import patcher, tpool, spawn
        if patcher.is_monkey_patched("thread"):
            def submit(fn, *args):
                return spawn(tpool.execute, fn, *args)
            return submit
    except ImportError:  # pragma: no cover - eventlet is a dependency
        pass
    pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="checksum")

    def submit(fn, *args):
        future = pool.submit(fn, *args)
        future.wait = future.result
        return future
    return submit


class ChecksumPass:
    """Feed chunks in order with ``update``; ``result()`` returns the four checksums and the size."""

    def __init__(self, size: int | None = None, submit: Callable | None = None):
        self.size = 0
        self._hashers = (hashlib.sha256(), hashlib.sha1(), _S3Etag(s3_part_size(size or 0)), _Crc32c())
        self._submit = submit or _default_executor()
        self._pending: list = []

    def _wait(self) -> None:
        for handle in self._pending:
            handle.wait()
        self._pending = []

    def update(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._wait()  # hashers are not thread-safe: finish the previous chunk first
        self.size += len(chunk)
        view = memoryview(chunk)
        sha256, sha1, etag, crc = self._hashers
        if len(chunk) < INLINE_BYTES:  # a thread hop costs more than hashing a small chunk
            sha256.update(view)
            sha1.update(view)
            _update_both(etag, crc, view)
            return
        self._pending = [
            self._submit(sha256.update, view),
            self._submit(sha1.update, view),
            self._submit(_update_both, etag, crc, view),
        ]

    def result(self) -> Checksums:
        self._wait()
        sha256, sha1, etag, crc = self._hashers
        return Checksums(sha256=sha256.hexdigest(), sha1=sha1.hexdigest(), s3_etag=etag.hexdigest(),
                         crc32c=crc.hexdigest())


def _update_both(etag: _S3Etag, crc: _Crc32c, view: memoryview) -> None:
    etag.update(view)
    crc.update(view)


def checksum_chunks(chunks: Iterable[bytes], size: int | None = None) -> tuple[Checksums, int]:
    """One pass over an iterable of chunks -> (checksums, byte count)."""
    checksum_pass = ChecksumPass(size)
    for chunk in chunks:
        checksum_pass.update(chunk)
    return checksum_pass.result(), checksum_pass.size


def checksum_bytes(data: bytes) -> Checksums:
    return checksum_chunks([data], len(data))[0]
