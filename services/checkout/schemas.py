"""Shapes the checkout service reads from RPC callers (file checkout and DRS) and from the tokens
clients bring back. Event payloads are ``shared.schemas.FileCreated`` and ``FileCheckoutRequested``;
bundle checkout jobs keep their own schemas."""
from marshmallow import RAISE, Schema, fields, validate

from shared.identifiers import REPLICAS
from shared.schemas import ReplicaField, UuidField, VersionField

MAX_CONTENT_DISPOSITION = 1000
MAX_OBJECT_ID = 200     # a uuid, or `{uuid}.{version}`
MAX_ACCESS_ID = 100     # `{replica}.{version}`
MAX_BASE_URL = 2000


class GetFileCall(Schema):
    """``get_file``: GET /files/{uuid}."""
    replica = ReplicaField()
    uuid = UuidField(required=True)
    version = VersionField(load_default=None, allow_none=True)
    directurl = fields.Boolean(load_default=False)
    content_disposition = fields.String(load_default=None, allow_none=True,
                                        validate=validate.Length(max=MAX_CONTENT_DISPOSITION))
    token = fields.String(load_default=None, allow_none=True)


class TokenFields(Schema):
    """What a checkout token holds (``files.CheckoutToken``); nothing else is accepted."""

    class Meta:
        unknown = RAISE

    replica = fields.String(required=True, validate=validate.OneOf(REPLICAS))
    uuid = UuidField(required=True)
    version = VersionField(required=True)
    attempt = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=1_000_000))
    started = fields.Integer(required=True, strict=True, validate=validate.Range(min=0))


class DrsServiceInfoCall(Schema):
    base_url = fields.Url(required=True, require_tld=False, schemes={"http", "https"},
                          validate=validate.Length(max=MAX_BASE_URL))


class DrsObjectCall(Schema):
    """``drs_object``: GET /ga4gh/drs/v1/objects/{object_id}."""
    base_url = fields.Url(load_default=None, allow_none=True, require_tld=False, schemes={"http", "https"},
                          validate=validate.Length(max=MAX_BASE_URL))
    replica = ReplicaField()
    object_id = fields.String(required=True, validate=validate.Length(min=1, max=MAX_OBJECT_ID))
    version = VersionField(load_default=None, allow_none=True)
    expand = fields.Boolean(load_default=False)


class DrsAccessCall(Schema):
    """``drs_access``: GET /ga4gh/drs/v1/objects/{object_id}/access/{access_id}."""
    replica = ReplicaField()
    object_id = fields.String(required=True, validate=validate.Length(min=1, max=MAX_OBJECT_ID))
    access_id = fields.String(required=True, validate=validate.Length(min=1, max=MAX_ACCESS_ID))
    version = VersionField(load_default=None, allow_none=True)


class SweepCall(Schema):
    """``sweep``: one bounded pass of the sweeper over a replica's checkout copies."""
    replica = ReplicaField()
    start_after = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=1024))
    limit = fields.Integer(load_default=None, allow_none=True, strict=True,
                           validate=validate.Range(min=1, max=1_000_000))
