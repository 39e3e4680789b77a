"""Marshmallow schemas of every query string and JSON body the gateway accepts.

``load()`` turns marshmallow's errors into one 400 ``InvalidParameter`` whose title names the
offending fields and whose code is the field's own (``illegal_uuid``, ``illegal_version``,
``unknown_replica``) or ``illegal_arguments``. Unknown query parameters and body fields are errors,
not silently ignored: a misspelt ``per_page`` should not quietly become the default.
Domain rules (file-name syntax, item limits, ownership) belong to the services.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping
from urllib.parse import urlparse

from marshmallow import Schema, ValidationError, fields, post_load, validate

from shared.exceptions import InvalidParameter
from shared.identifiers import REPLICAS, is_email_address
from shared.schemas import CollectionItem, UuidField, VersionField

GENERIC_CODE = "illegal_arguments"
CHECKOUT_TOKEN_LENGTH = 1024  # the longest continuation token the checkout service reads
SOURCE_SCHEMES = ("s3", "gs")
_MAX_SHOWN_ERRORS = 5


# --- fields ----------------------------------------------------------------------------------------
class Replica(fields.String):
    error_code = "unknown_replica"

    def __init__(self, **kwargs):
        kwargs.setdefault("required", True)
        super().__init__(validate=validate.OneOf(REPLICAS, error="must be one of {choices}"), **kwargs)


class LowerString(fields.String):
    def _deserialize(self, value, attr, data, **kwargs):
        return super()._deserialize(value, attr, data, **kwargs).lower()


class QueryBoolean(fields.Boolean):
    """`true` or `false` (as Python clients spell them too: `True`, `False`); nothing else, so that
    the description's `type: boolean` is the whole truth (marshmallow would take `1`, `yes`, `on`...)."""
    truthy = {"true", "True"}
    falsy = {"false", "False"}


class StrictBoolean(fields.Boolean):
    """A JSON `true` or `false` in a body; not `1`, `0` or a string."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class EmailAddress(fields.String):
    """One plain e-mail address, by the rule the mail relay is given addresses by."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if not is_email_address(value):
            raise ValidationError("not an e-mail address")
        return value


def per_page(default: int) -> fields.Integer:
    return fields.Integer(load_default=default, validate=validate.Range(10, 500, error="must be between 10 and 500"))


def start_at() -> fields.Integer:
    return fields.Integer(load_default=0, validate=validate.Range(min=0, error="must not be negative"))


def opaque(max_length: int = 1024, **kwargs) -> fields.String:
    return fields.String(validate=validate.Length(max=max_length), **kwargs)


# --- query strings ----------------------------------------------------------------------------------
class PutFileQuery(Schema):
    version = VersionField()


class HeadFileQuery(Schema):
    replica = Replica()
    version = VersionField()


class GetFileQuery(HeadFileQuery):
    directurl = QueryBoolean(load_default=False)
    content_disposition = opaque(1000)
    token = opaque(CHECKOUT_TOKEN_LENGTH)  # the continuation token of a 301 loop (the checkout service's)


class PutBundleQuery(Schema):
    replica = Replica()
    version = VersionField()


class GetBundleQuery(Schema):
    replica = Replica()
    version = VersionField()
    directurls = QueryBoolean(load_default=False)
    presignedurls = QueryBoolean(load_default=False)
    per_page = per_page(500)
    start_at = start_at()
    token = opaque(CHECKOUT_TOKEN_LENGTH)


class PatchBundleQuery(Schema):
    replica = Replica()
    version = VersionField(required=True)


class DeleteBundleQuery(Schema):
    replica = Replica()
    version = VersionField()


class ListBundlesQuery(Schema):
    replica = Replica()
    prefix = LowerString(load_default="", validate=validate.Length(max=36))
    per_page = per_page(100)
    search_after = opaque(256)
    token = opaque(CHECKOUT_TOKEN_LENGTH)  # accepted from older clients, ignored


class PutCollectionQuery(Schema):
    replica = Replica()
    uuid = UuidField(required=True)
    version = VersionField()


class ListCollectionsQuery(Schema):
    per_page = per_page(500)
    start_at = start_at()


class GetCollectionQuery(Schema):
    replica = Replica()
    version = VersionField()


class PatchCollectionQuery(Schema):
    replica = Replica()
    version = VersionField(required=True)


class DeleteCollectionQuery(Schema):
    replica = Replica()
    version = VersionField()  # accepted for compatibility; a collection tombstone covers every version


class CheckoutBundleQuery(Schema):
    replica = Replica()
    version = VersionField()


class CheckoutJobQuery(Schema):
    replica = Replica()


class DrsObjectQuery(Schema):
    # DRS clients know nothing of replicas: the `aws` one unless asked (an access id names its own).
    replica = Replica(required=False, load_default="aws")
    version = VersionField()
    expand = QueryBoolean(load_default=False)


class DrsAccessQuery(Schema):
    replica = Replica(required=False, load_default="aws")
    version = VersionField()


class SearchQuery(Schema):
    replica = Replica()
    output_format = fields.String(load_default="summary", validate=validate.OneOf(("summary", "raw")))
    per_page = per_page(100)
    search_after = opaque(256)


SUBSCRIPTION_TYPES = ("jmespath", "elasticsearch")


class SubscriptionsQuery(Schema):
    replica = Replica()
    subscription_type = fields.String(load_default="jmespath", validate=validate.OneOf(SUBSCRIPTION_TYPES))


class PutSubscriptionQuery(Schema):
    replica = Replica()


