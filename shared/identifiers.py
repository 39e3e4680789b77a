"""Identifiers of the DSS: uuids, versions, replicas, fqids, the keys objects are stored under, and
the e-mail addresses callers give."""
from __future__ import annotations

import datetime
import enum
import re
import uuid as uuid_module

from shared.exceptions import InvalidParameter

VERSION_FORMAT = "%Y-%m-%dT%H%M%S.%fZ"
# Versions are times of writing: none before the Unix epoch (the search index orders and pages
# bundles by a version's microseconds since then).
FIRST_VERSION_YEAR = 1970
TOMBSTONE_SUFFIX = "dead"

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# One address, no display name: what an API client may give as a notification recipient.
_EMAIL_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                            r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")
MAX_EMAIL_ADDRESS_LENGTH = 254


class Replica(str, enum.Enum):
    aws = "aws"
    gcp = "gcp"

    @property
    def scheme(self) -> str:
        return {"aws": "s3", "gcp": "gs"}[self.value]

    @classmethod
    def from_scheme(cls, scheme: str) -> "Replica":
        return {"s3": cls.aws, "gs": cls.gcp}[scheme]

    @property
    def other(self) -> "Replica":
        return Replica.gcp if self is Replica.aws else Replica.aws


REPLICAS = tuple(r.value for r in Replica)
SCHEMES = tuple(r.scheme for r in Replica)  # of the replicas' object URLs: s3://, gs://


def normalize_uuid(value: str) -> str:
    """Lower-cased canonical text form; raises ``InvalidParameter`` (400 illegal_uuid) otherwise.
    Nothing around it is tolerated (no blanks, no trailing newline): the API description's pattern
    says exactly this."""
    candidate = str(value).lower()
    if not _UUID_RE.fullmatch(candidate):
        raise InvalidParameter(f"`{value}` is not a valid RFC 4122 uuid", code="illegal_uuid")
    return candidate


def is_uuid(value: str) -> bool:
    return bool(_UUID_RE.fullmatch(str(value).lower()))


def parse_version(value: str) -> datetime.datetime:
    try:
        parsed = datetime.datetime.strptime(value, VERSION_FORMAT)
    except (TypeError, ValueError):
        raise InvalidParameter(f"`{value}` is not a DSS version ({VERSION_FORMAT})",
                               code="illegal_version") from None
    if parsed.strftime(VERSION_FORMAT) != value:
        raise InvalidParameter(f"`{value}` is not a DSS version ({VERSION_FORMAT})", code="illegal_version")
    if parsed.year < FIRST_VERSION_YEAR:
        raise InvalidParameter(f"`{value}` is before {FIRST_VERSION_YEAR}: no DSS version is", code="illegal_version")
    return parsed.replace(tzinfo=datetime.timezone.utc)


def normalize_version(value: str) -> str:
    parse_version(value)
    return value


def is_version(value: str) -> bool:
    try:
        parse_version(value)
    except InvalidParameter:
        return False
    return True


def new_version(now: datetime.datetime | None = None) -> str:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.astimezone(datetime.timezone.utc).strftime(VERSION_FORMAT)


def fqid(uuid: str, version: str) -> str:
    return f"{uuid}.{version}"


def split_fqid(value: str) -> tuple[str, str | None]:
    """`{uuid}.{version}` or a bare uuid -> (uuid, version or None)."""
    uuid, _, version = value.partition(".")
    return normalize_uuid(uuid), (normalize_version(version) if version else None)


class Keys:
    """Keys of the main bucket; identical in both replicas (see docs/architecture.md)."""

    @staticmethod
    def blob(sha256: str, sha1: str, s3_etag: str, crc32c: str) -> str:
        return f"blobs/{sha256}.{sha1}.{s3_etag}.{crc32c}"

    @staticmethod
    def file(uuid: str, version: str) -> str:
        return f"files/{uuid}.{version}"

    @staticmethod
    def file_prefix(uuid: str) -> str:
        return f"files/{uuid}."

    @staticmethod
    def bundle(uuid: str, version: str) -> str:
        return f"bundles/{uuid}.{version}"

    @staticmethod
    def bundle_prefix(uuid: str = "") -> str:
        return f"bundles/{uuid}." if uuid else "bundles/"

    @staticmethod
    def bundle_tombstone(uuid: str, version: str | None = None) -> str:
        return f"bundles/{uuid}.{version}.{TOMBSTONE_SUFFIX}" if version else f"bundles/{uuid}.{TOMBSTONE_SUFFIX}"

    @staticmethod
    def collection(uuid: str, version: str) -> str:
        return f"collections/{uuid}.{version}"

    @staticmethod
    def collection_prefix(uuid: str = "") -> str:
        return f"collections/{uuid}." if uuid else "collections/"

    @staticmethod
    def collection_tombstone(uuid: str) -> str:
        return f"collections/{uuid}.{TOMBSTONE_SUFFIX}"


def is_email_address(value) -> bool:
    """Whether ``value`` is one plain e-mail address (``user@example.org``)."""
    return (isinstance(value, str) and len(value) <= MAX_EMAIL_ADDRESS_LENGTH
            and _EMAIL_ADDRESS.fullmatch(value) is not None)


def new_uuid() -> str:
    return str(uuid_module.uuid4())


def bundle_url(base_url: str, uuid: str, version: str, replica: str) -> str:
    """The API URL of one bundle version, as search results and notifications name it
    (``base_url``: where clients reach the gateway, without the ``/v1``)."""
    return f"{base_url.rstrip('/')}/v1/bundles/{uuid}?version={version}&replica={replica}"
