"""Service accounts over HTTP (issue 11), against the gateway and the services on the real broker
and both emulators: an account's token speaks for the account only, and its groups are those the
operator granted when its key was registered (`make sa-key GROUPS=`), not those its tokens claim.

Keys are registered as `make sa-key` does (``issuer_jwks_file`` then ``create_service_account_key``)
while the stack runs, trusted through a templated ``DSS_AUTH_ISSUERS`` entry; their tokens are
minted as dbio / hca mint them.
"""
import pytest

from devtools import http
from services.gateway.auth import issuer_jwks_file
from devtools.tokens import create_service_account_key, mint_service_account_token
from shared.config import Settings
from shared.identifiers import new_uuid, new_version
from tests.e2e.conftest import start_api

HTTP_TIMEOUT_S = 30
PROBLEM = "application/problem+json"
GROUP_CLAIM = "https://auth.data.humancellatlas.org/group"


@pytest.fixture
def accounts(service_config, web_config, runner_factory, tmp_path):
    """The API trusting, besides the test issuer, every ``*@example.org`` account with a JWKS file
    under tmp_path; returns ``register(email, groups=None) -> headers of a token of that account``."""
    issuers = f"{service_config['DSS_AUTH_ISSUERS']},*@example.org={tmp_path / 'service-accounts'}/{{iss}}.json"
    config = {**service_config, "DSS_AUTH_ISSUERS": issuers}
    settings = Settings.from_config(config, environ={})
    assert settings.admin_emails == ("admin@example.org",)  # the administrator the escalation names
    api = start_api(config, web_config, runner_factory)
    audience = settings.auth_audience.split(",")[0].strip()

    class Accounts:
        url = api

        @staticmethod
        def register(email, groups=None, key_name="key.json"):
            key_file = tmp_path / f"{email}-{key_name}"
            create_service_account_key(email, key_file, issuer_jwks_file(issuers, email), groups=groups)
            return key_file

        @staticmethod
        def headers(key_file, **claims):
            # dbio sends its group claim whatever it was granted: it must count for nothing.
            token = mint_service_account_token(key_file, audience, **{GROUP_CLAIM: "dbio", **claims})
            return {"Authorization": f"Bearer {token}"}

    return Accounts


def put_bundle(api, headers, stage):
    """A bundle of one file written with ``headers``; (response, bundle uuid, file)."""
    source_url, _ = stage(b"service accounts")
    file_uuid, file_version = new_uuid(), new_version()
    stored = http.put(f"{api}/files/{file_uuid}", params={"version": file_version}, headers=headers,
                      json={"source_url": source_url, "creator_uid": 7}, timeout=HTTP_TIMEOUT_S)
    bundle_uuid = new_uuid()
    created = http.put(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws", "version": new_version()},
                       headers=headers, timeout=HTTP_TIMEOUT_S,
                       json={"creator_uid": 7, "files": [{"uuid": file_uuid, "version": file_version,
                                                              "name": "a.txt", "indexed": False}]})
    return stored, created, bundle_uuid


def delete_bundle(api, headers, bundle_uuid):
    return http.delete(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws"}, headers=headers,
                       json={"reason": "test"}, timeout=HTTP_TIMEOUT_S)


def assert_problem(response, status, code):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith(PROBLEM)
    assert response.json()["code"] == code, response.json()
    return response.json()


def test_an_account_cannot_claim_to_be_the_administrator(accounts, auth, stage):
    """The escalation of issue 11: a key of a@example.org, granted dbio, mints a token with
    iss = sub = a@example.org but email = admin@example.org; the store took it for the admin."""
    stored, created, bundle_uuid = put_bundle(accounts.url, auth, stage)
    assert created.status_code == 201, created.text
    key_file = accounts.register("a@example.org", groups=["dbio"])

    forged = delete_bundle(accounts.url, accounts.headers(key_file, email="admin@example.org"), bundle_uuid)
    problem = assert_problem(forged, 401, "identity_mismatch")
    assert "`email`" in problem["title"] and "admin@example.org" not in forged.text
    assert forged.headers["WWW-Authenticate"].startswith("Bearer")
    # Nor through `sub`.
    forged_sub = delete_bundle(accounts.url, accounts.headers(key_file, sub="admin@example.org"), bundle_uuid)
    assert_problem(forged_sub, 401, "identity_mismatch")
    # As itself, the account is a writer, not an administrator.
    assert_problem(delete_bundle(accounts.url, accounts.headers(key_file), bundle_uuid), 403, "forbidden")
    still_there = http.get(f"{accounts.url}/bundles/{bundle_uuid}", params={"replica": "aws"},
                           timeout=HTTP_TIMEOUT_S)
    assert still_there.status_code == 200, still_there.text

    # The administrator's own account is one by its identity (deleting is a write: granted dbio too).
    admin_key = accounts.register("admin@example.org", groups=["dbio"])
    deleted = delete_bundle(accounts.url, accounts.headers(admin_key), bundle_uuid)
    assert deleted.status_code == 200, deleted.text


def test_an_account_writes_only_with_a_grant(accounts, stage):
    key_file = accounts.register("b@example.org")  # `make sa-key` without GROUPS: none
    stored, created, _ = put_bundle(accounts.url, accounts.headers(key_file), stage)
    assert_problem(stored, 403, "forbidden")
    assert_problem(created, 403, "forbidden")
    # Reads need no grant.
    listing = http.get(f"{accounts.url}/collections", headers=accounts.headers(key_file), timeout=HTTP_TIMEOUT_S)
    assert listing.status_code == 200, listing.text

    # Another key, registered with GROUPS=dbio: the account's grant, for its earlier key too, at once.
    accounts.register("b@example.org", groups=["dbio"], key_name="second.json")
    stored, created, _ = put_bundle(accounts.url, accounts.headers(key_file), stage)
    assert stored.status_code == 201, stored.text
    assert created.status_code == 201, created.text
