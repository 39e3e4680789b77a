"""services.gateway.auth without a server: issuers, key sources, claims."""
import base64
import json
import os
import time

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import RSAKey

from services.gateway import auth
from services.gateway.auth import Authenticator, JWKSSource, TrustedIssuers, issuer_jwks_file, parse_issuers
from devtools.tokens import (create_service_account_key, ensure_local_issuer, jwks_document,
                             mint_service_account_token, mint_token)
from shared.config import Settings
from shared.exceptions import Forbidden, Unauthorized, Unavailable

ISSUER = "https://issuer.test/"
AUDIENCE = "https://dss.test/"
GROUP_CLAIM = "https://auth.data.humancellatlas.org/group"


@pytest.fixture
def key_files(tmp_path):
    key, jwks = tmp_path / "issuer.pem", tmp_path / "jwks.json"
    ensure_local_issuer(key, jwks)
    return key, jwks


def authenticator(jwks, **overrides):
    config = {"DSS_AUTH_ISSUERS": f"{ISSUER}={jwks}", "DSS_AUTH_AUDIENCE": f"https://other/,{AUDIENCE}",
              "DSS_AUTH_EMAIL_CLAIM": "email", "DSS_AUTH_GROUP_CLAIM": GROUP_CLAIM,
              "DSS_AUTH_ALLOWED_GROUPS": "dbio,hca", "DSS_ADMIN_EMAILS": "Admin@Example.org", **overrides}
    return Authenticator.from_settings(Settings.from_config(config, environ={}))


def test_parse_issuers():
    assert parse_issuers("https://a/=var/a.json, b@x.iam.gserviceaccount.com=https://k/jwk?x=1") == {
        "https://a/": "var/a.json", "b@x.iam.gserviceaccount.com": "https://k/jwk?x=1"}
    with pytest.raises(ValueError):
        parse_issuers("no-separator")


def test_http_jwks_only_on_loopback():
    JWKSSource("http://127.0.0.1:1/jwks.json")
    with pytest.raises(ValueError):
        JWKSSource("http://keys.example.org/jwks.json")


def test_caller(key_files):
    key, jwks = key_files
    token = mint_token(key, ISSUER, AUDIENCE, "admin@example.org", ["hca"], group_claim=GROUP_CLAIM)
    caller = authenticator(jwks).authenticate(f"bearer {token}")
    assert caller == {"email": "admin@example.org", "groups": ["hca"], "is_admin": True}


def test_email_falls_back_to_sub(key_files):
    key, jwks = key_files
    a = authenticator(jwks)
    assert a.caller_from_claims({"sub": "x@example.org"})["email"] == "x@example.org"
    with pytest.raises(Unauthorized):
        a.caller_from_claims({"sub": "auth0|12345"})


def test_writer_needs_an_allowed_group(key_files):
    _, jwks = key_files
    a = authenticator(jwks)
    a.require_writer({"email": "x@example.org", "groups": ["other", "dbio"], "is_admin": False})
    with pytest.raises(Forbidden):
        a.require_writer({"email": "x@example.org", "groups": ["other"], "is_admin": False})


def test_missing_exp_is_refused(key_files):
    key, jwks = key_files
    private = RSAKey.import_key(key.read_bytes())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "email": "x@example.org", "iat": int(time.time())}
    token = jwt.encode({"alg": "RS256", "kid": private.thumbprint()}, claims, private, algorithms=["RS256"])
    with pytest.raises(Unauthorized, match="exp"):
        authenticator(jwks).authenticate(f"Bearer {token}")


def test_small_clock_skew_is_tolerated(key_files):
    key, jwks = key_files
    token = mint_token(key, ISSUER, AUDIENCE, "x@example.org", ["dbio"], group_claim=GROUP_CLAIM,
                       now=time.time() + 20)  # issued "in the future" by a clock 20 s ahead
    assert authenticator(jwks).authenticate(f"Bearer {token}") == {
        "email": "x@example.org", "groups": ["dbio"], "is_admin": False}


def test_missing_jwks_file_is_unavailable(tmp_path, key_files):
    key, _ = key_files
    token = mint_token(key, ISSUER, AUDIENCE, "x@example.org", ["dbio"], group_claim=GROUP_CLAIM)
    with pytest.raises(Unavailable):
        authenticator(tmp_path / "absent.json").authenticate(f"Bearer {token}")


