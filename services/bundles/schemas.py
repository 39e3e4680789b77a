"""Shapes the bundles service reads from RPC callers and the collection document it stores.

Stored bundle manifests and tombstones, and the event payloads, are in ``shared/schemas.py``.
"""
from marshmallow import EXCLUDE, Schema, fields

from shared.schemas import ManifestFile, UuidField, VersionField

MAX_ITEMS = 1000  # per bundle PATCH list and per collection (the v1 contract's limit)


class BundleFileRef(Schema):
    """One entry of ``files`` / ``add_files`` in put_bundle and patch_bundle."""

    class Meta:
        unknown = EXCLUDE

    uuid = UuidField(required=True)
    version = VersionField(required=True)
    name = fields.String(required=True)
    indexed = fields.Boolean(required=True)


class BundleFileId(Schema):
    """One entry of ``remove_files`` in patch_bundle: a file is removed when all three match."""

    class Meta:
        unknown = EXCLUDE

    uuid = UuidField(required=True)
    version = VersionField(required=True)
    name = fields.String(required=True)


class BundleFileView(ManifestFile):
    """A manifest entry as GET /bundles returns it: the stored form but `s3_etag` with an underscore."""

    s3_etag = fields.String(required=True, data_key="s3_etag")
