"""End to end over HTTP: reading file bytes through the checkout bucket (302, or 301 + Retry-After
while a copy runs), bundle checkouts, bundle URLs and GA4GH DRS, as a plain HTTP client sees them.
The gateway and every service run on the real broker and both emulators."""
import hashlib
import json
import os
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from devtools import http
from services.checkout.tests.drs_spec import assert_valid
from shared.identifiers import new_uuid, new_version
from devtools.waiting import wait_until
from tests.e2e.conftest import start_api
from tests.e2e.test_http_api import assert_problem, put_file

INLINE_BYTES = 64 * 1024  # above it, a first read waits for a background copy
ALLOWED = "e2e-checkout-"  # the operator allows bundle checkouts into buckets named so


@pytest.fixture
def checkout_api(service_config, web_config, runner_factory, smtp_server):
    config = {**service_config, **smtp_server.settings, "DSS_CHECKOUT_INLINE_BYTES": INLINE_BYTES,
              "DSS_CHECKOUT_WARM_BYTES": 16 * 1024, "DSS_CHECKOUT_RETRY_AFTER": 1,
              "DSS_CHECKOUT_DESTINATIONS": f"{ALLOWED}*", "DSS_CHECKOUT_MAIL_PER_HOUR": 1000}
    return start_api(config, web_config, runner_factory)


def download(url, max_hops=60):
    """A client of the original DSS: follow 301s to the same resource after their Retry-After,
    then the 302 to the bytes. (response of the bytes, the 301s seen)"""
    waits = []
    for _ in range(max_hops):
        response = http.get(url, allow_redirects=False)
        if response.status_code == 301:
            waits.append(response)
            time.sleep(int(response.headers["Retry-After"]))
            url = response.headers["Location"]
            continue
        assert response.status_code == 302, response.text
        return http.get(response.headers["Location"]), waits
    raise AssertionError(f"still redirected after {max_hops} hops")


def stored_file(api, auth, stage, data, content_type="application/octet-stream"):
    source_url, sums = stage(data, content_type=content_type)
    uuid, version, response = put_file(api, auth, source_url)
    assert response.status_code in (201, 202), response.text
    return uuid, version, sums


def test_a_large_first_read_is_redirected_until_its_copy_is_ready(checkout_api, auth, stage):
    data = os.urandom(INLINE_BYTES * 3)
    uuid, version, sums = stored_file(checkout_api, auth, stage, data)
    got, waits = download(f"{checkout_api}/files/{uuid}?replica=aws")
    assert waits, "a blob above the inline size is copied in the background"
    first = waits[0]
    assert int(first.headers["Retry-After"]) > 0 and first.headers["X-DSS-SHA256"] == sums.sha256
    query = parse_qs(urlsplit(first.headers["Location"]).query)
    assert query["token"] and query["version"] == [version]
    assert hashlib.sha256(got.content).hexdigest() == sums.sha256
    # Once copied, a read is one redirect; a tampered token is refused.
    again, waits = download(f"{checkout_api}/files/{uuid}?replica=aws")
    assert not waits and again.content == data
    assert_problem(http.get(f"{checkout_api}/files/{uuid}", params={"replica": "aws", "token": "%%%"},
                            allow_redirects=False), 400, "illegal_token")


def test_a_small_read_needs_no_second_round_trip(checkout_api, auth, stage):
    data = b"4 KiB of metadata?" * 228
    uuid, _, sums = stored_file(checkout_api, auth, stage, data, "application/json")
    first = http.get(f"{checkout_api}/files/{uuid}", params={"replica": "aws"}, allow_redirects=False)
    assert first.status_code == 302, first.text
    assert hashlib.sha256(http.get(first.headers["Location"]).content).hexdigest() == sums.sha256
    direct = http.get(f"{checkout_api}/files/{uuid}", params={"replica": "aws", "directurl": "true"},
                      allow_redirects=False)
    assert direct.status_code == 302 and direct.headers["Location"].startswith("s3://")
    assert "/blobs/" in direct.headers["Location"] and "dss-main" not in direct.headers["Location"]


def stored_bundle(api, auth, stage, contents):
    files = []
    for name, data in contents.items():
        uuid, version, _ = stored_file(api, auth, stage, data)
        files.append({"uuid": uuid, "version": version, "name": name, "indexed": False})
    bundle_uuid, bundle_version = new_uuid(), new_version()
    created = http.put(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws", "version": bundle_version},
                       headers=auth, json={"creator_uid": 1, "files": files}, timeout=60)
    assert created.status_code == 201, created.text
    return bundle_uuid, bundle_version


def checkout_ended(api, job):
    def ended():
        status = http.get(f"{api}/bundles/checkout/{job}", params={"replica": "aws"}, timeout=30).json()
        return status if status["status"] != "RUNNING" else None
    return wait_until(ended, 60, f"checkout job {job} ended", interval=0.5)


