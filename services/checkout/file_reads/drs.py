"""GA4GH Data Repository Service (DRS) 1.4 documents of the store's files and bundles.

Object ids: DRS wants one id to name one content for good, and a DSS uuid names the latest version
of a file or bundle; so the ``id`` of every object served is ``{uuid}.{version}`` (both made of
the characters DRS ids allow), and a request may name an object either way: a bare uuid (plus the
``version`` parameter, else the latest) or ``{uuid}.{version}``. A uuid is looked up as a file
first, then as a bundle (a uuid names one or the other in practice).

Access: a file has one access method per replica holding it (``s3`` for ``aws``, ``gs`` for
``gcp``), each with an ``access_id`` ``{replica}.{version}`` for the ``/access`` endpoint, and an
``access_url`` as well when a fresh copy in that replica's checkout bucket is already there.
Bundles have contents and no access methods (the spec makes them optional for bundles).

Bundle contents: a DSS bundle file name is a relative path (``dir/sub/x.json``), and a DRS
``ContentsObject`` name must match ``^[A-Za-z0-9._-]+$``; so each name is split at ``/`` and every
directory becomes a ContentsObject of its own with a ``name`` and ``contents`` (no ``id``: it is
not a DRS object), its files ContentsObjects with ``name``, ``id`` and ``drs_uri``. Siblings are
sorted by name. DRS wants names unique within their bundle, and ``a`` and ``a/b`` may both be files:
such a directory is named with an escaped ``/`` after it (``a_2F``, see below), a name no segment
can have.
Directories are part of the bundle itself, not nested bundles, so the whole tree is served whether
or not ``expand`` is asked for. A segment's characters outside that pattern are escaped like
percent-encoding with ``_`` in place of ``%`` (which the pattern forbids): ``_`` and two uppercase
hex digits per UTF-8 byte, so ``my file.json`` is ``my_20file.json``. An ``_`` stays as it is unless
two uppercase hex digits follow it (``run_2024``), then it is escaped too (``run_5F2024``), which
keeps the rule reversible; and a segment ``.`` or ``..`` (which the bundles service refuses anyway)
has its dots escaped so no client walks out of the bundle's directory.

Checksums: a file lists its four, with the names DRS asks for (``sha-256`` from the IANA registry;
``sha1``, ``crc32c`` and ``etag`` as the spec names non-IANA ones). A bundle's is the ``sha-256``
the spec defines for bundles: the SHA-256 of the concatenated, sorted hex SHA-256 checksums of its
files.
"""
from __future__ import annotations

import hashlib
import string
import urllib.parse

from shared.exceptions import InvalidParameter, NotFound
from shared.identifiers import REPLICAS, fqid, is_uuid, is_version, normalize_uuid, parse_version

DRS_SPEC_VERSION = "1.4.0"
SERVICE_ID = "org.humancellatlas.dss"
SERVICE_NAME = "Human Cell Atlas Data Storage System"
ORGANIZATION = {"name": "Human Cell Atlas", "url": "https://www.humancellatlas.org"}
# The bulk endpoints (POST /objects, POST /objects/access) are not served: one object per request.
MAX_BULK_REQUEST_LENGTH = 1
ACCESS_TYPES = {"aws": "s3", "gcp": "gs"}
# DSS checksum names (as stored) -> DRS checksum types.
CHECKSUM_TYPES = (("sha256", "sha-256"), ("sha1", "sha1"), ("crc32c", "crc32c"), ("s3-etag", "etag"))
# What DRS allows in a ContentsObject name, and the escape character of the rest.
CONTENTS_NAME_CHARACTERS = frozenset(string.ascii_letters + string.digits + "._-")
NAME_ESCAPE = "_"
UPPER_HEX_DIGITS = frozenset("0123456789ABCDEF")


# --- ids ---------------------------------------------------------------------------------------------

def parse_object_id(object_id: str, version: str | None = None) -> tuple[str, str | None]:
    """(uuid, version or None) of a DRS object id ``{uuid}`` or ``{uuid}.{version}``; a version in
    the id and another in the ``version`` parameter is a 400 ``illegal_object_id``."""
    uuid, dot, pinned = object_id.partition(".")
    if not is_uuid(uuid) or (dot and not is_version(pinned)):
        raise InvalidParameter(f"`{object_id[:120]}` is not a DRS object id of this service "
                               "(`{uuid}` or `{uuid}.{version}`)", "illegal_object_id")
    if pinned and version and pinned != version:
        raise InvalidParameter("the object id names another version than the `version` parameter",
                               "illegal_object_id")
    return normalize_uuid(uuid), pinned or version


def access_id(replica: str, version: str) -> str:
    return f"{replica}.{version}"


def parse_access_id(value: str) -> tuple[str, str]:
    """(replica, version) of an access id; ``NotFound`` for one this service never hands out (DRS
    answers an unknown access id with 404)."""
    replica, _, version = value.partition(".")
    if replica not in REPLICAS or not is_version(version):
        raise NotFound(f"no access method `{value[:120]}`", "not_found")
    return replica, version


def host_of(base_url: str) -> str:
    """The ``host[:port]`` DRS URIs of this service name (hostname-based DRS URIs)."""
    return urllib.parse.urlsplit(base_url).netloc


