"""The errors of the indexer: the shared typed errors with this service's codes.

No new exception classes, as in the bundles service: the gateway rebuilds a remote error as its
type only if it registered that type, and it imports ``shared.exceptions`` (and
``shared.search``'s ``ElasticsearchBadRequest``, which ``search`` raises for a bad query).
The ``bundle_not_readable`` errors of the handlers (``documents.not_readable``) are
``Unavailable``: retried on the broker, then dead-lettered.
"""
from marshmallow import ValidationError

from shared.exceptions import InvalidParameter, Unprocessable
from shared.exceptions import bundle_not_found  # noqa: F401  (one definition per code)

# Errors another attempt of an event cannot cure: dead-lettered at once.
PERMANENT_ERRORS = (InvalidParameter, Unprocessable, ValidationError)


