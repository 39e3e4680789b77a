"""The gateway over real HTTP, with the files and bundles services replaced by mocks.

The mocks sit behind the gateway's own ``TimedServiceProxy``, so the RPC timeout and error
handling are exercised too; errors are passed through nameko's (de)serialisation to arrive as
they would over the broker.
"""
import json
import logging
import os
import time
import types
import uuid as uuid_module
from unittest import mock

import eventlet
import pytest
import requests
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey
from nameko.exceptions import ConfigurationError, RemoteError, UnknownService, deserialize, serialize
from nameko.testing.services import replace_dependencies
from werkzeug.routing import Map

from services.gateway import apidoc, schemas
from services.gateway.dependencies import TimedServiceProxy
from services.gateway.service import PROBED_SERVICES, GatewayService
from services.gateway.web import MAX_REQUEST_LINE, BundleIdConverter
from devtools.tokens import ensure_local_issuer, mint_token
from shared.exceptions import (Conflict, Forbidden, InvalidParameter, InvalidRequest, NotAcceptable, NotFound,
                               Unavailable, Unprocessable)
from shared.identifiers import is_version

ISSUER = "https://issuer.test/"
AUDIENCE = "https://dss.test/"
GROUP_CLAIM = "https://auth.data.humancellatlas.org/group"
SA_EMAIL = "robot@project.iam.gserviceaccount.com"
MAX_BODY = 4096
RPC_TIMEOUT = 1

UUID = "0b4b4cd4-a3b4-4bb6-9aa2-000000000001"
VERSION = "2017-06-20T214506.766634Z"
SHA256 = "a" * 64
SHA1 = "b" * 40
ETAG = "c" * 32
CRC = "d" * 8
FILE_META = {"uuid": UUID, "version": VERSION, "creator_uid": 7, "content-type": "application/json", "size": 12,
             "sha256": SHA256, "sha1": SHA1, "s3-etag": ETAG, "crc32c": CRC, "format": "0.0.1"}


def ready(metadata, url):
    """checkout.get_file's answer when the bytes are in the checkout bucket."""
    return {"status": "ready", "metadata": metadata, "url": url}


def remote(error):
    """``error`` as it arrives from a service over RPC."""
    return deserialize(serialize(error))


@pytest.fixture
def issuer(tmp_path):
    key, jwks = tmp_path / "issuer.pem", tmp_path / "jwks.json"
    ensure_local_issuer(key, jwks)
    return types.SimpleNamespace(key=key, jwks=jwks, dir=tmp_path)


@pytest.fixture
def gateway_config(rabbit_config, web_config, issuer):
    config = dict(rabbit_config)
    config.update(web_config)
    config.update({
        "METRICS_PORT": 0,
        "DSS_PUBLIC_URL": "",
        "DSS_AUTH_ISSUERS": f"{ISSUER}={issuer.jwks},{SA_EMAIL}={issuer.jwks}",
        "DSS_AUTH_AUDIENCE": AUDIENCE,
        "DSS_AUTH_EMAIL_CLAIM": "email",
        "DSS_AUTH_GROUP_CLAIM": GROUP_CLAIM,
        "DSS_AUTH_ALLOWED_GROUPS": "dbio,hca",
        "DSS_AUTH_SERVICE_ACCOUNT_GROUPS": f"{SA_EMAIL}=dbio",  # a service account's groups are granted
        "DSS_ADMIN_EMAILS": "admin@example.org",
        "DSS_MAX_REQUEST_BYTES": MAX_BODY,
        "DSS_RPC_TIMEOUT": RPC_TIMEOUT,
        "DSS_S3_BUCKET": "main-s3",
        "DSS_GS_BUCKET": "main-gs",
    })
    return config


def start_gateway(container_factory, config):
    container = container_factory(GatewayService, config)
    mocks = {name: mock.Mock(name=name) for name in PROBED_SERVICES}
    replace_dependencies(container, **{name: TimedServiceProxy(proxy, name, RPC_TIMEOUT)
                                       for name, proxy in mocks.items()})
    container.start()
    return types.SimpleNamespace(container=container, **mocks)


@pytest.fixture
def gateway(container_factory, gateway_config):
    return start_gateway(container_factory, gateway_config)


@pytest.fixture
def token(issuer):
    def make(email="writer@example.org", groups=("dbio",), lifetime_s=3600, audience=AUDIENCE, iss=ISSUER, **kw):
        return mint_token(issuer.key, iss, audience, email, groups, group_claim=GROUP_CLAIM, email_claim="email",
                          lifetime_s=lifetime_s, **kw)
    return make


def bearer(value):
    return {"Authorization": f"Bearer {value}"}


def assert_problem(response, status, code=None):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body = response.json()
    assert set(body) == {"status", "code", "title"}
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body
    assert "Traceback" not in response.text and "<html" not in response.text.lower()
    if status >= 500:
        assert int(response.headers["Retry-After"]) > 0
    return body


