"""`make sa-key`: the command the Makefile runs (python -m devtools.stack sa-key) writes a key file the dbio
and hca clients can use, refuses to overwrite one, and the tokens the clients mint from it pass the
gateway's verifier. No stack is needed: the gateway re-reads per-account JWKS files on each token.

The script resolves DSS_AUTH_ISSUERS' relative paths against the repository (it chdirs there), so
the test gives it the default value with `var/` moved to a temporary directory: the repository's
own var/ is never written.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import uuid

import pytest
from google.oauth2 import service_account

from devtools.tokens import mint_service_account_token
from services.gateway.auth import GRANTS_MEMBER, Authenticator
from shared.config import Settings, describe
from shared.exceptions import Forbidden, Unauthorized

ROOT = pathlib.Path(__file__).resolve().parents[2]
GROUP_CLAIM = "https://auth.data.humancellatlas.org/group"
HCA_AUDIENCE = "https://dev.data.humancellatlas.org/"  # fixed in hca 8.0.0, whatever the spec says
SCRIPT_TIMEOUT_S = 60


def default_issuers_under(var: pathlib.Path) -> str:
    """The default DSS_AUTH_ISSUERS with its `var/...` JWKS files in ``var`` instead of the repository's."""
    default = describe("DSS_AUTH_ISSUERS").default
    assert "=var/" in default, default  # the default this test stands for
    return default.replace("=var/", f"={var}/")


