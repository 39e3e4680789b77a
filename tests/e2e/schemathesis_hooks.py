"""Schemathesis hooks of tests/e2e/test_api_description.py, loaded by the `st` process (never by
pytest: it imports nothing of the project).

The description states every rule of a request's shape that JSON Schema can say. Some refusals
depend on what the store holds (a file that is not there), or on rules beyond Swagger 2.0 (two
parameters that exclude each other, a JMESPath that must parse, a callback host that must
resolve); the description documents them as 4xx answers with their `code`. A request valid by
the description that gets one of exactly those answers is the API keeping its word, so
`filter_failure` drops it from the positive-data check; any other refusal of a valid request
(an `illegal_uuid` for a uuid the pattern allows, say) stays a failure.
"""
import json

import schemathesis

# The refusals every operation with a body may give to any body: the deployment's size limit.
BODY_REFUSALS = {(413, "payload_too_large")}

# operationId -> the (status, code) refusals of content the description documents but cannot express.
CONTENT_REFUSALS = {
    # The staged object decides: missing, unlabelled, mislabelled, changed while read; and the
    # deployment's staging areas (DSS_INGEST_SOURCES) which buckets may be read at all.
    "putFile": {(422, "source_not_found"), (422, "missing_checksum"), (422, "invalid_checksum"),
                (422, "checksum_mismatch"), (422, "source_changed"), (403, "source_not_allowed")} | BODY_REFUSALS,
    # Files must exist in the replica and names be unique (the name rules are in the pattern).
    "putBundle": {(400, "file_missing"), (400, "duplicate_filename")} | BODY_REFUSALS,
    "patchBundle": {(400, "file_missing"), (400, "duplicate_filename")} | BODY_REFUSALS,
    "deleteBundle": BODY_REFUSALS,
    # Both kinds of URL at once: two parameters that exclude each other.
    "getBundle": {(400, "only_one_urltype"), (400, "illegal_token")},
    # A continuation token is valid only as the API handed it out.
    "getFile": {(400, "illegal_token")},
    "listEvents": {(400, "illegal_date")},
    # A destination must be a bucket of the replica's cloud that the store can write to, and one
    # the operator allowed; a notice goes to the caller's own address.
    "checkoutBundle": {(400, "invalid_destination"), (403, "destination_not_allowed"),
                       (403, "email_not_allowed")} | BODY_REFUSALS,
    # The query language: a query outside the supported subset, or too costly.
    "search": {(400, "elasticsearch_bad_request"), (400, "query_too_complex"), (400, "search_timeout")}
    | BODY_REFUSALS,
    "putSubscription": {
        (400, "conflicting_queries"), (400, "elasticsearch_bad_request"), (400, "query_too_complex"),
        (400, "invalid_jmespath_query"), (400, "jmespath_too_costly"),
        (400, "invalid_attachment_name"), (400, "invalid_attachment_expression"),
        (400, "callback_url_invalid"), (400, "callback_url_scheme"), (400, "callback_url_unresolvable"),
        (400, "callback_url_forbidden_address"), (400, "invalid_form_fields"), (400, "invalid_payload_form_field"),
        (406, "too_many_subscriptions"),
    } | BODY_REFUSALS,
    # Every item must exist in the replica.
    "putCollection": {(422, "invalid_link")} | BODY_REFUSALS,
    "patchCollection": {(422, "invalid_link")} | BODY_REFUSALS,
}

DRS_OBJECT_OPERATIONS = ("getDrsObject", "getDrsAccessUrl")


def _code(response) -> str | None:
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def _two_versions(case) -> bool:
    """A DRS object id `{uuid}.{version}` with another `version` parameter (DRS 400, which has no code)."""
    _, dot, pinned = str((case.path_parameters or {}).get("object_id", "")).partition(".")
    version = (case.query or {}).get("version")
    return bool(dot and version and pinned != version)


@schemathesis.hook
def filter_failure(context, failure, case, response):
    operation_id = case.operation.definition.raw.get("operationId")
    if failure.code == "ST202":  # a schema-valid request rejected
        if operation_id in DRS_OBJECT_OPERATIONS and response.status_code == 400 and _two_versions(case):
            return False
        return (response.status_code, _code(response)) not in CONTENT_REFUSALS.get(operation_id, set())
    if failure.code == "ST201" and operation_id == "patchBundle":  # a schema-violating request accepted
        # `add_files` is marked required for the generated CLIs (see the description) but may be
        # left out: a body that only lacks it is valid.
        return not (isinstance(case.body, dict) and "add_files" not in case.body)
    return True
