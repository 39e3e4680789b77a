"""Bearer-token authentication and the write policy of the store.

Tokens are RS256 JWTs from the issuers named in ``DSS_AUTH_ISSUERS`` (``issuer=JWKS`` pairs, JWKS
being an https URL or a file path relative to the working directory). Key sets are re-read when
their source changes (a file's mtime, a URL's cache expiring or a token naming an unknown key id),
so rotated keys are trusted without a restart. A verified token becomes a *caller*:
``{"email": str, "groups": [str], "is_admin": bool}``, the form every service receives.

Service accounts: the DSS CLIs (dbio, hca) mint their own tokens from a Google-style key file,
``iss`` = ``sub`` = the account's e-mail, header ``kid`` = the key's id, float ``iat``/``exp``. Each
account is an issuer of its own. An issuer of ``DSS_AUTH_ISSUERS`` may therefore be a pattern with
``*`` (any run of characters) whose JWKS location holds ``{iss}``, replaced by the token's issuer:
``*@my-project.iam.gserviceaccount.com=https://www.googleapis.com/service_accounts/v1/jwk/{iss}``
trusts the keys Google publishes for every account of a project, and
``*=var/auth/service-accounts/{iss}.json`` every account whose JWKS file is there (what `make
sa-key` writes; deleting the file revokes the account). Such a per-issuer key set is looked up when
a token names it, so accounts are added and removed without a restart; one that does not exist
(no file, or 404) means "issuer not trusted". Only e-mail-like issuers are put into a template.

Tokens are secrets: nothing here logs or echoes one, not even in error titles.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from typing import Any, Iterable, Mapping
from urllib.parse import quote, urlparse

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
ISSUER_PLACEHOLDER = "{iss}"
PER_ISSUER_SOURCES_MAX = 1024  # key sets of pattern issuers kept in memory (least recently used go)
# What may be put into a JWKS template: an e-mail address, so never a path separator or "..".
_TEMPLATE_ISSUER = re.compile(r"[A-Za-z0-9_%+-][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")

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
    """The keys of one issuer, re-read when they may have changed.

    ``required``: a missing file / 404 is an outage of a configured issuer (503). Otherwise (an
    account of a pattern issuer) it means the issuer is not trusted (401), and is remembered as
    briefly as an unknown key id is.
    """

    def __init__(self, location: str, ttl_s: float = URL_JWKS_TTL_S, required: bool = True):
        self.location = location
        self.is_url = location.startswith(("https://", "http://"))
        if self.is_url and location.startswith("http://") and urlparse(location).hostname not in _LOOPBACK_HOSTS:
            # Keys fetched in clear text could be swapped in transit: only loopback may use http.
            raise ValueError(f"JWKS URL {location} must use https")
        self.ttl_s = ttl_s
        self.required = required
        self._keys: KeySet | None = None
        self._absent = False  # the file or URL does not exist (as opposed to: unreadable, unreachable)
        self._stamp: float | None = None  # file mtime, or monotonic fetch time for a URL
        self._lock = threading.Lock()

    def keys(self, refresh: bool = False) -> KeySet:
        with self._lock:
            if self.is_url:
                self._refresh_url(refresh)
            else:
                self._refresh_file()
            if self._keys is None:
                if self._absent and not self.required:
                    raise Unauthorized("the token's issuer is not trusted", "unauthorized")
                raise Unavailable("the signing keys of the token issuer are unavailable", "auth_keys_unavailable")
            return self._keys

    def _refresh_file(self) -> None:
        try:
            mtime = os.stat(self.location).st_mtime_ns
        except FileNotFoundError:
            if self.required:
                logger.error("JWKS file %s does not exist", self.location)
            self._keys, self._stamp, self._absent = None, None, True
            return
        except OSError as error:
            logger.error("JWKS file %s unreadable: %s", self.location, error)
            self._keys, self._stamp, self._absent = None, None, False
            return
        self._absent = False
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
        if self._stamp is not None:
            age = now - self._stamp
            if self._keys is not None and age < self.ttl_s and not (early and age >= UNKNOWN_KID_REFETCH_S):
                return
            if self._absent and age < UNKNOWN_KID_REFETCH_S:
                return
        try:
            response = requests.get(self.location, timeout=FETCH_TIMEOUT_S)
            if response.status_code in (404, 410) and not self.required:
                self._keys, self._absent, self._stamp = None, True, now
                return
            response.raise_for_status()
            self._keys = _load_key_set(response.json(), self.location)
            self._absent, self._stamp = False, now
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


def issuer_jwks_file(issuers: str, issuer: str) -> str | None:
    """The JWKS file through which ``DSS_AUTH_ISSUERS`` (``issuers``) trusts ``issuer``, as the
    gateway would read it; None when it trusts that issuer through a URL, or not at all."""
    trusted = TrustedIssuers(parse_issuers(issuers))
    source = trusted.source(issuer)
    return None if source is None or source.is_url else source.location


class TrustedIssuers:
    """The issuers of ``DSS_AUTH_ISSUERS`` and their key sets: exact issuers first, then patterns
    in the order given. A pattern's JWKS with ``{iss}`` is one key set per matching issuer (kept
    for the most recent ``PER_ISSUER_SOURCES_MAX``); without it, one key set for all of them."""

    def __init__(self, entries: Mapping[str, str]):
        self._exact: dict[str, JWKSSource] = {}
        self._patterns: list[tuple[re.Pattern, str, JWKSSource | None]] = []
        for issuer, location in entries.items():
            templated = ISSUER_PLACEHOLDER in location
            if "*" not in issuer:
                if templated:
                    raise ValueError(f"DSS_AUTH_ISSUERS: `{ISSUER_PLACEHOLDER}` needs an issuer pattern with `*` "
                                     f"(`{issuer}` names one issuer)")
                self._exact[issuer] = JWKSSource(location)
                continue
            regex = re.compile(".*".join(re.escape(part) for part in issuer.split("*")))
            if templated:
                JWKSSource(location.replace(ISSUER_PLACEHOLDER, "probe@example.org"))  # validates the scheme now
            self._patterns.append((regex, location, None if templated else JWKSSource(location)))
        self._per_issuer: OrderedDict[str, JWKSSource] = OrderedDict()
        self._lock = threading.Lock()

    def source(self, issuer: str) -> JWKSSource | None:
        """The key set that may sign for ``issuer``; None if no entry trusts it."""
        if issuer in self._exact:
            return self._exact[issuer]
        for regex, location, shared in self._patterns:
            if not regex.fullmatch(issuer):
                continue
            if shared is not None:
                return shared
            if _TEMPLATE_ISSUER.fullmatch(issuer):
                return self._source_for(issuer, location)
        return None

    def _source_for(self, issuer: str, template: str) -> JWKSSource:
        key = f"{template}\n{issuer}"
        with self._lock:
            source = self._per_issuer.get(key)
            if source is None:
                value = quote(issuer, safe="@") if template.startswith(("https://", "http://")) else issuer
                source = JWKSSource(template.replace(ISSUER_PLACEHOLDER, value), required=False)
                self._per_issuer[key] = source
                if len(self._per_issuer) > PER_ISSUER_SOURCES_MAX:
                    self._per_issuer.popitem(last=False)
            else:
                self._per_issuer.move_to_end(key)
            return source


def _split(value: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    return tuple(v.strip() for v in value if v and v.strip())


@dataclasses.dataclass
class Authenticator:
    issuers: TrustedIssuers
    audiences: tuple[str, ...]
    email_claim: str
    group_claim: str
    allowed_groups: tuple[str, ...]
    admin_emails: tuple[str, ...]
    leeway_s: int = LEEWAY_S

    @classmethod
    def from_settings(cls, settings) -> "Authenticator":
        return cls(
            issuers=TrustedIssuers(parse_issuers(settings.auth_issuers)),
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
        source = self.issuers.source(issuer) if isinstance(issuer, str) else None
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
