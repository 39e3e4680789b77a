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

Who a token speaks for depends on who signed it:

- An *identity provider* (an issuer that is not an e-mail address: the local issuer
  ``https://dss.local/``, an OpenID provider) vouches for the people it names: the caller is its
  e-mail claim (``DSS_AUTH_EMAIL_CLAIM``, else an e-mail ``sub``), in the groups of its group claim.
- A *service account* (an e-mail-like issuer, of an exact or a pattern entry) holds its own keys,
  so it vouches for itself only: the caller is its ``iss``. A ``sub`` or e-mail claim naming anyone
  else is refused (401 ``identity_mismatch``), and its group claim is ignored: its groups are those
  the operator granted, in the ``dss_groups`` member of its JWKS *file* (``{account: [group]}``,
  written by `make sa-key GROUPS=`) and in ``DSS_AUTH_SERVICE_ACCOUNT_GROUPS``. A JWKS fetched from
  a URL grants nothing: its publisher is not the operator.

Administrators are named by identity (``DSS_ADMIN_EMAILS``), never by a claim.

Strangers cost little: a token passes every check that needs no key (shape, ``alg``, ``kid``,
``aud``, times, a service account naming itself) before any key set is read or fetched. A
per-account key set is kept (``AccountKeySets``) only once a signature verified with it, so tokens
naming made-up accounts cannot push real ones out; a URL found absent is remembered in a bounded
negative cache, and first fetches of accounts' URLs are rate-limited.

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
GRANTS_MEMBER = "dss_groups"   # JWKS file member {account: [group]}: what the operator granted (RFC 7517 §5)
PER_ISSUER_SOURCES_MAX = 1024  # key sets of accounts that signed a token, kept in memory (least recently used go)
PENDING_SOURCES_MAX = 256      # key sets looked up for accounts that have not signed anything yet
ABSENT_ISSUERS_MAX = 4096      # accounts' key-set URLs found absent (404), remembered ...
ABSENT_ISSUER_TTL_S = 60       # ... this long
NEW_ACCOUNT_FETCHES_PER_S = 2.0  # first fetches of accounts' key-set URLs, all accounts together ...
NEW_ACCOUNT_FETCH_BURST = 20     # ... with this many at once
# What may be put into a JWKS template: an e-mail address, so never a path separator or "..".
_TEMPLATE_ISSUER = re.compile(r"[A-Za-z0-9_%+-][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_KID = re.compile(r"[A-Za-z0-9._~+/=-]{1,128}")  # Google's are 40 hex digits, ours RFC 7638 thumbprints
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]+")
_GROUP = re.compile(r"[^\s,=]+")

Caller = dict  # {"email": str, "groups": [str], "is_admin": bool}


def _b64_json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def unverified_parts(token: str) -> tuple[dict, dict]:
    """Header and claims of a compact JWS, *not verified*: only to pick the issuer and key."""
    parts = token.split(".")
    if len(parts) != 3 or not _SIGNATURE.fullmatch(parts[2]):
        raise Unauthorized("the bearer token is not a JWT", "unauthorized")
    try:
        header, claims = _b64_json(parts[0]), _b64_json(parts[1])
    except (ValueError, binascii.Error, UnicodeError, RecursionError):
        raise Unauthorized("the bearer token is not a JWT", "unauthorized") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise Unauthorized("the bearer token is not a JWT", "unauthorized")
    return header, claims


def is_service_account(issuer: str) -> bool:
    """An e-mail-like issuer (no URL scheme): an account that signs its own tokens."""
    return "@" in issuer and "://" not in issuer


def _issuer_pattern(text: str) -> re.Pattern:
    """``*`` is any run of characters; everything else is literal."""
    return re.compile(".*".join(re.escape(part) for part in text.split("*")))


def parse_grants(document: Mapping) -> dict[str, tuple[str, ...]]:
    """The ``dss_groups`` member of a JWKS document: {account: (group, ...)}; none when absent."""
    grants = document.get(GRANTS_MEMBER, {})
    if not isinstance(grants, dict) or not all(
            isinstance(groups, list) and all(isinstance(g, str) and _GROUP.fullmatch(g) for g in groups)
            for groups in grants.values()):
        raise ValueError(f"`{GRANTS_MEMBER}` must map accounts to lists of group names")
    return {account: tuple(groups) for account, groups in grants.items()}


def _load_key_set(document: Any, source: str) -> KeySet:
    try:
        keys = [RSAKey.import_key(jwk) for jwk in document["keys"] if jwk.get("kty") == "RSA"]
    except (KeyError, TypeError, ValueError, JoseError) as error:
        raise ValueError(f"{source} is not a JWKS of RSA keys ({type(error).__name__})") from None
    return KeySet(keys)


class JWKSSource:
    """The keys of one issuer, re-read when they may have changed; for a file, also the groups
    the operator granted in it (``dss_groups``).

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
        self._grants: dict[str, tuple[str, ...]] = {}
        self._absent = False  # the file or URL does not exist (as opposed to: unreadable, unreachable)
        self._stamp: float | None = None  # file mtime, or monotonic fetch time for a URL
        self._lock = threading.Lock()

    @property
    def absent(self) -> bool:
        """The last look found no file / a 404 (not an outage)."""
        return self._absent

    def grants(self, account: str) -> tuple[str, ...]:
        """The groups this key set's file grants ``account`` (none for a URL)."""
        return self._grants.get(account, ())

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
            self._keys, self._grants, self._stamp, self._absent = None, {}, None, True
            return
        except OSError as error:
            logger.error("JWKS file %s unreadable: %s", self.location, error)
            self._keys, self._grants, self._stamp, self._absent = None, {}, None, False
            return
        self._absent = False
        if mtime == self._stamp and self._keys is not None:
            return
        try:
            with open(self.location, "rb") as handle:
                document = json.load(handle)
            keys = _load_key_set(document, self.location)
            self._keys, self._grants, self._stamp = keys, parse_grants(document), mtime
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


class _Budget:
    """A token bucket: ``take`` is true at most ``burst`` times at once, then ``per_s`` a second."""

    def __init__(self, per_s: float, burst: int):
        self.per_s, self.burst = per_s, burst
        self._left, self._stamp = float(burst), time.monotonic()

    def take(self) -> bool:  # the caller holds a lock
        now = time.monotonic()
        self._left = min(self.burst, self._left + (now - self._stamp) * self.per_s)
        self._stamp = now
        if self._left < 1:
            return False
        self._left -= 1
        return True


class AccountKeySets:
    """The key sets of templated issuers, one per account, by location.

    Kept so that accounts nobody has heard of cannot push out the ones in use: a key set is
    *known* (kept for the most recent ``PER_ISSUER_SOURCES_MAX`` accounts) only once a signature
    verified with it; until then it is *pending*, in a small LRU of its own. A URL found absent is
    remembered for ``ABSENT_ISSUER_TTL_S`` in a bounded negative cache; a file is not (its stat is
    as cheap as the cache, and `make sa-key` must be trusted at once). First fetches of URLs share
    one budget, so a flood of new accounts makes a bounded number of outbound requests (503 past it).
    """

    def __init__(self):
        self._known: OrderedDict[str, JWKSSource] = OrderedDict()
        self._pending: OrderedDict[str, JWKSSource] = OrderedDict()
        self._absent: OrderedDict[str, float] = OrderedDict()  # location -> monotonic expiry
        self._fetches = _Budget(NEW_ACCOUNT_FETCHES_PER_S, NEW_ACCOUNT_FETCH_BURST)
        self._lock = threading.Lock()

    def get(self, location: str) -> JWKSSource:
        with self._lock:
            for cache in (self._known, self._pending):
                if location in cache:
                    cache.move_to_end(location)
                    return cache[location]
            expiry = self._absent.get(location)
            if expiry is not None:
                if time.monotonic() < expiry:
                    raise Unauthorized("the token's issuer is not trusted", "unauthorized")
                del self._absent[location]
            source = JWKSSource(location, required=False)
            if source.is_url and not self._fetches.take():
                logger.warning("too many new accounts' key sets asked for: %s not fetched", location)
                raise Unavailable("too many new token issuers at once; retry shortly", "auth_busy")
            _put(self._pending, location, source, PENDING_SOURCES_MAX)
            return source

    def verified(self, source: JWKSSource) -> None:
        """A signature verified with ``source``: keep it among the known."""
        with self._lock:
            self._pending.pop(source.location, None)
            _put(self._known, source.location, source, PER_ISSUER_SOURCES_MAX)

    def found_absent(self, source: JWKSSource) -> None:
        with self._lock:
            self._pending.pop(source.location, None)
            self._known.pop(source.location, None)
            if source.is_url:
                _put(self._absent, source.location, time.monotonic() + ABSENT_ISSUER_TTL_S, ABSENT_ISSUERS_MAX)

    def sizes(self) -> dict[str, int]:
        return {"known": len(self._known), "pending": len(self._pending), "absent": len(self._absent)}


def _put(cache: OrderedDict, key: str, value: Any, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


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


def parse_account_groups(value: str) -> tuple[tuple[re.Pattern, str], ...]:
    """``pattern=group,...`` (DSS_AUTH_SERVICE_ACCOUNT_GROUPS) → ((issuer regex, group), ...).
    The last ``=`` separates: an e-mail's local part may hold one, a group name not."""
    grants = []
    for pair in str(value).split(","):
        if not pair.strip():
            continue
        pattern, sep, group = pair.rpartition("=")
        if not sep or not pattern.strip() or not _GROUP.fullmatch(group.strip()):
            raise ValueError(f"DSS_AUTH_SERVICE_ACCOUNT_GROUPS entry `{pair.strip()}` is not `pattern=group`")
        grants.append((_issuer_pattern(pattern.strip()), group.strip()))
    return tuple(grants)


def issuer_jwks_file(issuers: str, issuer: str) -> str | None:
    """The JWKS file through which ``DSS_AUTH_ISSUERS`` (``issuers``) trusts ``issuer``, as the
    gateway would read it; None when it trusts that issuer through a URL, or not at all."""
    location = TrustedIssuers(parse_issuers(issuers)).location(issuer)
    return None if location is None or location.startswith(("https://", "http://")) else location


class TrustedIssuers:
    """The issuers of ``DSS_AUTH_ISSUERS`` and their key sets: exact issuers first, then patterns
    in the order given. A pattern's JWKS with ``{iss}`` is one key set per matching issuer
    (``AccountKeySets``); without it, one key set for all of them."""

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
            if templated:
                JWKSSource(location.replace(ISSUER_PLACEHOLDER, "probe@example.org"))  # validates the scheme now
            self._patterns.append((_issuer_pattern(issuer), location, None if templated else JWKSSource(location)))
        self.accounts = AccountKeySets()

    def _entry(self, issuer: str) -> JWKSSource | str | None:
        """The shared key set that may sign for ``issuer``, or the location of its own; None if
        no entry trusts it. Pure: nothing is read."""
        if issuer in self._exact:
            return self._exact[issuer]
        for regex, location, shared in self._patterns:
            if not regex.fullmatch(issuer):
                continue
            if shared is not None:
                return shared
            if _TEMPLATE_ISSUER.fullmatch(issuer):
                value = quote(issuer, safe="@") if location.startswith(("https://", "http://")) else issuer
                return location.replace(ISSUER_PLACEHOLDER, value)
        return None

    def trusts(self, issuer: str) -> bool:
        return self._entry(issuer) is not None

    def location(self, issuer: str) -> str | None:
        """Where the keys that may sign for ``issuer`` are (a file path or URL); None if untrusted."""
        entry = self._entry(issuer)
        return entry.location if isinstance(entry, JWKSSource) else entry

    def source(self, issuer: str) -> JWKSSource | None:
        """The key set that may sign for ``issuer``; None if no entry trusts it. 401 for an
        account whose key-set URL was lately found absent, 503 past the budget of new ones."""
        entry = self._entry(issuer)
        return self.accounts.get(entry) if isinstance(entry, str) else entry

    def verified(self, source: JWKSSource) -> None:
        if not source.required:
            self.accounts.verified(source)

    def found_absent(self, source: JWKSSource) -> None:
        if not source.required:
            self.accounts.found_absent(source)


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
    account_groups: tuple[tuple[re.Pattern, str], ...] = ()
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
            account_groups=parse_account_groups(settings.auth_service_account_groups),
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
        claims, source = self._verify(token)
        return self.caller_from_claims(claims, source.grants(claims["iss"]))

    def verify(self, token: str) -> dict:
        """The claims of ``token`` once its signature and claims are verified."""
        return self._verify(token)[0]

    def _verify(self, token: str) -> tuple[dict, JWKSSource]:
        header, unverified = unverified_parts(token)
        issuer = self._check_without_keys(header, unverified)
        source = self.issuers.source(issuer)
        if source is None:
            raise Unauthorized("the token's issuer is not trusted", "unauthorized")
        try:
            candidates = self._candidate_keys(source, header.get("kid"))
        except Unauthorized:
            if source.absent:
                self.issuers.found_absent(source)
            raise
        claims = None
        for key in candidates:
            try:
                claims = jwt.decode(token, key, algorithms=[ALGORITHM]).claims
                break
            except JoseError:
                continue
        if claims is None:
            raise Unauthorized("the token's signature does not verify", "unauthorized")
        self._check_claims(claims, issuer)  # the signed claims are those checked above; cheap to be sure
        self.issuers.verified(source)
        return claims, source

    def _check_without_keys(self, header: Mapping, claims: Mapping) -> str:
        """Everything that can be refused before a key set is read or fetched; the issuer."""
        if header.get("alg") != ALGORITHM:
            raise Unauthorized(f"only {ALGORITHM} tokens are accepted", "unauthorized")
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or not self.issuers.trusts(issuer):
            raise Unauthorized("the token's issuer is not trusted", "unauthorized")
        kid = header.get("kid")
        if kid is not None and not (isinstance(kid, str) and _KID.fullmatch(kid)):
            raise Unauthorized("the token's key id is malformed", "unauthorized")
        self._check_claims(claims, issuer)
        if is_service_account(issuer):
            if kid is None:
                raise Unauthorized("a service account's token must name its key (`kid`)", "unauthorized")
            self._account_identity(claims)
        return issuer

    def _check_claims(self, claims: Mapping, issuer: str) -> None:
        registry = jwt.JWTClaimsRegistry(
            leeway=self.leeway_s,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "values": list(self.audiences)},
            exp={"essential": True},
        )
        try:
            registry.validate(dict(claims))
        except ExpiredTokenError:
            raise Unauthorized("the token has expired", "unauthorized") from None
        except MissingClaimError as error:
            raise Unauthorized(f"the token lacks the claim(s) {error.claim}", "unauthorized") from None
        except InvalidClaimError as error:
            # Claim *names* only: values may be personal data.
            raise Unauthorized(f"the token's `{error.claim}` claim is not acceptable", "unauthorized") from None
        except JoseError:
            raise Unauthorized("the token's claims are not acceptable", "unauthorized") from None

    def _candidate_keys(self, source: JWKSSource, kid: Any) -> list[RSAKey]:
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

    def _account_identity(self, claims: Mapping[str, Any]) -> str:
        """A service account's token speaks for the account only: its ``iss``. A ``sub`` or e-mail
        claim naming anyone else is refused, not ignored: such a token was made to mislead."""
        issuer = claims["iss"]
        for name in dict.fromkeys(("sub", self.email_claim)):
            value = claims.get(name)
            if value is not None and not (isinstance(value, str) and value.casefold() == issuer.casefold()):
                raise Unauthorized(f"the token's `{name}` claim names someone other than its issuer: "
                                   "a service account vouches only for itself", "identity_mismatch")
        return issuer

    def caller_from_claims(self, claims: Mapping[str, Any], granted: Iterable[str] = ()) -> Caller:
        """The caller of verified ``claims``. ``granted``: the groups the key set's file grants a
        service account (see the module)."""
        issuer = claims.get("iss")
        if isinstance(issuer, str) and is_service_account(issuer):
            email = self._account_identity(claims)
            groups = [*granted, *(group for pattern, group in self.account_groups if pattern.fullmatch(email))]
        else:
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
        return {"email": email, "groups": list(dict.fromkeys(groups)), "is_admin": email.lower() in self.admin_emails}

    # --- authorisation --------------------------------------------------------------------------
    def require_writer(self, caller: Caller) -> Caller:
        """Writes need a group in ``DSS_AUTH_ALLOWED_GROUPS``."""
        if not set(caller.get("groups") or ()) & set(self.allowed_groups):
            raise Forbidden("you are in no group allowed to write to this store (a service account is in the "
                            "groups granted to it, whatever its token claims)", "forbidden")
        return caller
