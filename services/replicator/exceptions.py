"""Errors of the replicator (typed, so they reach an RPC caller as themselves).

The ``Unavailable`` ones are worth another attempt, which the broker schedules with backoff
(``DSS_REPLICATION_RETRY_DELAYS``); the ``Unprocessable`` ones are not and are dead-lettered at once.
"""
from nameko.exceptions import deserialize_to_instance

from shared.exceptions import Unavailable, Unprocessable


@deserialize_to_instance
class SourceMissing(Unavailable):
    """The changed object is not (yet) readable in the replica it was reported in."""
    code = "source_missing"


@deserialize_to_instance
class DependencyMissing(Unavailable):
    """An object the changed one needs (a blob, a bundle's file) is in neither replica yet: the
    broker's delayed retry is the wait for it."""
    code = "dependency_missing"


@deserialize_to_instance
class CopyMismatch(Unavailable):
    """The destination does not hold what was sent once the write returned."""
    code = "copy_mismatch"


@deserialize_to_instance
class ConflictingDocuments(Unprocessable):
    """Both replicas hold a valid document under the key, with different bytes (two writes of one
    uuid and version, one per replica). Replacing either could flip back and forth between the
    replicas' events forever; an operator chooses (``dss-ops replicas verify --deep`` lists them)."""
    code = "conflicting_documents"


@deserialize_to_instance
class SourceCorrupt(Unprocessable):
    """The source's bytes do not match the checksums their key names: copying them would spread
    the damage. An operator repairs the source (``dss-ops replicas repair``) and replays."""
    code = "source_corrupt"
