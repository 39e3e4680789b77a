"""The rules of file checkout, free of any storage: what a blob to check out is, when a copy in a
checkout bucket may be served, refreshed or swept, the token a client comes back with, and the
per-process caches that keep repeat reads cheap.

A blob's checkout copy lives under the blob's own key in the replica's checkout bucket
(``blobs/{sha256}.{sha1}.{s3_etag}.{crc32c}``): content-addressed, so one copy serves every file
version with those bytes. It carries the time it was made in its metadata (``dss-checked-out``,
RFC 3339 UTC), written only by copies that are verified (``shared.copies``, or bytes read and
checked before they were written); a copy without it is never served. Readers judge a copy from one
stat: its size and, when the metadata can tell (GCS CRC32C, a single-part S3 ETag), its bytes.

Copies carry the checkout's metadata only (``copy_metadata``), never their source's, and a time
later than now (beyond a clock skew) is not trusted: no reader serves such a copy and the sweeper
deletes it, so metadata written by anyone else cannot keep a copy alive.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import enum
import json
import re

from marshmallow import ValidationError

from shared.blobstore import BlobInfo
from shared.checksums import Checksums
from shared.exceptions import InvalidParameter, Unprocessable
from shared.identifiers import is_uuid, is_version
from shared.verdicts import blob_verdict

from services.checkout.schemas import TokenFields

DAY = 86400.0
CHECKED_OUT_METADATA = "dss-checked-out"  # when the verified copy was made (RFC 3339 UTC)
COPY_PREFIX = "blobs/"
JSON_MEDIA_TYPE = "application/json"
MAX_TOKEN_CHARS = 1024
TOKEN_MAX_AGE = 30 * DAY   # a client polls for minutes, not for a month
TOKEN_CLOCK_SKEW = 300.0   # a token may come from a process whose clock runs this much ahead
STAMP_CLOCK_SKEW = 300.0   # a copy may be stamped by a process whose clock runs this much ahead
_BLOB_KEY = re.compile(r"^blobs/([^./]+)\.([^./]+)\.([^./]+)\.([^./]+)$")
_TOKEN_ALPHABET = re.compile(r"^[A-Za-z0-9_-]+$")


def illegal_token(detail: str) -> InvalidParameter:
    return InvalidParameter(f"the token is not one this service issued for this request: {detail}", "illegal_token")


def rfc3339(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str | None) -> float | None:
    """Epoch seconds of an RFC 3339 time, or None if ``text`` is not one."""
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


# --- what is checked out ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Blob:
    """A blob of the main bucket as its checkout needs it: key, checksums, size, content type."""
    key: str
    checksums: Checksums
    size: int
    content_type: str

    @classmethod
    def of_file(cls, metadata: dict) -> "Blob":
        """The blob of a file metadata document (``files/{uuid}.{version}``)."""
        checksums = Checksums.from_stored(metadata)
        return cls(checksums.blob_key(), checksums, int(metadata["size"]), metadata["content-type"])

    @classmethod
    def from_key(cls, key: str, size: int, content_type: str) -> "Blob":
        """The blob under ``key``; ``Unprocessable`` (``invalid_blob_key``) if it is no blob key."""
        match = _BLOB_KEY.match(key)
        if not match:
            raise Unprocessable(f"`{key[:200]}` is not a blob key", "invalid_blob_key")
        checksums = Checksums.parse(dict(zip(("sha256", "sha1", "s3_etag", "crc32c"), match.groups())))
        if checksums.blob_key() != key:  # upper-case hex, say: not the key the files service writes
            raise Unprocessable(f"`{key[:200]}` is not a blob key", "invalid_blob_key")
        return cls(key, checksums, size, content_type)


def file_version_of_key(key: str) -> tuple[str, str] | None:
    """(uuid, version) of a file metadata key ``files/{uuid}.{version}``; None for any other key."""
    if not key.startswith("files/"):
        return None
    uuid, _, version = key[len("files/"):].partition(".")
    return (uuid, version) if is_uuid(uuid) and is_version(version) else None


def is_small_json(content_type: str | None, size: int, limit: int) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == JSON_MEDIA_TYPE and size <= limit


def checked_out_at(info: BlobInfo) -> float | None:
    """When a checkout copy was made and verified, from its metadata; None if it does not say."""
    return parse_rfc3339(info.metadata.get(CHECKED_OUT_METADATA))


def stamped_in_the_future(made: float, now: float) -> bool:
    """A checkout time no process of the store wrote: later than now, beyond any clock skew."""
    return made > now + STAMP_CLOCK_SKEW


def copy_metadata(now: float) -> dict[str, str]:
    return {CHECKED_OUT_METADATA: rfc3339(now)}


# --- when a copy may be served ---------------------------------------------------------------------

class CopyState(enum.Enum):
    FRESH = "fresh"          # serve it
    DUE = "due"              # serve it, and refresh it: it is near the end of its life
    MISSING = "missing"      # absent, expired, unverified or of other bytes: copy it (again)


@dataclasses.dataclass(frozen=True)
class Verdict:
    state: CopyState
    # Epoch seconds from which a FRESH copy is DUE; None for a copy that never expires.
    refresh_at: float | None = None
    why: str = ""

    @property
    def servable(self) -> bool:
        return self.state is not CopyState.MISSING


FRESH_FOR_GOOD = Verdict(CopyState.FRESH, None, "kept")


@dataclasses.dataclass(frozen=True)
class Lifetime:
    """How long checkout copies live: ``expiry`` seconds after they were made, refreshed when read in
    the last ``refresh_margin`` seconds; JSON up to ``keep_json_bytes`` never expires."""
    expiry: float
    refresh_margin: float
    keep_json_bytes: int

    @classmethod
    def from_settings(cls, settings) -> "Lifetime":
        return cls(settings.checkout_expiry_days * DAY, settings.checkout_refresh_days * DAY,
                   settings.checkout_keep_json_bytes)

    def kept(self, content_type: str | None, size: int) -> bool:
        return is_small_json(content_type, size, self.keep_json_bytes)

    def judge(self, info: BlobInfo | None, blob: Blob, now: float) -> Verdict:
        """What a reader may do with the copy ``info`` describes (None: there is none)."""
        if info is None:
            return Verdict(CopyState.MISSING, why="absent")
        if info.size != blob.size or blob_verdict(info, blob.checksums) is False:
            return Verdict(CopyState.MISSING, why="other bytes")
        made = checked_out_at(info)
        if made is None:
            return Verdict(CopyState.MISSING, why="not verified")
        if stamped_in_the_future(made, now):
            return Verdict(CopyState.MISSING, why="stamped in the future")
        if self.kept(info.content_type, info.size):
            return FRESH_FOR_GOOD
        expires_at = made + self.expiry
        if now >= expires_at:
            return Verdict(CopyState.MISSING, why="expired")
        refresh_at = expires_at - self.refresh_margin
        if now >= refresh_at:
            return Verdict(CopyState.DUE, refresh_at, "near its expiry")
        return Verdict(CopyState.FRESH, refresh_at)

    def new_copy(self, blob: Blob, now: float) -> Verdict:
        """The verdict on a copy of ``blob`` made and verified at ``now``."""
        if self.kept(blob.content_type, blob.size):
            return FRESH_FOR_GOOD
        return Verdict(CopyState.FRESH, now + self.expiry - self.refresh_margin, "just made")

    def expired(self, info: BlobInfo, now: float) -> bool:
        """Whether the sweeper deletes this copy. One without the checkout time (not made by this
        service) counts from its last modification; one with neither is left alone; one stamped in
        the future was not stamped by this service and is deleted."""
        made = checked_out_at(info)
        if made is not None and stamped_in_the_future(made, now):
            return True
        if self.kept(info.content_type, info.size):
            return False
        if made is None and info.last_modified is not None:
            made = info.last_modified.timestamp()
        return made is not None and now >= made + self.expiry


# --- the token of a client waiting for a copy -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CheckoutToken:
    """What a client told to come back (301) brings back: the file version it asked for, so that
    every round serves the same version even when a newer one appears meanwhile, how many rounds
    it has made and when it started waiting. base64url of a JSON object, no padding. It grants
    nothing: a made-up token can at most ask for a copy that a plain GET would ask for too."""
    replica: str
    uuid: str
    version: str
    attempt: int
    started: int  # epoch seconds

    @classmethod
    def first(cls, replica: str, uuid: str, version: str, now: float) -> "CheckoutToken":
        return cls(replica, uuid, version, 1, int(now))

    def next(self) -> "CheckoutToken":
        return dataclasses.replace(self, attempt=self.attempt + 1)

    def waited(self, now: float) -> float:
        return max(0.0, now - self.started)

    def encode(self) -> str:
        data = json.dumps(dataclasses.asdict(self), separators=(",", ":"), sort_keys=True).encode()
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, text: str, now: float) -> "CheckoutToken":
        """The token ``text`` stands for; ``InvalidParameter`` ``illegal_token`` (400) for anything
        else: wrong alphabet or length, not JSON, unknown or missing fields, values out of range."""
        if not isinstance(text, str) or not 0 < len(text) <= MAX_TOKEN_CHARS or not _TOKEN_ALPHABET.match(text):
            raise illegal_token("not base64url")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            fields = json.loads(raw.decode("utf-8"))
        except (binascii.Error, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise illegal_token("not an encoded JSON object") from None
        if not isinstance(fields, dict):
            raise illegal_token("not an encoded JSON object")
        try:
            loaded = TokenFields().load(fields)
        except ValidationError as error:
            raise illegal_token(f"fields {sorted(error.messages)}") from None
        if not now - TOKEN_MAX_AGE <= loaded["started"] <= now + TOKEN_CLOCK_SKEW:
            raise illegal_token("expired or from the future")
        return cls(**loaded)

    def check_request(self, replica: str, uuid: str, version: str | None) -> None:
        """A token serves only the request it was issued for (the version the request may omit)."""
        if (replica, uuid) != (self.replica, self.uuid) or version not in (None, self.version):
            raise illegal_token("issued for another file, version or replica")


# --- per-process state shared by the workers ----------------------------------------------------------

