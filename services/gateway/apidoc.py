"""The API description (swagger.yml) as served at /v1/swagger.json.

The document differs between deployments only in where clients reach the gateway, in the token
settings and in the access policy (``access.py``: which operations declare ``security``, so that
the dbio and hca clients send their token to exactly those), so each variant is built and
serialised once per process (``swagger_json``) and served with an ETag: the description is
answered about as fast as a static file, and a client holding it gets a 304. The interactive page
at / that reads it is ``swagger_ui.py``.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import pathlib
from typing import Any, NamedTuple
from urllib.parse import urlparse

import yaml

SWAGGER_PATH = pathlib.Path(__file__).with_name("swagger.yml")
HTTP_METHODS = ("get", "head", "put", "post", "patch", "delete", "options")
SECURITY_NAME = "OauthSecurity"
# Variants of the document kept serialised (least recently used dropped): one per name the gateway
# answers to (hosts.py refuses any other Host before routing), which is a handful in a deployment.
SERVED_VARIANTS = 32


@functools.lru_cache(maxsize=1)
def template() -> dict:
    """swagger.yml as written: the `public` access policy's description (read-only: copy it to change it)."""
    with open(SWAGGER_PATH, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def base_url(settings, request) -> str:
    """Scheme and host (and any path prefix) clients reach the gateway at, without a trailing /:
    ``DSS_PUBLIC_URL``, else the request's own (its Host was checked before routing: hosts.py)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    return request.host_url.rstrip("/")


def swagger_document(settings, request, policy=None) -> dict:
    """The Swagger 2.0 document for this deployment, as seen by the client of ``request``, under
    the ``access.AccessPolicy`` ``policy`` (None: the description as written, the public one)."""
    return _build(*_variant(settings, request, policy))


class SerializedDocument(NamedTuple):
    body: bytes
    etag: str


def swagger_json(settings, request, policy=None) -> SerializedDocument:
    """``swagger_document`` as JSON bytes with their ETag, built once per variant per process."""
    return _serialized(*_variant(settings, request, policy))


def _variant(settings, request, policy) -> tuple[str, str, str, str, frozenset, bool]:
    """What the served document depends on: the base URL, the token settings, the access policy."""
    protected = frozenset() if policy is None else policy.protected
    restricted_reads = policy is not None and bool(policy.read_groups)
    return (base_url(settings, request), _first(settings.auth_audience), settings.auth_email_claim,
            settings.auth_group_claim, protected, restricted_reads)


@functools.lru_cache(maxsize=SERVED_VARIANTS)
def _serialized(base: str, audience: str, email_claim: str, group_claim: str, protected: frozenset,
                restricted_reads: bool) -> SerializedDocument:
    body = json.dumps(_build(base, audience, email_claim, group_claim, protected, restricted_reads)).encode()
    return SerializedDocument(body, hashlib.sha256(body).hexdigest()[:32])


def _build(base: str, audience: str, email_claim: str, group_claim: str, protected: frozenset = frozenset(),
           restricted_reads: bool = False) -> dict:
    doc = copy.deepcopy(template())
    _declare_security(doc, protected, restricted_reads)
    url = urlparse(base)
    doc["host"] = url.netloc
    doc["schemes"] = [url.scheme or "https"]
    doc["basePath"] = url.path.rstrip("/") + "/v1"
    # dbio-cli 1.5.5 (dbio/util/__init__.py, SwaggerClient) reads exactly these keys of
    # securityDefinitions.OauthSecurity: `x-audience` (the `aud` of the tokens it mints),
    # `x-email-claim` and `x-group-claim` (the claim names it writes e-mail and group under);
    # it also reads `x-auth0-claim`, which this store does not use, so it is left out.
    security = doc["securityDefinitions"][SECURITY_NAME]
    security["x-audience"] = audience
    security["x-email-claim"] = email_claim
    security["x-group-claim"] = group_claim
    return doc


def _declare_security(doc: dict, protected: frozenset, restricted_reads: bool) -> None:
    """``security`` on every operation of ``protected`` (besides those swagger.yml marks), and
    the 401 and 403 answers each protected operation can then give, in the body its route
    answers errors with (problem+json; DRS's own on the DRS routes; none for HEAD)."""
    opened = False
    for path, method, operation in operations(doc):
        if operation["operationId"] in protected and not operation.get("security"):
            operation["security"] = [{SECURITY_NAME: []}]
            opened = True
            statuses = ("401", "403") if restricted_reads else ("401",)
        elif operation.get("security") and restricted_reads:
            statuses = ("403",)
        else:
            continue
        kind = "Drs" if path.startswith("/ga4gh/") else "Bodyless" if method == "head" else ""
        for status in statuses:
            operation["responses"].setdefault(status, {"$ref": f"#/responses/{AUTH_RESPONSES[kind, status]}"})
    if opened:
        doc["info"]["description"] += ("In this deployment reads need a token too: every operation that "
                                       "declares `security`.\n")


# (body kind, status) -> the response of swagger.yml's `responses` a protected operation gains
AUTH_RESPONSES = {("", "401"): "Unauthorized", ("", "403"): "Forbidden",
                  ("Drs", "401"): "DrsUnauthorized", ("Drs", "403"): "DrsForbidden",
                  ("Bodyless", "401"): "BodylessUnauthorized", ("Bodyless", "403"): "BodylessForbidden"}


def title() -> str:
    """The API's name and version, as the description's `info` gives them."""
    info = template()["info"]
    return f"{info['title']} API {info['version']}"


def _first(comma_separated: str) -> str:
    return next((part.strip() for part in str(comma_separated).split(",") if part.strip()), "")


def operations(doc: dict):
    """(path, method, operation) of every operation, in document order."""
    for path, path_item in doc["paths"].items():
        for method, operation in path_item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def resolve(doc: dict, node: Any) -> Any:
    """``node`` with its local ``$ref``s replaced by what they point to."""
    if isinstance(node, dict):
        if set(node) == {"$ref"} and node["$ref"].startswith("#/"):
            target: Any = doc
            for part in node["$ref"][2:].split("/"):
                target = target[part]
            return resolve(doc, target)
        return {key: resolve(doc, value) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(doc, item) for item in node]
    return node
