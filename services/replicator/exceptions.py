"""The errors of the replicator: factories of the typed errors of ``shared.exceptions``, each with
this service's code (the convention of every service: see ``services/bundles/exceptions.py``).

The ``Unavailable`` ones are worth another attempt, which the broker schedules with backoff
(``DSS_REPLICATION_RETRY_DELAYS``); the ``Unprocessable`` and ``InvalidParameter`` ones are not and
are dead-lettered at once (``shared.retry.PERMANENT_ERRORS``).
"""
from shared.exceptions import InvalidParameter, Unavailable, Unprocessable


def source_missing(title: str) -> Unavailable:
    """The changed object is not (yet) readable in the replica it was reported in."""
    return Unavailable(title, "source_missing")


def dependency_missing(title: str) -> Unavailable:
    """An object the changed one needs (a blob, a bundle's file) is in neither replica yet: the
    broker's delayed retry is the wait for it."""
    return Unavailable(title, "dependency_missing")


def copy_mismatch(title: str) -> Unavailable:
    """The destination does not hold what was sent once the write returned."""
    return Unavailable(title, "copy_mismatch")


def conflicting_documents(title: str) -> Unprocessable:
    """Both replicas hold a valid document under the key, with different bytes (two writes of one
    uuid and version, one per replica). Replacing either could flip back and forth between the
    replicas' events forever; an operator chooses (``dss-ops replicas verify --deep`` lists them)."""
    return Unprocessable(title, "conflicting_documents")


def source_corrupt(title: str) -> Unprocessable:
    """The source's bytes do not match the checksums their key names: copying them would spread
    the damage. An operator repairs the source (``dss-ops replicas repair``) and replays."""
    return Unprocessable(title, "source_corrupt")


def illegal_key(key: str) -> InvalidParameter:
    return InvalidParameter(f"`{key}` is not a key of the DSS storage layout", "illegal_key")


def foreign_reference(parent_key: str, key: str) -> Unprocessable:
    """A document names something that is not a key of the DSS layout: it is not a valid document."""
    return Unprocessable(f"{parent_key} names `{key}`, not a key of the DSS layout", "invalid_document")
