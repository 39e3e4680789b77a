"""Shapes the notifier reads from RPC callers, and the subscription document it stores.

The call schemas check shapes only: the values of a subscription are judged by
``delivery.validate_subscription`` (callback URL, method, encoding, form fields, HMAC
fields, JMESPath query, attachments) and ``shared.search.parse_search`` (``es_query``), whose
errors carry precise codes. Event payloads are ``shared.schemas.BundleIndexed`` and
``SubscriptionMatched``.
"""
from marshmallow import EXCLUDE, RAISE, Schema, fields, validate

from shared.schemas import JMESPATH, SUBSCRIPTION_TYPES, ReplicaField

# What never leaves the notifier: not in an RPC answer, a log line or an event payload.
SECRET_FIELDS = ("hmac_secret_key",)


class Caller(Schema):
    """The authenticated principal as the gateway passes it."""

    class Meta:
        unknown = EXCLUDE

    email = fields.String(required=True, validate=validate.Length(min=1, max=320))
    groups = fields.List(fields.String(), load_default=list)
    is_admin = fields.Boolean(load_default=False)


class SubscriptionFields(Schema):
    """The body of PUT /subscriptions: the known fields, ``callback_url`` required; an absent field
    is null (its default)."""

    class Meta:
        unknown = RAISE

    callback_url = fields.Raw(required=True, allow_none=False)
    es_query = fields.Raw(load_default=None)
    jmespath_query = fields.Raw(load_default=None)
    method = fields.Raw(load_default=None)
    encoding = fields.Raw(load_default=None)
    form_fields = fields.Raw(load_default=None)
    payload_form_field = fields.Raw(load_default=None)
    hmac_secret_key = fields.Raw(load_default=None)
    hmac_key_id = fields.Raw(load_default=None)
    attachments = fields.Raw(load_default=None)


class PutSubscriptionCall(Schema):
    replica = ReplicaField()
    subscription = fields.Nested(SubscriptionFields, required=True)
    caller = fields.Nested(Caller, required=True)


class SubscriptionCall(Schema):
    """Arguments of ``get_subscription`` and ``delete_subscription``."""
    replica = ReplicaField()
    uuid = fields.String(required=True, validate=validate.Length(min=1, max=64))
    caller = fields.Nested(Caller, required=True)


class ListSubscriptionsCall(Schema):
    replica = ReplicaField()
    caller = fields.Nested(Caller, required=True)
    subscription_type = fields.String(load_default=JMESPATH, validate=validate.OneOf(SUBSCRIPTION_TYPES))


class StoredSubscription(Schema):
    """``subscriptions/{uuid}`` in a replica's main bucket. Written once: a subscription is never
    changed, only deleted. Exactly one of ``es_query`` (an Elasticsearch subscription) and
    ``jmespath_query`` (a JMESPath one; null matches every event) is present."""

    class Meta:
        unknown = RAISE

    uuid = fields.String(required=True)
    owner = fields.String(required=True)
    replica = ReplicaField()
    created = fields.String(required=True)  # ISO 8601 UTC
    callback_url = fields.String(required=True)
    method = fields.String(required=True)
    encoding = fields.String(required=True)
    form_fields = fields.Dict(allow_none=True)
    payload_form_field = fields.String(allow_none=True)
    hmac_secret_key = fields.String()  # present only when the owner gave one
    hmac_key_id = fields.String(allow_none=True)
    attachments = fields.Dict(allow_none=True)
    es_query = fields.Dict()
    jmespath_query = fields.String(allow_none=True)
