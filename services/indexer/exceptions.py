"""The errors of the indexer: factories of the typed errors of ``shared.exceptions``, each with
this service's code (the convention of every service: see ``services/bundles/exceptions.py``).

``bundle_not_readable`` is ``Unavailable``: an event's handler retries it on the broker
(``DSS_INDEX_RETRY_DELAYS``), then dead-letters it; the others are permanent
(``shared.retry.PERMANENT_ERRORS``).
"""
from shared.exceptions import InvalidParameter, Unavailable, Unprocessable


def not_readable(what: str, replica: str) -> Unavailable:
    """What an event names is not (yet) in the replica: worth another attempt later (replication
    may still be on its way), then a dead letter for an operator."""
    return Unavailable(f"{what} is not readable in replica {replica}", "bundle_not_readable")


def invalid_tombstone(key: str, messages) -> Unprocessable:
    return Unprocessable(f"{key} is not a valid tombstone: {messages}", "invalid_document")


def unknown_replica(replica: str, replicas) -> InvalidParameter:
    return InvalidParameter(f"unknown replica `{replica}`; use one of {', '.join(replicas)}", "unknown_replica")


def illegal_date(what: str, value) -> InvalidParameter:
    return InvalidParameter(f"{what} {value!r} is neither a DSS version (2017-06-20T214506.766634Z) nor an "
                            "ISO 8601 date", "illegal_date")
