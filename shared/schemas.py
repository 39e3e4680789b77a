"""Marshmallow schemas of what crosses the bus or is stored: metadata documents and event payloads;
the fields every service validates with (replicas, uuids, versions); and ``load_arguments``, the
one way a marshmallow refusal becomes a 400 (RPC arguments, the gateway's query strings and bodies).

HTTP parameter and body schemas live with the gateway (``services/gateway/schemas.py``); these
describe the store's own documents (see docs/architecture.md, "Storage layout") and the facts
services dispatch ("Events").
"""
from __future__ import annotations

import functools
from typing import Any, Iterator, Mapping

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from shared.exceptions import InvalidParameter
from shared.identifiers import REPLICAS, normalize_uuid, normalize_version

FILE_FORMAT = "0.0.1"
BUNDLE_FORMAT = "0.0.1"

# Subscriptions: the gateway checks the shape of a PUT /subscriptions body by these, the notifier
# checks and keeps its substance by them.
JMESPATH, ELASTICSEARCH = "jmespath", "elasticsearch"
SUBSCRIPTION_TYPES = (JMESPATH, ELASTICSEARCH)
WEBHOOK_METHODS = ("POST", "PUT")
WEBHOOK_ENCODINGS = ("application/json", "multipart/form-data")
DEFAULT_WEBHOOK_METHOD, DEFAULT_WEBHOOK_ENCODING = WEBHOOK_METHODS[0], WEBHOOK_ENCODINGS[0]
MAX_CALLBACK_URL_LENGTH = 2048
MAX_JMESPATH_LENGTH = 4096  # of a query or an attachment's expression

# The code of a refusal no field names a better one for: ``illegal_arguments``.
_GENERIC_CODE = InvalidParameter.code
_MAX_SHOWN_ERRORS = 5
# How a title names what was refused, by ``load_arguments``'s ``where``.
_UNKNOWN = {"query": "unknown query parameter(s)", "body": "unknown field(s) in the request body",
            "arguments": "unknown argument(s)"}
_INVALID = {"query": "invalid query parameter", "body": "invalid request body", "arguments": "invalid arguments"}


class ReplicaField(fields.String):
    """A replica name (``shared.identifiers.REPLICAS``); required unless told otherwise."""
    error_code = "unknown_replica"

    def __init__(self, **kwargs):
        kwargs.setdefault("required", True)
        super().__init__(validate=validate.OneOf(REPLICAS, error="must be one of {choices}"), **kwargs)


class UuidField(fields.String):
    """A uuid, lower-cased. ``error_code`` names the problem when the gateway reports it."""
    error_code = "illegal_uuid"

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return normalize_uuid(super()._deserialize(value, attr, data, **kwargs))
        except InvalidParameter as error:
            raise ValidationError(error.title) from None


class VersionField(fields.String):
    """A DSS version (`YYYY-MM-DDTHHMMSS.ffffffZ`)."""
    error_code = "illegal_version"

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return normalize_version(super()._deserialize(value, attr, data, **kwargs))
        except InvalidParameter as error:
            raise ValidationError(error.title) from None


class StoredChecksums(Schema):
    sha256 = fields.String(required=True)
    sha1 = fields.String(required=True)
    s3_etag = fields.String(required=True, data_key="s3-etag")
    crc32c = fields.String(required=True)


class FileMetadata(StoredChecksums):
    """`files/{uuid}.{version}`."""
    format = fields.String(load_default=FILE_FORMAT, dump_default=FILE_FORMAT)
    creator_uid = fields.Integer(required=True)
    version = fields.String(required=True)
    content_type = fields.String(required=True, data_key="content-type")
    size = fields.Integer(required=True)


class ManifestFile(StoredChecksums):
    name = fields.String(required=True)
    uuid = fields.String(required=True)
    version = fields.String(required=True)
    content_type = fields.String(required=True, data_key="content-type")
    size = fields.Integer(required=True)
    indexed = fields.Boolean(required=True)


class BundleManifest(Schema):
    """`bundles/{uuid}.{version}`."""
    format = fields.String(load_default=BUNDLE_FORMAT, dump_default=BUNDLE_FORMAT)
    version = fields.String(required=True)
    creator_uid = fields.Integer(required=True)
    files = fields.List(fields.Nested(ManifestFile), required=True)


class Tombstone(Schema):
    """`bundles/{uuid}[.{version}].dead` and `collections/{uuid}.dead`."""
    email = fields.String(required=True)
    reason = fields.String(required=True)
    details = fields.Raw(load_default=None, allow_none=True)
    admin_deleted = fields.Boolean(load_default=True)


