"""Shapes the checkout service reads from RPC callers and from the tokens clients bring back, for
both of its parts: file reads (GET /files, DRS) and bundle checkout jobs. ``shared.schemas.load_arguments``
turns a failure into a typed 400 carrying the field's ``error_code``.

Event payloads are ``shared.schemas.FileCreated``, ``FileCheckoutRequested`` and
``BundleCheckoutRequested``. A job's destination is judged by ``bundle_jobs.jobs.destination_bucket``
(it depends on the replica); the job record is described in ``bundle_jobs/jobs.py``.
"""
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from shared.identifiers import is_email_address, is_uuid
from shared.schemas import ReplicaField, UuidField, VersionField

MAX_CONTENT_DISPOSITION = 1000
MAX_OBJECT_ID = 200     # a uuid, or `{uuid}.{version}`
MAX_ACCESS_ID = 100     # `{replica}.{version}`
MAX_BASE_URL = 2000
URL_KINDS = ("presigned", "direct")


# --- file reads ----------------------------------------------------------------------------------------


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
    """What a checkout token holds (``file_reads.tokens.CheckoutToken``); nothing else is accepted."""

    class Meta:
        unknown = RAISE

    replica = ReplicaField()
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


# --- bundle checkout jobs ------------------------------------------------------------------------------

class CheckoutJobIdField(fields.String):
    """A checkout job id (a uuid), lower-cased."""
    error_code = "illegal_checkout_job_id"

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if not is_uuid(value):
            raise ValidationError("not a checkout job id")
        return value.lower()


class EmailField(fields.String):
    """One plain e-mail address, the recipient of a job's notice."""
    error_code = "invalid_email"

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if not is_email_address(value):
            raise ValidationError("not an e-mail address")
        return value


class StartBundleCheckoutCall(Schema):
    replica = ReplicaField()
    uuid = UuidField(required=True)
    version = VersionField(load_default=None, allow_none=True)
    destination = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=300))
    email = EmailField(load_default=None, allow_none=True)


class CheckoutJobCall(Schema):
    replica = ReplicaField()
    checkout_job_id = CheckoutJobIdField(required=True)


class BundleUrlsCall(Schema):
    replica = ReplicaField()
    uuid = UuidField(required=True)
    version = VersionField(load_default=None, allow_none=True)
    kind = fields.String(load_default="presigned", validate=validate.OneOf(URL_KINDS))
    token = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=1024))