# --- malformed input ----------------------------------------------------------------------------------
class TestBadInput:
    def test_malformed_uuid(self, gateway, web_session):
        body = assert_problem(web_session.get("/v1/files/not-a-uuid?replica=aws"), 400, "illegal_uuid")
        assert "not-a-uuid" in body["title"]
        assert_problem(web_session.get("/v1/bundles/1234?replica=aws"), 400, "illegal_uuid")
        gateway.checkout.get_file.assert_not_called()

    def test_upper_case_uuid_is_lower_cased(self, gateway, web_session):
        gateway.checkout.get_file.return_value = ready(FILE_META, "https://example.org/x")
        response = web_session.get(f"/v1/files/{UUID.upper()}?replica=aws", allow_redirects=False)
        assert response.status_code == 302
        gateway.checkout.get_file.assert_called_once_with("aws", UUID, None, False, None, None)

    @pytest.mark.parametrize("version", ["2017-06-20", "2017-06-20T214506.766634", "2017-06-20T21:45:06.766634Z",
                                         "2017-13-20T214506.766634Z"])
    def test_malformed_version(self, gateway, web_session, version):
        response = web_session.head(f"/v1/files/{UUID}", params={"replica": "aws", "version": version})
        assert response.status_code == 400  # HEAD: no body to check
        assert_problem(web_session.get(f"/v1/bundles/{UUID}", params={"replica": "aws", "version": version}),
                       400, "illegal_version")

    def test_unknown_and_missing_replica(self, gateway, web_session):
        body = assert_problem(web_session.get(f"/v1/bundles/{UUID}?replica=azure"), 400, "unknown_replica")
        assert "replica" in body["title"]
        body = assert_problem(web_session.get(f"/v1/bundles/{UUID}"), 400, "illegal_arguments")
        assert "replica" in body["title"]

    @pytest.mark.parametrize("path", [f"/v1/bundles/{UUID}?replica=aws", "/v1/bundles/all?replica=aws"])
    @pytest.mark.parametrize("per_page", ["9", "501", "ten", "-1"])
    def test_per_page_out_of_range(self, gateway, web_session, path, per_page):
        body = assert_problem(web_session.get(f"{path}&per_page={per_page}"), 400, "illegal_arguments")
        assert "per_page" in body["title"]
        gateway.bundles.get_bundle.assert_not_called()
        gateway.bundles.list_bundles.assert_not_called()

    def test_per_page_of_collections(self, gateway, web_session, token):
        body = assert_problem(web_session.get("/v1/collections?per_page=1000", headers=bearer(token())), 400)
        assert "per_page" in body["title"]

    def test_unknown_query_parameters_are_named(self, gateway, web_session):
        body = assert_problem(web_session.get(f"/v1/bundles/{UUID}?replica=aws&perpage=10&colour=red"),
                              400, "illegal_arguments")
        assert "perpage" in body["title"] and "colour" in body["title"]

    def test_repeated_query_parameter(self, gateway, web_session):
        body = assert_problem(web_session.get(f"/v1/bundles/{UUID}?replica=aws&replica=gcp"), 400)
        assert "replica" in body["title"]

    def test_query_parameter_repeated_with_its_value_is_taken_once(self, gateway, web_session):
        # What the dbio / hca CLIs send when following a Link: its parameters, then their own again.
        gateway.bundles.list_bundles.return_value = {"bundles": [], "search_after": None}
        response = web_session.get("/v1/bundles/all?replica=aws&per_page=10&replica=aws&per_page=10")
        assert response.status_code == 200, response.text
        gateway.bundles.list_bundles.assert_called_once_with("aws", "", 10, None)

    def test_malformed_json(self, gateway, web_session, token):
        response = web_session.put(f"/v1/files/{UUID}", data=b'{"source_url": ', headers={
            **bearer(token()), "Content-Type": "application/json"})
        assert_problem(response, 400, "invalid_json")

    def test_empty_body(self, gateway, web_session, token):
        response = web_session.put(f"/v1/files/{UUID}", data=b"", headers={
            **bearer(token()), "Content-Type": "application/json"})
        assert_problem(response, 400, "invalid_json")

    def test_body_must_be_an_object(self, gateway, web_session, token):
        response = web_session.put(f"/v1/files/{UUID}", json=["s3://b/k"], headers=bearer(token()))
        body = assert_problem(response, 400, "illegal_arguments")
        assert "JSON object" in body["title"]

    def test_wrong_content_type(self, gateway, web_session, token):
        response = web_session.put(f"/v1/files/{UUID}", data=json.dumps({"source_url": "s3://b/k", "creator_uid": 1}),
                                   headers={**bearer(token()), "Content-Type": "text/plain"})
        assert_problem(response, 415, "unsupported_media_type")

    def test_body_over_the_limit(self, gateway, web_session, token):
        big = {"source_url": "s3://b/" + "k" * MAX_BODY, "creator_uid": 1}
        assert_problem(web_session.put(f"/v1/files/{UUID}", json=big, headers=bearer(token())), 413,
                       "payload_too_large")

    def test_chunked_body_over_the_limit(self, gateway, web_session, token):
        def chunks():
            yield b'{"source_url": "s3://b/'
            for _ in range(MAX_BODY // 512 + 1):
                yield b"k" * 512
            yield b'", "creator_uid": 1}'
        response = web_session.put(f"/v1/files/{UUID}", data=chunks(), headers={
            **bearer(token()), "Content-Type": "application/json"})
        assert_problem(response, 413, "payload_too_large")
        gateway.files.put_file.assert_not_called()

    def test_chunked_body_under_the_limit(self, gateway, web_session, token):
        gateway.files.put_file.return_value = {"status": "created", "version": VERSION}
        chunks = iter([b'{"source_url": "s3://b/k",', b' "creator_uid": 1}'])
        response = web_session.put(f"/v1/files/{UUID}?version={VERSION}", data=chunks, headers={
            **bearer(token()), "Content-Type": "application/json"})
        assert response.status_code == 201, response.text

    def test_body_schema_errors_name_the_fields(self, gateway, web_session, token):
        response = web_session.put(f"/v1/bundles/{UUID}?replica=aws", headers=bearer(token()), json={
            "creator_uid": "seven", "files": [{"uuid": UUID, "version": VERSION, "name": "a"}]})
        body = assert_problem(response, 400, "illegal_arguments")
        assert "creator_uid" in body["title"] and "files[0].indexed" in body["title"]

    def test_nested_uuid_error_keeps_its_code(self, gateway, web_session, token):
        response = web_session.put(f"/v1/bundles/{UUID}?replica=aws", headers=bearer(token()), json={
            "creator_uid": 1, "files": [{"uuid": "nope", "version": VERSION, "name": "a", "indexed": False}]})
        body = assert_problem(response, 400, "illegal_uuid")
        assert "files[0].uuid" in body["title"]

    def test_unknown_body_fields(self, gateway, web_session, token):
        response = web_session.put(f"/v1/files/{UUID}", headers=bearer(token()),
                                   json={"source_url": "s3://b/k", "creator_uid": 1, "colour": "red"})
        body = assert_problem(response, 400, "illegal_arguments")
        assert "colour" in body["title"]

    @pytest.mark.parametrize("url", ["https://bucket/key", "file:///etc/passwd", "bucket/key"])
    def test_source_url_scheme(self, gateway, web_session, token, url):
        response = web_session.put(f"/v1/files/{UUID}", headers=bearer(token()),
                                   json={"source_url": url, "creator_uid": 1})
        assert_problem(response, 400, "unknown_source_scheme")
        gateway.files.put_file.assert_not_called()

    @pytest.mark.parametrize("value", ["1", "yes", "on", "0", "", "t"])
    def test_query_booleans_are_true_or_false(self, gateway, web_session, value):
        """Only what the description's `type: boolean` means (and Python's spelling of it)."""
        assert_problem(web_session.get(f"/v1/files/{UUID}?replica=aws&directurl={value}"), 400)
        gateway.checkout.get_file.assert_not_called()
        gateway.checkout.get_file.return_value = ready(FILE_META, "s3://checkout-s3/blobs/x")
        for accepted, meaning in (("true", True), ("True", True), ("false", False), ("False", False)):
            web_session.get(f"/v1/files/{UUID}?replica=aws&directurl={accepted}", allow_redirects=False)
            assert gateway.checkout.get_file.call_args[0][3] is meaning

    @pytest.mark.parametrize("field, value", [("indexed", 1), ("indexed", "true"), ("creator_uid", True),
                                              ("creator_uid", 1.5), ("creator_uid", "7")])
    def test_body_booleans_and_integers_are_json_ones(self, gateway, web_session, token, field, value):
        entry = {"uuid": UUID, "version": VERSION, "name": "a", "indexed": True}
        body = {"creator_uid": 1, "files": [entry]}
        if field == "indexed":
            entry["indexed"] = value
        else:
            body["creator_uid"] = value
        response = web_session.put(f"/v1/bundles/{UUID}?replica=aws", headers=bearer(token()), json=body)
        assert_problem(response, 400)
        gateway.bundles.put_bundle.assert_not_called()

    @pytest.mark.parametrize("uuid", [f" {UUID}", f"{UUID}%0A", f"{UUID}%20"])
    def test_nothing_around_a_uuid(self, gateway, web_session, uuid):
        assert_problem(web_session.get(f"/v1/bundles/{uuid}?replica=aws"), 400, "illegal_uuid")

    def test_lone_surrogates_are_not_json_text(self, gateway, web_session, token):
        data = '{"source_url": "gs://staging/\\ud9eb", "creator_uid": 1}'  # a JSON escape of a lone surrogate
        response = web_session.put(f"/v1/files/{UUID}", headers={**bearer(token()), "Content-Type": "application/json"},
                                   data=data.encode())
        assert_problem(response, 400, "invalid_json")
        gateway.files.put_file.assert_not_called()

    def test_unparseable_source_url(self, gateway, web_session, token):
        response = web_session.put(f"/v1/files/{UUID}", headers=bearer(token()),
                                   json={"source_url": "s3://[bucket/key", "creator_uid": 1})
        assert_problem(response, 400, "illegal_arguments")

    def test_checkout_email_follows_the_mail_rule(self, gateway, web_session, token):
        """The gateway's rule is the one the checkout service and the mail relay use (no stricter)."""
        gateway.checkout.start_bundle_checkout.return_value = {"checkout_job_id": UUID, "version": VERSION}
        auth = bearer(token("admin@example.org"))  # any address: the checkout service decides whose
        response = web_session.post(f"/v1/bundles/{UUID}/checkout?replica=aws", json={"email": "a..b@example.c"},
                                    headers=auth)
        assert response.status_code == 200, response.text
        assert gateway.checkout.start_bundle_checkout.call_args[0][4] == "a..b@example.c"
        assert_problem(web_session.post(f"/v1/bundles/{UUID}/checkout?replica=aws", json={"email": "a@b"},
                                        headers=auth), 400)

    def test_both_url_types(self, gateway, web_session):
        assert_problem(web_session.get(f"/v1/bundles/{UUID}?replica=aws&directurls=true&presignedurls=true"),
                       400, "only_one_urltype")

    def test_malformed_drs_requests_get_drs_error_bodies(self, gateway, web_session):
        gateway.checkout.drs_object.side_effect = remote(InvalidParameter("`not-a-uuid` is not a DRS object id",
                                                                          "illegal_object_id"))
        for prefix in ("", "/v1"):
            response = web_session.get(f"{prefix}/ga4gh/drs/v1/objects/not-a-uuid")
            assert response.status_code == 400 and response.headers["Content-Type"] == "application/json"
            assert response.json() == {"msg": response.json()["msg"], "status_code": 400}
            assert "not-a-uuid" in response.json()["msg"]
        gateway.checkout.drs_object.reset_mock()
        response = web_session.get(f"/ga4gh/drs/v1/objects/{UUID}?replica=azure")
        assert response.status_code == 400 and set(response.json()) == {"msg", "status_code"}
        gateway.checkout.drs_object.assert_not_called()


# --- authentication and authorisation -----------------------------------------------------------------
class TestAuth:
    def put_file(self, web_session, headers):
        return web_session.put(f"/v1/files/{UUID}?version={VERSION}", headers=headers,
                               json={"source_url": "s3://staging/key", "creator_uid": 1})

    def test_missing_token(self, gateway, web_session):
        response = self.put_file(web_session, {})
        assert_problem(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        gateway.files.put_file.assert_not_called()

    def test_not_a_bearer_token(self, gateway, web_session, token):
        assert_problem(self.put_file(web_session, {"Authorization": f"Basic {token()}"}), 401, "unauthorized")

    @pytest.mark.parametrize("value", ["garbage", "a.b.c", "e30.e30.", ""])
    def test_garbage_token(self, gateway, web_session, value):
        response = self.put_file(web_session, {"Authorization": f"Bearer {value}"})
        assert_problem(response, 401, "unauthorized")

    def test_token_signed_by_another_key(self, gateway, web_session, issuer, tmp_path):
        other = tmp_path / "other.pem"
        ensure_local_issuer(other, tmp_path / "other-jwks.json")
        forged = mint_token(other, ISSUER, AUDIENCE, "writer@example.org", ["dbio"], group_claim=GROUP_CLAIM,
                            kid=None)
        assert_problem(self.put_file(web_session, bearer(forged)), 401, "unauthorized")
        # the same key id as the trusted key, still a different key
        trusted_kid = json.loads(issuer.jwks.read_text())["keys"][0]["kid"]
        forged = mint_token(other, ISSUER, AUDIENCE, "writer@example.org", ["dbio"], group_claim=GROUP_CLAIM,
                            kid=trusted_kid)
        assert_problem(self.put_file(web_session, bearer(forged)), 401, "unauthorized")

    def test_expired_token(self, gateway, web_session, token):
        expired = token(now=time.time() - 7200, lifetime_s=3600)
        body = assert_problem(self.put_file(web_session, bearer(expired)), 401, "unauthorized")
        assert "expired" in body["title"]
        assert expired not in json.dumps(body)

    def test_token_from_the_future(self, gateway, web_session, token):
        assert_problem(self.put_file(web_session, bearer(token(now=time.time() + 3600))), 401, "unauthorized")

    def test_wrong_audience_and_issuer(self, gateway, web_session, token):
        assert_problem(self.put_file(web_session, bearer(token(audience="https://elsewhere/"))), 401)
        assert_problem(self.put_file(web_session, bearer(token(iss="https://untrusted/"))), 401)

    def test_only_rs256(self, gateway, web_session, issuer):
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x@example.org", "email": "x@example.org",
                  GROUP_CLAIM: ["dbio"], "iat": int(time.time()), "exp": int(time.time()) + 600}
        hs = jwt.encode({"alg": "HS256"}, claims, OctKey.generate_key(256), algorithms=["HS256"])
        assert_problem(self.put_file(web_session, bearer(hs)), 401, "unauthorized")
        public = json.loads(issuer.jwks.read_text())["keys"][0]  # the classic RS256->HS256 confusion
        confused = jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(json.dumps(public)),
                              algorithms=["HS256"])
        assert_problem(self.put_file(web_session, bearer(confused)), 401, "unauthorized")

    def test_wrong_group(self, gateway, web_session, token):
        assert_problem(self.put_file(web_session, bearer(token(groups=["visitors"]))), 403, "forbidden")
        assert_problem(self.put_file(web_session, bearer(token(groups=[]))), 403, "forbidden")
        gateway.files.put_file.assert_not_called()

    def test_caller_is_passed_to_the_service(self, gateway, web_session, token):
        gateway.files.put_file.return_value = {"status": "created", "version": VERSION}
        response = self.put_file(web_session, bearer(token(email="admin@example.org", groups=["hca", "other"])))
        assert response.status_code == 201
        caller = gateway.files.put_file.call_args[0][4]
        assert caller == {"email": "admin@example.org", "groups": ["hca", "other"], "is_admin": True}

    def test_group_claim_may_be_a_string(self, gateway, web_session, issuer):
        now = int(time.time())
        key = RSAKey.import_key(issuer.key.read_bytes())
        claims = {"iss": ISSUER, "aud": [AUDIENCE, "other"], "sub": "w@example.org", "email": "w@example.org",
                  GROUP_CLAIM: "dbio", "iat": now, "exp": now + 600}
        value = jwt.encode({"alg": "RS256", "kid": key.thumbprint()}, claims, key, algorithms=["RS256"])
        gateway.files.put_file.return_value = {"status": "created", "version": VERSION}
        assert self.put_file(web_session, bearer(value)).status_code == 201

    @staticmethod
    def service_account_token(issuer, **claims):
        # As dbio-cli signs with a service account: iss = sub = client_email, kid header, float times.
        key = RSAKey.import_key(issuer.key.read_bytes())
        iat = time.time()
        claims = {"iss": SA_EMAIL, "sub": SA_EMAIL, "aud": AUDIENCE, "iat": iat, "exp": iat + 3600,
                  "email": SA_EMAIL, "scope": ["email", "openid", "offline_access"], GROUP_CLAIM: "hca", **claims}
        return jwt.encode({"alg": "RS256", "kid": key.thumbprint()}, claims, key, algorithms=["RS256"])

    def test_google_service_account_style_token(self, gateway, web_session, issuer):
        gateway.files.put_file.return_value = {"status": "created", "version": VERSION}
        assert self.put_file(web_session, bearer(self.service_account_token(issuer))).status_code == 201
        caller = gateway.files.put_file.call_args[0][4]
        assert caller == {"email": SA_EMAIL, "groups": ["dbio"], "is_admin": False}  # granted, not claimed

    def test_a_service_account_speaks_for_itself_only(self, gateway, web_session, issuer):
        forged = self.service_account_token(issuer, email="admin@example.org")
        response = self.put_file(web_session, bearer(forged))
        assert_problem(response, 401, "identity_mismatch")
        assert not gateway.files.put_file.called

    def test_rotated_key_is_trusted_without_restart(self, gateway, web_session, issuer, tmp_path):
        new_key = tmp_path / "rotated.pem"
        old_mtime = os.stat(issuer.jwks).st_mtime_ns
        ensure_local_issuer(new_key, issuer.jwks)  # replaces the JWKS file
        # The gateway notices a new JWKS by its mtime; a file system's clock may tick coarser than
        # the rewrite took, so the new file is dated a second on rather than slept for.
        later = max(old_mtime, os.stat(issuer.jwks).st_mtime_ns) + 10**9
        os.utime(issuer.jwks, ns=(later, later))
        value = mint_token(new_key, ISSUER, AUDIENCE, "w@example.org", ["dbio"], group_claim=GROUP_CLAIM)
        gateway.files.put_file.return_value = {"status": "created", "version": VERSION}
        assert self.put_file(web_session, bearer(value)).status_code == 201

    def test_reads_are_anonymous(self, gateway, web_session):
        gateway.files.head_file.return_value = FILE_META
        assert web_session.head(f"/v1/files/{UUID}?replica=aws").status_code == 200

    def test_collections_need_a_token(self, gateway, web_session):
        assert_problem(web_session.get("/v1/collections"), 401, "unauthorized")
        assert_problem(web_session.get(f"/v1/collections/{UUID}?replica=aws"), 401, "unauthorized")

    def test_token_is_not_logged(self, gateway, web_session, token, caplog):
        caplog.set_level(logging.DEBUG)
        value = token(now=time.time() - 7200)
        self.put_file(web_session, bearer(value))
        gateway.files.put_file.return_value = {"status": "created", "version": VERSION}
        self.put_file(web_session, bearer(token()))
        assert value not in caplog.text