class CollectionItem(Schema):
    """One entry of a collection's ``contents``; an unknown ``type`` resolves as a file."""

    class Meta:
        unknown = EXCLUDE

    type = fields.String(required=True, validate=validate.Length(min=1))
    uuid = UuidField(required=True)
    version = VersionField(required=True)
    path = fields.String()
    fragment = fields.String()


class CollectionDocument(Schema):
    """`collections/{uuid}.{version}`."""
    name = fields.String(required=True)
    description = fields.String(load_default=None, allow_none=True)
    details = fields.Raw(load_default=None, allow_none=True)
    contents = fields.List(fields.Nested(CollectionItem), required=True)
    owner = fields.String(required=True)


class ChecksumsPayload(Schema):
    sha256 = fields.String(required=True)
    sha1 = fields.String(required=True)
    s3_etag = fields.String(required=True)
    crc32c = fields.String(required=True)


# --- event payloads (names in shared/events.py) -----------------------------------------------

class FileUploadAccepted(Schema):
    uuid = fields.String(required=True)
    version = fields.String(required=True)
    source_url = fields.String(required=True)
    creator_uid = fields.Integer(required=True)
    task_id = fields.String(required=True)
    checksums = fields.Nested(ChecksumsPayload, required=True)


class FileCreated(Schema):
    replica = ReplicaField()
    uuid = fields.String(required=True)
    version = fields.String(required=True)
    key = fields.String(required=True)
    blob_key = fields.String(required=True)
    size = fields.Integer(required=True)
    content_type = fields.String(required=True)
    # The document stored under ``key`` (it never changes), so that a consumer need not read it
    # back; absent from events of older producers.
    metadata = fields.Dict(keys=fields.String(), allow_none=True, load_default=None)


class BundleCreated(Schema):
    replica = ReplicaField()
    uuid = fields.String(required=True)
    version = fields.String(required=True)
    key = fields.String(required=True)
    file_count = fields.Integer(required=True)


class BundleTombstoned(Schema):
    replica = ReplicaField()
    uuid = fields.String(required=True)
    version = fields.String(allow_none=True, load_default=None)
    key = fields.String(required=True)
    reason = fields.String(required=True)


class CollectionCreated(Schema):
    replica = ReplicaField()
    uuid = fields.String(required=True)
    version = fields.String(required=True)
    key = fields.String(required=True)
    owner = fields.String(required=True)


class CollectionTombstoned(Schema):
    replica = ReplicaField()
    uuid = fields.String(required=True)
    key = fields.String(required=True)
    owner = fields.String(required=True)


class ObjectChanged(Schema):
    """A change in a main bucket, normalised from an S3 (SQS) or GCS (Pub/Sub) notification.

    ``key`` is decoded (S3 notifications carry it URL-encoded). ``checksums`` holds what the
    notification carried, in lower-case hex: S3 ``etag`` (and ``sequencer``); GCS ``crc32c``,
    ``md5`` and ``generation``. ``kind`` is ``created`` or ``deleted``."""
    replica = ReplicaField()
    bucket = fields.String(required=True)
    key = fields.String(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(("created", "deleted")))
    size = fields.Integer(allow_none=True, load_default=None)
    checksums = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    event_time = fields.String(allow_none=True, load_default=None)


class ObjectReplicated(Schema):
    source_replica = ReplicaField()
    destination_replica = ReplicaField()
    key = fields.String(required=True)
    size = fields.Integer(allow_none=True, load_default=None)
    copied = fields.Boolean(required=True)  # False: it was already there, verified
    lag_seconds = fields.Float(allow_none=True, load_default=None)


class BundleIndexed(Schema):
    """A replica's search index took in a bundle version (CREATE), replaced it with its
    tombstone (TOMBSTONE), or dropped it because its manifest left the bucket (DELETE). ``document`` is the bundle event document (``shared.bundle_documents``);
    ``event_timestamp`` is when the indexer processed it (ISO 8601 UTC)."""
    replica = ReplicaField()
    uuid = fields.String(required=True)
    version = fields.String(required=True)
    event_type = fields.String(required=True, validate=validate.OneOf(("CREATE", "TOMBSTONE", "DELETE")))
    event_timestamp = fields.String(required=True)
    document = fields.Dict(required=True)


class SubscriptionMatched(Schema):
    """One webhook to deliver: ``subscription_id`` of ``replica`` matched a bundle event.
    ``payload`` is the notification body (the notifier's ``notifications.build_payload``); the secret key
    is not carried: the notifier reads it from the stored subscription at delivery time."""
    replica = ReplicaField()
    subscription_id = fields.String(required=True)
    transaction_id = fields.String(required=True)
    payload = fields.Dict(required=True)


