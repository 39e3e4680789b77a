"""What a subscription's webhook carries: JMESPath matching, attachments and the notification payload.

The notifier matches JMESPath subscriptions against each bundle event document
``{event_type: CREATE|TOMBSTONE|DELETE, bundle_info: {uuid, version}, manifest, files}`` and
Elasticsearch ones against each newly indexed document; either way ``build_payload`` turns a match
into the body ``services.notifier.delivery.deliver`` sends::

    {transaction_id, subscription_id, event_type, event_timestamp, bundle_url,
     match: {bundle_uuid, bundle_version}, es_query | jmespath_query, attachments}

Attachments are named JMESPath expressions (``{name: {type: "jmespath", expression}}``) evaluated
over the same document. An expression that fails at run time, or whose result is over
``ATTACHMENT_MAX_BYTES`` serialised, becomes an entry of ``attachments["_errors"]`` (name ->
message) instead of failing the notification, as in the original DSS: a receiver still learns of
the bundle and can fetch what it needs.

``validate_jmespath_query`` / ``validate_attachments`` are the subscription-time checks (typed
400s); an expression that passes them never fails to parse at delivery time. Both include the
cost model of ``services.notifier.bounded_jmespath`` (``jmespath_too_costly``), and every evaluation runs
within a ``Budget`` (``jmespath_limit_exceeded``): ``jmespath_matches``, ``evaluate_attachments``
and ``build_payload`` raise those InvalidParameters, so that the caller can disable the
subscription (the expressions are the subscription's fault, not the event's), while a stored
expression refused by a later, stricter rule is caught again before it is evaluated.
"""
from __future__ import annotations

import datetime
import functools
import json
import logging
import re
from typing import Any, Mapping

import jmespath
import jmespath.exceptions
import jmespath.functions

from shared.config import Settings
from shared.exceptions import InvalidParameter
from shared.schemas import MAX_JMESPATH_LENGTH

from services.notifier.bounded_jmespath import Budget, JMESPathLimits, check_cost, evaluate, json_size

logger = logging.getLogger(__name__)

ATTACHMENT_MAX_BYTES = 128 * 1024  # the original's limit, per attachment and for all of them together
MAX_ATTACHMENTS = 64
MAX_ATTACHMENT_NAME_LENGTH = 128
ERRORS_KEY = "_errors"
ATTACHMENT_TYPES = ("jmespath",)
INVALID_QUERY = "invalid_jmespath_query"
INVALID_ATTACHMENT_EXPRESSION = "invalid_attachment_expression"

# Names starting with "_" are reserved so that no attachment can shadow ``_errors`` (or a later
# reserved key); plain identifiers stay readable in payloads, logs and error messages.
_ATTACHMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")

# The built-in function table, to reject unknown functions and wrong arities when a subscription is
# made: jmespath only notices them when the function is actually called, i.e. at delivery time,
# and only for documents that reach that call.
_FUNCTIONS = jmespath.functions.Functions().FUNCTION_TABLE


# --- serialisation ---------------------------------------------------------------------------------

