"""Typed errors shared by every service.

Each carries a machine-readable ``code`` and a human ``title``. They are registered with nameko so
that an error raised in a service comes back to the RPC caller as the same type (not a generic
``RemoteError``); the gateway maps the type to an HTTP status in one table
(``services/gateway/errors.py``). Both arguments are positional so that nameko can rebuild the
exception from its serialised ``args``.
"""
from nameko.exceptions import deserialize_to_instance


class DSSError(Exception):
    """Base of every error the store reports to a client."""

    code = "internal_error"

    def __init__(self, title: str, code: str | None = None):
        super().__init__(title, code or self.code)

    @property
    def title(self) -> str:
        return self.args[0]

    @property
    def error_code(self) -> str:
        return self.args[1]

    def __str__(self) -> str:
        return f"{self.error_code}: {self.title}"


def _registered(cls):
    return deserialize_to_instance(cls)


@_registered
class InvalidParameter(DSSError):
    """A query/path parameter or body field is malformed (400)."""
    code = "illegal_arguments"


@_registered
class InvalidRequest(DSSError):
    """The request is well-formed but cannot be carried out as asked (400)."""
    code = "bad_request"


@_registered
class Unauthorized(DSSError):
    """No credentials, or credentials that cannot be verified (401)."""
    code = "unauthorized"


@_registered
class Forbidden(DSSError):
    """Authenticated, but not allowed to do this (403)."""
    code = "forbidden"


@_registered
class NotFound(DSSError):
    """The named object does not exist in that replica (404)."""
    code = "not_found"


@_registered
class Conflict(DSSError):
    """A different object already exists under that identity (409)."""
    code = "conflict"


@_registered
class PayloadTooLarge(DSSError):
    """The request body is over the configured limit (413)."""
    code = "payload_too_large"


@_registered
class UnsupportedMediaType(DSSError):
    """The request body is not of a content type the endpoint accepts (415)."""
    code = "unsupported_media_type"


@_registered
class Unprocessable(DSSError):
    """The content referred to is unusable: bad checksums, missing source, unresolved link (422)."""
    code = "unprocessable"


@_registered
class NotAcceptable(DSSError):
    """A per-owner limit would be exceeded (406)."""
    code = "not_acceptable"


@_registered
class Unavailable(DSSError):
    """A dependency (broker, cloud, service) is unreachable; worth retrying (503)."""
    code = "service_unavailable"


# --- errors more than one service reports: one factory per code ----------------------------------------

def bundle_not_found(replica: str, uuid: str, version: str | None = None) -> NotFound:
    which = f"{uuid}.{version}" if version else uuid
    return NotFound(f"bundle {which} not found in replica {replica}", "not_found")


def illegal_token(title: str) -> InvalidParameter:
    """A paging or checkout token that is not one this store issued for the request (400)."""
    return InvalidParameter(title, "illegal_token")