class BundleCheckoutRequested(Schema):
    """A bundle checkout job was accepted (its record written in the replica's checkout bucket,
    ``services/checkout/bundle_jobs/jobs.py``): the checkout service copies the bundle. The record is the job's
    truth; the bundle named here is for logs and queue inspection."""
    replica = ReplicaField()
    checkout_job_id = fields.String(required=True)
    uuid = fields.String(required=True)
    version = fields.String(required=True)


class FileCheckoutRequested(Schema):
    """A blob of ``replica`` is to be copied, verified, into its checkout bucket (same key), in the
    background: ``reason`` ``read`` (a GET found no fresh copy of a blob too large to copy inline) or
    ``refresh`` (a copy read near the end of its life). ``content_type`` is given to the copy."""
    replica = ReplicaField()
    blob_key = fields.String(required=True)
    size = fields.Integer(required=True, validate=validate.Range(min=0))
    content_type = fields.String(required=True)
    reason = fields.String(required=True, validate=validate.OneOf(("read", "refresh")))


# --- one instance per schema ---------------------------------------------------------------------------

@functools.cache
def schema_instance(schema_class: type[Schema]) -> Schema:
    """The process's one instance of ``schema_class``, for hot paths: building a schema deep-copies
    its fields, which costs more than loading a small payload, and an instance keeps no state
    between loads and dumps. Options of one load (``unknown=EXCLUDE``) go to ``load`` itself."""
    return schema_class()


# --- loading: marshmallow's refusals as one 400 -------------------------------------------------------

def load_arguments(schema: Schema, values: Any, *, where: str = "arguments", none_is_default: bool = False) -> dict:
    """``schema.load(values)``, or a typed 400 (``InvalidParameter``) naming the fields at fault.

    ``where`` says what ``values`` are, for the title: an RPC's ``"arguments"``, a request's
    ``"query"`` string or ``"body"``, or another document's name (``"subscription"``). Unknown
    fields are errors unless the schema excludes them (a misspelt ``per_page`` should not quietly
    become the default). The code is the first offending field's ``error_code`` (``illegal_uuid``,
    ``illegal_version``, ``unknown_replica``), else ``illegal_arguments`` (a missing field is not a
    malformed one: it keeps the generic code). The title names fields and rules, never values (an
    argument may hold a secret). ``none_is_default``: a None argument means "not given", so the
    schema's default applies."""
    if none_is_default:
        values = {name: value for name, value in values.items() if value is not None}
    try:
        return schema.load(values)
    except ValidationError as error:
        raise _invalid(schema, error.messages, where) from None


def _invalid(schema: Schema, messages: Any, where: str) -> InvalidParameter:
    problems = list(_flatten(messages, ()))
    unknown = [path for path, message in problems if message == "Unknown field."]
    if unknown:
        names = ", ".join(_render(path) for path in unknown)
        return InvalidParameter(f"{_UNKNOWN.get(where, f'unknown field(s) in the {where}')}: {names}")
    shown = []
    for path, message in problems[:_MAX_SHOWN_ERRORS]:
        if path in ((), ("_schema",)):
            shown.append("the request body must be a JSON object" if where == "body" else message)
        else:
            text = "is required" if message == "Missing data for required field." else message
            shown.append(f"{_render(path)}: {text}")
    more = len(problems) - len(shown)
    title = f"{_INVALID.get(where, f'invalid {where}')}: " + "; ".join(shown)
    if more > 0:
        title += f" (and {more} more)"
    first_path, first_message = problems[0] if problems else ((), "")
    if first_message == "Missing data for required field.":  # not a malformed field: the generic code
        return InvalidParameter(title)
    return InvalidParameter(title, _field_code(schema, first_path))


def _flatten(messages: Any, path: tuple) -> Iterator[tuple[tuple, str]]:
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            yield from _flatten(value, path + (key,))
    elif isinstance(messages, (list, tuple)):
        for item in messages:
            if isinstance(item, (Mapping, list, tuple)):
                yield from _flatten(item, path)
            else:
                yield path, str(item)
    else:
        yield path, str(messages)


def _render(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _field_code(schema: Schema, path: tuple) -> str:
    """The error code of the field at ``path`` (list indices skipped), else the generic one."""
    current: Any = schema
    field = None
    for part in path:
        if isinstance(part, int):
            continue
        if isinstance(current, fields.List):
            current = current.inner
        if isinstance(current, fields.Nested):
            current = current.schema
        if not isinstance(current, Schema):
            return _GENERIC_CODE
        field = current.fields.get(part)
        if field is None:
            return _GENERIC_CODE
        current = field
    return getattr(field, "error_code", _GENERIC_CODE)


def nested_deeper_than(value, limit: int) -> bool:
    """Whether JSON ``value`` nests containers more than ``limit`` deep; iterative, so a value
    nested deeper than Python's stack is measured too."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False