class ListEventsQuery(Schema):
    replica = Replica()
    from_date = opaque(64)
    to_date = opaque(64)
    per_page = fields.Integer(load_default=100, validate=validate.Range(1, 500, error="must be between 1 and 500"))
    token = opaque(4096)


class GetEventQuery(Schema):
    replica = Replica()
    version = VersionField(required=True)


class NoQuery(Schema):
    pass


# --- bodies ----------------------------------------------------------------------------------------
class PutFileBody(Schema):
    source_url = fields.String(required=True, validate=validate.Length(min=1, max=4096))
    creator_uid = fields.Integer(required=True, strict=True)
    bundle_uuid = UuidField()  # sent by older clients; not needed by this store

    @post_load
    def check_source(self, data, **kwargs):
        try:
            url = urlparse(data["source_url"])
        except ValueError:  # e.g. an unbalanced `[` in the host part
            raise InvalidParameter("source_url is not a URL", GENERIC_CODE) from None
        if url.scheme not in SOURCE_SCHEMES:
            raise InvalidParameter("source_url must be an s3:// or gs:// URL", "unknown_source_scheme")
        if not url.netloc or not url.path.strip("/"):
            raise InvalidParameter("source_url must name a bucket and an object key", GENERIC_CODE)
        return data


class BundleFile(Schema):
    uuid = UuidField(required=True)
    version = VersionField(required=True)
    name = fields.String(required=True)
    indexed = StrictBoolean(required=True)


class BundleFileRef(Schema):
    uuid = UuidField(required=True)
    version = VersionField(required=True)
    name = fields.String(required=True)
    indexed = StrictBoolean()


class PutBundleBody(Schema):
    creator_uid = fields.Integer(required=True, strict=True)
    files = fields.List(fields.Nested(BundleFile), required=True)


class PatchBundleBody(Schema):
    add_files = fields.List(fields.Nested(BundleFile), load_default=list)
    remove_files = fields.List(fields.Nested(BundleFileRef), load_default=list)


class DeleteBundleBody(Schema):
    reason = fields.String(required=True, validate=validate.Length(min=1))
    details = fields.Dict(load_default=None, allow_none=True)


class PutCollectionBody(Schema):
    name = fields.String(required=True)
    description = fields.String(load_default="")
    details = fields.Dict(load_default=dict)
    contents = fields.List(fields.Nested(CollectionItem), required=True)


class PatchCollectionBody(Schema):
    add_contents = fields.List(fields.Nested(CollectionItem))
    remove_contents = fields.List(fields.Nested(CollectionItem))
    name = fields.String()
    description = fields.String()
    details = fields.Dict()


class CheckoutBundleBody(Schema):
    destination = fields.String(validate=validate.Length(min=1, max=1024))
    email = EmailAddress()


class SearchBody(Schema):
    es_query = fields.Dict(required=True)


class PutSubscriptionBody(Schema):
    """The shape only; the notifier checks the rest (callback URL safety, queries, attachments)."""
    callback_url = fields.String(required=True, validate=validate.Length(min=1, max=2048))
    es_query = fields.Dict()
    jmespath_query = fields.String(validate=validate.Length(max=4096))
    method = fields.String(validate=validate.OneOf(("POST", "PUT")))
    encoding = fields.String(validate=validate.OneOf(("application/json", "multipart/form-data")))
    form_fields = fields.Dict(keys=fields.String(), values=fields.String())
    payload_form_field = fields.String(validate=validate.Length(min=1, max=256))
    hmac_secret_key = fields.String(validate=validate.Length(min=1, max=1024))
    hmac_key_id = fields.String(validate=validate.Length(min=1, max=256))
    attachments = fields.Dict(keys=fields.String(), values=fields.Dict())


# --- loading ---------------------------------------------------------------------------------------
def load(schema: Schema, data: Any, where: str) -> dict:
    """``schema.load(data)``, or a 400 naming the fields at fault. ``where``: "query" or "body"."""
    try:
        return schema.load(data)
    except ValidationError as error:
        raise _invalid(schema, error.messages, where) from None


def _invalid(schema: Schema, messages: Any, where: str) -> InvalidParameter:
    problems = list(_flatten(messages, ()))
    unknown = [path for path, message in problems if message == "Unknown field."]
    if unknown:
        names = ", ".join(_render(path) for path in unknown)
        if where == "query":
            return InvalidParameter(f"unknown query parameter(s): {names}", GENERIC_CODE)
        return InvalidParameter(f"unknown field(s) in the request body: {names}", GENERIC_CODE)
    shown = []
    for path, message in problems[:_MAX_SHOWN_ERRORS]:
        if path in ((), ("_schema",)):
            shown.append("the request body must be a JSON object" if where == "body" else message)
        else:
            text = "is required" if message == "Missing data for required field." else message
            shown.append(f"{_render(path)}: {text}")
    more = len(problems) - len(shown)
    title = f"invalid {'query parameter' if where == 'query' else 'request body'}: " + "; ".join(shown)
    if more > 0:
        title += f" (and {more} more)"
    first_path, first_message = problems[0] if problems else ((), "")
    # A missing parameter is not a malformed one: it keeps the generic code.
    code = GENERIC_CODE if first_message == "Missing data for required field." else _field_code(schema, first_path)
    return InvalidParameter(title, code)


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
            return GENERIC_CODE
        field = current.fields.get(part)
        if field is None:
            return GENERIC_CODE
        current = field
    return getattr(field, "error_code", GENERIC_CODE)
