"""Bundle checkout jobs on the real broker and both storage emulators: the files, bundles and
checkout services in this process, called over real RPC, and a real SMTP server (aiosmtpd, in a
process of its own) receiving the notices. Data is staged and stored through the files and bundles
services as clients do, and every checked-out copy is read back and hashed."""
import hashlib
import os
import uuid as uuid_module

import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing.services import restrict_entrypoints
from nameko.testing.utils import get_container

from shared.exceptions import InvalidParameter
from shared.identifiers import new_uuid, new_version
from shared.testing import SmtpServer, stage_object, wait_until

from services.bundles.service import BundlesService
from services.checkout.service import CheckoutService
from services.files.service import FilesService

USER = {"email": "user@example.org", "groups": ["dbio"], "is_admin": False}
EMAIL = "researcher@example.org"
RPC_ENTRYPOINTS = ("start_bundle_checkout", "get_checkout_job", "bundle_urls")


@pytest.fixture
def smtp_server(tmp_path):
    server = SmtpServer(tmp_path / "smtp").start()
    yield server
    server.stop()


@pytest.fixture
def checkout_config(service_config, smtp_server):
    return {**service_config, **smtp_server.settings, "DSS_MAIL_SENDER": "dss@store.example",
            "DSS_CHECKOUT_JOB_RETRY_DELAYS": "1,1", "DSS_CHECKOUT_JOB_HEARTBEAT": 0.5}


class Stack:
    def __init__(self, rpc, blobstores, settings):
        self.rpc = rpc
        self.blobstores = blobstores
        self.settings = settings

    def put_bundle(self, replica, contents: dict[str, bytes]):
        """Files staged and ingested by the files service, then a bundle of them; (uuid, version)."""
        store, staging = self.blobstores[replica], self.settings.bucket(replica, "staging")
        files = []
        for name, data in contents.items():
            source_url, _ = stage_object(store, staging, data)
            file_uuid, file_version = new_uuid(), new_version()
            self.rpc.files.put_file(file_uuid, file_version, source_url, 1, USER)
            files.append({"uuid": file_uuid, "version": file_version, "name": name, "indexed": False})
        uuid, version = new_uuid(), new_version()
        self.rpc.bundles.put_bundle(replica, uuid, version, 1, files, USER)
        return uuid, version

    def wait_for_job(self, replica, job_id, timeout=30):
        def ended():
            view = self.rpc.checkout.get_checkout_job(replica, job_id)
            return view if view["status"] != "RUNNING" else None
        return wait_until(ended, timeout, f"checkout job {job_id} ended", interval=0.1)

    def assert_checked_out(self, replica, bucket, uuid, version, contents):
        store = self.blobstores[replica]
        prefix = f"bundles/{uuid}.{version}/"
        assert sorted(store.list_keys(bucket, prefix)) == sorted(prefix + name for name in contents)
        for name, data in contents.items():
            copied = hashlib.sha256(store.get_bytes(bucket, prefix + name)).hexdigest()
            assert copied == hashlib.sha256(data).hexdigest(), name


def sample_contents():
    """A few files of different sizes and names (paths, a repeated content)."""
    shared = os.urandom(1024)
    return {"data/reads_1.fastq": os.urandom(300_000), "data/reads_2.fastq": os.urandom(1_100_000),
            "metadata/project.json": b'{"project": "atlas"}', "copy-a.bin": shared, "copy-b.bin": shared}


def scratch_bucket(blobstores, replica):
    name = f"checkout-dest-{uuid_module.uuid4().hex[:12]}"
    blobstores[replica].create_bucket(name)
    return name


def delete_bucket(blobstores, settings, replica, name):
    """Remove an empty bucket from its emulator."""
    if replica == "aws":
        blobstores["aws"].client.delete_bucket(Bucket=name)
    else:
        requests.delete(f"{settings.gcs_endpoint}/storage/v1/b/{name}", timeout=10).raise_for_status()
    assert not blobstores[replica].bucket_exists(name)


@pytest.fixture
def stack(checkout_config, runner_factory, blobstores, dss_settings):
    runner = runner_factory(checkout_config, FilesService, BundlesService, CheckoutService)
    runner.start()
    with ClusterRpcProxy(checkout_config, timeout=60) as cluster:
        yield Stack(cluster, blobstores, dss_settings)