# --- errors coming back from the services -------------------------------------------------------------
class TestServiceErrors:
    def test_typed_errors_map_to_statuses(self, gateway, web_session, token):
        gateway.files.put_file.side_effect = remote(Conflict("file exists with other content", "file_already_exists"))
        response = web_session.put(f"/v1/files/{UUID}", headers=bearer(token()),
                                   json={"source_url": "s3://staging/key", "creator_uid": 1})
        body = assert_problem(response, 409, "file_already_exists")
        assert body["title"] == "file exists with other content"

        gateway.files.put_file.side_effect = remote(Unprocessable("no such object", "source_not_found"))
        response = web_session.put(f"/v1/files/{UUID}", headers=bearer(token()),
                                   json={"source_url": "s3://staging/key", "creator_uid": 1})
        assert_problem(response, 422, "source_not_found")

    def test_duplicate_filename(self, gateway, web_session, token):
        gateway.bundles.put_bundle.side_effect = remote(InvalidRequest("names repeat: a", "duplicate_filename"))
        files = [{"uuid": UUID, "version": VERSION, "name": "a", "indexed": False}] * 2
        response = web_session.put(f"/v1/bundles/{UUID}?replica=aws", headers=bearer(token()),
                                   json={"creator_uid": 1, "files": files})
        assert_problem(response, 400, "duplicate_filename")

    def test_not_found_and_forbidden(self, gateway, web_session, token):
        gateway.files.head_file.side_effect = remote(NotFound("no such file", "not_found"))
        response = web_session.head(f"/v1/files/{UUID}?replica=gcp")
        assert response.status_code == 404
        gateway.checkout.get_file.side_effect = remote(NotFound("no such file", "not_found"))
        assert_problem(web_session.get(f"/v1/files/{UUID}?replica=gcp"), 404, "not_found")
        gateway.bundles.delete_bundle.side_effect = remote(Forbidden("not an administrator", "forbidden"))
        response = web_session.delete(f"/v1/bundles/{UUID}?replica=aws", headers=bearer(token()),
                                      json={"reason": "oops"})
        assert_problem(response, 403, "forbidden")

    def test_unknown_remote_error_is_a_generic_500(self, gateway, web_session):
        gateway.checkout.get_file.side_effect = RemoteError("KeyError", "'secret-internal-detail'")
        body = assert_problem(web_session.get(f"/v1/files/{UUID}?replica=aws"), 500, "internal_error")
        assert "secret-internal-detail" not in body["title"] and "KeyError" not in body["title"]

    def test_gateway_bug_is_a_generic_500(self, gateway, web_session):
        gateway.checkout.get_file.return_value = {"no": "url"}  # a malformed answer
        assert_problem(web_session.get(f"/v1/files/{UUID}?replica=aws"), 500, "internal_error")

    def test_unavailable_is_503_with_retry_after(self, gateway, web_session):
        gateway.bundles.get_bundle.side_effect = remote(Unavailable("S3 is unreachable", "storage_unavailable"))
        assert_problem(web_session.get(f"/v1/bundles/{UUID}?replica=aws"), 503, "storage_unavailable")

    def test_rpc_timeout_is_503(self, gateway, web_session):
        gateway.checkout.get_file.side_effect = lambda *args: eventlet.sleep(RPC_TIMEOUT + 2)
        # The code tells the timeout from the answer that comes 2 s later (no clock needed to say so).
        assert_problem(web_session.get(f"/v1/files/{UUID}?replica=aws"), 503, "service_timeout")

    def test_service_not_running_is_503(self, gateway, web_session):
        gateway.bundles.list_bundles.side_effect = UnknownService("bundles")
        assert_problem(web_session.get("/v1/bundles/all?replica=aws"), 503, "service_unavailable")

    def test_broker_failure_is_503(self, gateway, web_session):
        gateway.bundles.list_bundles.side_effect = ConnectionRefusedError(111, "Connection refused")
        assert_problem(web_session.get("/v1/bundles/all?replica=aws"), 503, "broker_unavailable")


