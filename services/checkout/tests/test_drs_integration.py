"""GA4GH DRS on the real broker and both storage emulators: files and a bundle stored through the
files and bundles services, their DRS objects checked against the DRS 1.4 schemas, and every access
URL fetched and its bytes hashed."""
import hashlib
import os

import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy

from shared.identifiers import new_uuid, new_version
from devtools.fakes import stage_object

from services.bundles.service import BundlesService
from services.checkout.service import CheckoutService
from services.checkout.tests.drs_spec import assert_valid
from services.files.service import FilesService

USER = {"email": "user@example.org", "groups": ["dbio"], "is_admin": False}
BASE_URL = "http://dss.test:8080"


@pytest.fixture
def rpc(service_config, runner_factory):
    runner = runner_factory(service_config, FilesService, BundlesService, CheckoutService)
    runner.start()
    with ClusterRpcProxy(service_config, timeout=60) as proxy:
        yield proxy


def put_file(rpc, blobstores, settings, replica, data, uuid, version):
    source_url, _ = stage_object(blobstores[replica], settings.bucket(replica, "staging"), data)
    assert rpc.files.put_file(uuid, version, source_url, 1, USER)["status"] == "created"


def test_a_file_in_both_replicas_is_served_through_either_access_method(rpc, blobstores, dss_settings):
    data = os.urandom(30_000)
    uuid, version = new_uuid(), new_version()
    for replica in ("aws", "gcp"):  # as replication would have it: the same version in both
        put_file(rpc, blobstores, dss_settings, replica, data, uuid, version)

    assert_valid("service_info", rpc.checkout.drs_service_info(BASE_URL))
    obj = rpc.checkout.drs_object("aws", uuid, base_url=BASE_URL)
    assert_valid("object", obj)
    assert obj["id"] == f"{uuid}.{version}" and obj["self_uri"] == f"drs://dss.test:8080/{uuid}.{version}"
    assert {checksum["type"]: checksum["checksum"] for checksum in obj["checksums"]}["sha-256"] == \
        hashlib.sha256(data).hexdigest()
    assert [method["type"] for method in obj["access_methods"]] == ["s3", "gs"]
    for method in obj["access_methods"]:
        answer = rpc.checkout.drs_access("aws", obj["id"], method["access_id"])
        assert answer["status"] == "ready"
        assert_valid("access_url", {"url": answer["url"]})
        fetched = requests.get(answer["url"], timeout=30)
        assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == \
            hashlib.sha256(data).hexdigest()
    # Both copies exist now: the object offers their URLs directly.
    again = rpc.checkout.drs_object("gcp", obj["id"], base_url=BASE_URL)
    assert_valid("object", again)
    assert all("access_url" in method for method in again["access_methods"])


def test_a_bundle_is_a_drs_bundle_whose_contents_resolve(rpc, blobstores, dss_settings):
    contents = {"a.json": b'{"cell": 1}', "b.bin": os.urandom(5000)}
    refs = []
    for name, data in contents.items():
        uuid, version = new_uuid(), new_version()
        put_file(rpc, blobstores, dss_settings, "gcp", data, uuid, version)
        refs.append({"uuid": uuid, "version": version, "name": name, "indexed": False})
    bundle_uuid, bundle_version = new_uuid(), new_version()
    rpc.bundles.put_bundle("gcp", bundle_uuid, bundle_version, 1, refs, USER)

    obj = rpc.checkout.drs_object("gcp", bundle_uuid, base_url=BASE_URL, expand=True)
    assert_valid("object", obj)
    assert obj["id"] == f"{bundle_uuid}.{bundle_version}" and obj["size"] == sum(map(len, contents.values()))
    assert [content["name"] for content in obj["contents"]] == list(contents)
    for content in obj["contents"]:
        file_obj = rpc.checkout.drs_object("gcp", content["id"], base_url=BASE_URL)
        assert_valid("object", file_obj)
        [method] = file_obj["access_methods"]
        answer = rpc.checkout.drs_access("gcp", content["id"], method["access_id"])
        assert requests.get(answer["url"], timeout=30).content == contents[content["name"]]
