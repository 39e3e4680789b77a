"""shared.auth without a server: issuers, key sources, claims."""
import json
import os
import time

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import RSAKey

from shared import auth
from shared.auth import Authenticator, JWKSSource, parse_issuers
from shared.auth_local import ensure_local_issuer, jwks_document, mint_token
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
    def __init__(self, document):
        self.document = document

    def raise_for_status(self):
        pass

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
    source = a.issuers[ISSUER]
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