def test_bundle_checkout_and_bundle_urls(checkout_api, auth, stage, blobstores, dss_settings):
    api = checkout_api
    contents = {"a.bin": os.urandom(INLINE_BYTES * 2), "dir/b.json": b'{"b": 1}'}
    bundle_uuid, bundle_version = stored_bundle(api, auth, stage, contents)

    destination = f"{ALLOWED}{new_uuid()[:8]}"
    blobstores["aws"].create_bucket(destination)
    started = http.post(f"{api}/bundles/{bundle_uuid}/checkout", params={"replica": "aws"}, headers=auth,
                        json={"destination": destination}, timeout=60)
    assert started.status_code == 200, started.text
    status = checkout_ended(api, started.json()["checkout_job_id"])
    assert status["status"] == "SUCCEEDED", status
    assert status["location"].startswith(f"s3://{destination}/bundles/{bundle_uuid}.{bundle_version}")
    for name, data in contents.items():
        key = f"bundles/{bundle_uuid}.{bundle_version}/{name}"
        assert blobstores["aws"].get_bytes(destination, key) == data

    # Presigned bundle URLs: 301 + Retry-After until the bundle's checkout is done, then every URL works.
    url, hops = f"{api}/bundles/{bundle_uuid}?replica=aws&presignedurls=true", 0
    while True:
        response = http.get(url, allow_redirects=False)
        if response.status_code != 301:
            break
        hops += 1
        assert hops < 60
        time.sleep(int(response.headers["Retry-After"]))
        url = response.headers["Location"]
    assert response.status_code == 200, response.text
    for entry in response.json()["bundle"]["files"]:
        assert http.get(entry["url"]).content == contents[entry["name"]]

    assert_problem(http.post(f"{api}/bundles/{bundle_uuid}/checkout", params={"replica": "aws"}, headers=auth,
                             json={"destination": f"{ALLOWED}missing-{new_uuid()[:8]}"}, timeout=60),
                   400, "invalid_destination")
    assert_problem(http.post(f"{api}/bundles/{new_uuid()}/checkout", params={"replica": "aws"}, headers=auth,
                             timeout=60), 404)
    assert_problem(http.get(f"{api}/bundles/checkout/{new_uuid()}", params={"replica": "aws"}), 404)


def test_bundle_checkout_is_no_anonymous_write_nor_a_mail_relay(checkout_api, auth, stage, blobstores,
                                                                 dss_settings, smtp_server):
    """The probe of issue 11: no token, the staging bucket as the destination, someone else's
    address. Refused (401), nothing written, no one mailed; with a token, only allowed buckets."""
    api, store = checkout_api, blobstores["aws"]
    contents = {"x.bin": os.urandom(1000), "y.json": b'{"y": 2}'}
    bundle_uuid, bundle_version = stored_bundle(api, auth, stage, contents)
    staging = dss_settings.bucket("aws", "staging")
    url = f"{api}/bundles/{bundle_uuid}/checkout"
    probe = {"destination": staging, "email": "someone@example.org"}

    assert_problem(http.post(url, params={"replica": "aws"}, json=probe, timeout=60), 401, "unauthorized")
    assert_problem(http.post(url, params={"replica": "aws"}, timeout=60), 401, "unauthorized")
    # Authenticated: a bucket off the operator's list is refused whether it exists or not.
    for destination in (staging, f"s3://{staging}", f"nowhere-{new_uuid()[:8]}"):
        assert_problem(http.post(url, params={"replica": "aws"}, headers=auth, json={"destination": destination},
                                 timeout=60), 403, "destination_not_allowed")
    # Notices reach the caller only (user@example.org here), unless an administrator asks.
    assert_problem(http.post(url, params={"replica": "aws"}, headers=auth, json={"email": "someone@example.org"},
                             timeout=60), 403, "email_not_allowed")
    assert not list(store.list_keys(staging, f"bundles/{bundle_uuid}."))

    allowed = f"{ALLOWED}mine"
    store.create_bucket(allowed)
    started = http.post(url, params={"replica": "aws"}, headers=auth,
                        json={"destination": allowed, "email": "user@example.org"}, timeout=60)
    assert started.status_code == 200, started.text
    job = started.json()["checkout_job_id"]
    assert checkout_ended(api, job) == {
        "status": "SUCCEEDED", "location": f"s3://{allowed}/bundles/{bundle_uuid}.{bundle_version}/"}
    for name, data in contents.items():
        assert store.get_bytes(allowed, f"bundles/{bundle_uuid}.{bundle_version}/{name}") == data
    record = json.loads(store.get_bytes(dss_settings.bucket("aws", "checkout"), f"checkout-jobs/{job}.json"))
    assert record["requested_by"] == "user@example.org"
    # The one notice of the one job accepted; none for the refused requests before it.
    [notice] = wait_until(smtp_server.messages, 10, "the notice received")
    assert notice["To"] == "user@example.org" and job in notice.get_content()
    assert not list(store.list_keys(staging, f"bundles/{bundle_uuid}."))