def to_json_bytes(value: Any) -> bytes:
    """The one JSON encoding of payloads and attachments, so that a size measured here is the size
    sent: compact, UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _message(error: BaseException, limit: int = 500) -> str:
    # jmespath's messages quote the offending value, which may be a whole subdocument: keep the
    # first line's worth so that an error entry cannot outgrow the attachment it replaces. A type
    # error is told without its value, which could be far larger written out than in memory.
    if isinstance(error, jmespath.exceptions.JMESPathTypeError):
        text = (f"In function {error.function_name}(), invalid type: expected one of {error.expected_types}, "
                f"received {error.actual_type!r}")
    else:
        text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


# What evaluating a valid expression may raise on a document that does not suit it: jmespath's
# errors (ValueErrors), and Python's where jmespath lets them through (max_by() of a number and a
# string, ceil() of an infinite number).
_FAILURES_ON_A_DOCUMENT = (ValueError, TypeError, ArithmeticError)


# --- limits ------------------------------------------------------------------------------------------

def jmespath_limits(settings: Settings) -> JMESPathLimits:
    """The limits of ``DSS_NOTIFY_JMESPATH_MAX_GROWTH``, ``_MAX_STEPS`` and ``_MAX_CHARS``."""
    return JMESPathLimits(max_growth=settings.notify_jmespath_max_growth,
                          max_steps=settings.notify_jmespath_max_steps, max_chars=settings.notify_jmespath_max_chars)


DEFAULT_LIMITS = jmespath_limits(Settings.from_config({}, environ={}))  # the defaults of shared.config


# --- JMESPath ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _compile(expression: str):
    # Matching runs every subscription's expression against every event: parse each text once.
    return jmespath.compile(expression)


def _check_functions(node: Mapping[str, Any]) -> None:
    stack = [node]
    while stack:  # iterative: a deeply nested expression must not exhaust the Python stack here
        current = stack.pop()
        if current.get("type") == "function_expression":
            name = current.get("value")
            spec = _FUNCTIONS.get(name)
            if spec is None:
                raise ValueError(f"unknown function {name}()")
            signature = spec["signature"]
            argc = len(current.get("children", ()))
            variadic = bool(signature) and signature[-1].get("variadic", False)
            wrong = argc < len(signature) if variadic else argc != len(signature)
            if wrong:
                expected = f"at least {len(signature)}" if variadic else str(len(signature))
                raise ValueError(f"function {name}() takes {expected} argument(s), got {argc}")
        stack.extend(child for child in current.get("children", ()) if isinstance(child, Mapping))


def _compile_checked(expression: Any, what: str, code: str, limits: JMESPathLimits):
    """The compiled expression, if it is one a subscription may have: InvalidParameter(``code``)
    when it is not a valid expression, (``jmespath_too_costly``) when it is too costly."""
    if not isinstance(expression, str) or not expression.strip():
        raise InvalidParameter(f"{what} must be a non-empty string", code)
    if len(expression) > MAX_JMESPATH_LENGTH:
        raise InvalidParameter(f"{what} is longer than {MAX_JMESPATH_LENGTH} characters", code)
    try:
        compiled = _compile(expression)
        _check_functions(compiled.parsed)
    except (jmespath.exceptions.JMESPathError, ValueError, RecursionError) as error:
        # The parser's message points at the offending column: worth passing on to the client.
        raise InvalidParameter(f"{what} is not a valid JMESPath expression: {_message(error)}", code) from None
    _check_cost(expression, limits.max_growth, what)
    return compiled


@functools.lru_cache(maxsize=4096)
def _check_cost(expression: str, max_growth: int, what: str) -> None:
    # Matching judges every subscription's expressions on every event: once each will do.
    check_cost(_compile(expression).parsed, expression, max_growth, what)


def validate_jmespath_query(query: Any, limits: JMESPathLimits = DEFAULT_LIMITS) -> None:
    """Raise InvalidParameter (``invalid_jmespath_query``, ``jmespath_too_costly``) unless ``query``
    is a usable expression."""
    _compile_checked(query, "jmespath_query", INVALID_QUERY, limits)


def is_truthy(value: Any) -> bool:
    """JMESPath truthiness: false, null, "", [] and {} are false; everything else, 0 included, is
    true (unlike Python's, where 0 is false)."""
    if value is None or value is False:
        return False
    if isinstance(value, (str, list, dict, tuple)):
        return len(value) > 0
    return True


def jmespath_matches(query: str | None, document: Any, budget: Budget | None = None) -> bool:
    """Whether a JMESPath subscription fires on ``document``: its query's result is truthy. No
    query matches every event. An expression failing on this document (a type error in a function
    call, say) does not match: the subscriber asked for something this document does not have.

    Evaluated within ``budget`` (by default a fresh one of the default limits). InvalidParameter
    when the query is not one a subscription may have (any more), or spends the budget."""
    if query is None or (isinstance(query, str) and not query.strip()):
        return True
    budget = budget or DEFAULT_LIMITS.budget()
    compiled = _compile_checked(query, "jmespath_query", INVALID_QUERY, budget.limits)
    budget.what = "jmespath_query"
    try:
        return is_truthy(evaluate(compiled, document, budget))
    except _FAILURES_ON_A_DOCUMENT as error:
        # Debug only: percolation runs every subscription on every event, and the message quotes
        # document values.
        logger.debug("jmespath query failed on a document, no match: %s", _message(error))
        return False


# --- attachments ---------------------------------------------------------------------------------

def validate_attachments(attachments: Any, limits: JMESPathLimits = DEFAULT_LIMITS) -> None:
    """Raise InvalidParameter for an ``attachments`` object a subscription may not have.

    Codes: ``invalid_attachments`` (not an object, too many), ``invalid_attachment_name``,
    ``invalid_attachment`` (an entry that is not ``{type, expression}``), ``invalid_attachment_type``,
    ``invalid_attachment_expression``, ``jmespath_too_costly``."""
    if attachments is None:
        return
    if not isinstance(attachments, Mapping):
        raise InvalidParameter("attachments must be an object of named attachments", "invalid_attachments")
    if len(attachments) > MAX_ATTACHMENTS:
        raise InvalidParameter(f"at most {MAX_ATTACHMENTS} attachments are allowed", "invalid_attachments")
    for name, definition in attachments.items():
        if (not isinstance(name, str) or len(name) > MAX_ATTACHMENT_NAME_LENGTH
                or not _ATTACHMENT_NAME.fullmatch(name)):
            raise InvalidParameter(
                f"attachment name {str(name)[:MAX_ATTACHMENT_NAME_LENGTH]!r} must be 1-{MAX_ATTACHMENT_NAME_LENGTH} "
                "letters, digits, '_', '.' or '-', not starting with '_', '.' or '-'",
                "invalid_attachment_name")
        if not isinstance(definition, Mapping):
            raise InvalidParameter(f"attachment {name!r} must be an object {{type, expression}}", "invalid_attachment")
        unknown = sorted(set(definition) - {"type", "expression"})
        if unknown:
            raise InvalidParameter(f"attachment {name!r} has unknown field(s) {', '.join(map(str, unknown))}",
                                   "invalid_attachment")
        if definition.get("type") not in ATTACHMENT_TYPES:
            raise InvalidParameter(
                f"attachment {name!r} has type {definition.get('type')!r}; supported: {', '.join(ATTACHMENT_TYPES)}",
                "invalid_attachment_type")
        _compile_checked(definition.get("expression"), f"the expression of attachment {name!r}",
                         INVALID_ATTACHMENT_EXPRESSION, limits)


def evaluate_attachments(definitions: Mapping[str, Mapping[str, Any]] | None, document: Any,
                         max_bytes: int = ATTACHMENT_MAX_BYTES, budget: Budget | None = None) -> dict[str, Any]:
    """The attachments of one notification: each named expression's result over ``document``.

    Failures go to ``_errors`` (name -> message) rather than failing the notification. A result
    over ``max_bytes`` serialised is replaced by an error; if they all still add up to more than
    ``max_bytes``, the largest are replaced until the rest fit, so that a payload never carries
    more than about ``max_bytes`` of attachments.

    All are evaluated within ``budget``; an expression too costly for the cost model, or that
    spends the budget, raises InvalidParameter (the subscription, not this document, is at fault)."""
    budget = budget or DEFAULT_LIMITS.budget()
    attachments: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    errors: dict[str, str] = {}
    for name, definition in (definitions or {}).items():
        what = f"the expression of attachment {name!r}"
        try:
            if definition.get("type") != "jmespath":
                raise ValueError(f"unsupported attachment type {definition.get('type')!r}")
            compiled = _compile(definition["expression"])
            _check_functions(compiled.parsed)
        except (jmespath.exceptions.JMESPathError, ValueError, KeyError, TypeError) as error:
            errors[name] = _message(error)
            continue
        _check_cost(definition["expression"], budget.limits.max_growth, what)
        budget.what = what
        try:
            value = evaluate(compiled, document, budget)
            # Measured before it is written out (a value of shared references may be huge written
            # out), a step per JSON value measured.
            size = json_size(value, max_bytes, on_item=budget.spend)
        except _FAILURES_ON_A_DOCUMENT as error:
            errors[name] = _message(error)
            continue
        if size > max_bytes:
            errors[name] = f"attachment too large (more than {max_bytes} bytes)"
            continue
        attachments[name] = value
        sizes[name] = size
    # The object's exact size, from its members' (`"name":value` and a comma each): dropping one
    # subtracts it, with no writing out again of the rest.
    members = {name: len(to_json_bytes(name)) + 1 + size + 1 for name, size in sizes.items()}
    total = 1 + max(sum(members.values()), 1)
    for name in sorted(sizes, key=sizes.get, reverse=True):
        if total <= max_bytes:
            break
        del attachments[name]
        errors[name] = (f"attachment dropped: the attachments together exceed {max_bytes} bytes "
                        f"(this one is {sizes[name]} bytes)")
        total = 1 + max(total - 1 - members[name], 1)
    if errors:
        attachments[ERRORS_KEY] = errors
    return attachments


# --- the payload -------------------------------------------------------------------------------------

def _format_timestamp(value: Any) -> str:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return str(value)


def matched_bundle(document: Mapping[str, Any]) -> tuple[str, str]:
    """(uuid, version) of the bundle a document is about: a bundle event document names it in
    ``bundle_info``; an index document has ``uuid`` and the manifest's ``version``."""
    info = document.get("bundle_info") or {}
    uuid = info.get("uuid") or document.get("uuid")
    version = info.get("version") or (document.get("manifest") or {}).get("version") or document.get("version")
    if not uuid or not version:
        raise ValueError("the event document names no bundle (bundle_info.uuid / .version)")
    return uuid, version


def build_payload(subscription: Mapping[str, Any], event_document: Mapping[str, Any], transaction_id: str,
                  event_timestamp: Any, bundle_url: str, budget: Budget | None = None) -> dict[str, Any]:
    """The body of one notification of ``subscription`` about ``event_document`` (see the module
    docstring). ``event_timestamp`` is a string or a datetime (sent as ISO 8601 UTC). Attachments
    are evaluated within ``budget`` (see ``evaluate_attachments``)."""
    bundle_uuid, bundle_version = matched_bundle(event_document)
    payload: dict[str, Any] = {
        "transaction_id": str(transaction_id),
        "subscription_id": subscription["uuid"],
        "event_type": event_document.get("event_type", "CREATE"),
        "event_timestamp": _format_timestamp(event_timestamp),
        "bundle_url": bundle_url,
        "match": {"bundle_uuid": bundle_uuid, "bundle_version": bundle_version},
    }
    if subscription.get("es_query") is not None:
        payload["es_query"] = subscription["es_query"]
    else:
        # Always present for a JMESPath subscription (null: it matches every event), so a receiver
        # can tell the two kinds apart.
        payload["jmespath_query"] = subscription.get("jmespath_query")
    payload["attachments"] = evaluate_attachments(subscription.get("attachments"), event_document, budget=budget)
    return payload