# --- routes -----------------------------------------------------------------------------------------
class TestRoutes:
    def test_unknown_route_is_problem_json(self, gateway, web_session):
        assert_problem(web_session.get("/v2/files"), 404, "not_found")
        assert_problem(web_session.get(f"/v1/files/{UUID}/extra"), 404, "not_found")

    def test_wrong_method_is_problem_json(self, gateway, web_session):
        response = web_session.post(f"/v1/files/{UUID}")
        assert_problem(response, 405, "method_not_allowed")
        assert {"GET", "HEAD", "PUT"} <= {m.strip() for m in response.headers["Allow"].split(",")}

    def test_the_bundle_listing_is_not_a_bundle(self, gateway, web_session, token):
        """/v1/bundles/all answers GET only: other methods are 405 with the listing's own Allow."""
        for method in ("PUT", "PATCH", "DELETE", "OPTIONS"):
            response = web_session.request(method, "/v1/bundles/all?replica=aws", headers=bearer(token()))
            assert_problem(response, 405, "method_not_allowed")
            assert {m.strip() for m in response.headers["Allow"].split(",")} == {"GET", "HEAD"}
        assert_problem(web_session.post("/v1/bundles/all/checkout?replica=aws"), 404, "not_found")

    def test_long_request_lines_get_an_answer_of_the_api(self, gateway, web_session):
        """Past eventlet's 8 KiB a request line got a bare 414; the description's longest query fits."""
        long_token = "é" * 3000  # 18 KiB percent-encoded, over the documented 1024 characters
        response = web_session.get("/v1/bundles/all", params={"replica": "aws", "token": long_token})
        assert len(response.request.url) > 16 * 1024
        assert_problem(response, 400, "illegal_arguments")
        assert MAX_REQUEST_LINE > 16 * 1024

    def test_every_swagger_operation_is_routed(self, gateway, web_session):
        """Each (path, method) of the swagger document has a route of its own."""
        doc = web_session.get("/v1/swagger.json").json()
        url_map = Map(converters={"bundle_id": BundleIdConverter})
        for entrypoint in gateway.container.entrypoints:
            rule = entrypoint.get_url_rule()
            rule.endpoint = entrypoint.method_name
            url_map.add(rule)
        adapter = url_map.bind("localhost")
        endpoints = set()
        for path, method, _ in apidoc.operations(doc):
            concrete = "/v1" + path.replace("{uuid}", UUID).replace("{checkout_job_id}", "j") \
                .replace("{object_id}", UUID).replace("{access_id}", "a")
            endpoint, _ = adapter.match(concrete, method=method.upper())
            endpoints.add((endpoint, method))
        assert len(endpoints) == len(list(apidoc.operations(doc)))


class TestHosts:
    """Links are built from the Host header only when it names this gateway (services/gateway/hosts.py)."""

    @staticmethod
    def get(port, path, host, **kwargs):
        return requests.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}, timeout=10,
                            allow_redirects=False, **kwargs)

    def test_a_forged_host_is_refused_before_any_link_is_built(self, gateway, web_config_port):
        gateway.bundles.list_bundles.return_value = {"bundles": [{"uuid": UUID, "version": VERSION}],
                                                     "search_after": f"{UUID}.{VERSION}"}
        for path in ("/v1/swagger.json", "/", "/v1/bundles/all?replica=aws&per_page=10", "/v2/nothing"):
            for host in ("evil.example", f"evil.example:{web_config_port}", "127.0.0.2", f"localhost:{web_config_port}x",
                         f"localhost:{web_config_port + 1}", "localhost", "", "a/b", f"user@127.0.0.1:{web_config_port}"):
                response = self.get(web_config_port, path, host)
                assert_problem(response, 400, "illegal_host")
                assert "evil" not in response.headers.get("Link", "") + response.headers.get("Location", "")
        gateway.bundles.list_bundles.assert_not_called()

    def test_a_forged_host_on_a_drs_route_gets_a_drs_error_body(self, gateway, web_config_port):
        for path in ("/ga4gh/drs/v1/service-info", f"/v1/ga4gh/drs/v1/objects/{UUID}"):
            response = self.get(web_config_port, path, "evil.example")
            assert response.status_code == 400 and response.headers["Content-Type"] == "application/json"
            assert response.json() == {"msg": response.json()["msg"], "status_code": 400}
        gateway.checkout.drs_object.assert_not_called()

    def test_the_gateways_own_names_are_answered_and_links_use_them(self, gateway, web_config_port):
        gateway.bundles.list_bundles.return_value = {"bundles": [{"uuid": UUID, "version": VERSION}],
                                                     "search_after": f"{UUID}.{VERSION}"}
        for host in (f"127.0.0.1:{web_config_port}", f"LocalHost:{web_config_port}", f"[::1]:{web_config_port}"):
            assert self.get(web_config_port, "/v1/swagger.json", host).json()["host"] == host.lower()
            response = self.get(web_config_port, "/v1/bundles/all?replica=aws&per_page=10", host)
            assert response.status_code == 206
            assert response.links["next"]["url"].startswith(f"http://{host.lower()}/v1/bundles/all?")

    def test_allowed_hosts_add_names(self, container_factory, gateway_config, web_config_port):
        gateway_config["DSS_ALLOWED_HOSTS"] = "dss.example.org, proxy.example:8443"
        start_gateway(container_factory, gateway_config)
        for host in ("dss.example.org", "DSS.example.org:443", "proxy.example:8443", f"localhost:{web_config_port}"):
            assert self.get(web_config_port, "/v1/swagger.json", host).json()["host"] == host.lower()
        for host in ("proxy.example", "proxy.example:8444", "evil.dss.example.org"):
            assert_problem(self.get(web_config_port, "/v1/swagger.json", host), 400, "illegal_host")

    def test_with_a_public_url_the_host_is_not_used(self, container_factory, gateway_config, web_config_port):
        gateway_config["DSS_PUBLIC_URL"] = "https://dss.example.org/"
        gw = start_gateway(container_factory, gateway_config)
        gw.bundles.list_bundles.return_value = {"bundles": [{"uuid": UUID, "version": VERSION}],
                                                "search_after": f"{UUID}.{VERSION}"}
        response = self.get(web_config_port, "/v1/bundles/all?replica=aws&per_page=10", "evil.example")
        assert response.links["next"]["url"].startswith("https://dss.example.org/v1/bundles/all?")
        assert self.get(web_config_port, "/v1/swagger.json", "evil.example").json()["host"] == "dss.example.org"
        # werkzeug's own redirects (here: merged slashes) are on the public URL too
        response = self.get(web_config_port, "/v1//swagger.json?a=1", "evil.example")
        assert response.status_code == 308
        assert response.headers["Location"] == "https://dss.example.org/v1/swagger.json?a=1"

    def test_a_malformed_allowed_host_stops_the_gateway_from_starting(self, container_factory, gateway_config):
        gateway_config["DSS_ALLOWED_HOSTS"] = "dss.example.org:https"
        with pytest.raises(ConfigurationError, match="DSS_ALLOWED_HOSTS"):
            start_gateway(container_factory, gateway_config)


# --- successful answers ---------------------------------------------------------------------------
class TestFiles:
    def put(self, web_session, token, params=""):
        return web_session.put(f"/v1/files/{UUID}{params}", headers=bearer(token()),
                               json={"source_url": "gs://staging/dir/key", "creator_uid": 3})

    def test_put_statuses(self, gateway, web_session, token):
        gateway.files.put_file.return_value = {"status": "created", "version": VERSION}
        response = self.put(web_session, token, f"?version={VERSION}")
        assert (response.status_code, response.json()) == (201, {"version": VERSION})
        args = gateway.files.put_file.call_args[0]
        assert args[:4] == (UUID, VERSION, "gs://staging/dir/key", 3)

        gateway.files.put_file.return_value = {"status": "exists", "version": VERSION}
        response = self.put(web_session, token, f"?version={VERSION}")
        assert (response.status_code, response.json()) == (200, {"version": VERSION})

        gateway.files.put_file.return_value = {"status": "accepted", "version": VERSION, "task_id": "t-1"}
        response = self.put(web_session, token, f"?version={VERSION}")
        assert (response.status_code, response.json()) == (202, {"version": VERSION, "task_id": "t-1"})

    def test_put_without_version_makes_one(self, gateway, web_session, token):
        gateway.files.put_file.side_effect = lambda u, v, *rest: {"status": "created", "version": v}
        response = self.put(web_session, token)
        assert response.status_code == 201
        assert is_version(response.json()["version"])

    def test_put_accepts_bundle_uuid_from_old_clients(self, gateway, web_session, token):
        gateway.files.put_file.return_value = {"status": "created", "version": VERSION}
        response = web_session.put(f"/v1/files/{UUID}", headers=bearer(token()), json={
            "source_url": "s3://staging/key", "creator_uid": 3, "bundle_uuid": UUID})
        assert response.status_code == 201

    def test_head_headers(self, gateway, web_session):
        gateway.files.head_file.return_value = FILE_META
        response = web_session.head(f"/v1/files/{UUID}?replica=gcp&version={VERSION}")
        assert response.status_code == 200
        assert response.content == b""
        expected = {"X-DSS-VERSION": VERSION, "X-DSS-CREATOR-UID": "7", "X-DSS-CONTENT-TYPE": "application/json",
                    "X-DSS-SIZE": "12", "X-DSS-CRC32C": CRC, "X-DSS-S3-ETAG": ETAG, "X-DSS-SHA1": SHA1,
                    "X-DSS-SHA256": SHA256}
        assert {k: response.headers[k] for k in expected} == expected
        # The API's media type (Swagger 2.0 lists one set per operation), not werkzeug's text/plain.
        assert response.headers["Content-Type"] == "application/json"
        gateway.files.head_file.assert_called_once_with("gcp", UUID, VERSION)

    def test_get_redirects(self, gateway, web_session):
        gateway.checkout.get_file.return_value = ready(FILE_META, "s3://checkout-s3/blobs/x")
        response = web_session.get(f"/v1/files/{UUID}?replica=aws&directurl=true&content_disposition=attachment",
                                   allow_redirects=False)
        assert response.status_code == 302
        assert response.headers["Location"] == "s3://checkout-s3/blobs/x"
        assert response.headers["X-DSS-SHA256"] == SHA256
        assert response.headers["Content-Type"] == "application/json" and response.content == b""
        gateway.checkout.get_file.assert_called_once_with("aws", UUID, None, True, "attachment", None)

    def test_get_while_the_copy_runs_redirects_to_itself_with_a_token(self, gateway, web_session):
        gateway.checkout.get_file.return_value = {"status": "pending", "metadata": FILE_META, "token": "t-1",
                                                  "retry_after": 7}
        response = web_session.get(f"/v1/files/{UUID}?replica=aws", allow_redirects=False)
        assert response.status_code == 301 and response.headers["Retry-After"] == "7"
        assert response.headers["Content-Type"] == "application/json"
        location = response.headers["Location"]
        assert f"/v1/files/{UUID}?" in location and "token=t-1" in location and f"version={VERSION}" in location
        assert response.headers["X-DSS-SHA256"] == SHA256
        web_session.get(location, allow_redirects=False)
        assert gateway.checkout.get_file.call_args[0] == ("aws", UUID, VERSION, False, None, "t-1")