def drs_uri(host: str, object_id: str) -> str:
    return f"drs://{host}/{object_id}"


def rfc3339_of_version(version: str) -> str:
    """A DSS version (``2024-01-02T030405.123456Z``) as RFC 3339 (``2024-01-02T03:04:05.123456Z``)."""
    return parse_version(version).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- documents ---------------------------------------------------------------------------------------

def service_info(base_url: str, service_version: str) -> dict:
    """The GA4GH service-info document of this DRS service (the Service schema plus DRS's own)."""
    base = base_url.rstrip("/")
    return {
        "id": SERVICE_ID,
        "name": SERVICE_NAME,
        "type": {"group": "org.ga4gh", "artifact": "drs", "version": DRS_SPEC_VERSION},
        "description": "File bytes of the Human Cell Atlas Data Storage System, served from each replica's "
                       "checkout bucket through signed URLs; bundles as DRS bundles of their files.",
        "organization": dict(ORGANIZATION),
        "documentationUrl": f"{base}/v1/swagger.json",
        "version": service_version,
        "maxBulkRequestLength": MAX_BULK_REQUEST_LENGTH,
    }


def file_checksums(metadata: dict) -> list[dict]:
    return [{"type": drs_type, "checksum": metadata[name]} for name, drs_type in CHECKSUM_TYPES]


def access_method(replica: str, version: str, region: str | None = None, url: str | None = None) -> dict:
    method = {"type": ACCESS_TYPES[replica], "access_id": access_id(replica, version)}
    if region:
        method["region"] = region
    if url:
        method["access_url"] = {"url": url}
    return method


def file_object(metadata: dict, host: str, access_methods: list[dict]) -> dict:
    """The DRS object of a file version (``metadata`` as ``files.head_file`` returns it)."""
    object_id = fqid(metadata["uuid"], metadata["version"])
    moment = rfc3339_of_version(metadata["version"])
    return {
        "id": object_id,
        "self_uri": drs_uri(host, object_id),
        "size": int(metadata["size"]),
        "created_time": moment,
        "updated_time": moment,  # a version never changes
        "version": metadata["version"],
        "mime_type": metadata["content-type"],
        "checksums": file_checksums(metadata),
        "access_methods": access_methods,
        "aliases": [metadata["uuid"]],
    }


def bundle_checksum(files: list[dict]) -> str:
    """SHA-256 over the sorted hex SHA-256 checksums of the bundle's files, concatenated (the DRS
    rule for bundles, with SHA-256 as the checksum)."""
    return hashlib.sha256("".join(sorted(entry["sha256"] for entry in files)).encode("ascii")).hexdigest()


def _escaped(char: str) -> str:
    # surrogatepass: a JSON manifest may hold a lone surrogate, and it still needs a name.
    return "".join(f"{NAME_ESCAPE}{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def contents_name(segment: str) -> str:
    """One path segment of a bundle file name as a DRS ContentsObject name (the rule is in the
    module docstring)."""
    if segment in (".", ".."):
        return "".join(map(_escaped, segment))
    encoded = []
    for position, char in enumerate(segment):
        following = segment[position + 1:position + 3]
        reads_as_escape = char == NAME_ESCAPE and len(following) == 2 and set(following) <= UPPER_HEX_DIGITS
        encoded.append(char if char in CONTENTS_NAME_CHARACTERS and not reads_as_escape else _escaped(char))
    return "".join(encoded)


def bundle_contents(files: list[dict], host: str) -> list[dict]:
    """The ContentsObject tree of a bundle's files: a directory per path segment."""
    root: dict = {"files": [], "directories": {}}
    for entry in files:
        # Empty segments cannot be named in DRS (and the bundles service refuses them); a name
        # made of nothing else falls back to the file's uuid rather than losing the file.
        segments = [contents_name(segment) for segment in entry["name"].split("/") if segment]
        if not segments:
            segments = [entry["uuid"]]
        node = root
        for directory in segments[:-1]:
            node = node["directories"].setdefault(directory, {"files": [], "directories": {}})
        object_id = fqid(entry["uuid"], entry["version"])
        node["files"].append({"name": segments[-1], "id": object_id, "drs_uri": [drs_uri(host, object_id)]})
    return _rendered(root)


def _rendered(node: dict) -> list[dict]:
    file_names = {item["name"] for item in node["files"]}
    directories = [{"name": name + _escaped("/") if name in file_names else name, "contents": _rendered(child)}
                   for name, child in node["directories"].items()]
    # The id only orders files of one name, which only names the bundles service refuses can give.
    return sorted(node["files"] + directories, key=lambda item: (item["name"], item.get("id", "")))


def bundle_object(uuid: str, version: str, manifest: dict, host: str) -> dict:
    """The DRS bundle object of a bundle version: its files as a tree of contents (see the module
    docstring; ``expand`` changes nothing)."""
    object_id = fqid(uuid, version)
    moment = rfc3339_of_version(version)
    files = manifest["files"]
    return {
        "id": object_id,
        "self_uri": drs_uri(host, object_id),
        "size": sum(int(entry["size"]) for entry in files),
        "created_time": moment,
        "updated_time": moment,
        "version": version,
        "checksums": [{"type": "sha-256", "checksum": bundle_checksum(files)}],
        "contents": bundle_contents(files, host),
        "aliases": [uuid],
    }
