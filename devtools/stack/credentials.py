"""What `make up`, `make token` and `make cert` make for clients to be trusted and to trust: the
local token issuer's key and JWKS, and the development CA and certificate the gateway serves with
`make up TLS=1` (recorded in ``var/run/gateway-tls.json`` until `make down`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import urllib.parse

from shared.config import Settings

from devtools import certificates, tokens
from devtools.certificates import DevCertificate
from devtools.stack.processes import ROOT, RUN_DIR, VAR
from devtools.stack.services import TLS_STATE, gateway_address

logger = logging.getLogger(__name__)

TLS_DIR = VAR / "tls"


def ensure_issuer(settings: Settings) -> str:
    jwks = tokens.local_jwks_path(settings.auth_issuers, settings.local_issuer)
    if jwks is None:
        logger.warning("DSS_AUTH_ISSUERS names no JWKS file for %s: the gateway will not trust local tokens",
                       settings.local_issuer)
        jwks = str(VAR / "auth" / "jwks.json")
    tokens.ensure_local_issuer(settings.local_issuer_key, jwks)
    return jwks


def tls_names(settings: Settings) -> tuple[str, ...]:
    """What the development certificate names: loopback, and the gateway's host and public host."""
    names = list(certificates.DEFAULT_NAMES)
    host, _ = gateway_address()
    names.append(host)
    if settings.public_url:
        names.append(urllib.parse.urlsplit(settings.public_url).hostname or "")
    return tuple(dict.fromkeys(n for n in names if n))


def ensure_tls(settings: Settings) -> DevCertificate:
    """The development CA and the gateway's certificate under var/tls (made once, re-issued when
    a name is missing or it nears its end)."""
    return certificates.ensure_dev_certificate(TLS_DIR, tls_names(settings))


def use_tls(certificate: DevCertificate) -> bool:
    """Make the gateway `up` starts serve HTTPS with ``certificate``; True if it was plain before."""
    was_plain = not TLS_STATE.exists()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    TLS_STATE.write_text(json.dumps(dataclasses.asdict(certificate)) + "\n")
    return was_plain


def relative(path: str) -> str:
    return os.path.relpath(path, ROOT) if path.startswith(str(ROOT)) else path