def manifest_file(i):
    return {"name": f"f{i}.json", "uuid": UUID, "version": VERSION, "content-type": "application/json",
            "size": i, "indexed": True, "sha256": SHA256, "sha1": SHA1, "s3_etag": ETAG, "crc32c": CRC}


class TestBundles:
    def test_get_last_page(self, gateway, web_session):
        gateway.bundles.get_bundle.return_value = {
            "bundle": {"uuid": UUID, "version": VERSION, "creator_uid": 1, "files": [manifest_file(0)]},
            "next_start_at": None}
        response = web_session.get(f"/v1/bundles/{UUID}?replica=aws")
        assert response.status_code == 200
        assert response.json()["bundle"]["files"] == [manifest_file(0)]
        assert response.headers["X-OpenAPI-Pagination"] == "true"
        assert response.headers["X-OpenAPI-Paginated-Content-Key"] == "bundle.files"
        assert "Link" not in response.headers
        gateway.bundles.get_bundle.assert_called_once_with("aws", UUID, None, 0, 500)

    def test_partial_page_links_to_the_next(self, gateway, web_session, web_config_port):
        gateway.bundles.get_bundle.return_value = {
            "bundle": {"uuid": UUID, "version": VERSION, "creator_uid": 1, "files": [manifest_file(0)]},
            "next_start_at": 10}
        response = web_session.get(f"/v1/bundles/{UUID}?replica=gcp&per_page=10")
        assert response.status_code == 206
        assert response.links["next"]["url"] == (f"http://127.0.0.1:{web_config_port}/v1/bundles/{UUID}"
                                                 f"?replica=gcp&per_page=10&start_at=10&version={VERSION}")
        assert response.headers["X-OpenAPI-Paginated-Content-Key"] == "bundle.files"

    def test_next_link_follows(self, gateway, web_session):
        pages = {0: {"bundle": {"uuid": UUID, "version": VERSION, "creator_uid": 1,
                                "files": [manifest_file(i) for i in range(10)]}, "next_start_at": 10},
                 10: {"bundle": {"uuid": UUID, "version": VERSION, "creator_uid": 1,
                                 "files": [manifest_file(10)]}, "next_start_at": None}}
        gateway.bundles.get_bundle.side_effect = lambda r, u, v, start_at, per_page: pages[start_at]
        response = web_session.get(f"/v1/bundles/{UUID}?replica=aws&per_page=10")
        files = response.json()["bundle"]["files"]
        while "next" in response.links:
            response = web_session.get(response.links["next"]["url"])
            files += response.json()["bundle"]["files"]
        assert [f["size"] for f in files] == list(range(11))
        assert gateway.bundles.get_bundle.call_args_list[-1] == mock.call("aws", UUID, VERSION, 10, 10)

    def test_urls_come_from_the_bundle_checkout(self, gateway, web_session):
        stored_form = {**manifest_file(0)}
        stored_form["s3-etag"] = stored_form.pop("s3_etag")
        gateway.bundles.get_bundle.return_value = {
            "bundle": {"uuid": UUID, "version": VERSION, "creator_uid": 1, "files": [stored_form]},
            "next_start_at": None}
        gateway.checkout.bundle_urls.return_value = {"status": "pending", "version": VERSION, "token": "job-1",
                                                     "retry_after": 3}
        response = web_session.get(f"/v1/bundles/{UUID}?replica=gcp&directurls=True", allow_redirects=False)
        assert response.status_code == 301 and response.headers["Retry-After"] == "3"
        assert "token=job-1" in response.headers["Location"] and f"version={VERSION}" in response.headers["Location"]
        assert gateway.checkout.bundle_urls.call_args[0] == ("gcp", UUID, VERSION, "direct", None)

        url = f"gs://checkout-gs/bundles/{UUID}.{VERSION}/f0.json"
        gateway.checkout.bundle_urls.return_value = {"status": "ready", "version": VERSION, "urls": {"f0.json": url}}
        files = web_session.get(response.headers["Location"]).json()["bundle"]["files"]
        assert files[0]["url"] == url
        assert files[0]["s3_etag"] == ETAG and "s3-etag" not in files[0]
        assert gateway.checkout.bundle_urls.call_args[0] == ("gcp", UUID, VERSION, "direct", "job-1")
        web_session.get(f"/v1/bundles/{UUID}?replica=gcp&presignedurls=true")
        assert gateway.checkout.bundle_urls.call_args[0][3] == "presigned"

    def test_public_url_is_the_link_base(self, container_factory, gateway_config, web_session):
        gateway_config["DSS_PUBLIC_URL"] = "https://dss.example.org/"
        gw = start_gateway(container_factory, gateway_config)
        gw.bundles.list_bundles.return_value = {"bundles": [{"uuid": UUID, "version": VERSION}],
                                                "search_after": f"{UUID}.{VERSION}"}
        response = web_session.get("/v1/bundles/all?replica=aws&per_page=10")
        assert response.links["next"]["url"].startswith("https://dss.example.org/v1/bundles/all?")
        doc = web_session.get("/v1/swagger.json").json()
        assert (doc["host"], doc["schemes"], doc["basePath"]) == ("dss.example.org", ["https"], "/v1")

    def test_list_all(self, gateway, web_session, web_config_port):
        gateway.bundles.list_bundles.return_value = {"bundles": [{"uuid": UUID, "version": VERSION}] * 10,
                                                     "search_after": f"{UUID}.{VERSION}"}
        response = web_session.get("/v1/bundles/all?replica=aws&per_page=10&prefix=0B4")
        assert response.status_code == 206
        body = response.json()
        link = (f"http://127.0.0.1:{web_config_port}/v1/bundles/all?replica=aws&per_page=10&prefix=0B4"
                f"&search_after={UUID}.{VERSION}")
        assert body == {"bundles": [{"uuid": UUID, "version": VERSION}] * 10, "has_more": True, "page_count": 10,
                        "per_page": 10, "search_prefix": "0b4", "search_after": f"{UUID}.{VERSION}", "link": link}
        assert response.links["next"]["url"] == link
        assert response.headers["X-OpenAPI-Paginated-Content-Key"] == "bundles"
        gateway.bundles.list_bundles.assert_called_once_with("aws", "0b4", 10, None)

        gateway.bundles.list_bundles.return_value = {"bundles": [], "search_after": None}
        response = web_session.get(link)
        assert response.status_code == 200 and "Link" not in response.headers
        assert response.json() == {"bundles": [], "has_more": False, "page_count": 0, "per_page": 10,
                                   "search_prefix": "0b4"}

    def test_put(self, gateway, web_session, token):
        manifest = {"format": "0.0.1", "version": VERSION, "creator_uid": 1, "files": [manifest_file(0)]}
        gateway.bundles.put_bundle.return_value = {"status": "created", "version": VERSION, "manifest": manifest}
        files = [{"uuid": UUID.upper(), "version": VERSION, "name": "f0.json", "indexed": True}]
        response = web_session.put(f"/v1/bundles/{UUID}?replica=aws&version={VERSION}", headers=bearer(token()),
                                   json={"creator_uid": 1, "files": files})
        assert (response.status_code, response.json()) == (201, {"version": VERSION, "manifest": manifest})
        args = gateway.bundles.put_bundle.call_args[0]
        assert args[:5] == ("aws", UUID, VERSION, 1, [{"uuid": UUID, "version": VERSION, "name": "f0.json",
                                                         "indexed": True}])
        gateway.bundles.put_bundle.return_value = {"status": "exists", "version": VERSION, "manifest": manifest}
        response = web_session.put(f"/v1/bundles/{UUID}?replica=aws&version={VERSION}", headers=bearer(token()),
                                   json={"creator_uid": 1, "files": files})
        assert response.status_code == 200

    def test_patch(self, gateway, web_session, token):
        gateway.bundles.patch_bundle.return_value = {"uuid": UUID, "version": VERSION}
        add = [{"uuid": UUID, "version": VERSION, "name": "n", "indexed": False}]
        response = web_session.patch(f"/v1/bundles/{UUID}?replica=aws&version={VERSION}", headers=bearer(token()),
                                     json={"add_files": add})
        assert (response.status_code, response.json()) == (200, {"uuid": UUID, "version": VERSION})
        assert gateway.bundles.patch_bundle.call_args[0][:5] == ("aws", UUID, VERSION, add, [])
        response = web_session.patch(f"/v1/bundles/{UUID}?replica=aws", headers=bearer(token()), json={})
        assert_problem(response, 400, "illegal_arguments")  # version is required

    def test_delete(self, gateway, web_session, token):
        gateway.bundles.delete_bundle.return_value = {"status": "created"}
        response = web_session.delete(f"/v1/bundles/{UUID}?replica=aws", headers=bearer(token(
            email="admin@example.org")), json={"reason": "withdrawn", "details": {"ticket": 4}})
        assert (response.status_code, response.json()) == (200, {})
        args = gateway.bundles.delete_bundle.call_args[0]
        assert args[:5] == ("aws", UUID, None, "withdrawn", {"ticket": 4})
        assert args[5]["is_admin"] is True
        response = web_session.delete(f"/v1/bundles/{UUID}?replica=aws", headers=bearer(token()), json={})
        assert_problem(response, 400, "illegal_arguments")  # reason is required


