"""Arguments the bundle checkout job RPCs read from callers (``shared.schemas.load_arguments``
turns a failure into a typed 400 carrying the field's ``error_code``). The destination is judged by
``jobs.destination_bucket`` (it depends on the replica), the job record is described in ``jobs.py``,
the event payload is ``shared.schemas.BundleCheckoutRequested``."""
from marshmallow import Schema, ValidationError, fields, validate

from shared.identifiers import REPLICAS, is_uuid
from shared.mail import is_email_address
from shared.schemas import UuidField, VersionField

URL_KINDS = ("presigned", "direct")


def _replica():
    return fields.String(required=True, validate=validate.OneOf(REPLICAS))


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
    replica = _replica()
    uuid = UuidField(required=True)
    version = VersionField(load_default=None, allow_none=True)
    destination = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=300))
    email = EmailField(load_default=None, allow_none=True)


class CheckoutJobCall(Schema):
    replica = _replica()
    checkout_job_id = CheckoutJobIdField(required=True)


class BundleUrlsCall(Schema):
    replica = _replica()
    uuid = UuidField(required=True)
    version = VersionField(load_default=None, allow_none=True)
    kind = fields.String(load_default="presigned", validate=validate.OneOf(URL_KINDS))
    token = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=1024))
