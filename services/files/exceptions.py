"""The errors of the files service: factories of the typed errors of ``shared.exceptions``, each
with this service's code (the convention of every service: see ``services/bundles/exceptions.py``).
"""
from shared.exceptions import Conflict, Forbidden, InvalidParameter, Unprocessable


def unknown_source_scheme(title: str) -> InvalidParameter:
    return InvalidParameter(title, "unknown_source_scheme")


def source_not_allowed(title: str) -> Forbidden:
    """The source is outside every staging area of DSS_INGEST_SOURCES (decided before any read)."""
    return Forbidden(title, "source_not_allowed")


def source_not_found(url: str, what_happened: str = "does not exist") -> Unprocessable:
    return Unprocessable(f"source object {url} {what_happened}", "source_not_found")


def source_changed(title: str) -> Unprocessable:
    """The staged object is not the one that was inspected (overwritten, or re-tagged)."""
    return Unprocessable(title, "source_changed")


def checksum_mismatch(url: str, names) -> Unprocessable:
    return Unprocessable(f"the bytes of {url} do not match the declared {', '.join(names)}", "checksum_mismatch")


def file_already_exists(uuid: str, version: str, how: str) -> Conflict:
    """Another PUT of file ``uuid`` version ``version`` gave other content; ``how``: "already exists"
    or "is being written"."""
    return Conflict(f"file {uuid} version {version} {how} with other content", "file_already_exists")
