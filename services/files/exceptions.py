"""Errors of the files service (typed, so they reach the gateway as themselves)."""
from nameko.exceptions import deserialize_to_instance

from shared.exceptions import Conflict, Forbidden, InvalidParameter, Unprocessable


@deserialize_to_instance
class UnknownSourceScheme(InvalidParameter):
    code = "unknown_source_scheme"


@deserialize_to_instance
class SourceNotAllowed(Forbidden):
    """The source is outside every staging area of DSS_INGEST_SOURCES (decided before any read)."""
    code = "source_not_allowed"


@deserialize_to_instance
class SourceNotFound(Unprocessable):
    code = "source_not_found"


@deserialize_to_instance
class ChecksumMismatch(Unprocessable):
    code = "checksum_mismatch"


@deserialize_to_instance
class FileAlreadyExists(Conflict):
    code = "file_already_exists"