class TestCollections:
    item = {"type": "file", "uuid": UUID, "version": VERSION}

    def test_put(self, gateway, web_session, token):
        other = str(uuid_module.uuid4())
        gateway.bundles.put_collection.return_value = {"uuid": other, "version": VERSION}
        response = web_session.put(f"/v1/collections?replica=aws&uuid={other.upper()}&version={VERSION}",
                                   headers=bearer(token()), json={"name": "c", "contents": [self.item]})
        assert (response.status_code, response.json()) == (201, {"uuid": other, "version": VERSION})
        args = gateway.bundles.put_collection.call_args[0]
        assert args[:7] == ("aws", other, VERSION, "c", "", {}, [self.item])
        assert_problem(web_session.put("/v1/collections?replica=aws", headers=bearer(token()),
                                       json={"name": "c", "contents": []}), 400, "illegal_arguments")

    def test_list_pages(self, gateway, web_session, token):
        gateway.bundles.list_collections.return_value = {"collections": [{"uuid": UUID, "version": VERSION}] * 10,
                                                         "next_start_at": 10}
        response = web_session.get("/v1/collections?per_page=10", headers=bearer(token()))
        assert response.status_code == 206
        assert response.links["next"]["url"].endswith("/v1/collections?per_page=10&start_at=10")
        assert response.headers["X-OpenAPI-Paginated-Content-Key"] == "collections"
        assert gateway.bundles.list_collections.call_args[0][1:] == (10, 0)

    def test_get_patch_delete(self, gateway, web_session, token):
        doc = {"uuid": UUID, "version": VERSION, "name": "c", "contents": [self.item], "owner": "w@example.org"}
        gateway.bundles.get_collection.return_value = doc
        response = web_session.get(f"/v1/collections/{UUID}?replica=aws", headers=bearer(token()))
        assert (response.status_code, response.json()) == (200, doc)

        gateway.bundles.patch_collection.return_value = {"uuid": UUID, "version": VERSION}
        response = web_session.patch(f"/v1/collections/{UUID}?replica=aws&version={VERSION}",
                                     headers=bearer(token()), json={"name": "d", "add_contents": [self.item]})
        assert response.status_code == 200
        assert gateway.bundles.patch_collection.call_args[0][3] == {"name": "d", "add_contents": [self.item]}

        gateway.bundles.delete_collection.return_value = {"status": "created"}
        response = web_session.delete(f"/v1/collections/{UUID}?replica=aws", headers=bearer(token()))
        assert (response.status_code, response.json()) == (200, {})

        gateway.bundles.get_collection.side_effect = remote(Forbidden("not the owner", "forbidden"))
        assert_problem(web_session.get(f"/v1/collections/{UUID}?replica=aws", headers=bearer(token())), 403)


class TestSearch:
    query = {"query": {"match": {"files.project_json.title": "liver"}}}

    def test_summary_page_with_a_next_link(self, gateway, web_session):
        fqid = f"{UUID}.{VERSION}"
        gateway.indexer.search.return_value = {"results": [{"bundle_fqid": fqid, "search_score": None}] * 10,
                                               "total_hits": 25, "search_after": fqid}
        response = web_session.post("/v1/search?replica=gcp&per_page=10", json={"es_query": self.query})
        assert response.status_code == 206, response.text
        body = response.json()
        assert body["es_query"] == self.query and body["total_hits"] == 25
        hit = body["results"][0]
        assert (hit["bundle_fqid"], hit["search_score"]) == (fqid, None)
        assert hit["bundle_url"].startswith("http://") and \
            hit["bundle_url"].endswith(f"/v1/bundles/{UUID}?version={VERSION}&replica=gcp")
        assert response.headers["X-OpenAPI-Paginated-Content-Key"] == "results"
        assert "search_after=" in response.links["next"]["url"]
        assert gateway.indexer.search.call_args[0] == ("gcp", self.query, "summary", 10, None)

    def test_raw_last_page(self, gateway, web_session):
        fqid = f"{UUID}.{VERSION}"
        gateway.indexer.search.return_value = {"results": [{"bundle_fqid": fqid, "search_score": 1.0,
                                                            "metadata": {"uuid": UUID}}],
                                               "total_hits": 1, "search_after": None}
        response = web_session.post(f"/v1/search?replica=aws&output_format=raw&search_after={fqid}",
                                    json={"es_query": {}})
        assert response.status_code == 200 and "Link" not in response.headers
        assert response.json()["results"][0]["metadata"] == {"uuid": UUID}
        assert gateway.indexer.search.call_args[0] == ("aws", {}, "raw", 100, fqid)

    @pytest.mark.parametrize("params,body,code", [
        ("replica=aws&output_format=xml", {"es_query": {}}, "illegal_arguments"),
        ("replica=aws&per_page=501", {"es_query": {}}, "illegal_arguments"),
        ("replica=azure", {"es_query": {}}, "unknown_replica"),
        ("replica=aws", {}, "illegal_arguments"),
        ("replica=aws", {"es_query": "title:liver"}, "illegal_arguments"),
    ])
    def test_bad_input(self, gateway, web_session, params, body, code):
        assert_problem(web_session.post(f"/v1/search?{params}", json=body), 400, code)
        gateway.indexer.search.assert_not_called()

    def test_a_query_the_engine_refuses_is_a_400(self, gateway, web_session):
        from shared.search import ElasticsearchBadRequest
        gateway.indexer.search.side_effect = remote(ElasticsearchBadRequest("unsupported clause `fuzzy`"))
        body = assert_problem(web_session.post("/v1/search?replica=aws", json={"es_query": {"query": {"fuzzy": {}}}}),
                              400, "elasticsearch_bad_request")
        assert "fuzzy" in body["title"]


class TestSubscriptions:
    sub = {"callback_url": "https://hooks.example.org/dss", "jmespath_query": "event_type=='CREATE'",
           "hmac_secret_key": "s3cret", "hmac_key_id": "k1"}

    def test_put_get_list_delete(self, gateway, web_session, token):
        sub_id = str(uuid_module.uuid4())
        gateway.notifier.put_subscription.return_value = {"uuid": sub_id}
        response = web_session.put("/v1/subscriptions?replica=aws", headers=bearer(token()), json=self.sub)
        assert (response.status_code, response.json()) == (201, {"uuid": sub_id})
        replica, body, caller = gateway.notifier.put_subscription.call_args[0]
        assert (replica, body, caller["email"]) == ("aws", self.sub, "writer@example.org")

        stored = {"uuid": sub_id, "callback_url": self.sub["callback_url"], "owner": "writer@example.org"}
        gateway.notifier.list_subscriptions.return_value = {"subscriptions": [stored]}
        response = web_session.get("/v1/subscriptions?replica=aws&subscription_type=elasticsearch",
                                   headers=bearer(token()))
        assert (response.status_code, response.json()) == (200, {"subscriptions": [stored]})
        assert gateway.notifier.list_subscriptions.call_args[0][::2] == ("aws", "elasticsearch")

        gateway.notifier.get_subscription.return_value = stored
        response = web_session.get(f"/v1/subscriptions/{sub_id.upper()}?replica=aws", headers=bearer(token()))
        assert (response.status_code, response.json()) == (200, stored)
        assert gateway.notifier.get_subscription.call_args[0][:2] == ("aws", sub_id)

        gateway.notifier.delete_subscription.return_value = {"timeDeleted": "2026-11-25T10:00:00.000000Z"}
        response = web_session.delete(f"/v1/subscriptions/{sub_id}?replica=aws", headers=bearer(token()))
        assert (response.status_code, response.json()) == (200, {"timeDeleted": "2026-11-25T10:00:00.000000Z"})

    def test_a_token_is_required(self, gateway, web_session):
        assert_problem(web_session.get("/v1/subscriptions?replica=aws"), 401)
        assert_problem(web_session.put("/v1/subscriptions?replica=aws", json=self.sub), 401)
        assert_problem(web_session.delete(f"/v1/subscriptions/{UUID}?replica=aws"), 401)
        gateway.notifier.put_subscription.assert_not_called()

    @pytest.mark.parametrize("change", [{"callback_url": None}, {"method": "GET"}, {"encoding": "text/xml"},
                                        {"es_query": "x"}, {"attachments": {"a": "b"}}, {"colour": "red"}])
    def test_malformed_bodies(self, gateway, web_session, token, change):
        body = {**self.sub, **change}
        if change.get("callback_url", "") is None:
            del body["callback_url"]
        assert_problem(web_session.put("/v1/subscriptions?replica=aws", headers=bearer(token()), json=body),
                       400, "illegal_arguments")
        gateway.notifier.put_subscription.assert_not_called()

    @pytest.mark.parametrize("error,status", [(NotFound("no such subscription", "not_found"), 404),
                                              (Forbidden("not yours", "forbidden"), 403),
                                              (NotAcceptable("too many", "too_many_subscriptions"), 406)])
    def test_service_errors_keep_their_status(self, gateway, web_session, token, error, status):
        gateway.notifier.get_subscription.side_effect = remote(error)
        gateway.notifier.put_subscription.side_effect = remote(error)
        assert_problem(web_session.get(f"/v1/subscriptions/{UUID}?replica=aws", headers=bearer(token())),
                       status, error.error_code)
        assert_problem(web_session.put("/v1/subscriptions?replica=aws", headers=bearer(token()), json=self.sub),
                       status, error.error_code)


