"""The errors of the checkout service: the shared typed errors with this service's codes.

No new exception classes, as in the other services: the gateway rebuilds a remote error as its
type only if its process registered that type, and it imports ``shared.exceptions``.

What callers are told never carries what the store's buckets hold or what a store said (keys,
listings, whether an object exists, the store's error text): ``hides_storage_details`` turns an
unreachable store into a generic 503 at every RPC, and job failures are generic causes with a code
(``bundle_jobs.jobs.JobFailure``); the details go to the log. The codes other services answer too
(``bundle_not_found``, ``illegal_token``) come from their one factory in ``shared.exceptions``.
"""
import functools
import logging

from shared.blobstore import BlobStoreUnavailable
from shared.exceptions import Forbidden, InvalidParameter, NotFound, Unauthorized, Unavailable

logger = logging.getLogger(__name__)


# --- bundle checkout jobs ----------------------------------------------------------------------------

def invalid_destination(title: str) -> InvalidParameter:
    return InvalidParameter(title, "invalid_destination")


def destination_not_allowed(where: str) -> Forbidden:
    return Forbidden(f"bundle checkouts may not write to {where}: only the replica's checkout bucket and the "
                     "buckets the operator allowed (DSS_CHECKOUT_DESTINATIONS)", "destination_not_allowed")


def email_not_allowed() -> Forbidden:
    return Forbidden("a checkout's notice goes to the caller's own e-mail address only (or anywhere when an "
                     "administrator asks)", "email_not_allowed")


def caller_required() -> Unauthorized:
    return Unauthorized("a bundle checkout needs an authenticated caller", "unauthorized")


def checkout_job_not_found(replica: str, job_id: str) -> NotFound:
    return NotFound(f"checkout job {job_id} not found in replica {replica}", "not_found")


def bundle_checkout_failed(uuid: str, version: str, cause: str) -> Unavailable:
    """GET /bundles asked for URLs while following a checkout that failed: told, not looped."""
    return Unavailable(f"the checkout of bundle {uuid}.{version} failed: {cause}", "checkout_failed")


# --- storage -----------------------------------------------------------------------------------------

def storage_unavailable() -> Unavailable:
    return Unavailable("the replica's storage could not be reached; retry later", "storage_unavailable")


def hides_storage_details(method):
    """An RPC whose unreachable store is answered with ``storage_unavailable`` (503), its detail
    (which names buckets and keys) logged only. Goes under ``@rpc``."""
    @functools.wraps(method)
    def answering(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except BlobStoreUnavailable as error:
            logger.warning("%s: storage unreachable: %s", method.__name__, error)
            raise storage_unavailable() from None
    return answering
