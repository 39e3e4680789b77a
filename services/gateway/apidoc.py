"""The API description (swagger.yml) as served at /v1/swagger.json, and the HTML page made from it."""
from __future__ import annotations

import copy
import functools
import html
import pathlib
import re
from typing import Any
from urllib.parse import urlparse

import yaml

SWAGGER_PATH = pathlib.Path(__file__).with_name("swagger.yml")
HTTP_METHODS = ("get", "head", "put", "post", "patch", "delete", "options")
SECURITY_NAME = "OauthSecurity"
_BACKTICKS = re.compile(r"`([^`]+)`")


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
    doc = copy.deepcopy(_template())
    base = urlparse(base_url(settings, request))
    doc["host"] = base.netloc
    doc["schemes"] = [base.scheme or "https"]
    doc["basePath"] = base.path.rstrip("/") + "/v1"
    # dbio-cli 1.5.5 (dbio/util/__init__.py, SwaggerClient) reads exactly these keys of
    # securityDefinitions.OauthSecurity: `x-audience` (the `aud` of the tokens it mints),
    # `x-email-claim` and `x-group-claim` (the claim names it writes e-mail and group under);
    # it also reads `x-auth0-claim`, which this store does not use, so it is left out.
    security = doc["securityDefinitions"][SECURITY_NAME]
    security["x-audience"] = _first(settings.auth_audience)
    security["x-email-claim"] = settings.auth_email_claim
    security["x-group-claim"] = settings.auth_group_claim
    return doc


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


def _text(value: str) -> str:
    """Escaped prose, with the documents' `code` spans as <code>."""
    return _BACKTICKS.sub(r"<code>\1</code>", html.escape(value))


def html_page(doc: dict) -> str:
    """A human-readable list of the endpoints of ``doc``: summaries, parameters, auth."""
    esc = html.escape
    base = f"{doc['schemes'][0]}://{doc['host']}{doc['basePath']}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(doc['info']['title'])} API</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "code{background:#f3f3f3;padding:0 .2em}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}"
        ".method{font-weight:bold;text-transform:uppercase}.auth{color:#a40}</style>",
        "</head><body>",
        f"<h1>{esc(doc['info']['title'])} API {esc(doc['info']['version'])}</h1>",
        f"<p>{_text(doc['info']['description'])}</p>",
        f'<p>Base URL: <code>{esc(base)}</code>. Machine-readable description: '
        f'<a href="{esc(doc["basePath"])}/swagger.json">swagger.json</a>.</p>',
    ]
    for path, method, operation in operations(doc):
        operation = resolve(doc, operation)
        anchor = esc(operation.get("operationId", f"{method}-{path}"))
        parts.append(f'<h2 id="{anchor}"><span class="method">{esc(method)}</span> '
                     f"<code>{esc(doc['basePath'] + path)}</code></h2>")
        parts.append(f"<p>{_text(operation.get('summary', ''))}</p>")
        if operation.get("description"):
            parts.append(f"<p>{_text(operation['description'])}</p>")
        if operation.get("security"):
            parts.append('<p class="auth">Requires <code>Authorization: Bearer &lt;JWT&gt;</code>.</p>')
        rows = []
        for param in operation.get("parameters", []):
            if param["in"] == "body":
                for name, prop in param.get("schema", {}).get("properties", {}).items():
                    required = name in param["schema"].get("required", [])
                    rows.append(_row(name, "body", prop.get("type", ""), required, prop.get("description", ""),
                                     prop.get("enum"), prop.get("default")))
            else:
                rows.append(_row(param["name"], param["in"], param.get("type", ""), param.get("required", False),
                                 param.get("description", ""), param.get("enum"), param.get("default")))
        if rows:
            parts.append("<table><tr><th>parameter</th><th>in</th><th>type</th><th>required</th>"
                         "<th>description</th></tr>" + "".join(rows) + "</table>")
        statuses = ", ".join(esc(str(code)) for code in operation.get("responses", {}))
        parts.append(f"<p>Statuses: {statuses}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _row(name, where, type_, required, description, enum, default) -> str:
    esc = html.escape
    extra = ""
    if enum:
        extra += " One of " + ", ".join(f"<code>{esc(str(v))}</code>" for v in enum) + "."
    if default is not None:
        extra += f" Default <code>{esc(str(default))}</code>."
    return (f"<tr><td><code>{esc(name)}</code></td><td>{esc(where)}</td><td>{esc(str(type_))}</td>"
            f"<td>{'yes' if required else 'no'}</td><td>{_text(description)}{extra}</td></tr>")