class TestEvents:
    def test_list_pages_with_a_token(self, gateway, web_session):
        event = {"event_id": "e1", "event_type": "CREATE", "event_timestamp": VERSION,
                 "bundle_fqid": f"{UUID}.{VERSION}", "document": {}}
        gateway.indexer.list_events.return_value = {"event_streams": [event], "token": "next-page"}
        response = web_session.get(f"/v1/events?replica=aws&from_date={VERSION}&per_page=1")
        assert response.status_code == 206
        assert response.json() == {"event_streams": [event]}
        assert response.headers["X-OpenAPI-Paginated-Content-Key"] == "event_streams"
        assert "token=next-page" in response.links["next"]["url"]
        assert gateway.indexer.list_events.call_args[0] == ("aws", VERSION, None, 1, None)

        gateway.indexer.list_events.return_value = {"event_streams": [], "token": None}
        response = web_session.get("/v1/events?replica=aws&token=next-page")
        assert (response.status_code, response.json()) == (200, {"event_streams": []})
        assert gateway.indexer.list_events.call_args[0] == ("aws", None, None, 100, "next-page")

    def test_get_one(self, gateway, web_session):
        document = {"event_type": "CREATE", "bundle_info": {"uuid": UUID, "version": VERSION}, "manifest": {},
                    "files": {}}
        gateway.indexer.get_event.return_value = document
        response = web_session.get(f"/v1/events/{UUID.upper()}?replica=aws&version={VERSION}")
        assert (response.status_code, response.json()) == (200, document)
        assert gateway.indexer.get_event.call_args[0] == ("aws", UUID, VERSION)
        assert_problem(web_session.get(f"/v1/events/{UUID}?replica=aws"), 400, "illegal_arguments")
        assert_problem(web_session.get(f"/v1/events/{UUID}?replica=aws&version=yesterday"), 400, "illegal_version")
        assert_problem(web_session.get("/v1/events?replica=aws&per_page=0"), 400, "illegal_arguments")
        gateway.indexer.get_event.side_effect = remote(NotFound("no such bundle", "not_found"))
        assert_problem(web_session.get(f"/v1/events/{UUID}?replica=aws&version={VERSION}"), 404, "not_found")


class TestCheckout:
    def test_start_and_follow_a_bundle_checkout(self, gateway, web_session, token):
        gateway.checkout.start_bundle_checkout.return_value = {"checkout_job_id": "job-1", "version": VERSION}
        auth = bearer(token("me@example.org", groups=()))  # any authenticated caller, no group needed
        response = web_session.post(f"/v1/bundles/{UUID.upper()}/checkout?replica=aws", headers=auth,
                                    json={"destination": "my-bucket", "email": "me@example.org"})
        assert (response.status_code, response.json()) == (200, {"checkout_job_id": "job-1"})
        *arguments, caller = gateway.checkout.start_bundle_checkout.call_args[0]
        assert arguments == ["aws", UUID, None, "my-bucket", "me@example.org"]
        assert caller["email"] == "me@example.org" and caller["is_admin"] is False
        response = web_session.post(f"/v1/bundles/{UUID}/checkout?replica=gcp&version={VERSION}",
                                    headers=auth)  # no body
        assert response.status_code == 200
        assert gateway.checkout.start_bundle_checkout.call_args[0][:5] == ("gcp", UUID, VERSION, None, None)

        status = {"status": "SUCCEEDED", "location": f"s3://my-bucket/bundles/{UUID}.{VERSION}/"}
        gateway.checkout.get_checkout_job.return_value = status
        response = web_session.get("/v1/bundles/checkout/job-1?replica=aws")
        assert (response.status_code, response.json()) == (200, status)
        assert gateway.checkout.get_checkout_job.call_args[0] == ("aws", "job-1")

    def test_a_bundle_checkout_needs_a_token(self, gateway, web_session, token):
        for headers in ({}, bearer("not-a-jwt"), bearer(token(lifetime_s=-3600))):
            assert_problem(web_session.post(f"/v1/bundles/{UUID}/checkout?replica=aws", headers=headers,
                                            json={"destination": "dss-staging", "email": "someone@example.org"}),
                           401, "unauthorized")
        gateway.checkout.start_bundle_checkout.assert_not_called()

    def test_bad_checkout_requests(self, gateway, web_session, token):
        auth = bearer(token())
        assert_problem(web_session.post(f"/v1/bundles/{UUID}/checkout?replica=aws", headers=auth,
                                        json={"email": "not-an-address"}), 400, "illegal_arguments")
        assert_problem(web_session.post(f"/v1/bundles/{UUID}/checkout?replica=aws", headers=auth,
                                        json={"colour": "red"}), 400, "illegal_arguments")
        assert_problem(web_session.post(f"/v1/bundles/{UUID}/checkout", headers=auth), 400)
        gateway.checkout.start_bundle_checkout.assert_not_called()
        gateway.checkout.start_bundle_checkout.side_effect = remote(
            InvalidParameter("bucket nope is not writable", "invalid_destination"))
        assert_problem(web_session.post(f"/v1/bundles/{UUID}/checkout?replica=aws", headers=auth,
                                        json={"destination": "nope"}), 400, "invalid_destination")
        gateway.checkout.start_bundle_checkout.side_effect = remote(
            Forbidden("bundle checkouts may not write to s3://dss-staging/", "destination_not_allowed"))
        assert_problem(web_session.post(f"/v1/bundles/{UUID}/checkout?replica=aws", headers=auth,
                                        json={"destination": "dss-staging"}), 403, "destination_not_allowed")
        gateway.checkout.get_checkout_job.side_effect = remote(NotFound("no such checkout job", "not_found"))
        assert_problem(web_session.get("/v1/bundles/checkout/job-2?replica=aws"), 404, "not_found")


class TestDrs:
    def test_objects_at_the_standard_root_and_under_v1(self, gateway, web_session):
        drs_object = {"id": UUID, "self_uri": f"drs://localhost/{UUID}", "size": 12}
        gateway.checkout.drs_object.return_value = drs_object
        for prefix in ("", "/v1"):
            response = web_session.get(f"{prefix}/ga4gh/drs/v1/objects/{UUID}")
            assert (response.status_code, response.json()) == (200, drs_object)
            replica, object_id, version, base, expand = gateway.checkout.drs_object.call_args[0]
            assert (replica, object_id, version, expand) == ("aws", UUID, None, False)
            assert base.startswith("http://")
        web_session.get(f"/ga4gh/drs/v1/objects/{UUID}?replica=gcp&version={VERSION}&expand=true")
        assert gateway.checkout.drs_object.call_args[0][::2] == ("gcp", VERSION, True)

    def test_access_urls_and_202_while_the_copy_runs(self, gateway, web_session):
        gateway.checkout.drs_access.return_value = {"status": "pending", "retry_after": 5}
        response = web_session.get(f"/ga4gh/drs/v1/objects/{UUID}/access/s3-aws")
        assert response.status_code == 202 and response.headers["Retry-After"] == "5"
        gateway.checkout.drs_access.return_value = {"status": "ready", "url": "https://example.org/b"}
        response = web_session.get(f"/v1/ga4gh/drs/v1/objects/{UUID}/access/s3-aws?replica=gcp")
        assert (response.status_code, response.json()) == (200, {"url": "https://example.org/b"})
        assert gateway.checkout.drs_access.call_args[0] == ("gcp", UUID, "s3-aws", None)

    def test_errors_are_drs_error_bodies(self, gateway, web_session):
        gateway.checkout.drs_object.side_effect = remote(NotFound("no such object", "not_found"))
        response = web_session.get(f"/ga4gh/drs/v1/objects/{UUID}")
        assert (response.status_code, response.json()) == (404, {"msg": "no such object", "status_code": 404})
        gateway.checkout.drs_access.side_effect = remote(Unavailable("GCS is unreachable", "storage_unavailable"))
        response = web_session.get(f"/ga4gh/drs/v1/objects/{UUID}/access/gs-gcp")
        assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
        assert response.json() == {"msg": "GCS is unreachable", "status_code": 503}

    def test_service_info(self, gateway, web_session):
        gateway.checkout.drs_service_info.return_value = {"id": "org.example.dss", "type": {"artifact": "drs"}}
        response = web_session.get("/ga4gh/drs/v1/service-info")
        assert response.status_code == 200 and response.json()["type"]["artifact"] == "drs"


