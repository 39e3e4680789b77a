"""Where the files service may ingest from: source URLs and the allow-list of staging areas.

A writer names the object to ingest (``source_url``); the store reads it with its own credentials,
which also reach the main and checkout buckets. So a source is accepted only inside an area of
``DSS_INGEST_SOURCES`` (default: the staging bucket of each replica), and that is decided from the
URL alone, before any storage call: the answer to a refused URL (403 ``source_not_allowed``) is
the same whether its object exists or not.

An area is ``s3://bucket`` or ``gs://bucket`` (the whole bucket) or ``s3://bucket/prefix`` (the
keys under the folder ``prefix/``). Buckets match exactly (``dss-staging-evil`` is not
``dss-staging``), prefixes on whole path segments, and a key with a ``.`` or ``..`` segment, raw or
percent-encoded, is refused everywhere: some endpoints normalise such paths into another bucket.
"""
from __future__ import annotations

import dataclasses
import re
import urllib.parse

from shared.identifiers import Replica

from services.files.exceptions import source_not_allowed, unknown_source_scheme

SCHEMES = ("s3", "gs")
_DOT_SEGMENTS = {".", ".."}
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # the characters S3 and GCS allow in bucket names


def _split(url: str) -> tuple[str, str, str] | None:
    """(scheme, bucket, key) of ``scheme://bucket/key``, the key exactly as written after the
    bucket's slash(es); None if ``url`` is not of that shape."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return None
    bucket, _, key = rest.partition("/")
    return scheme.lower(), bucket, key.lstrip("/")


def parse_source_url(url: str) -> tuple[str, str, str]:
    """`s3://bucket/key` or `gs://bucket/key` -> (replica, bucket, key); the key is taken verbatim
    (a `?` or `#` in it is part of the key, as in the clients that stage objects)."""
    parts = _split(url)
    if parts is None or parts[0] not in SCHEMES:
        scheme = parts[0] if parts else url[:20]
        raise unknown_source_scheme(f"source_url must start with s3:// or gs://, not `{scheme}`")
    scheme, bucket, key = parts
    if not bucket or not key:
        raise unknown_source_scheme("source_url must name a bucket and a key")
    return Replica.from_scheme(scheme).value, bucket, key


def _has_dot_segment(path: str) -> bool:
    for text in (path, urllib.parse.unquote(path)):
        if any(segment in _DOT_SEGMENTS for segment in text.replace("\\", "/").split("/")):
            return True
    return False


@dataclasses.dataclass(frozen=True)
class Area:
    """A bucket, or a folder of one, that sources may be read from."""
    scheme: str
    bucket: str
    prefix: str  # "" (the whole bucket) or a folder ending in "/"

    @classmethod
    def parse(cls, text: str) -> "Area":
        """An area of ``DSS_INGEST_SOURCES``; ValueError for anything but `s3|gs://bucket[/prefix]`."""
        parts = _split(text.strip())
        if parts is None or parts[0] not in SCHEMES or not _BUCKET.match(parts[1]):
            raise ValueError(f"DSS_INGEST_SOURCES: `{text}` is not s3://bucket[/prefix] or gs://bucket[/prefix]")
        scheme, bucket, prefix = parts
        prefix = prefix.strip("/")
        if prefix and (_has_dot_segment(prefix) or "//" in prefix):
            raise ValueError(f"DSS_INGEST_SOURCES: the prefix of `{text}` has an empty, `.` or `..` segment")
        return cls(scheme, bucket, prefix + "/" if prefix else "")

    @property
    def replica(self) -> str:
        return Replica.from_scheme(self.scheme).value

    def contains(self, replica: str, bucket: str, key: str) -> bool:
        return replica == self.replica and bucket == self.bucket and key.startswith(self.prefix) \
            and len(key) > len(self.prefix)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")


class IngestSources:
    """The allow-list of staging areas, from the settings."""

    def __init__(self, areas: tuple[Area, ...]):
        self.areas = areas

    @classmethod
    def from_settings(cls, settings) -> "IngestSources":
        """``DSS_INGEST_SOURCES``, or the staging bucket of each replica when it is empty. An area in a
        main or checkout bucket is a configuration error (ValueError): the store would ingest from itself."""
        if settings.ingest_sources:
            areas = tuple(Area.parse(text) for text in settings.ingest_sources)
        else:
            areas = tuple(Area(replica.scheme, settings.bucket(replica.value, "staging"), "") for replica in Replica)
        for area in areas:
            own = {settings.bucket(area.replica, kind) for kind in ("main", "checkout")}
            if area.bucket in own:
                raise ValueError(f"DSS_INGEST_SOURCES: {area} is a main or checkout bucket of the store, "
                                 "not a staging area")
        return cls(areas)

    def check(self, url: str) -> tuple[str, str, str]:
        """(replica, bucket, key) of ``url`` if it names an object in an allowed area; else
        ``source_not_allowed``, whose title does not depend on ``url`` (nor on what exists)."""
        replica, bucket, key = parse_source_url(url)
        if not _has_dot_segment(key) and any(area.contains(replica, bucket, key) for area in self.areas):
            return replica, bucket, key
        raise source_not_allowed("source_url must name an object in a staging area this store ingests from: "
                               + ", ".join(str(area) for area in self.areas))