def run_sa_key(email: str, out: pathlib.Path, issuers: str, *extra: str) -> subprocess.CompletedProcess:
    """`make sa-key EMAIL=... OUT=...` without make: its recipe, in an environment whose only DSS_
    setting is ``issuers`` (a developer's own DSS_* variables must not steer the test). ``extra``:
    what the recipe adds (``--groups G`` for GROUPS=G)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("DSS_")}
    env["DSS_AUTH_ISSUERS"] = issuers
    return subprocess.run([sys.executable, "-m", "devtools.stack", "sa-key", "--email", email, "--out", str(out),
                           *extra], env=env, cwd=ROOT, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)


def client_token(key_file: pathlib.Path, audience: str, group: str, **claims) -> str:
    """A token as dbio-cli 1.5.5 / hca 8.0.0 mint it from GOOGLE_APPLICATION_CREDENTIALS."""
    return mint_service_account_token(key_file, audience, **{GROUP_CLAIM: group, **claims})


def make_recipe(**variables: str) -> str:
    """The sa-key command line `make -n sa-key` would run with these make variables."""
    result = subprocess.run(["make", "-n", "sa-key", *(f"{k}={v}" for k, v in variables.items())], cwd=ROOT,
                            capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.replace("\\\n", " ").splitlines()  # a recipe line continued with a backslash is one
    return next(line for line in lines if "-m devtools.stack sa-key" in line)


@pytest.fixture
def account():
    # Unique, so a stray write to the repository's var/ could be told apart from anything there.
    return f"sa-key-test-{uuid.uuid4().hex[:8]}@dss-local.iam.example.org"


def test_sa_key_writes_a_key_file_the_gateway_trusts(tmp_path, account):
    var = tmp_path / "var"
    issuers = default_issuers_under(var)
    out = tmp_path / "sa-key.json"

    made = run_sa_key(account, out, issuers, "--groups", "dbio")
    assert made.returncode == 0, made.stderr
    assert "granted dbio: it may write" in made.stderr

    # The fields the clients and google-auth read, private to its owner.
    key = json.loads(out.read_text())
    assert key["type"] == "service_account"
    assert key["client_email"] == account
    assert key["project_id"] and key["client_id"] and key["token_uri"].startswith("https://")
    assert key["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert key["private_key_id"] in made.stderr  # the script names the key it made
    assert out.stat().st_mode & 0o777 == 0o600
    credentials = service_account.Credentials.from_service_account_info(key)
    assert (credentials.service_account_email, credentials.project_id) == (account, key["project_id"])

    # Trusted through the default's per-account JWKS file, under the temporary var/ only.
    jwks = var / "auth" / "service-accounts" / f"{account}.json"
    assert [k["kid"] for k in json.loads(jwks.read_text())["keys"]] == [key["private_key_id"]]
    assert json.loads(jwks.read_text())[GRANTS_MEMBER] == {account: ["dbio"]}  # the grant, with the keys
    assert not (ROOT / "var" / "auth" / "service-accounts" / f"{account}.json").exists()

    # The gateway's verifier with the same DSS_AUTH_ISSUERS and every other setting at its default:
    # dbio mints for the spec's x-audience (the first DSS_AUTH_AUDIENCE), hca for its fixed one. The
    # groups are those granted, whatever the client claims.
    settings = Settings.from_config({"DSS_AUTH_ISSUERS": issuers}, environ={})
    verifier = Authenticator.from_settings(settings)
    dbio_audience = settings.auth_audience.split(",")[0].strip()
    for audience, group in ((dbio_audience, "dbio"), (HCA_AUDIENCE, "hca")):
        caller = verifier.authenticate(f"Bearer {client_token(out, audience, group)}")
        assert caller == {"email": account, "groups": ["dbio"], "is_admin": False}, audience
        verifier.require_writer(caller)


def test_sa_key_without_groups_grants_none_and_keeps_a_grant(tmp_path, account):
    """GROUPS is the operator's grant: a new account without it may only read, whatever its tokens
    claim; another key of the account keeps its grant; GROUPS= (empty) takes it away."""
    var = tmp_path / "var"
    issuers = default_issuers_under(var)
    verifier = Authenticator.from_settings(Settings.from_config({"DSS_AUTH_ISSUERS": issuers}, environ={}))
    dbio_audience = verifier.audiences[0]

    made = run_sa_key(account, tmp_path / "first.json", issuers)
    assert made.returncode == 0, made.stderr
    assert "no group: it may only read" in made.stderr
    caller = verifier.authenticate(f"Bearer {client_token(tmp_path / 'first.json', dbio_audience, 'dbio')}")
    assert caller["groups"] == []
    with pytest.raises(Forbidden):
        verifier.require_writer(caller)

    assert run_sa_key(account, tmp_path / "second.json", issuers, "--groups", "dbio,hca").returncode == 0
    assert run_sa_key(account, tmp_path / "third.json", issuers).returncode == 0  # no GROUPS: kept
    for key_file in ("first.json", "second.json", "third.json"):  # a grant is of the account, not of a key
        token = client_token(tmp_path / key_file, HCA_AUDIENCE, "hca")
        assert verifier.authenticate(f"Bearer {token}")["groups"] == ["dbio", "hca"]

    assert run_sa_key(account, tmp_path / "fourth.json", issuers, "--groups", "").returncode == 0
    token = client_token(tmp_path / "first.json", HCA_AUDIENCE, "hca")
    assert verifier.authenticate(f"Bearer {token}")["groups"] == []


def test_sa_key_refuses_a_bad_group_before_writing_anything(tmp_path, account):
    var = tmp_path / "var"
    refused = run_sa_key(account, tmp_path / "key.json", default_issuers_under(var), "--groups", "db io")
    assert refused.returncode != 0 and "group" in refused.stderr
    assert not (tmp_path / "key.json").exists() and not (var / "auth" / "service-accounts").exists()


def test_the_makefile_passes_groups_only_when_given():
    """`make sa-key GROUPS=...` grants; without GROUPS the default of `make token` (dbio) is not used."""
    assert "--groups 'dbio'" in make_recipe(EMAIL="a@example.org", OUT="k.json", GROUPS="dbio")
    assert "--groups ''" in make_recipe(EMAIL="a@example.org", OUT="k.json", GROUPS="")
    assert "--groups" not in make_recipe(EMAIL="a@example.org", OUT="k.json")


def test_an_account_cannot_claim_to_be_someone_else(tmp_path, account):
    """The escalation of issue 11, through the key `make sa-key` writes: its tokens may name the
    account only."""
    var = tmp_path / "var"
    issuers = default_issuers_under(var)
    assert run_sa_key(account, tmp_path / "key.json", issuers, "--groups", "dbio").returncode == 0
    settings = Settings.from_config({"DSS_AUTH_ISSUERS": issuers}, environ={})
    admin = settings.admin_emails[0]
    token = client_token(tmp_path / "key.json", HCA_AUDIENCE, "hca", email=admin)
    with pytest.raises(Unauthorized, match="vouches only for itself"):
        Authenticator.from_settings(settings).authenticate(f"Bearer {token}")


def test_sa_key_refuses_to_overwrite_a_file(tmp_path, account):
    var = tmp_path / "var"
    issuers = default_issuers_under(var)
    out = tmp_path / "sa-key.json"
    assert run_sa_key(account, out, issuers).returncode == 0
    before = out.read_bytes()
    jwks = var / "auth" / "service-accounts" / f"{account}.json"
    trusted_before = jwks.read_bytes()

    again = run_sa_key(account, out, issuers)
    assert again.returncode != 0
    assert "exists" in again.stderr
    assert out.read_bytes() == before  # the first key still works ...
    assert jwks.read_bytes() == trusted_before  # ... and no second key was trusted

    # Any existing file, not only an earlier key.
    other = tmp_path / "notes.txt"
    other.write_text("keep me\n")
    refused = run_sa_key(f"other-{account}", other, issuers)
    assert refused.returncode != 0 and other.read_text() == "keep me\n"
    assert not (var / "auth" / "service-accounts" / f"other-{account}.json").exists()