# --- documents ---------------------------------------------------------------------------------------
CONTRACT_OPERATIONS = {
    ("/files/{uuid}", "put"), ("/files/{uuid}", "head"), ("/files/{uuid}", "get"),
    ("/bundles/{uuid}", "put"), ("/bundles/{uuid}", "get"), ("/bundles/{uuid}", "patch"),
    ("/bundles/{uuid}", "delete"), ("/bundles/all", "get"), ("/bundles/{uuid}/checkout", "post"),
    ("/bundles/checkout/{checkout_job_id}", "get"), ("/search", "post"), ("/subscriptions", "put"),
    ("/subscriptions", "get"), ("/subscriptions/{uuid}", "get"), ("/subscriptions/{uuid}", "delete"),
    ("/collections", "put"), ("/collections", "get"), ("/collections/{uuid}", "get"),
    ("/collections/{uuid}", "patch"), ("/collections/{uuid}", "delete"), ("/events", "get"),
    ("/events/{uuid}", "get"), ("/ga4gh/drs/v1/objects/{object_id}", "get"), ("/swagger.json", "get"),
    ("/ga4gh/drs/v1/service-info", "get"), ("/ga4gh/drs/v1/objects/{object_id}/access/{access_id}", "get"),
}
JWT_OPERATIONS = {op for op in CONTRACT_OPERATIONS
                  if op[0].startswith(("/subscriptions", "/collections"))
                  or op in {("/files/{uuid}", "put"), ("/bundles/{uuid}", "put"), ("/bundles/{uuid}", "patch"),
                            ("/bundles/{uuid}", "delete"), ("/bundles/{uuid}/checkout", "post")}}

# Array body properties the spec marks required although the API accepts them absent: the dbio and
# hca CLIs make an array property a command-line option only when the spec requires it.
REQUIRED_ONLY_FOR_THE_CLIS = {"patchBundle": {"add_files"}}

# operationId -> (query schema, body schema) the gateway validates it with
VALIDATED_BY = {
    "putFile": (schemas.PutFileQuery, schemas.PutFileBody),
    "headFile": (schemas.HeadFileQuery, None),
    "getFile": (schemas.GetFileQuery, None),
    "listBundles": (schemas.ListBundlesQuery, None),
    "getBundle": (schemas.GetBundleQuery, None),
    "putBundle": (schemas.PutBundleQuery, schemas.PutBundleBody),
    "patchBundle": (schemas.PatchBundleQuery, schemas.PatchBundleBody),
    "deleteBundle": (schemas.DeleteBundleQuery, schemas.DeleteBundleBody),
    "putCollection": (schemas.PutCollectionQuery, schemas.PutCollectionBody),
    "listCollections": (schemas.ListCollectionsQuery, None),
    "getCollection": (schemas.GetCollectionQuery, None),
    "patchCollection": (schemas.PatchCollectionQuery, schemas.PatchCollectionBody),
    "deleteCollection": (schemas.DeleteCollectionQuery, None),
    "search": (schemas.SearchQuery, schemas.SearchBody),
    "putSubscription": (schemas.PutSubscriptionQuery, schemas.PutSubscriptionBody),
    "listSubscriptions": (schemas.SubscriptionsQuery, None),
    "getSubscription": (schemas.SubscriptionsQuery, None),
    "deleteSubscription": (schemas.SubscriptionsQuery, None),
    "listEvents": (schemas.ListEventsQuery, None),
    "getEvent": (schemas.GetEventQuery, None),
    "checkoutBundle": (schemas.CheckoutBundleQuery, schemas.CheckoutBundleBody),
    "getCheckoutJob": (schemas.CheckoutJobQuery, None),
    "getDrsServiceInfo": (schemas.NoQuery, None),
    "getDrsObject": (schemas.DrsObjectQuery, None),
    "getDrsAccessUrl": (schemas.DrsAccessQuery, None),
    "getSwagger": (schemas.NoQuery, None),
}


class TestDocuments:
    def test_swagger_structure(self, gateway, web_session, web_config_port):
        response = web_session.get("/v1/swagger.json")
        assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
        doc = response.json()
        assert doc["swagger"] == "2.0"
        assert doc["host"] == f"127.0.0.1:{web_config_port}"
        assert doc["basePath"] == "/v1"
        assert doc["info"]["description"]
        security = doc["securityDefinitions"]["OauthSecurity"]
        assert security["x-audience"] == AUDIENCE
        assert security["x-email-claim"] == "email"
        assert security["x-group-claim"] == GROUP_CLAIM
        operations = {(path, method): op for path, method, op in apidoc.operations(doc)}
        assert set(operations) == CONTRACT_OPERATIONS
        ids = [op["operationId"] for op in operations.values()]
        assert len(ids) == len(set(ids))
        for key, op in operations.items():
            assert bool(op.get("security")) == (key in JWT_OPERATIONS), key
            if op.get("security"):
                assert op["security"] == [{"OauthSecurity": []}]
        for key in [("/bundles/{uuid}", "get"), ("/bundles/all", "get"), ("/collections", "get"),
                    ("/search", "post"), ("/events", "get")]:
            assert "206" in operations[key]["responses"], key  # how the clients detect paging
        assert "302" in operations[("/files/{uuid}", "get")]["responses"]

    def test_swagger_is_valid(self, gateway, web_session):
        from openapi_spec_validator import OpenAPIV2SpecValidator
        response = web_session.get("/v1/swagger.json")
        assert response.status_code == 200
        assert [error.message for error in OpenAPIV2SpecValidator(response.json()).iter_errors()] == []

    def test_swagger_parameters(self, gateway, web_session):
        doc = web_session.get("/v1/swagger.json").json()
        operations = {(path, method): apidoc.resolve(doc, op) for path, method, op in apidoc.operations(doc)}
        params = {key: {p["name"]: p for p in op.get("parameters", [])} for key, op in operations.items()}
        replica = params[("/bundles/{uuid}", "get")]["replica"]
        assert (replica["in"], replica["type"], replica["required"], replica["enum"]) == \
            ("query", "string", True, ["aws", "gcp"])
        per_page = params[("/bundles/{uuid}", "get")]["per_page"]
        assert (per_page["minimum"], per_page["maximum"], per_page["default"]) == (10, 500, 500)
        assert params[("/bundles/all", "get")]["per_page"]["default"] == 100
        assert params[("/files/{uuid}", "get")]["uuid"]["in"] == "path"
        for op in operations.values():
            for param in op.get("parameters", []):
                assert {"name", "in"} <= set(param)
                if param["in"] == "body":  # the CLIs need a type for every body property
                    assert all("type" in prop or "enum" in prop for prop in param["schema"]["properties"].values())
                else:
                    assert "type" in param and "required" in param

    def test_swagger_matches_the_validation(self, gateway, web_session):
        doc = web_session.get("/v1/swagger.json").json()
        by_id = {op["operationId"]: apidoc.resolve(doc, op) for _, _, op in apidoc.operations(doc)}
        for operation_id, (query_schema, body_schema) in VALIDATED_BY.items():
            op = by_id[operation_id]
            documented = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
            assert documented == set(query_schema().fields), operation_id
            required = {p["name"] for p in op.get("parameters", []) if p["in"] == "query" and p["required"]}
            assert required == {n for n, f in query_schema().fields.items() if f.required}, operation_id
            body = [p for p in op.get("parameters", []) if p["in"] == "body"]
            if body_schema is None:
                assert not body, operation_id
            else:
                assert set(body[0]["schema"]["properties"]) == set(body_schema().fields), operation_id
                assert set(body[0]["schema"].get("required", [])) == \
                    {n for n, f in body_schema().fields.items() if f.required} | \
                    REQUIRED_ONLY_FOR_THE_CLIS.get(operation_id, set()), operation_id


# --- health ------------------------------------------------------------------------------------------
HEALTHY = {"aws": {"ok": True, "detail": "ok"}, "gcp": {"ok": True, "detail": "ok"}}


class TestHealth:
    @staticmethod
    def all_healthy(gateway):
        for name in PROBED_SERVICES:
            getattr(gateway, name).health.return_value = HEALTHY

    def test_healthy(self, gateway, web_session):
        self.all_healthy(gateway)
        response = web_session.get("/internal/health")
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "ok", "dependencies": {
            "broker": {"ok": True, "detail": "reachable"}, **{name: HEALTHY for name in PROBED_SERVICES}}}

    def test_failing_replica(self, gateway, web_session):
        self.all_healthy(gateway)
        gateway.files.health.return_value = {**HEALTHY, "gcp": {"ok": False, "detail": "GCS unreachable"}}
        response = web_session.get("/internal/health")
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) > 0
        body = response.json()
        assert body["failing"] == ["files"]
        assert body["dependencies"]["files"]["gcp"] == {"ok": False, "detail": "GCS unreachable"}

    def test_service_down(self, gateway, web_session):
        self.all_healthy(gateway)
        gateway.bundles.health.side_effect = UnknownService("bundles")
        response = web_session.get("/internal/health")
        assert response.status_code == 503
        assert response.json()["dependencies"]["bundles"]["ok"] is False
