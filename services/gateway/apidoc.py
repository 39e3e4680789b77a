"""The API description (swagger.yml) as served at /v1/swagger.json.

The document differs between deployments only in where clients reach the gateway and in the token
settings, so each variant is built and serialised once per process (``swagger_json``) and served
with an ETag: the description is answered about as fast as a static file, and a client holding it
gets a 304. The interactive page at / that reads it is ``swagger_ui.py``.
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
def _template() -> dict:
    with open(SWAGGER_PATH, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def base_url(settings, request) -> str:
    """Scheme and host (and any path prefix) clients reach the gateway at, without a trailing /:
    ``DSS_PUBLIC_URL``, else the request's own (its Host was checked before routing: hosts.py)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    return request.host_url.rstrip("/")


def swagger_document(settings, request) -> dict:
    """The Swagger 2.0 document for this deployment, as seen by the client of ``request``."""
    return _build(*_variant(settings, request))


class SerializedDocument(NamedTuple):
    body: bytes
    etag: str


def swagger_json(settings, request) -> SerializedDocument:
    """``swagger_document`` as JSON bytes with their ETag, built once per variant per process."""
    return _serialized(*_variant(settings, request))


def _variant(settings, request) -> tuple[str, str, str, str]:
    """What the served document depends on: the base URL and the token settings."""
    return (base_url(settings, request), _first(settings.auth_audience), settings.auth_email_claim,
            settings.auth_group_claim)


@functools.lru_cache(maxsize=SERVED_VARIANTS)
def _serialized(base: str, audience: str, email_claim: str, group_claim: str) -> SerializedDocument:
    body = json.dumps(_build(base, audience, email_claim, group_claim)).encode()
    return SerializedDocument(body, hashlib.sha256(body).hexdigest()[:32])


def _build(base: str, audience: str, email_claim: str, group_claim: str) -> dict:
    doc = copy.deepcopy(_template())
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


def title() -> str:
    """The API's name and version, as the description's `info` gives them."""
    info = _template()["info"]
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
