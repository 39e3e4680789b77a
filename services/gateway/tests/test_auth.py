"""shared.auth without a server: issuers, key sources, claims."""
import json
import os
import pathlib
import time

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import RSAKey

from shared import auth
from shared.auth import Authenticator, JWKSSource, TrustedIssuers, issuer_jwks_file, parse_issuers
from shared.auth_local import create_service_account_key, ensure_local_issuer, jwks_document, mint_token
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
    authenticator(jwks).authenticate(f"Bearer {token}")


def test_missing_jwks_file_is_unavailable(tmp_path, key_files):
    key, _ = key_files
    token = mint_token(key, ISSUER, AUDIENCE, "x@example.org", ["dbio"], group_claim=GROUP_CLAIM)
    with pytest.raises(Unavailable):
        authenticator(tmp_path / "absent.json").authenticate(f"Bearer {token}")


def test_half_written_jwks_keeps_the_previous_keys(key_files):
    key, jwks = key_files
    a = authenticator(jwks)
    token = mint_token(key, ISSUER, AUDIENCE, "x@example.org", ["dbio"], group_claim=GROUP_CLAIM)
    a.authenticate(f"Bearer {token}")
    jwks.write_text('{"keys": [')
    os.utime(jwks, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    a.authenticate(f"Bearer {token}")


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
    """A token as dbio-cli / hca mint it from a service-account key file: iss = sub = client_email,
    kid = private_key_id, float iat / exp, the group as a string."""
    account = json.loads(pathlib.Path(key_file).read_text())
    iat = time.time()
    claims = {"iss": account["client_email"], "sub": account["client_email"], "aud": audience, "iat": iat,
              "exp": iat + lifetime_s, "email": account["client_email"], GROUP_CLAIM: "dbio",
              "scope": ["email", "openid", "offline_access"], **extra}
    key = RSAKey.import_key(account["private_key"])
    return jwt.encode({"alg": "RS256", "typ": "JWT", "kid": account["private_key_id"]}, claims, key,
                      algorithms=["RS256"])


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
    create_service_account_key(SA, tmp_path / "key.json.new", accounts / f"{SA}.json")
    caller = a.authenticate(f"Bearer {cli_token(tmp_path / 'key.json.new')}")
    assert caller == {"email": SA, "groups": ["dbio"], "is_admin": False}
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