def test_half_written_jwks_keeps_the_previous_keys(key_files):
    key, jwks = key_files
    a = authenticator(jwks)
    token = mint_token(key, ISSUER, AUDIENCE, "x@example.org", ["dbio"], group_claim=GROUP_CLAIM)
    caller = a.authenticate(f"Bearer {token}")
    assert caller["email"] == "x@example.org"
    jwks.write_text('{"keys": [')
    os.utime(jwks, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert a.authenticate(f"Bearer {token}") == caller  # still verified with the keys read before


class FakeResponse:
    def __init__(self, document, status_code=200):
        self.document = document
        self.status_code = status_code

    def raise_for_status(self):
        if self.status_code >= 400:
            raise requests.HTTPError(f"{self.status_code}")

    def json(self):
        return self.document


def test_url_jwks_is_cached_and_refetched_for_new_kids(key_files, tmp_path, monkeypatch):
    key, _ = key_files
    new_key = tmp_path / "new.pem"
    ensure_local_issuer(new_key, tmp_path / "new.json")
    served = {"doc": jwks_document(RSAKey.import_key(key.read_bytes()))}
    fetches = []

    def fake_get(url, timeout):
        fetches.append(url)
        return FakeResponse(served["doc"])

    monkeypatch.setattr(auth.requests, "get", fake_get)
    monkeypatch.setattr(auth, "UNKNOWN_KID_REFETCH_S", 0)
    a = authenticator("https://keys.example.org/jwks.json")
    for _ in range(3):
        a.authenticate("Bearer " + mint_token(key, ISSUER, AUDIENCE, "x@example.org", ["dbio"],
                                              group_claim=GROUP_CLAIM))
    assert len(fetches) == 1  # cached

    served["doc"] = jwks_document(RSAKey.import_key(new_key.read_bytes()))
    a.authenticate("Bearer " + mint_token(new_key, ISSUER, AUDIENCE, "x@example.org", ["dbio"],
                                          group_claim=GROUP_CLAIM))
    assert len(fetches) == 2  # an unknown kid fetched the set again


def test_url_outage_keeps_stale_keys(key_files, monkeypatch):
    key, _ = key_files
    document = jwks_document(RSAKey.import_key(key.read_bytes()))
    calls = []

    def flaky_get(url, timeout):
        calls.append(url)
        if len(calls) > 1:
            raise requests.ConnectionError("down")
        return FakeResponse(document)

    monkeypatch.setattr(auth.requests, "get", flaky_get)
    a = authenticator("https://keys.example.org/jwks.json")
    source = a.issuers.source(ISSUER)
    source.keys()
    source._stamp -= auth.URL_JWKS_TTL_S + 1  # expired
    token = mint_token(key, ISSUER, AUDIENCE, "x@example.org", ["dbio"], group_claim=GROUP_CLAIM)
    assert a.authenticate(f"Bearer {token}")["email"] == "x@example.org"
    assert len(calls) == 2


def test_titles_never_contain_the_token(key_files):
    key, jwks = key_files
    a = authenticator(jwks)
    for token in [mint_token(key, ISSUER, "https://elsewhere/", "x@example.org", ["dbio"]),
                  mint_token(key, "https://untrusted/", AUDIENCE, "x@example.org", ["dbio"]),
                  mint_token(key, ISSUER, AUDIENCE, "x@example.org", ["dbio"], now=0)]:
        with pytest.raises(Unauthorized) as caught:
            a.authenticate(f"Bearer {token}")
        assert token not in str(caught.value) and token.split(".")[1] not in json.dumps(caught.value.args)


# --- service accounts: pattern issuers with a JWKS per account ----------------------------------------

SA = "robot@dss-local.iam.example.org"


def cli_token(key_file, audience=AUDIENCE, lifetime_s=3600, **extra):
    """A token as dbio-cli / hca mint it from a service-account key file (the group as a string)."""
    return mint_service_account_token(key_file, audience, lifetime_s, **{GROUP_CLAIM: "dbio", **extra})


def test_service_account_key_file(tmp_path):
    jwks = tmp_path / "accounts" / f"{SA}.json"
    kid = create_service_account_key(SA, tmp_path / "key.json", jwks)
    account = json.loads((tmp_path / "key.json").read_text())
    assert (tmp_path / "key.json").stat().st_mode & 0o777 == 0o600
    assert account["type"] == "service_account" and account["client_email"] == SA
    assert account["private_key_id"] == kid and account["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    published = json.loads(jwks.read_text())["keys"]
    assert [k["kid"] for k in published] == [kid] and "d" not in published[0]  # the public half only
    second = create_service_account_key(SA, tmp_path / "key2.json", jwks)
    assert [k["kid"] for k in json.loads(jwks.read_text())["keys"]] == [kid, second]  # both trusted


def test_accounts_are_trusted_from_their_file_when_it_appears(tmp_path):
    accounts = tmp_path / "accounts"
    a = authenticator(tmp_path / "unused.json", DSS_AUTH_ISSUERS=f"*@dss-local.iam.example.org={accounts}/{{iss}}.json")
    create_service_account_key(SA, tmp_path / "key.json", tmp_path / "elsewhere.json")
    with pytest.raises(Unauthorized, match="issuer is not trusted"):
        a.authenticate(f"Bearer {cli_token(tmp_path / 'key.json')}")
    # `make sa-key` while the gateway runs: trusted at the next token, no restart.
    create_service_account_key(SA, tmp_path / "key.json.new", accounts / f"{SA}.json", groups=["hca"])
    caller = a.authenticate(f"Bearer {cli_token(tmp_path / 'key.json.new')}")
    assert caller == {"email": SA, "groups": ["hca"], "is_admin": False}  # granted, whatever the token claims
    # Revoked by deleting its file.
    (accounts / f"{SA}.json").unlink()
    with pytest.raises(Unauthorized, match="issuer is not trusted"):
        a.authenticate(f"Bearer {cli_token(tmp_path / 'key.json.new')}")


def test_an_account_cannot_sign_for_another(tmp_path):
    accounts = tmp_path / "accounts"
    a = authenticator(tmp_path / "unused.json", DSS_AUTH_ISSUERS=f"*={accounts}/{{iss}}.json")
    create_service_account_key(SA, tmp_path / "mine.json", accounts / f"{SA}.json")
    other = "other@dss-local.iam.example.org"
    create_service_account_key(other, tmp_path / "other.json", accounts / f"{other}.json")
    forged = cli_token(tmp_path / "mine.json", iss=other, sub=other, email=other)
    with pytest.raises(Unauthorized, match="unknown key"):
        a.authenticate(f"Bearer {forged}")


@pytest.mark.parametrize("issuer", ["../etc/x@example.org", "a/b@example.org", "https://issuer/", ".@x", "x@y"])
def test_only_email_like_issuers_fill_a_template(tmp_path, issuer):
    trusted = TrustedIssuers({"*": f"{tmp_path}/{{iss}}.json"})
    assert trusted.source(issuer) is None
    assert trusted.source("robot@example.org").location == f"{tmp_path}/robot@example.org.json"


def test_issuer_entries(tmp_path):
    trusted = TrustedIssuers(parse_issuers(
        f"https://dss.local/={tmp_path}/local.json,*@corp.example.org={tmp_path}/corp.json,"
        f"*@x.iam.gserviceaccount.com=https://keys.example.org/jwk/{{iss}}"))
    assert trusted.source("https://dss.local/").location == f"{tmp_path}/local.json"
    assert trusted.source("a@corp.example.org") is trusted.source("b@corp.example.org")  # one shared set
    assert trusted.source("a+b@x.iam.gserviceaccount.com").location == \
        "https://keys.example.org/jwk/a%2Bb@x.iam.gserviceaccount.com"
    assert trusted.source("a@elsewhere.example.org") is None
    with pytest.raises(ValueError, match="pattern"):
        TrustedIssuers({"robot@example.org": "keys/{iss}.json"})
    with pytest.raises(ValueError, match="https"):
        TrustedIssuers({"*@example.org": "http://keys.example.org/{iss}"})


def test_issuer_jwks_file(tmp_path):
    issuers = f"https://dss.local/=var/auth/jwks.json,*@x.iam.gserviceaccount.com=https://k/{{iss}},*=var/sa/{{iss}}.json"
    assert issuer_jwks_file(issuers, "you@example.org") == "var/sa/you@example.org.json"
    assert issuer_jwks_file(issuers, "a@x.iam.gserviceaccount.com") is None  # trusted through a URL
    assert issuer_jwks_file("https://dss.local/=var/auth/jwks.json", "you@example.org") is None


def test_url_per_account_404_is_untrusted_and_remembered(key_files, tmp_path, monkeypatch):
    fetches = []

    def fake_get(url, timeout):
        fetches.append(url)
        return FakeResponse({}, status_code=404)

    monkeypatch.setattr(auth.requests, "get", fake_get)
    a = authenticator(tmp_path / "unused.json",
                      DSS_AUTH_ISSUERS="*@x.iam.gserviceaccount.com=https://keys.example.org/jwk/{iss}")
    account = "gone@x.iam.gserviceaccount.com"
    create_service_account_key(account, tmp_path / "key.json", tmp_path / "elsewhere.json")
    for _ in range(2):
        with pytest.raises(Unauthorized, match="issuer is not trusted"):
            a.authenticate(f"Bearer {cli_token(tmp_path / 'key.json')}")
    assert fetches == [f"https://keys.example.org/jwk/{account}"]  # the 404 is remembered a while


def test_url_per_account_outage_is_unavailable(tmp_path, monkeypatch):
    def down(url, timeout):
        raise requests.ConnectionError("down")

    monkeypatch.setattr(auth.requests, "get", down)
    a = authenticator(tmp_path / "unused.json",
                      DSS_AUTH_ISSUERS="*@x.iam.gserviceaccount.com=https://keys.example.org/jwk/{iss}")
    create_service_account_key("a@x.iam.gserviceaccount.com", tmp_path / "key.json", tmp_path / "elsewhere.json")
    with pytest.raises(Unavailable):
        a.authenticate(f"Bearer {cli_token(tmp_path / 'key.json')}")


def test_hca_audience_is_accepted_by_default(tmp_path):
    """hca 8.0.0 mints for https://dev.data.humancellatlas.org/ whatever the spec says."""
    accounts = tmp_path / "accounts"
    settings = Settings.from_config({"DSS_AUTH_ISSUERS": f"*={accounts}/{{iss}}.json"}, environ={})
    create_service_account_key(SA, tmp_path / "key.json", accounts / f"{SA}.json")
    token = cli_token(tmp_path / "key.json", audience="https://dev.data.humancellatlas.org/")
    assert Authenticator.from_settings(settings).authenticate(f"Bearer {token}")["email"] == SA


# --- service accounts vouch for themselves only ----------------------------------------------------

ADMIN = "admin@example.org"  # in DSS_ADMIN_EMAILS of `authenticator`


def account_authenticator(tmp_path, **overrides):
    return authenticator(tmp_path / "unused.json",
                         **{"DSS_AUTH_ISSUERS": f"*={tmp_path / 'accounts'}/{{iss}}.json", **overrides})


def register(tmp_path, email=SA, groups=None, name="key.json"):
    """A key of ``email`` registered as `make sa-key` does; the key file's path."""
    key_file = tmp_path / name
    create_service_account_key(email, key_file, tmp_path / "accounts" / f"{email}.json", groups=groups)
    return key_file


@pytest.mark.parametrize("claims, claim", [({"email": ADMIN}, "email"), ({"sub": ADMIN}, "sub"),
                                           ({"email": ADMIN, "sub": ADMIN}, "sub"),
                                           ({"email": ["x"]}, "email")])
def test_an_account_cannot_name_someone_else(tmp_path, claims, claim):
    """The escalation of issue 11: a key of a@ minting a token that says it is the administrator."""
    a = account_authenticator(tmp_path)
    key_file = register(tmp_path, groups=["dbio"])
    with pytest.raises(Unauthorized) as refused:
        a.authenticate(f"Bearer {cli_token(key_file, **claims)}")
    assert refused.value.error_code == "identity_mismatch" and f"`{claim}`" in refused.value.title
    assert ADMIN not in refused.value.title  # claim names only, never values


def test_an_exact_e_mail_issuer_is_a_service_account_too(tmp_path):
    key_file = register(tmp_path, groups=["dbio"])
    a = authenticator(tmp_path / "accounts" / f"{SA}.json", DSS_AUTH_ISSUERS=f"{SA}={tmp_path}/accounts/{SA}.json")
    with pytest.raises(Unauthorized, match="vouches only for itself"):
        a.authenticate(f"Bearer {cli_token(key_file, email=ADMIN)}")
    assert a.authenticate(f"Bearer {cli_token(key_file)}") == {"email": SA, "groups": ["dbio"], "is_admin": False}


def test_an_account_matching_its_own_name_in_another_case_is_itself(tmp_path):
    a = account_authenticator(tmp_path)
    key_file = register(tmp_path, groups=["dbio"])
    caller = a.authenticate(f"Bearer {cli_token(key_file, email=SA.upper())}")
    assert caller["email"] == SA  # the identity is the issuer, never the claim


def test_an_accounts_group_claims_count_for_nothing(tmp_path):
    a = account_authenticator(tmp_path)
    key_file = register(tmp_path)  # no grant
    caller = a.authenticate(f"Bearer {cli_token(key_file, **{GROUP_CLAIM: ['dbio', 'hca', 'dss']})}")
    assert caller == {"email": SA, "groups": [], "is_admin": False}
    with pytest.raises(Forbidden, match="granted"):
        a.require_writer(caller)


def test_an_accounts_grant_is_in_its_key_file_and_changes_without_a_restart(tmp_path):
    a = account_authenticator(tmp_path)
    first = register(tmp_path, groups=["dbio", "other"])
    assert a.authenticate(f"Bearer {cli_token(first)}")["groups"] == ["dbio", "other"]
    document = json.loads((tmp_path / "accounts" / f"{SA}.json").read_text())
    assert document[auth.GRANTS_MEMBER] == {SA: ["dbio", "other"]}
    register(tmp_path, name="second.json")  # another key, no GROUPS: the grant is kept
    assert a.authenticate(f"Bearer {cli_token(first)}")["groups"] == ["dbio", "other"]
    register(tmp_path, groups=[], name="third.json")  # GROUPS= (empty): taken away, at the next token
    assert a.authenticate(f"Bearer {cli_token(first)}")["groups"] == []


def test_an_account_is_an_administrator_by_its_identity(tmp_path):
    a = account_authenticator(tmp_path)
    key_file = register(tmp_path, email=ADMIN)
    assert a.authenticate(f"Bearer {cli_token(key_file)}") == {"email": ADMIN, "groups": [], "is_admin": True}


def test_an_identity_provider_still_names_people_and_groups(key_files):
    key, jwks = key_files
    token = mint_token(key, ISSUER, AUDIENCE, "someone@example.org", ["dbio"], group_claim=GROUP_CLAIM)
    assert authenticator(jwks).authenticate(f"Bearer {token}") == {
        "email": "someone@example.org", "groups": ["dbio"], "is_admin": False}


def test_a_malformed_grant_grants_nothing(tmp_path):
    a = account_authenticator(tmp_path)
    key_file = register(tmp_path)
    jwks = tmp_path / "accounts" / f"{SA}.json"
    document = json.loads(jwks.read_text())
    jwks.write_text(json.dumps({**document, auth.GRANTS_MEMBER: {SA: "dbio"}}))  # a string, not a list
    with pytest.raises(Unavailable):
        a.authenticate(f"Bearer {cli_token(key_file)}")
    with pytest.raises(ValueError, match="group"):
        create_service_account_key(SA, tmp_path / "bad.json", jwks, groups=["two words"])
    assert not (tmp_path / "bad.json").exists()


def test_accounts_at_a_url_are_granted_by_the_setting_only(tmp_path, monkeypatch):
    """A key set fetched from a URL is its publisher's word, not the operator's: its grants count
    for nothing; DSS_AUTH_SERVICE_ACCOUNT_GROUPS grants by pattern."""
    account = "robot@x.iam.gserviceaccount.com"
    key_file = tmp_path / "key.json"
    create_service_account_key(account, key_file, tmp_path / "published.json", groups=["dss"])
    published = json.loads((tmp_path / "published.json").read_text())
    assert published[auth.GRANTS_MEMBER] == {account: ["dss"]}
    monkeypatch.setattr(auth.requests, "get", lambda url, timeout: FakeResponse(published))
    issuers = "*@x.iam.gserviceaccount.com=https://keys.example.org/jwk/{iss}"
    token = f"Bearer {cli_token(key_file)}"
    assert account_authenticator(tmp_path, DSS_AUTH_ISSUERS=issuers).authenticate(token)["groups"] == []
    granted = account_authenticator(tmp_path, DSS_AUTH_ISSUERS=issuers, DSS_AUTH_SERVICE_ACCOUNT_GROUPS=(
        "*@x.iam.gserviceaccount.com=dbio, robot@x.iam.gserviceaccount.com=hca, *@elsewhere.example.org=dss"))
    assert granted.authenticate(token)["groups"] == ["dbio", "hca"]


def test_the_setting_adds_to_the_key_files_grant(tmp_path):
    key_file = register(tmp_path, groups=["dbio"])
    a = account_authenticator(tmp_path, DSS_AUTH_SERVICE_ACCOUNT_GROUPS=f"{SA}=hca,{SA}=dbio")
    assert a.authenticate(f"Bearer {cli_token(key_file)}")["groups"] == ["dbio", "hca"]


def test_parse_account_groups():
    grants = auth.parse_account_groups("*@x.org=dbio, a=b@y.org=hca,,")
    assert [(p.pattern, g) for p, g in grants] == [(auth._issuer_pattern("*@x.org").pattern, "dbio"),
                                                   (auth._issuer_pattern("a=b@y.org").pattern, "hca")]
    assert grants[0][0].fullmatch("anyone@x.org") and not grants[0][0].fullmatch("anyone@x.org.evil")
    for bad in ("dbio", "*@x.org=", "=dbio", "*@x.org=two words"):
        with pytest.raises(ValueError, match="SERVICE_ACCOUNT_GROUPS"):
            auth.parse_account_groups(bad)


# --- strangers cost little: no key lookup before the cheap checks, bounded caches ------------------

URL_ACCOUNTS = "*@x.iam.gserviceaccount.com=https://keys.example.org/jwk/{iss}"


def b64(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def forged(issuer, header=None, **claims):
    """A token naming ``issuer``, well-formed but signed by nobody (its signature is never reached
    when a cheap check fails)."""
    now = time.time()
    payload = {"iss": issuer, "sub": issuer, "aud": AUDIENCE, "iat": now, "exp": now + 600, **claims}
    return f"Bearer {b64({'alg': 'RS256', 'kid': 'k1', **(header or {})})}.{b64(payload)}.c2lnbmF0dXJl"


class Fetches:
    """requests.get for the key-set URLs: ``served`` {url: JWKS document}, 404 otherwise."""

    def __init__(self, monkeypatch, served=None):
        self.urls, self.served = [], served or {}
        monkeypatch.setattr(auth.requests, "get", self)

    def __call__(self, url, timeout):
        self.urls.append(url)
        return FakeResponse(self.served[url]) if url in self.served else FakeResponse({}, status_code=404)


CHEAP_FAILURES = [
    ({"alg": "HS256"}, {}, "RS256"),
    ({"alg": "none"}, {}, "RS256"),
    ({"kid": None}, {}, "kid"),
    ({"kid": "../../etc/passwd\n"}, {}, "key id"),
    ({"kid": "k" * 200}, {}, "key id"),
    ({}, {"aud": "https://elsewhere.example.org/"}, "aud"),
    ({}, {"exp": 1_000_000}, "expired"),
    ({}, {"exp": None}, "exp"),
    ({}, {"iat": time.time() + 86_400}, "iat"),
    ({}, {"nbf": time.time() + 86_400}, "nbf"),
    ({}, {"sub": ADMIN}, "vouches only for itself"),
    ({}, {"email": ADMIN}, "vouches only for itself"),
]


@pytest.mark.parametrize("header, claims, title", CHEAP_FAILURES)
def test_cheap_checks_come_before_any_key_lookup(tmp_path, monkeypatch, header, claims, title):
    fetches = Fetches(monkeypatch)
    reads = []
    monkeypatch.setattr(JWKSSource, "keys", lambda self, refresh=False: reads.append(self.location))
    a = account_authenticator(tmp_path, DSS_AUTH_ISSUERS=f"{URL_ACCOUNTS},*@example.org={tmp_path}/{{iss}}.json")
    for n in range(50):  # a flood, each token naming an account never seen
        for domain in ("x.iam.gserviceaccount.com", "example.org"):
            with pytest.raises(Unauthorized, match=title):
                a.authenticate(forged(f"new-{n}@{domain}", header, **claims))
    assert fetches.urls == [] and reads == []


def test_a_token_that_is_not_json_all_the_way_down_is_refused(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    token = f"{b64({'alg': 'RS256'})}.{base64.urlsafe_b64encode(deep.encode()).decode().rstrip('=')}.c2ln"
    with pytest.raises(Unauthorized, match="not a JWT"):
        account_authenticator(tmp_path).authenticate(f"Bearer {token}")
    with pytest.raises(Unauthorized, match="not a JWT"):
        account_authenticator(tmp_path).authenticate("Bearer a.b.")  # no signature at all


def test_a_flood_of_new_accounts_fetches_a_bounded_number_of_key_sets(tmp_path, monkeypatch):
    monkeypatch.setattr(auth, "NEW_ACCOUNT_FETCH_BURST", 5, raising=False)
    monkeypatch.setattr(auth, "NEW_ACCOUNT_FETCHES_PER_S", 0.0, raising=False)  # no refill during the test
    monkeypatch.setattr(auth, "ABSENT_ISSUERS_MAX", 3, raising=False)
    fetches = Fetches(monkeypatch)
    a = account_authenticator(tmp_path, DSS_AUTH_ISSUERS=URL_ACCOUNTS)
    answers = []
    for n in range(200):
        with pytest.raises((Unauthorized, Unavailable)) as refused:
            a.authenticate(forged(f"new-{n}@x.iam.gserviceaccount.com"))
        answers.append(refused.value.error_code)
    assert len(fetches.urls) == 5
    assert answers[:5] == ["unauthorized"] * 5 and set(answers[5:]) == {"auth_busy"}
    # The last absent ones are remembered (no fetch, no budget), within the negative cache's bound.
    with pytest.raises(Unauthorized, match="not trusted"):
        a.authenticate(forged("new-4@x.iam.gserviceaccount.com"))
    assert len(fetches.urls) == 5
    assert a.issuers.accounts.sizes() == {"known": 0, "pending": 0, "absent": 3}


def test_a_real_account_stays_cached_through_a_flood_of_strangers(tmp_path, monkeypatch):
    monkeypatch.setattr(auth, "PER_ISSUER_SOURCES_MAX", 2)
    monkeypatch.setattr(auth, "PENDING_SOURCES_MAX", 4, raising=False)
    monkeypatch.setattr(auth, "NEW_ACCOUNT_FETCH_BURST", 10_000, raising=False)
    account = "real@x.iam.gserviceaccount.com"
    key_file = tmp_path / "key.json"
    create_service_account_key(account, key_file, tmp_path / "published.json")
    real_url = f"https://keys.example.org/jwk/{account}"
    published = json.loads((tmp_path / "published.json").read_text())
    # Half the strangers have a key set (someone else's keys), half none.
    fetches = Fetches(monkeypatch, {real_url: published, **{
        f"https://keys.example.org/jwk/s-{n}@x.iam.gserviceaccount.com": published for n in range(0, 100, 2)}})
    a = account_authenticator(tmp_path, DSS_AUTH_ISSUERS=URL_ACCOUNTS)
    assert a.authenticate(f"Bearer {cli_token(key_file)}")["email"] == account
    for n in range(100):
        with pytest.raises(Unauthorized):
            a.authenticate(forged(f"s-{n}@x.iam.gserviceaccount.com", {"kid": json.loads(key_file.read_text())[
                "private_key_id"]}))
    assert a.authenticate(f"Bearer {cli_token(key_file)}")["email"] == account
    assert fetches.urls.count(real_url) == 1  # still cached: no fetch for the real account
    sizes = a.issuers.accounts.sizes()
    assert sizes["known"] == 1 and sizes["pending"] <= 4 and sizes["absent"] <= auth.ABSENT_ISSUERS_MAX