def test_drs_objects_and_access(checkout_api, auth, stage):
    data = os.urandom(INLINE_BYTES * 2)
    uuid, version, sums = stored_file(checkout_api, auth, stage, data, "text/plain")
    root = checkout_api[: -len("/v1")]
    info = http.get(f"{root}/ga4gh/drs/v1/service-info")
    assert info.status_code == 200 and info.json()["type"]["artifact"] == "drs"
    assert_valid("service_info", info.json())

    drs_object = http.get(f"{root}/ga4gh/drs/v1/objects/{uuid}").json()
    assert_valid("object", drs_object)
    # A DRS id names one content for good: the file's version is part of it.
    assert drs_object["id"] == f"{uuid}.{version}" and drs_object["size"] == len(data)
    assert drs_object["version"] == version
    resolved = http.get(f"{root}/ga4gh/drs/v1/objects/{drs_object['self_uri'].rsplit('/', 1)[1]}")
    assert resolved.status_code == 200 and resolved.json() == drs_object
    assert {"type": "sha-256", "checksum": sums.sha256} in drs_object["checksums"]
    assert drs_object["self_uri"].startswith("drs://") and drs_object["self_uri"].endswith(drs_object["id"])
    [method] = [m for m in drs_object["access_methods"] if m["type"] == "s3"]
    access_url = f"{root}/ga4gh/drs/v1/objects/{uuid}/access/{method['access_id']}"
    for _ in range(60):
        access = http.get(access_url)
        if access.status_code != 202:
            break
        time.sleep(int(access.headers["Retry-After"]))
    assert access.status_code == 200, access.text
    assert_valid("access_url", access.json())
    assert hashlib.sha256(http.get(access.json()["url"]).content).hexdigest() == sums.sha256
    # With its copy in place the object offers that URL directly.
    copied = http.get(f"{root}/ga4gh/drs/v1/objects/{drs_object['id']}").json()
    assert_valid("object", copied)
    assert [m for m in copied["access_methods"] if m["type"] == "s3"][0]["access_url"]["url"]

    missing = http.get(f"{root}/ga4gh/drs/v1/objects/{new_uuid()}")
    assert missing.status_code == 404 and missing.json()["status_code"] == 404 and missing.json()["msg"]
    assert_valid("error", missing.json())
    for url, status in ((f"{root}/ga4gh/drs/v1/objects/{uuid}/access/aws.2001-01-01T000000.000000Z", 404),
                        (f"{root}/ga4gh/drs/v1/objects/not-a-drs-id", 400)):
        error = http.get(url)
        assert error.status_code == status and error.json()["status_code"] == status, error.text
        assert_valid("error", error.json())


def test_a_drs_bundle_nests_its_directories(checkout_api, auth, stage):
    api, root = checkout_api, checkout_api[: -len("/v1")]
    contents = {"top.json": b'{"top": 1}', "dir/sub/x.json": b'{"x": 1}', "dir/b.json": b'{"b": 1}',
                "dir/my file.txt": b"spaced"}
    files, ids = [], {}
    for name, data in contents.items():
        uuid, version, _ = stored_file(api, auth, stage, data)
        files.append({"uuid": uuid, "version": version, "name": name, "indexed": False})
        ids[name] = f"{uuid}.{version}"
    bundle_uuid, bundle_version = new_uuid(), new_version()
    created = http.put(f"{api}/bundles/{bundle_uuid}", params={"replica": "aws", "version": bundle_version},
                       headers=auth, json={"creator_uid": 1, "files": files})
    assert created.status_code == 201, created.text

    response = http.get(f"{root}/ga4gh/drs/v1/objects/{bundle_uuid}", params={"expand": "true"})
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert_valid("object", bundle)
    assert bundle["id"] == f"{bundle_uuid}.{bundle_version}" and "access_methods" not in bundle

    def content(name, path):
        return {"name": name, "id": ids[path], "drs_uri": [f"drs://{urlsplit(root).netloc}/{ids[path]}"]}
    assert bundle["contents"] == [
        {"name": "dir", "contents": [content("b.json", "dir/b.json"), content("my_20file.txt", "dir/my file.txt"),
                                     {"name": "sub", "contents": [content("x.json", "dir/sub/x.json")]}]},
        content("top.json", "top.json")]
    # A nested file resolves through its drs_uri's id, a DRS object of its own.
    [[nested_uri]] = [item["drs_uri"] for item in bundle["contents"][0]["contents"][2]["contents"]]
    nested = http.get(f"{root}/ga4gh/drs/v1/objects/{nested_uri.rsplit('/', 1)[1]}")
    assert nested.status_code == 200, nested.text
    assert_valid("object", nested.json())
    assert nested.json()["size"] == len(contents["dir/sub/x.json"])
