"""The errors of the notifier: the shared typed errors with this service's codes.

Factory functions returning the typed errors of ``shared.exceptions``, no new exception classes:
the project's convention (see ``services/bundles/exceptions.py``). Titles never quote a
subscription's fields: they could carry the secret key or a token in a callback URL.
"""
from shared.exceptions import Forbidden, InvalidParameter, NotAcceptable, NotFound, Unauthorized


def conflicting_queries() -> InvalidParameter:
    return InvalidParameter("a subscription has either an es_query or a jmespath_query, not both",
                            "conflicting_queries")


def too_many_subscriptions(owner: str, replica: str, limit: int) -> NotAcceptable:
    return NotAcceptable(f"{owner} already has {limit} subscriptions in replica {replica}, the most allowed",
                         "too_many_subscriptions")


def subscription_not_found(replica: str, uuid: str) -> NotFound:
    return NotFound(f"subscription {uuid} not found in replica {replica}", "not_found")


def not_owner(email: str, uuid: str) -> Forbidden:
    return Forbidden(f"{email} is not the owner of subscription {uuid}", "forbidden")


def authentication_required() -> Unauthorized:
    return Unauthorized("subscriptions need an authenticated caller", "unauthorized")


def unusable_event(title: str) -> InvalidParameter:
    """A bundle_indexed event that can never be matched (dead-lettered at once)."""
    return InvalidParameter(title, "invalid_event")
