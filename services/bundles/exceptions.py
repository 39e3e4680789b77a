"""The errors of the bundles service: factories of the typed errors of ``shared.exceptions``, each
with this service's code.

The convention of every service: no exception classes of its own, so an error reaches any RPC
caller as its ``shared.exceptions`` type (registered with nameko there), which the gateway maps to
an HTTP status in its one table (``services/gateway/errors.py``); the ``code`` tells the client
which error it is. Errors more than one service reports (``bundle_not_found``) are defined once, in
``shared.exceptions``.
"""
from shared.exceptions import Conflict, Forbidden, InvalidParameter, InvalidRequest, NotFound, Unauthorized, \
    Unprocessable

# Long lists are cut so that an error title stays readable.
_SHOWN = 10


def _listing(items) -> str:
    items = list(items)
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def illegal_filename(name: str, why: str) -> InvalidParameter:
    return InvalidParameter(f"illegal file name {name!r}: {why}", "illegal_filename")


def duplicate_filename(names) -> InvalidRequest:
    return InvalidRequest(f"file names must be unique in a bundle; repeated: {_listing(names)}",
                          "duplicate_filename")


def file_missing(replica: str, fqids) -> InvalidRequest:
    return InvalidRequest(f"files not found in replica {replica}: {_listing(fqids)}", "file_missing")


def too_many(what: str, count: int, limit: int) -> InvalidRequest:
    return InvalidRequest(f"{count} {what} exceed the limit of {limit}", "too_many_items")


def illegal_arguments(title: str) -> InvalidParameter:
    return InvalidParameter(title, "illegal_arguments")


def bundle_already_exists(uuid: str, version: str) -> Conflict:
    return Conflict(f"bundle {uuid}.{version} already exists with a different manifest", "bundle_already_exists")


def bundle_tombstone_exists(key: str) -> Conflict:
    return Conflict(f"a different tombstone already exists at {key}", "bundle_tombstone_exists")


def collection_not_found(replica: str, uuid: str, version: str | None = None) -> NotFound:
    which = f"{uuid}.{version}" if version else uuid
    return NotFound(f"collection {which} not found in replica {replica}", "not_found")


def collection_already_exists(uuid: str, version: str) -> Conflict:
    return Conflict(f"collection {uuid}.{version} already exists with different content",
                    "collection_already_exists")


def collection_tombstone_exists(key: str) -> Conflict:
    return Conflict(f"a different tombstone already exists at {key}", "collection_tombstone_exists")


def invalid_link(replica: str, items) -> Unprocessable:
    return Unprocessable(f"collection items not found in replica {replica}: {_listing(items)}", "invalid_link")


def not_admin(email: str) -> Forbidden:
    return Forbidden(f"{email} is not an administrator", "forbidden")


def not_owner(email: str, uuid: str) -> Forbidden:
    return Forbidden(f"{email} is not the owner of collection {uuid}", "forbidden")


def authentication_required() -> Unauthorized:
    return Unauthorized("this operation requires an authenticated caller", "unauthorized")
