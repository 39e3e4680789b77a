"""Bearer-token authentication and the write policy of the store.

Tokens are RS256 JWTs from the issuers named in ``DSS_AUTH_ISSUERS`` (``issuer=JWKS`` pairs, JWKS
being an https URL or a file path relative to the working directory). Key sets are re-read when
their source changes (a file's mtime, a URL's cache expiring or a token naming an unknown key id),
so rotated keys are trusted without a restart. A verified token becomes a *caller*:
``{"email": str, "groups": [str], "is_admin": bool}``, the form every service receives.

Google service-account tokens (``iss`` = ``sub`` = the account's e-mail, ``kid`` header, float
``iat``/``exp``, as the DSS CLIs mint them) follow the same path: list the account as an issuer with
its JWKS URL.

Tokens are secrets: nothing here logs or echoes one, not even in error titles.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import os
import threading
import time
from typing import Any, Iterable, Mapping
from urllib.parse import urlparse

import requests
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError
from joserfc.jwk import KeySet, RSAKey

from shared.exceptions import Forbidden, Unauthorized, Unavailable

logger = logging.getLogger(__name__)

ALGORITHM = "RS256"
LEEWAY_S = 60            # clock skew tolerated on exp / nbf / iat
URL_JWKS_TTL_S = 300     # how long a fetched JWKS is trusted before it is fetched again
UNKNOWN_KID_REFETCH_S = 30  # at most one early re-fetch per this many seconds (unknown kids)
FETCH_TIMEOUT_S = 5
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}

Caller = dict  # {"email": str, "groups": [str], "is_admin": bool}


def _b64_json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def unverified_parts(token: str) -> tuple[dict, dict]:
    """Header and claims of a compact JWS, *not verified*: only to pick the issuer and key."""
    parts = token.split(".")
    if len(parts) != 3:
        raise Unauthorized("the bearer token is not a JWT", "unauthorized")
    try:
        header, claims = _b64_json(parts[0]), _b64_json(parts[1])
    except (ValueError, binascii.Error, UnicodeError):
        raise Unauthorized("the bearer token is not a JWT", "unauthorized") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise Unauthorized("the bearer token is not a JWT", "unauthorized")
    return header, claims


def _load_key_set(document: Any, source: str) -> KeySet:
    try:
        keys = [RSAKey.import_key(jwk) for jwk in document["keys"] if jwk.get("kty") == "RSA"]
    except (KeyError, TypeError, ValueError, JoseError) as error:
        raise ValueError(f"{source} is not a JWKS of RSA keys ({type(error).__name__})") from None
    return KeySet(keys)


class JWKSSource:
    """The keys of one issuer, re-read when they may have changed."""

    def __init__(self, location: str, ttl_s: float = URL_JWKS_TTL_S):
        self.location = location
        self.is_url = location.startswith(("https://", "http://"))
        if self.is_url and location.startswith("http://") and urlparse(location).hostname not in _LOOPBACK_HOSTS:
            # Keys fetched in clear text could be swapped in transit: only loopback may use http.
            raise ValueError(f"JWKS URL {location} must use https")
        self.ttl_s = ttl_s
        self._keys: KeySet | None = None
        self._stamp: float | None = None  # file mtime, or monotonic fetch time for a URL
        self._lock = threading.Lock()

    def keys(self, refresh: bool = False) -> KeySet:
        with self._lock:
            if self.is_url:
                self._refresh_url(refresh)
            else:
                self._refresh_file()
            if self._keys is None:
                raise Unavailable("the signing keys of the token issuer are unavailable", "auth_keys_unavailable")
            return self._keys

    def _refresh_file(self) -> None:
        try:
            mtime = os.stat(self.location).st_mtime_ns
        except OSError as error:
            logger.error("JWKS file %s unreadable: %s", self.location, error)
            self._keys, self._stamp = None, None
            return
        if mtime == self._stamp and self._keys is not None:
            return
        try:
            with open(self.location, "rb") as handle:
                self._keys = _load_key_set(json.load(handle), self.location)
            self._stamp = mtime
            logger.info("loaded JWKS %s (%d keys)", self.location, len(self._keys.keys))
        except (OSError, ValueError) as error:
            # A half-written file: keep the previous keys, try again on the next request.
            logger.error("JWKS file %s unusable: %s", self.location, error)

    def _refresh_url(self, early: bool) -> None:
        now = time.monotonic()
        if self._keys is not None and self._stamp is not None:
            age = now - self._stamp
            if age < self.ttl_s and not (early and age >= UNKNOWN_KID_REFETCH_S):
                return
        try:
            response = requests.get(self.location, timeout=FETCH_TIMEOUT_S)
            response.raise_for_status()
            self._keys = _load_key_set(response.json(), self.location)
            self._stamp = now
            logger.info("fetched JWKS %s (%d keys)", self.location, len(self._keys.keys))
        except (requests.RequestException, ValueError) as error:
            # Stale keys beat no keys: an issuer's outage must not lock everyone out at once.
            logger.warning("JWKS %s could not be fetched: %s", self.location, error)
            if self._keys is not None:
                self._stamp = now - self.ttl_s + UNKNOWN_KID_REFETCH_S  # retry soon, not per request


def parse_issuers(value: str) -> dict[str, str]:
    """``issuer=JWKS,issuer=JWKS`` → {issuer: JWKS}. The first ``=`` separates (issuers hold none)."""
    issuers = {}
    for pair in str(value).split(","):
        if not pair.strip():
            continue
        issuer, sep, source = pair.partition("=")
        if not sep or not issuer.strip() or not source.strip():
            raise ValueError(f"DSS_AUTH_ISSUERS entry `{pair.strip()}` is not `issuer=JWKS`")
        issuers[issuer.strip()] = source.strip()
    return issuers


def _split(value: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    return tuple(v.strip() for v in value if v and v.strip())


@dataclasses.dataclass
class Authenticator:
    issuers: Mapping[str, JWKSSource]
    audiences: tuple[str, ...]
    email_claim: str
    group_claim: str
    allowed_groups: tuple[str, ...]
    admin_emails: tuple[str, ...]
    leeway_s: int = LEEWAY_S

    @classmethod
    def from_settings(cls, settings) -> "Authenticator":
        return cls(
            issuers={issuer: JWKSSource(source) for issuer, source in parse_issuers(settings.auth_issuers).items()},
            audiences=_split(settings.auth_audience),
            email_claim=settings.auth_email_claim,
            group_claim=settings.auth_group_claim,
            allowed_groups=_split(settings.auth_allowed_groups),
            admin_emails=tuple(e.lower() for e in _split(settings.admin_emails)),
        )

    # --- authentication -------------------------------------------------------------------------
    def authenticate(self, authorization: str | None) -> Caller:
        """The caller named by an ``Authorization`` header value; ``Unauthorized`` otherwise."""
        if not authorization:
            raise Unauthorized("a bearer token is required", "unauthorized")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be `Bearer <token>`", "unauthorized")
        claims = self.verify(token)
        return self.caller_from_claims(claims)

    def verify(self, token: str) -> dict:
        header, unverified = unverified_parts(token)
        if header.get("alg") != ALGORITHM:
            raise Unauthorized(f"only {ALGORITHM} tokens are accepted", "unauthorized")
        issuer = unverified.get("iss")
        source = self.issuers.get(issuer) if isinstance(issuer, str) else None
        if source is None:
            raise Unauthorized("the token's issuer is not trusted", "unauthorized")
        claims = None
        for key in self._candidate_keys(source, header.get("kid")):
            try:
                claims = jwt.decode(token, key, algorithms=[ALGORITHM]).claims
                break
            except JoseError:
                continue
        if claims is None:
            raise Unauthorized("the token's signature does not verify", "unauthorized")
        registry = jwt.JWTClaimsRegistry(
            leeway=self.leeway_s,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "values": list(self.audiences)},
            exp={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise Unauthorized("the token has expired", "unauthorized") from None
        except MissingClaimError as error:
            raise Unauthorized(f"the token lacks the claim(s) {error.claim}", "unauthorized") from None
        except InvalidClaimError as error:
            # Claim *names* only: values may be personal data.
            raise Unauthorized(f"the token's `{error.claim}` claim is not acceptable", "unauthorized") from None
        except JoseError:
            raise Unauthorized("the token's claims are not acceptable", "unauthorized") from None
        return claims

    def _candidate_keys(self, source: JWKSSource, kid: Any) -> list[RSAKey]:
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("the token's key id is malformed", "unauthorized")
        keys = list(source.keys())
        if kid is None:
            return keys  # no kid: any key of the issuer may have signed it (sets are small)
        matching = [key for key in keys if key.kid == kid]
        if not matching:
            # Perhaps a key rotated in since the last read.
            matching = [key for key in source.keys(refresh=True) if key.kid == kid]
        if not matching:
            raise Unauthorized("the token is signed with an unknown key", "unauthorized")
        return matching

    def caller_from_claims(self, claims: Mapping[str, Any]) -> Caller:
        email = claims.get(self.email_claim)
        if not (isinstance(email, str) and "@" in email):
            subject = claims.get("sub")
            email = subject if isinstance(subject, str) and "@" in subject else None
        if not email:
            raise Unauthorized("the token names no e-mail address", "unauthorized")
        raw_groups = claims.get(self.group_claim)
        if isinstance(raw_groups, str):
            groups = [raw_groups]
        elif isinstance(raw_groups, list):
            groups = [g for g in raw_groups if isinstance(g, str)]
        else:
            groups = []
        return {"email": email, "groups": groups, "is_admin": email.lower() in self.admin_emails}

    # --- authorisation --------------------------------------------------------------------------
    def require_writer(self, caller: Caller) -> Caller:
        """Writes need a group in ``DSS_AUTH_ALLOWED_GROUPS``."""
        if not set(caller.get("groups") or ()) & set(self.allowed_groups):
            raise Forbidden("your token's group is not allowed to write to this store", "forbidden")
        return caller
