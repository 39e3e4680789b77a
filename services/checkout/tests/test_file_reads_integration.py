"""File checkout on the real broker and both storage emulators: the files and checkout services in
this process, called over real RPC. Files are staged and stored through the files service as
clients do; every URL served is fetched and its bytes hashed."""
import hashlib
import os
import time

import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy

from shared.identifiers import new_uuid, new_version
from devtools.fakes import stage_object
from devtools.waiting import wait_until

from services.checkout.lifetime import CHECKED_OUT_METADATA, parse_rfc3339, rfc3339
from services.checkout.service import CheckoutService
from services.files.service import FilesService

KiB = 1024
USER = {"email": "user@example.org", "groups": ["dbio"], "is_admin": False}


@pytest.fixture
def checkout_config(service_config):
    # Blobs above 64 KiB are copied in the background; above 1 MiB the copy is server-side.
    return {**service_config, "DSS_CHECKOUT_INLINE_BYTES": 64 * KiB, "DSS_CHECKOUT_WARM_BYTES": 8 * KiB,
            "DSS_CHECKOUT_RETRY_AFTER": 1, "DSS_CHECKOUT_COPY_RETRY_DELAYS": "1,1"}


@pytest.fixture
def rpc(checkout_config, runner_factory):
    runner = runner_factory(checkout_config, FilesService, CheckoutService)
    runner.start()
    with ClusterRpcProxy(checkout_config, timeout=60) as proxy:
        yield proxy


class Files:
    def __init__(self, rpc, blobstores, settings):
        self.rpc, self.blobstores, self.settings = rpc, blobstores, settings

    def put(self, replica, data, uuid=None, version=None, content_type="application/octet-stream"):
        """A file stored by the files service; its metadata as head_file answers."""
        source_url, _ = stage_object(self.blobstores[replica], self.settings.bucket(replica, "staging"), data,
                                     content_type=content_type)
        uuid, version = uuid or new_uuid(), version or new_version()
        assert self.rpc.files.put_file(uuid, version, source_url, 1, USER)["status"] == "created"
        return self.rpc.files.head_file(replica, uuid, version)

    def copy_info(self, replica, metadata):
        store = self.blobstores[replica]
        key = f"blobs/{metadata['sha256']}.{metadata['sha1']}.{metadata['s3-etag']}.{metadata['crc32c']}"
        return store.stat(self.settings.bucket(replica, "checkout"), key) if store.exists(
            self.settings.bucket(replica, "checkout"), key) else None


@pytest.fixture
def files(rpc, blobstores, dss_settings):
    return Files(rpc, blobstores, dss_settings)


def fetched_sha256(url):
    response = requests.get(url, timeout=30)
    assert response.status_code == 200, response.text[:300]
    return hashlib.sha256(response.content).hexdigest()


def read_until_ready(rpc, replica, uuid, timeout=30):
    """A client following 301s: back with the token after Retry-After, until the URL is served."""
    answer = rpc.checkout.get_file(replica, uuid)
    rounds = 1
    deadline = time.monotonic() + timeout
    while answer["status"] == "pending":
        assert time.monotonic() < deadline, f"no copy of {uuid} in {replica} after {rounds} rounds"
        time.sleep(answer["retry_after"])
        answer = rpc.checkout.get_file(replica, uuid, answer["metadata"]["version"], token=answer["token"])
        rounds += 1
    return answer, rounds


@pytest.mark.parametrize("replica, scheme", [("aws", "s3"), ("gcp", "gs")])
def test_a_small_file_is_served_at_once_from_a_verified_copy(rpc, files, replica, scheme, dss_settings):
    data = os.urandom(40 * KiB)  # above the warm threshold: the read itself copies
    metadata = files.put(replica, data, content_type="text/plain")
    answer = rpc.checkout.get_file(replica, metadata["uuid"], content_disposition="attachment; filename=a.txt")
    assert answer["status"] == "ready" and answer["metadata"] == metadata
    assert fetched_sha256(answer["url"]) == hashlib.sha256(data).hexdigest()
    info = files.copy_info(replica, metadata)
    assert info.size == len(data) and info.content_type == "text/plain"
    assert abs(parse_rfc3339(info.metadata[CHECKED_OUT_METADATA]) - time.time()) < 60
    direct = rpc.checkout.get_file(replica, metadata["uuid"], directurl=True)["url"]
    assert direct == f"{scheme}://{dss_settings.bucket(replica, 'checkout')}/blobs/{metadata['sha256']}." \
                     f"{metadata['sha1']}.{metadata['s3-etag']}.{metadata['crc32c']}"


@pytest.mark.parametrize("replica", ["aws", "gcp"])
def test_a_large_file_is_pending_then_served_after_its_background_copy(rpc, files, replica):
    data = os.urandom(1536 * KiB)  # copied server-side, in the background
    metadata = files.put(replica, data)
    first = rpc.checkout.get_file(replica, metadata["uuid"])
    assert first["status"] == "pending" and first["retry_after"] == 1 and first["token"]
    answer, rounds = read_until_ready(rpc, replica, metadata["uuid"])
    assert rounds >= 1 and answer["metadata"] == metadata
    assert fetched_sha256(answer["url"]) == hashlib.sha256(data).hexdigest()
    assert CHECKED_OUT_METADATA in files.copy_info(replica, metadata).metadata


def test_a_malformed_token_is_refused(rpc, files):
    from shared.exceptions import InvalidParameter
    metadata = files.put("aws", os.urandom(100 * KiB))
    with pytest.raises(InvalidParameter) as raised:
        rpc.checkout.get_file("aws", metadata["uuid"], token="garbage!")
    assert raised.value.error_code == "illegal_token"


@pytest.mark.parametrize("replica", ["aws", "gcp"])
def test_a_small_new_file_is_warmed_without_any_read(rpc, files, replica):
    metadata = files.put(replica, os.urandom(2 * KiB))
    info = wait_until(lambda: files.copy_info(replica, metadata), 15, f"the warmed copy in {replica}")
    assert CHECKED_OUT_METADATA in info.metadata


@pytest.mark.parametrize("replica", ["aws", "gcp"])
def test_an_expired_copy_is_swept_and_a_fresh_one_kept(rpc, files, replica, blobstores, dss_settings):
    stale = files.put(replica, os.urandom(20 * KiB))
    fresh = files.put(replica, os.urandom(20 * KiB))
    for metadata in (stale, fresh):
        assert rpc.checkout.get_file(replica, metadata["uuid"])["status"] == "ready"
    # Age one copy: written again with the checkout time of 15 days ago.
    store, bucket = blobstores[replica], dss_settings.bucket(replica, "checkout")
    key = f"blobs/{stale['sha256']}.{stale['sha1']}.{stale['s3-etag']}.{stale['crc32c']}"
    store.put_bytes(bucket, key, store.get_bytes(bucket, key),
                    metadata={CHECKED_OUT_METADATA: rfc3339(time.time() - 15 * 86400)})
    result = rpc.checkout.sweep(replica)
    assert result["replica"] == replica and result["deleted"] >= 1 and result["examined"] >= 2
    assert files.copy_info(replica, stale) is None and files.copy_info(replica, fresh) is not None
    # The next read checks the blob out again.
    answer = rpc.checkout.get_file(replica, stale["uuid"])
    assert answer["status"] == "ready" and files.copy_info(replica, stale) is not None


def test_health(rpc):
    report = rpc.checkout.health()
    assert report["ok"] is True and report["aws"]["ok"] and report["gcp"]["ok"]
