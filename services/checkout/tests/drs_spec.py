"""The GA4GH DRS 1.4 response shapes the store serves, as JSON Schemas written from the published
specification's field lists (``DrsObject``, ``AccessMethod``, ``AccessURL``, ``Checksum``,
``ContentsObject``, ``Error``, and service-info: the GA4GH ``Service`` plus DRS's
``DrsService``), for the tests to run every DRS answer through. ``assert_valid(kind, document)``
fails with every violation listed.

Beyond field presence and types, they check what the spec says in prose: checksum types from the
IANA Named Information registry or the non-IANA names the spec lists, times in RFC 3339, an access
method with an ``access_url`` or an ``access_id``, ``drs://`` self URIs, at least one checksum,
(for a single blob) at least one access method, ContentsObject names of the portable filename
characters ``[A-Za-z0-9._-]`` and unique among their siblings, and ``format: uri`` fields that are
absolute RFC 3986 URIs (jsonschema checks that format only with a package not installed here, so
``is_uri`` is ours). The spec's ``Error`` lists ``msg`` and ``status_code`` without requiring them;
this service always sends both, so the schema requires them.
"""
from __future__ import annotations

import re
import urllib.parse

import jsonschema

# IANA "Named Information Hash Algorithm Registry" names, and the non-IANA types the DRS spec
# names for checksums storage providers compute.
IANA_HASH_NAMES = ("sha-256", "sha-256-128", "sha-256-120", "sha-256-96", "sha-256-64", "sha-256-32",
                   "sha-384", "sha-512", "sha3-224", "sha3-256", "sha3-384", "sha3-512", "blake2s-256",
                   "blake2b-256", "blake2b-512", "k12-256", "k12-512")
NON_IANA_CHECKSUM_TYPES = ("md5", "etag", "crc32c", "trunc512", "sha1")
ACCESS_METHOD_TYPES = ("s3", "gs", "ftp", "gsiftp", "globus", "htsget", "https", "file")

DATE_TIME = {"type": "string", "format": "date-time"}
URI = {"type": "string", "format": "uri"}
CONTENTS_NAME_PATTERN = r"^[A-Za-z0-9._-]+$"

URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# Characters RFC 3986 never allows in a URI, not even in a query (beside controls, space and non-ASCII).
URI_FORBIDDEN = set('<>"{}|\\^`')
BAD_PERCENT_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def is_uri(value) -> bool:
    """An absolute RFC 3986 URI: a scheme, no character a URI cannot hold, well-formed ``%`` escapes,
    a parsable authority, and for http(s) a host."""
    if not isinstance(value, str):  # formats constrain strings only; the type keyword checks the rest
        return True
    if any(ord(char) <= 0x20 or ord(char) >= 0x7F or char in URI_FORBIDDEN for char in value):
        return False
    if BAD_PERCENT_ESCAPE.search(value):
        return False
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # raises on a port that is not a number in range
    except ValueError:
        return False
    if ":" not in value or not URI_SCHEME.fullmatch(value.split(":", 1)[0]):
        return False
    return parts.scheme not in ("http", "https") or bool(parts.hostname)


FORMAT_CHECKER = jsonschema.FormatChecker()
FORMAT_CHECKER.checks("uri")(is_uri)

CHECKSUM = {
    "type": "object",
    "required": ["checksum", "type"],
    "properties": {
        "checksum": {"type": "string", "minLength": 1},
        "type": {"type": "string", "enum": list(IANA_HASH_NAMES + NON_IANA_CHECKSUM_TYPES)},
    },
}

ACCESS_URL = {
    "type": "object",
    "required": ["url"],
    "properties": {
        "url": URI,
        "headers": {"type": "array", "items": {"type": "string"}},
    },
}

AUTHORIZATIONS = {
    "type": "object",
    "properties": {
        "drs_object_id": {"type": "string"},
        "supported_types": {"type": "array", "items": {"type": "string", "enum": [
            "None", "BasicAuth", "BearerAuth", "PassportAuth"]}},
        "passport_auth_issuers": {"type": "array", "items": {"type": "string"}},
        "bearer_auth_issuers": {"type": "array", "items": {"type": "string"}},
    },
}

ACCESS_METHOD = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "enum": list(ACCESS_METHOD_TYPES)},
        "access_url": ACCESS_URL,
        "access_id": {"type": "string", "minLength": 1},
        "region": {"type": "string"},
        "authorizations": AUTHORIZATIONS,
    },
    "anyOf": [{"required": ["access_url"]}, {"required": ["access_id"]}],
}

