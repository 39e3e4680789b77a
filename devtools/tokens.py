"""The local development token issuer: one RSA key, its JWKS, and tokens signed with it; and
service-account keys whose tokens the DSS CLIs mint themselves.

`make up` calls ``ensure_local_issuer`` so the gateway finds the JWKS named by the default
``DSS_AUTH_ISSUERS``; `make token` and the tests call ``mint_token``. The key id is the key's
RFC 7638 thumbprint, so the JWKS and the tokens agree without storing the kid anywhere.

`make sa-key` calls ``create_service_account_key``: a key file of the shape Google issues for a
service account (what dbio / hca read from GOOGLE_APPLICATION_CREDENTIALS), whose public key is
added to the JWKS file the gateway reads for that account (``services.gateway.auth.issuer_jwks_file``), with
the groups the operator grants the account in the same document (``services.gateway.auth.GRANTS_MEMBER``).
The grant lives with the keys rather than in a file beside them: one atomic write registers both,
the gateway re-reads both on the same change of the file, and deleting the file revokes both.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import pathlib
import time
from typing import Iterable

from joserfc import jwt
from joserfc.jwk import RSAKey

from services.gateway.auth import GRANTS_MEMBER, parse_grants

logger = logging.getLogger(__name__)

ALGORITHM = "RS256"
KEY_BITS = 2048


def _load_key(key_path: str | os.PathLike) -> RSAKey:
    return RSAKey.import_key(pathlib.Path(key_path).read_bytes())


def key_id(key: RSAKey) -> str:
    return key.thumbprint()


def _write_private(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` readable by the owner only, atomically (a reader never sees half a key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def jwks_document(key: RSAKey, kid: str | None = None) -> dict:
    """The public JWKS of ``key`` (private parts never included)."""
    public = key.as_dict(private=False)
    public.update({"kid": kid or key_id(key), "use": "sig", "alg": ALGORITHM})
    return {"keys": [public]}


def ensure_local_issuer(key_path: str | os.PathLike, jwks_path: str | os.PathLike,
                        kid: str | None = None) -> str:
    """Create the issuer key once and (re)write its JWKS when it differs; returns the key id.

    Idempotent: an existing key is kept, so tokens minted earlier stay valid across `make up`s.
    """
    key_path, jwks_path = pathlib.Path(key_path), pathlib.Path(jwks_path)
    if not key_path.exists():
        key = RSAKey.generate_key(KEY_BITS, private=True)
        _write_private(key_path, key.as_pem(private=True))
        logger.info("created local issuer key %s", key_path)
    key = _load_key(key_path)
    kid = kid or key_id(key)
    wanted = json.dumps(jwks_document(key, kid), indent=2, sort_keys=True) + "\n"
    current = jwks_path.read_text() if jwks_path.exists() else None
    if current != wanted:
        jwks_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = jwks_path.with_name(f".{jwks_path.name}.{os.getpid()}.tmp")
        tmp.write_text(wanted)
        os.replace(tmp, jwks_path)
        logger.info("wrote JWKS %s (kid %s)", jwks_path, kid)
    return kid


def mint_token(key_path: str | os.PathLike, issuer: str, audience: str, email: str,
               groups: Iterable[str] = (), group_claim: str = "https://auth.data.humancellatlas.org/group",
               email_claim: str = "email", lifetime_s: int = 3600, kid: str | None = None,
               now: int | None = None) -> str:
    """An RS256 JWT for ``email`` in ``groups`` signed with the local issuer key.

    ``audience`` may be comma-separated (as DSS_AUTH_AUDIENCE is): the first entry is used.
    """
    key = _load_key(key_path)
    now = int(time.time()) if now is None else int(now)
    aud = next((a.strip() for a in str(audience).split(",") if a.strip()), audience)
    claims = {
        "iss": issuer,
        "sub": email,
        "aud": aud,
        "iat": now,
        "exp": now + int(lifetime_s),
        email_claim: email,
        group_claim: [g for g in groups if g],
    }
    header = {"alg": ALGORITHM, "typ": "JWT", "kid": kid or key_id(key)}
    return jwt.encode(header, claims, key, algorithms=[ALGORITHM])


def local_jwks_path(issuers: str, issuer: str) -> str | None:
    """The JWKS file path that ``DSS_AUTH_ISSUERS`` names for ``issuer`` (None if a URL or absent)."""
    for pair in str(issuers).split(","):
        name, sep, source = pair.strip().partition("=")
        if sep and name.strip() == issuer and not source.strip().startswith(("http://", "https://")):
            return source.strip()
    return None


def mint_token_for_settings(settings, email: str, groups: Iterable[str] = (), lifetime_s: int = 3600) -> str:
    """``mint_token`` with issuer, audience and claim names taken from ``shared.config.Settings``."""
    return mint_token(settings.local_issuer_key, settings.local_issuer, settings.auth_audience, email,
                      groups, group_claim=settings.auth_group_claim, email_claim=settings.auth_email_claim,
                      lifetime_s=lifetime_s)


# --- service accounts ---------------------------------------------------------------------------

def _read_jwks(path: pathlib.Path) -> dict:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {"keys": []}
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError(f"{path} is not a JWKS document")
    return document


def trust_public_key(jwks_path: str | os.PathLike, key: RSAKey, kid: str, account: str | None = None,
                     groups: Iterable[str] | None = None) -> tuple[str, ...]:
    """Add ``key``'s public half to the JWKS at ``jwks_path`` (created if missing), keeping the
    keys already there, atomically: the gateway re-reads the file on its next token.

    ``groups`` (not None) becomes ``account``'s grant in that document, replacing any earlier one;
    None keeps it (a new account has none). Returns the account's grant as written."""
    jwks_path = pathlib.Path(jwks_path)
    jwks_path.parent.mkdir(parents=True, exist_ok=True)
    with open(jwks_path.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two sa-keys for one account at once both land
        document = _read_jwks(jwks_path)
        grants = {name: list(granted) for name, granted in parse_grants(document).items()}
        document["keys"] = [k for k in document["keys"] if k.get("kid") != kid] + jwks_document(key, kid)["keys"]
        if account is not None and groups is not None:
            grants[account] = list(dict.fromkeys(groups))
        if grants:
            document[GRANTS_MEMBER] = grants
        tmp = jwks_path.with_name(f".{jwks_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, jwks_path)
    return tuple(grants.get(account, ())) if account is not None else ()


def create_service_account_key(email: str, out_path: str | os.PathLike, jwks_path: str | os.PathLike,
                               project_id: str = "dss-local", groups: Iterable[str] | None = None) -> str:
    """Write a new service-account key file for ``email`` to ``out_path`` (owner-only) and trust
    its public key in ``jwks_path``; returns the key id (``private_key_id``).

    ``groups``: what the account is granted (its tokens' group claims count for nothing), replacing
    an earlier grant; None keeps the account's grant (none for a new account).

    The file has the fields of a Google service-account key; the CLIs use ``client_email`` (their
    tokens' ``iss``, ``sub`` and e-mail), ``private_key_id`` (the ``kid``) and ``private_key``."""
    groups = None if groups is None else [g.strip() for g in groups if g and g.strip()]
    if groups is not None:
        parse_grants({GRANTS_MEMBER: {email: groups}})  # a bad group name fails before anything is written
    key = RSAKey.generate_key(KEY_BITS, private=True)
    kid = key_id(key)
    document = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": kid,
        "private_key": key.as_pem(private=True).decode("ascii"),
        "client_email": email,
        "client_id": str(int(kid.encode().hex()[:16], 16)),
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    # The key file first: a trusted key whose private half was never written would be useless.
    _write_private(pathlib.Path(out_path), (json.dumps(document, indent=2) + "\n").encode())
    granted = trust_public_key(jwks_path, key, kid, email, groups)
    logger.debug("service account %s: key %s trusted through %s, groups %s", email, kid, jwks_path, granted)
    return kid


def account_groups(jwks_path: str | os.PathLike, email: str) -> tuple[str, ...]:
    """The groups the JWKS file at ``jwks_path`` grants ``email``."""
    return parse_grants(_read_jwks(pathlib.Path(jwks_path))).get(email, ())


def mint_service_account_token(key_file: str | os.PathLike, audience: str, lifetime_s: float = 3600,
                               **claims) -> str:
    """A token as dbio-cli 1.5.5 / hca 8.0.0 mint one from a service-account key file
    (``_get_jwt_from_service_account_credentials``): RS256, ``kid`` = ``private_key_id``, ``iss`` =
    ``sub`` = ``email`` = ``client_email``, float ``iat`` / ``exp``. ``claims`` add or replace claims
    (the clients send their group claim: dbio ``dbio``, hca ``hca``)."""
    account = json.loads(pathlib.Path(key_file).read_text())
    iat = time.time()
    payload = {"iss": account["client_email"], "sub": account["client_email"], "aud": audience, "iat": iat,
               "exp": iat + lifetime_s, "email": account["client_email"],
               "scope": ["email", "openid", "offline_access"], **claims}
    key = RSAKey.import_key(account["private_key"])
    return jwt.encode({"alg": ALGORITHM, "typ": "JWT", "kid": account["private_key_id"]}, payload, key,
                      algorithms=[ALGORITHM])
