"""Arguments the indexer reads from RPC callers. Its event payloads (``BundleCreated``,
``BundleTombstoned``, ``ObjectReplicated`` in, ``BundleIndexed`` out) are in ``shared/schemas.py``;
the documents it builds are ``shared.bundle_documents``'s."""
from marshmallow import Schema, fields, validate

from shared.identifiers import REPLICAS
from shared.schemas import UuidField, VersionField

OUTPUT_FORMATS = ("summary", "raw")


def _replica():
    return fields.String(required=True, validate=validate.OneOf(REPLICAS))


def _per_page(low: int, high: int, default: int):
    return fields.Integer(strict=True, load_default=default,
                          validate=validate.Range(low, high, error=f"must be between {low} and {high}"))


class SearchCall(Schema):
    """Arguments of ``search``. ``es_query`` is checked by the search engine's parser, which
    answers a typed 400 ``elasticsearch_bad_request``."""
    replica = _replica()
    es_query = fields.Raw(required=True)
    output_format = fields.String(load_default="summary", validate=validate.OneOf(OUTPUT_FORMATS))
    per_page = _per_page(10, 500, 100)
    search_after = fields.String(load_default=None, validate=validate.Length(min=1, max=256))


class ListEventsCall(Schema):
    """Arguments of ``list_events``; the dates are checked by the journal (``journal_stamp``)."""
    replica = _replica()
    from_date = fields.String(load_default=None, validate=validate.Length(min=1, max=64))
    to_date = fields.String(load_default=None, validate=validate.Length(min=1, max=64))
    per_page = _per_page(1, 500, 100)
    token = fields.String(load_default=None, validate=validate.Length(min=1, max=4096))


class GetEventCall(Schema):
    replica = _replica()
    uuid = UuidField(required=True)
    version = VersionField(required=True)


class ReplicaCall(Schema):
    """Arguments of ``start_reindex`` and ``reindex_status``."""
    replica = _replica()
