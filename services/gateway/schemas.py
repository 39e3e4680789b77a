"""Marshmallow schemas of every query string and JSON body the gateway accepts.

``web.query`` and ``web.json_body`` load them with ``shared.schemas.load_arguments``, which turns
marshmallow's errors into one 400 ``InvalidParameter`` naming the offending fields; unknown query
parameters and body fields are errors. Domain rules (file-name syntax, item limits, ownership)
belong to the services.
"""
from __future__ import annotations

from urllib.parse import urlparse

from marshmallow import Schema, ValidationError, fields, post_load, validate

from shared.exceptions import InvalidParameter
from shared.identifiers import SCHEMES, is_email_address
from shared.schemas import (MAX_CALLBACK_URL_LENGTH, MAX_JMESPATH_LENGTH, SUBSCRIPTION_TYPES,
                            WEBHOOK_ENCODINGS, WEBHOOK_METHODS, CollectionItem, ReplicaField, UuidField, VersionField)

CHECKOUT_TOKEN_LENGTH = 1024  # the longest continuation token the checkout service reads


# --- fields ----------------------------------------------------------------------------------------
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
    replica = ReplicaField()
    version = VersionField()


class GetFileQuery(HeadFileQuery):
    directurl = QueryBoolean(load_default=False)
    content_disposition = opaque(1000)
    token = opaque(CHECKOUT_TOKEN_LENGTH)  # the continuation token of a 301 loop (the checkout service's)


class PutBundleQuery(Schema):
    replica = ReplicaField()
    version = VersionField()


class GetBundleQuery(Schema):
    replica = ReplicaField()
    version = VersionField()
    directurls = QueryBoolean(load_default=False)
    presignedurls = QueryBoolean(load_default=False)
    per_page = per_page(500)
    start_at = start_at()
    token = opaque(CHECKOUT_TOKEN_LENGTH)


class PatchBundleQuery(Schema):
    replica = ReplicaField()
    version = VersionField(required=True)


class DeleteBundleQuery(Schema):
    replica = ReplicaField()
    version = VersionField()


class ListBundlesQuery(Schema):
    replica = ReplicaField()
    prefix = LowerString(load_default="", validate=validate.Length(max=36))
    per_page = per_page(100)
    search_after = opaque(256)
    token = opaque(CHECKOUT_TOKEN_LENGTH)  # accepted from older clients, ignored


class PutCollectionQuery(Schema):
    replica = ReplicaField()
    uuid = UuidField(required=True)
    version = VersionField()


class ListCollectionsQuery(Schema):
    per_page = per_page(500)
    start_at = start_at()


class GetCollectionQuery(Schema):
    replica = ReplicaField()
    version = VersionField()


class PatchCollectionQuery(Schema):
    replica = ReplicaField()
    version = VersionField(required=True)


class DeleteCollectionQuery(Schema):
    replica = ReplicaField()
    version = VersionField()  # accepted for compatibility; a collection tombstone covers every version


class CheckoutBundleQuery(Schema):
    replica = ReplicaField()
    version = VersionField()


class CheckoutJobQuery(Schema):
    replica = ReplicaField()


class DrsObjectQuery(Schema):
    # DRS clients know nothing of replicas: the `aws` one unless asked (an access id names its own).
    replica = ReplicaField(required=False, load_default="aws")
    version = VersionField()
    expand = QueryBoolean(load_default=False)


class DrsAccessQuery(Schema):
    replica = ReplicaField(required=False, load_default="aws")
    version = VersionField()


class SearchQuery(Schema):
    replica = ReplicaField()
    output_format = fields.String(load_default="summary", validate=validate.OneOf(("summary", "raw")))
    per_page = per_page(100)
    search_after = opaque(256)


class SubscriptionsQuery(Schema):
    replica = ReplicaField()
    subscription_type = fields.String(load_default="jmespath", validate=validate.OneOf(SUBSCRIPTION_TYPES))


class PutSubscriptionQuery(Schema):
    replica = ReplicaField()


class ListEventsQuery(Schema):
    replica = ReplicaField()
    from_date = opaque(64)
    to_date = opaque(64)
    per_page = fields.Integer(load_default=100, validate=validate.Range(1, 500, error="must be between 1 and 500"))
    token = opaque(4096)


class GetEventQuery(Schema):
    replica = ReplicaField()
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
            raise InvalidParameter("source_url is not a URL") from None
        if url.scheme not in SCHEMES:
            raise InvalidParameter("source_url must be an s3:// or gs:// URL", "unknown_source_scheme")
        if not url.netloc or not url.path.strip("/"):
            raise InvalidParameter("source_url must name a bucket and an object key")
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
    callback_url = fields.String(required=True, validate=validate.Length(min=1, max=MAX_CALLBACK_URL_LENGTH))
    es_query = fields.Dict()
    jmespath_query = fields.String(validate=validate.Length(max=MAX_JMESPATH_LENGTH))
    method = fields.String(validate=validate.OneOf(WEBHOOK_METHODS))
    encoding = fields.String(validate=validate.OneOf(WEBHOOK_ENCODINGS))
    form_fields = fields.Dict(keys=fields.String(), values=fields.String())
    payload_form_field = fields.String(validate=validate.Length(min=1, max=256))
    hmac_secret_key = fields.String(validate=validate.Length(min=1, max=1024))
    hmac_key_id = fields.String(validate=validate.Length(min=1, max=256))
    attachments = fields.Dict(keys=fields.String(), values=fields.Dict())
