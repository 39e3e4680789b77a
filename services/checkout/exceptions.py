"""The errors of the checkout service: the shared typed errors with this service's codes.

No new exception classes, as in the other services: the gateway rebuilds a remote error as its
type only if its process registered that type, and it imports ``shared.exceptions``.
"""

from shared.exceptions import InvalidParameter, NotFound, Unavailable


# --- bundle checkout jobs ----------------------------------------------------------------------------

def invalid_destination(title: str) -> InvalidParameter:
    return InvalidParameter(title, "invalid_destination")


def bundle_not_found(replica: str, uuid: str, version: str | None = None) -> NotFound:
    which = f"{uuid}.{version}" if version else uuid
    return NotFound(f"bundle {which} not found in replica {replica}", "not_found")


def checkout_job_not_found(replica: str, job_id: str) -> NotFound:
    return NotFound(f"checkout job {job_id} not found in replica {replica}", "not_found")


def illegal_token(title: str) -> InvalidParameter:
    return InvalidParameter(title, "illegal_token")


def bundle_checkout_failed(uuid: str, version: str, cause: str) -> Unavailable:
    """GET /bundles asked for URLs while following a checkout that failed: told, not looped."""
    return Unavailable(f"the checkout of bundle {uuid}.{version} failed: {cause}", "checkout_failed")
