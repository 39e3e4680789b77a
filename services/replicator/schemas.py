"""Shapes the replicator reads from RPC callers. Its event payloads (``ObjectChanged``,
``ObjectReplicated``) and the stored documents it checks are in ``shared/schemas.py`` and
``shared/keys.py``."""
from marshmallow import Schema, fields, validate

from shared.identifiers import REPLICAS


class ReplicateCall(Schema):
    """Arguments of the ``replicate`` RPC."""
    key = fields.String(required=True, validate=validate.Length(min=1, max=1024))
    source_replica = fields.String(required=True, validate=validate.OneOf(REPLICAS))
    deep = fields.Boolean(load_default=False)


class VerifyCall(Schema):
    """Arguments of the ``verify`` RPC."""
    key = fields.String(required=True, validate=validate.Length(min=1, max=1024))
    deep = fields.Boolean(load_default=False)
