"""The gateway, files and bundles services in one runner, on the real broker and the emulators.

A smoke test of the wiring (RPC signatures, typed errors surviving the broker, health); the
end-to-end suite lives in tests/e2e.
"""
import pytest

from services.bundles.service import BundlesService
from services.files.service import FilesService
from services.gateway.service import GatewayService
from services.gateway.tests.test_gateway import web_session  # noqa: F401 (fixture)
from shared.auth_local import ensure_local_issuer, mint_token
from shared.identifiers import new_uuid, new_version
from shared.testing import stage_object

ISSUER = "https://issuer.test/"
AUDIENCE = "https://dss.test/"
GROUP_CLAIM = "https://auth.data.humancellatlas.org/group"


@pytest.fixture
def stack(service_config, web_config, runner_factory, tmp_path):
    key, jwks = tmp_path / "issuer.pem", tmp_path / "jwks.json"
    ensure_local_issuer(key, jwks)
    config = {**service_config, **web_config, "DSS_AUTH_ISSUERS": f"{ISSUER}={jwks}",
              "DSS_AUTH_AUDIENCE": AUDIENCE, "DSS_AUTH_GROUP_CLAIM": GROUP_CLAIM, "DSS_AUTH_EMAIL_CLAIM": "email",
              "DSS_AUTH_ALLOWED_GROUPS": "dbio", "DSS_RPC_TIMEOUT": 30, "DSS_PUBLIC_URL": ""}
    runner = runner_factory(config, GatewayService, FilesService, BundlesService)
    runner.start()
    token = mint_token(key, ISSUER, AUDIENCE, "writer@example.org", ["dbio"], group_claim=GROUP_CLAIM)
    return {"Authorization": f"Bearer {token}"}


def test_health(stack, web_session):
    response = web_session.get("/internal/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["dependencies"]) == {"broker", "files", "bundles"}
    assert body["dependencies"]["files"]["aws"]["ok"] is True


def test_files_and_bundles_through_the_gateway(stack, web_session, blobstores, dss_settings):
    auth = stack
    store = blobstores["aws"]
    source_url, sums = stage_object(store, dss_settings.bucket("aws", "staging"), b'{"a": 1}',
                                    content_type="application/json")
    file_uuid, version = new_uuid(), new_version()

    response = web_session.put(f"/v1/files/{file_uuid}?version={version}", headers=auth,
                               json={"source_url": source_url, "creator_uid": 5})
    assert (response.status_code, response.json()) == (201, {"version": version})
    response = web_session.put(f"/v1/files/{file_uuid}?version={version}", headers=auth,
                               json={"source_url": source_url, "creator_uid": 5})
    assert response.status_code == 200

    # a typed error of the files service, through the broker
    response = web_session.put(f"/v1/files/{file_uuid}?version={version}", headers=auth,
                               json={"source_url": source_url, "creator_uid": 6})
    assert response.status_code == 409
    assert response.json()["code"] == "file_already_exists"

    response = web_session.head(f"/v1/files/{file_uuid.upper()}?replica=aws")
    assert response.status_code == 200
    assert response.headers["X-DSS-SHA256"] == sums.sha256 and response.headers["X-DSS-SIZE"] == "8"
    response = web_session.get(f"/v1/files/{file_uuid}?replica=aws&directurl=true", allow_redirects=False)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("s3://")
    assert web_session.head(f"/v1/files/{new_uuid()}?replica=aws").status_code == 404

    bundle_uuid = new_uuid()
    files = [{"uuid": file_uuid, "version": version, "name": "a.json", "indexed": True}]
    response = web_session.put(f"/v1/bundles/{bundle_uuid}?replica=aws&version={version}", headers=auth,
                               json={"creator_uid": 5, "files": files})
    assert response.status_code == 201, response.text
    response = web_session.get(f"/v1/bundles/{bundle_uuid}?replica=aws&directurls=true")
    assert response.status_code == 200, response.text
    bundle = response.json()["bundle"]
    assert bundle["files"][0]["name"] == "a.json"
    assert bundle["files"][0]["url"] == f"s3://{dss_settings.bucket('aws')}/{sums.blob_key()}"

    # a typed error of the bundles service, through the broker
    response = web_session.put(f"/v1/bundles/{new_uuid()}?replica=aws", headers=auth,
                               json={"creator_uid": 5, "files": files * 2})
    assert response.status_code == 400
    assert response.json()["code"] == "duplicate_filename"