@pytest.mark.parametrize("replica", ["aws", "gcp"])
def test_checkouts_to_the_checkout_bucket_and_to_a_bucket_of_the_users(replica, stack, smtp_server):
    contents = sample_contents()
    uuid, version = stack.put_bundle(replica, contents)
    scheme = {"aws": "s3", "gcp": "gs"}[replica]
    checkout_bucket = stack.settings.bucket(replica, "checkout")

    started = stack.rpc.checkout.start_bundle_checkout(replica, uuid, None, None, EMAIL)
    assert started["version"] == version
    assert stack.wait_for_job(replica, started["checkout_job_id"]) == {
        "status": "SUCCEEDED", "location": f"{scheme}://{checkout_bucket}/bundles/{uuid}.{version}/"}
    stack.assert_checked_out(replica, checkout_bucket, uuid, version, contents)

    bucket = scratch_bucket(stack.blobstores, replica)
    job_id = stack.rpc.checkout.start_bundle_checkout(replica, uuid, version, f"{scheme}://{bucket}")["checkout_job_id"]
    assert stack.wait_for_job(replica, job_id) == {
        "status": "SUCCEEDED", "location": f"{scheme}://{bucket}/bundles/{uuid}.{version}/"}
    stack.assert_checked_out(replica, bucket, uuid, version, contents)

    [notice] = wait_until(smtp_server.messages, 10, "the notice received")  # only the first job asked for one
    assert notice["To"] == EMAIL and notice["From"] == "dss@store.example"
    assert notice["Subject"] == f"DSS bundle checkout SUCCEEDED: {uuid}.{version}"
    assert f"{scheme}://{checkout_bucket}/bundles/{uuid}.{version}/" in notice.get_content()


def test_a_destination_that_does_not_exist_is_refused(stack):
    uuid, version = stack.put_bundle("aws", {"a.txt": b"a"})
    with pytest.raises(InvalidParameter) as refused:
        stack.rpc.checkout.start_bundle_checkout("aws", uuid, version, "s3://no-such-bucket-for-checkouts")
    assert refused.value.error_code == "invalid_destination" and "does not exist" in refused.value.title
    with pytest.raises(InvalidParameter) as refused:
        stack.rpc.checkout.start_bundle_checkout("aws", uuid, version, "gs://dss-checkout")
    assert refused.value.error_code == "invalid_destination"


@pytest.mark.parametrize("replica", ["aws", "gcp"])
def test_bundle_urls_are_pending_then_ready(replica, stack):
    contents = {"matrix.bin": os.urandom(200_000), "sub/dir/meta.json": b'{"a": 1}'}
    uuid, version = stack.put_bundle(replica, contents)
    answer = stack.rpc.checkout.bundle_urls(replica, uuid, None, "presigned")
    assert answer["status"] == "pending" and answer["version"] == version and answer["retry_after"] == 10
    token = answer["token"]

    def ready():
        answer = stack.rpc.checkout.bundle_urls(replica, uuid, None, "presigned", token)
        return answer if answer["status"] == "ready" else None
    ready = wait_until(ready, 30, "the bundle's URLs ready", interval=0.1)
    assert ready["version"] == version and sorted(ready["urls"]) == sorted(contents)
    for name, url in ready["urls"].items():
        response = requests.get(url, timeout=30)
        assert response.status_code == 200 and response.content == contents[name], name
    scheme = {"aws": "s3", "gcp": "gs"}[replica]
    direct = stack.rpc.checkout.bundle_urls(replica, uuid, version, "direct")
    checkout_bucket = stack.settings.bucket(replica, "checkout")
    assert direct["urls"] == {name: f"{scheme}://{checkout_bucket}/bundles/{uuid}.{version}/{name}"
                              for name in contents}


@pytest.mark.parametrize("replica", ["aws", "gcp"])
def test_a_destination_deleted_after_acceptance_ends_the_job_failed_with_a_notice(
        replica, checkout_config, runner_factory, blobstores, dss_settings, smtp_server):
    # The job must meet the bucket gone, so no job runner may be consuming while the test deletes
    # it: a first checkout service declares the job queue (durable) and stops; one serving only
    # the RPCs accepts the job, which waits in that queue; a full one then carries it out.
    declaring = runner_factory(checkout_config, CheckoutService)
    declaring.start()
    declaring.stop()
    accepting = runner_factory(checkout_config, FilesService, BundlesService, CheckoutService)
    restrict_entrypoints(get_container(accepting, CheckoutService), *RPC_ENTRYPOINTS)
    accepting.start()
    with ClusterRpcProxy(checkout_config, timeout=60) as cluster:
        stack = Stack(cluster, blobstores, dss_settings)
        uuid, version = stack.put_bundle(replica, {"one.bin": os.urandom(1000), "two.bin": os.urandom(2000)})
        bucket = scratch_bucket(blobstores, replica)
        job_id = cluster.checkout.start_bundle_checkout(replica, uuid, version, bucket, EMAIL)["checkout_job_id"]
        delete_bucket(blobstores, dss_settings, replica, bucket)
        assert cluster.checkout.get_checkout_job(replica, job_id) == {"status": "RUNNING"}

        runner_factory(checkout_config, CheckoutService).start()
        scheme = {"aws": "s3", "gcp": "gs"}[replica]
        cause = f"the destination bucket {scheme}://{bucket}/ no longer exists"
        assert stack.wait_for_job(replica, job_id) == {"status": "FAILED", "cause": cause}

    [notice] = wait_until(smtp_server.messages, 10, "the notice received")
    assert notice["To"] == EMAIL and notice["Subject"] == f"DSS bundle checkout FAILED: {uuid}.{version}"
    assert cause in notice.get_content() and job_id in notice.get_content()