CONTENTS_OBJECT = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": CONTENTS_NAME_PATTERN},
        "id": {"type": "string"},
        "drs_uri": {"type": "array", "items": {**URI, "pattern": "^drs://"}},
        "contents": {"type": "array", "items": {"$ref": "#/$defs/contents_object"}},
    },
}

DRS_OBJECT = {
    "type": "object",
    "required": ["id", "self_uri", "size", "created_time", "checksums"],
    "properties": {
        "id": {"type": "string", "pattern": r"^[A-Za-z0-9._~-]+$"},
        "name": {"type": "string"},
        "self_uri": {"type": "string", "pattern": r"^drs://[^/]+/[A-Za-z0-9._~-]+$"},
        "size": {"type": "integer", "minimum": 0},
        "created_time": DATE_TIME,
        "updated_time": DATE_TIME,
        "version": {"type": "string"},
        "mime_type": {"type": "string"},
        "checksums": {"type": "array", "minItems": 1, "items": CHECKSUM},
        "access_methods": {"type": "array", "minItems": 1, "items": ACCESS_METHOD},
        "contents": {"type": "array", "items": {"$ref": "#/$defs/contents_object"}},
        "description": {"type": "string"},
        "aliases": {"type": "array", "items": {"type": "string"}},
    },
    # "access_methods: required for single blobs; optional for bundles" (a bundle has contents).
    "if": {"not": {"required": ["contents"]}},
    "then": {"required": ["access_methods"]},
    "$defs": {"contents_object": CONTENTS_OBJECT},
}

SERVICE_INFO = {
    "type": "object",
    "required": ["id", "name", "type", "organization", "version", "maxBulkRequestLength"],
    "properties": {
        "id": {"type": "string", "minLength": 1},
        "name": {"type": "string", "minLength": 1},
        "type": {
            "type": "object",
            "required": ["group", "artifact", "version"],
            "properties": {
                "group": {"type": "string", "const": "org.ga4gh"},
                "artifact": {"type": "string", "const": "drs"},
                "version": {"type": "string", "pattern": r"^1\.4\.\d+$"},
            },
        },
        "description": {"type": "string"},
        "organization": {
            "type": "object",
            "required": ["name", "url"],
            "properties": {"name": {"type": "string"}, "url": URI},
        },
        "contactUrl": URI,
        "documentationUrl": URI,
        "createdAt": DATE_TIME,
        "updatedAt": DATE_TIME,
        "environment": {"type": "string"},
        "version": {"type": "string", "minLength": 1},
        "maxBulkRequestLength": {"type": "integer", "minimum": 1},
    },
}

ERROR = {
    "type": "object",
    "required": ["msg", "status_code"],
    "properties": {"msg": {"type": "string", "minLength": 1},
                   "status_code": {"type": "integer", "minimum": 400, "maximum": 599}},
}

SCHEMAS = {"object": DRS_OBJECT, "access_url": ACCESS_URL, "service_info": SERVICE_INFO, "error": ERROR,
           "access_method": ACCESS_METHOD, "checksum": CHECKSUM}


def repeated_contents_names(contents, path="contents") -> list[str]:
    """"The name must be unique within the containing bundle": no JSON Schema keyword says that."""
    if not isinstance(contents, list):
        return []
    found, seen = [], set()
    for position, item in enumerate(contents):
        if not isinstance(item, dict):
            continue
        name = item.get("name")
        if name in seen:
            found.append(f"{path}/{position}/name: {name!r} is not unique among its siblings")
        seen.add(name)
        found += repeated_contents_names(item.get("contents"), f"{path}/{position}/contents")
    return found


def violations(kind: str, document) -> list[str]:
    """Every way ``document`` breaks the ``kind`` schema (empty: valid)."""
    validator = jsonschema.Draft202012Validator(SCHEMAS[kind], format_checker=FORMAT_CHECKER)
    found = [f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
             for error in validator.iter_errors(document)]
    if kind == "object" and isinstance(document, dict):
        found += repeated_contents_names(document.get("contents"))
    return found


def assert_valid(kind: str, document) -> None:
    found = violations(kind, document)
    assert not found, f"not a valid DRS 1.4 {kind}:\n" + "\n".join(found)
