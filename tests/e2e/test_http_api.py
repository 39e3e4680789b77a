"""End to end over HTTP: the gateway, files and bundles services on the real broker, both emulators.

Every request goes through a real socket to the gateway, which calls the services over AMQP RPC.
"""
import hashlib
import json

from devtools import http
from shared.identifiers import new_uuid, new_version
from devtools.fakes import stage_object

PROBLEM = "application/problem+json"


def put_file(api, auth, source_url, uuid=None, version=None):
    uuid, version = uuid or new_uuid(), version or new_version()
    response = http.put(f"{api}/files/{uuid}", params={"version": version}, headers=auth,
                        json={"source_url": source_url, "creator_uid": 7}, timeout=60)
    return uuid, version, response


def assert_problem(response, status, code=None):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith(PROBLEM), response.headers
    body = response.json()
    assert body["status"] == status and body["title"] and body["code"]
    if code:
        assert body["code"] == code, body
    assert "Traceback" not in response.text
    return body


def test_file_and_bundle_round_trip(api, auth, admin, stage):
    data = json.dumps({"donor": {"species": "Homo sapiens"}}).encode()
    source_url, sums = stage(data, content_type="application/json")
    file_uuid, file_version, response = put_file(api, auth, source_url)
    assert response.status_code == 201 and response.json()["version"] == file_version
    _, _, again = put_file(api, auth, source_url, file_uuid, file_version)
    assert again.status_code == 200

    head = http.head(f"{api}/files/{file_uuid}", params={"replica": "aws"})
    assert head.status_code == 200
    assert head.headers["X-DSS-VERSION"] == file_version and head.headers["X-DSS-SHA256"] == sums.sha256
    assert head.headers["X-DSS-SIZE"] == str(len(data)) and head.headers["X-DSS-S3-ETAG"] == sums.s3_etag
    assert head.headers["X-DSS-CONTENT-TYPE"] == "application/json" and head.headers["X-DSS-CREATOR-UID"] == "7"

    got = http.get(f"{api}/files/{file_uuid}", params={"replica": "aws"}, allow_redirects=False)
    assert got.status_code == 302 and got.headers["X-DSS-CRC32C"] == sums.crc32c
    downloaded = http.get(got.headers["Location"]).content
    assert hashlib.sha256(downloaded).hexdigest() == sums.sha256

    bundle_uuid, bundle_version = new_uuid(), new_version()
    body = {"creator_uid": 7, "files": [{"uuid": file_uuid, "version": file_version, "name": "donor.json",
                                         "indexed": True}]}
    created = http.put(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws", "version": bundle_version},
                       headers=auth, json=body)
    assert created.status_code == 201, created.text
    assert created.json()["version"] == bundle_version
    repeat = http.put(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws", "version": bundle_version},
                      headers=auth, json=body)
    assert repeat.status_code == 200

    bundle = http.get(f"{api}/bundles/{bundle_uuid.upper()}", params={"replica": "aws"})
    assert bundle.status_code == 200, bundle.text
    files = bundle.json()["bundle"]["files"]
    assert bundle.json()["bundle"]["uuid"] == bundle_uuid and bundle.json()["bundle"]["version"] == bundle_version
    assert files[0]["name"] == "donor.json" and files[0]["s3_etag"] == sums.s3_etag and files[0]["indexed"] is True

    listing = http.get(f"{api}/bundles/all", params={"replica": "aws", "prefix": bundle_uuid[:8]})
    assert listing.status_code == 200
    assert {"uuid": bundle_uuid, "version": bundle_version} in listing.json()["bundles"]

    patched = http.patch(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws", "version": bundle_version},
                         headers=auth, json={"remove_files": body["files"]})
    assert patched.status_code == 200, patched.text
    new_version_ = patched.json()["version"]
    assert new_version_ > bundle_version
    assert http.get(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws"}).json()["bundle"]["files"] == []

    forbidden = http.delete(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws"}, headers=auth,
                            json={"reason": "test"})
    assert_problem(forbidden, 403)
    deleted = http.delete(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws"}, headers=admin,
                          json={"reason": "test"})
    assert deleted.status_code == 200, deleted.text
    assert_problem(http.get(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws"}), 404)
    assert_problem(http.get(f"{api}/bundles/{bundle_uuid}",
                            params={"replica": "aws", "version": bundle_version}), 404)
    listing = http.get(f"{api}/bundles/all", params={"replica": "aws", "prefix": bundle_uuid[:8]})
    assert all(b["uuid"] != bundle_uuid for b in listing.json()["bundles"])


def test_bundle_files_are_paged_with_link_headers(api, auth, stage):
    source_url, _ = stage(b"page me")
    file_uuid, file_version, _ = put_file(api, auth, source_url)
    bundle_uuid = new_uuid()
    files = [{"uuid": file_uuid, "version": file_version, "name": f"dir/f{i:02d}", "indexed": False}
             for i in range(25)]
    assert http.put(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws", "version": new_version()},
                    headers=auth, json={"creator_uid": 1, "files": files}).status_code == 201
    response = http.get(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws", "per_page": 10})
    assert response.status_code == 206
    assert response.headers["X-OpenAPI-Pagination"] == "true"
    assert response.headers["X-OpenAPI-Paginated-Content-Key"] == "bundle.files"
    names = [f["name"] for f in response.json()["bundle"]["files"]]
    while "next" in response.links:
        assert response.links["next"]["url"].startswith("http")
        response = http.get(response.links["next"]["url"])
        names += [f["name"] for f in response.json()["bundle"]["files"]]
    assert response.status_code == 200
    assert names == [f["name"] for f in files]


def test_links_are_never_built_from_a_forged_host(api, auth, stage):
    """Without DSS_PUBLIC_URL the Link of a page comes from the Host header: only the gateway's own
    names are answered (here its bound address, as the test clients use), anything else is a 400."""
    source_url, _ = stage(b"link me")
    file_uuid, file_version, _ = put_file(api, auth, source_url)
    bundle_uuid = new_uuid()
    files = [{"uuid": file_uuid, "version": file_version, "name": f"f{i:02d}", "indexed": False} for i in range(12)]
    assert http.put(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws", "version": new_version()},
                    headers=auth, json={"creator_uid": 1, "files": files}, timeout=30).status_code == 201
    params = {"replica": "aws", "per_page": 10}

    forged = http.get(f"{api}/bundles/{bundle_uuid}", params=params, headers={"Host": "evil.example"}, timeout=30)
    assert_problem(forged, 400, "illegal_host")
    assert "Link" not in forged.headers
    assert_problem(http.get(f"{api}/swagger.json", headers={"Host": "evil.example"}, timeout=30), 400,
                   "illegal_host")

    page = http.get(f"{api}/bundles/{bundle_uuid}", params=params, timeout=30)
    assert page.status_code == 206 and page.links["next"]["url"].startswith(f"{api}/bundles/{bundle_uuid}?")


def test_collections_are_owned(api, auth, mint_token, stage):
    source_url, _ = stage(b"collect me")
    file_uuid, file_version, _ = put_file(api, auth, source_url)
    uuid, version = new_uuid(), new_version()
    body = {"name": "c", "description": "d", "details": {"k": 1},
            "contents": [{"type": "file", "uuid": file_uuid, "version": file_version}] * 2}
    created = http.put(f"{api}/collections", params={"replica": "aws", "uuid": uuid, "version": version},
                       headers=auth, json=body)
    assert created.status_code == 201, created.text
    got = http.get(f"{api}/collections/{uuid}", params={"replica": "aws"}, headers=auth)
    assert got.status_code == 200 and len(got.json()["contents"]) == 1  # de-duplicated
    mine = http.get(f"{api}/collections", headers=auth)
    assert {"uuid": uuid, "version": version} in mine.json()["collections"]

    stranger = {"Authorization": f"Bearer {mint_token('stranger@example.org', ['dbio'])}"}
    assert_problem(http.get(f"{api}/collections/{uuid}", params={"replica": "aws"}, headers=stranger), 403)
    assert_problem(http.delete(f"{api}/collections/{uuid}", params={"replica": "aws"}, headers=stranger), 403)

    patched = http.patch(f"{api}/collections/{uuid}", params={"replica": "aws", "version": version},
                         headers=auth, json={"name": "renamed"})
    assert patched.status_code == 200, patched.text
    assert http.get(f"{api}/collections/{uuid}", params={"replica": "aws"},
                    headers=auth).json()["name"] == "renamed"
    assert http.delete(f"{api}/collections/{uuid}", params={"replica": "aws"}, headers=auth).status_code == 200
    assert_problem(http.get(f"{api}/collections/{uuid}", params={"replica": "aws"}, headers=auth), 404)

    dangling = dict(body, contents=[{"type": "bundle", "uuid": new_uuid(), "version": new_version()}])
    assert_problem(http.put(f"{api}/collections", params={"replica": "aws", "uuid": new_uuid(),
                                                          "version": new_version()},
                            headers=auth, json=dangling), 422, "invalid_link")


def test_authentication_and_authorisation(api, auth, mint_token, stage):
    source_url, _ = stage()
    uuid = new_uuid()
    url = f"{api}/files/{uuid}?version={new_version()}"
    body = {"source_url": source_url, "creator_uid": 1}
    response = http.put(url, json=body)
    assert_problem(response, 401)
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert_problem(http.put(url, json=body, headers={"Authorization": "Bearer not.a.jwt"}), 401)
    expired = mint_token("user@example.org", ["dbio"], lifetime_s=-120)
    assert_problem(http.put(url, json=body, headers={"Authorization": f"Bearer {expired}"}), 401)
    outsider = mint_token("user@example.org", ["not-a-member"])
    assert_problem(http.put(url, json=body, headers={"Authorization": f"Bearer {outsider}"}), 403)
    assert http.put(url, json=body, headers=auth).status_code == 201


def bad_requests(api, source_url, file_uuid, file_version):
    uuid, version = new_uuid(), new_version()
    good_file = {"uuid": file_uuid, "version": file_version, "name": "a", "indexed": False}
    return [
        ("malformed uuid", "GET", f"{api}/files/not-a-uuid?replica=aws", None, 400, "illegal_uuid"),
        ("malformed version", "GET", f"{api}/files/{uuid}?replica=aws&version=2020-01-01", None, 400,
         "illegal_version"),
        ("unknown replica", "GET", f"{api}/bundles/{uuid}?replica=azure", None, 400, None),
        ("per_page too small", "GET", f"{api}/bundles/{uuid}?replica=aws&per_page=9", None, 400, None),
        ("per_page too large", "GET", f"{api}/bundles/all?replica=aws&per_page=501", None, 400, None),
        ("unknown query parameter", "GET", f"{api}/bundles/{uuid}?replica=aws&colour=red", None, 400, None),
        ("unknown source scheme", "PUT", f"{api}/files/{uuid}?version={version}",
         {"source_url": "ftp://x/y", "creator_uid": 1}, 400, "unknown_source_scheme"),
        ("source does not exist", "PUT", f"{api}/files/{uuid}?version={version}",
         {"source_url": "s3://dss-staging/does/not/exist", "creator_uid": 1}, 422, "source_not_found"),
        ("missing creator_uid", "PUT", f"{api}/files/{uuid}?version={version}", {"source_url": source_url}, 400,
         None),
        ("name with ..", "PUT", f"{api}/bundles/{uuid}?replica=aws&version={version}",
         {"creator_uid": 1, "files": [dict(good_file, name="a/../b")]}, 400, None),
        ("leading slash", "PUT", f"{api}/bundles/{uuid}?replica=aws&version={version}",
         {"creator_uid": 1, "files": [dict(good_file, name="/etc/passwd")]}, 400, None),
        ("duplicate names", "PUT", f"{api}/bundles/{uuid}?replica=aws&version={version}",
         {"creator_uid": 1, "files": [good_file, good_file]}, 400, "duplicate_filename"),
        ("file missing", "PUT", f"{api}/bundles/{uuid}?replica=aws&version={version}",
         {"creator_uid": 1, "files": [dict(good_file, uuid=new_uuid())]}, 400, "file_missing"),
        ("not found", "GET", f"{api}/bundles/{uuid}?replica=aws", None, 404, None),
        ("no such route", "GET", f"{api}/nothing/here", None, 404, None),
    ]


def test_bad_input_gets_problem_json(api, auth, stage, blobstores, dss_settings):
    source_url, sums = stage(b"content")
    file_uuid, file_version, _ = put_file(api, auth, source_url)
    for name, method, url, body, status, code in bad_requests(api, source_url, file_uuid, file_version):
        response = http.request(method, url, json=body, headers=auth)
        try:
            assert_problem(response, status, code)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None

    uuid_url = f"{api}/files/{new_uuid()}?version={new_version()}"
    _, other = stage(b"declared")
    mismatched, _ = stage(b"different", declared=other.as_api())
    assert_problem(http.put(uuid_url, json={"source_url": mismatched, "creator_uid": 1}, headers=auth),
                   422, "checksum_mismatch")
    staging = dss_settings.bucket("aws", "staging")
    blobstores["aws"].put_bytes(staging, "unlabelled", b"x")
    assert_problem(http.put(uuid_url, json={"source_url": f"s3://{staging}/unlabelled", "creator_uid": 1},
                            headers=auth), 422, "missing_checksum")
    assert_problem(http.put(uuid_url, data="{not json", headers={**auth, "Content-Type": "application/json"}),
                   400)
    assert_problem(http.put(uuid_url, data="source_url=x", headers={**auth, "Content-Type": "text/plain"}),
                   415)
    huge = {"source_url": source_url, "creator_uid": 1, "padding": "x" * 100_000}
    assert_problem(http.put(uuid_url, json=huge, headers=auth), 413)
    conflict = put_file(api, auth, stage(b"other content")[0], file_uuid, file_version)[2]
    assert_problem(conflict, 409, "file_already_exists")
    # nothing stored was damaged by any of it
    head = http.head(f"{api}/files/{file_uuid}", params={"replica": "aws"})
    assert head.status_code == 200 and head.headers["X-DSS-SHA256"] == sums.sha256


def test_files_are_ingested_only_from_staging_areas(api, auth, stage, blobstores, dss_settings):
    """A writer cannot read, or learn what is in, a bucket that is not a staging area: the answer is
    one 403, the same for a key that exists as for one that does not."""
    source_url, sums = stage(b"stored in the main bucket")
    file_uuid, file_version, stored = put_file(api, auth, source_url)
    assert stored.status_code == 201, stored.text  # the default staging bucket is a source
    aws_main, gcp_main = dss_settings.bucket("aws"), dss_settings.bucket("gcp")
    gcp_source, _ = stage(b"staged on gcs", replica="gcp")
    assert put_file(api, auth, gcp_source)[2].status_code == 201

    # a lookalike of the staging bucket, holding a properly staged object
    lookalike = dss_settings.bucket("aws", "staging") + "-evil"
    blobstores["aws"].create_bucket(lookalike)
    lookalike_source, _ = stage_object(blobstores["aws"], lookalike, b"looks staged")
    staging = dss_settings.bucket("aws", "staging")
    refused = [
        f"s3://{aws_main}/files/{file_uuid}.{file_version}",   # exists
        f"s3://{aws_main}/{sums.blob_key()}",                   # exists, and carries its checksums
        f"s3://{aws_main}/files/{new_uuid()}.{new_version()}",  # does not exist
        f"gs://{gcp_main}/{sums.blob_key()}",
        lookalike_source,
        f"s3://{staging}/../{aws_main}/{sums.blob_key()}",
        f"s3://{staging}/%2e%2e/{aws_main}/{sums.blob_key()}",
    ]
    bodies = []
    for url in refused:
        _, _, response = put_file(api, auth, url)
        bodies.append(assert_problem(response, 403, "source_not_allowed"))
    assert all(body == bodies[0] for body in bodies), bodies
    assert "staging" in bodies[0]["title"]


def test_api_description_and_health(api):
    spec = http.get(f"{api}/swagger.json")
    assert spec.status_code == 200
    document = spec.json()
    assert document["swagger"] == "2.0" and document["basePath"] == "/v1"
    assert "/files/{uuid}" in document["paths"] and "/bundles/{uuid}" in document["paths"]
    assert document["securityDefinitions"]
    health = http.get(api.replace("/v1", "/internal/health"))
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok"
    page = http.get(api.replace("/v1", "/"))
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
