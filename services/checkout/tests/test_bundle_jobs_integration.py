"""Bundle checkout jobs on the real broker and both storage emulators: the files, bundles and
checkout services in this process, called over real RPC, and a real SMTP server (aiosmtpd, in a
process of its own) receiving the notices. Data is staged and stored through the files and bundles
services as clients do, and every checked-out copy is read back and hashed."""
import hashlib
import json
import os
import time
import uuid as uuid_module
from collections import Counter

import pytest
import requests
from nameko.standalone.rpc import ClusterRpcProxy
from nameko.testing.services import restrict_entrypoints
from nameko.testing.utils import get_container

from shared.exceptions import Forbidden, InvalidParameter, Unauthorized
from shared.checksums import Checksums
from shared.identifiers import Keys, new_uuid, new_version
from devtools.fakes import stage_object
from devtools.waiting import wait_until

from services.bundles.service import BundlesService
from services.checkout.bundle_jobs.jobs import job_key
from services.checkout.lifetime import parse_rfc3339
from services.checkout.service import CheckoutService
from services.files.service import FilesService

EMAIL = "researcher@example.org"
USER = {"email": EMAIL, "groups": ["dbio"], "is_admin": False}  # notices go to the caller's own address
SCRATCH = "checkout-dest-"  # the buckets the tests make, allowed as destinations
RPC_ENTRYPOINTS = ("start_bundle_checkout", "get_checkout_job", "bundle_urls")


@pytest.fixture
def checkout_config(service_config, smtp_server):
    return {**service_config, **smtp_server.settings, "DSS_MAIL_SENDER": "dss@store.example",
            "DSS_CHECKOUT_JOB_RETRY_DELAYS": "1,1", "DSS_CHECKOUT_JOB_HEARTBEAT": 0.5,
            "DSS_CHECKOUT_DESTINATIONS": f"{SCRATCH}*", "DSS_CHECKOUT_MAIL_PER_HOUR": 1000}


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
    name = f"{SCRATCH}{uuid_module.uuid4().hex[:12]}"
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

    started = stack.rpc.checkout.start_bundle_checkout(replica, uuid, None, None, EMAIL, USER)
    assert started["version"] == version
    assert stack.wait_for_job(replica, started["checkout_job_id"]) == {
        "status": "SUCCEEDED", "location": f"{scheme}://{checkout_bucket}/bundles/{uuid}.{version}/"}
    stack.assert_checked_out(replica, checkout_bucket, uuid, version, contents)

    bucket = scratch_bucket(stack.blobstores, replica)
    job_id = stack.rpc.checkout.start_bundle_checkout(replica, uuid, version, f"{scheme}://{bucket}", None,
                                                      USER)["checkout_job_id"]
    assert stack.wait_for_job(replica, job_id) == {
        "status": "SUCCEEDED", "location": f"{scheme}://{bucket}/bundles/{uuid}.{version}/"}
    stack.assert_checked_out(replica, bucket, uuid, version, contents)

    [notice] = wait_until(smtp_server.messages, 10, "the notice received")  # only the first job asked for one
    assert notice["To"] == EMAIL and notice["From"] == "dss@store.example"
    assert notice["Subject"] == f"DSS bundle checkout SUCCEEDED: {uuid}.{version}"
    assert f"{scheme}://{checkout_bucket}/bundles/{uuid}.{version}/" in notice.get_content()


def test_destinations_are_refused_unless_allowed_and_writable(stack):
    uuid, version = stack.put_bundle("aws", {"a.txt": b"a"})
    start = stack.rpc.checkout.start_bundle_checkout
    with pytest.raises(InvalidParameter) as refused:
        start("aws", uuid, version, f"s3://{SCRATCH}that-does-not-exist", None, USER)
    assert refused.value.error_code == "invalid_destination" and "does not exist" in refused.value.title
    with pytest.raises(InvalidParameter) as refused:
        start("aws", uuid, version, "gs://dss-checkout", None, USER)
    assert refused.value.error_code == "invalid_destination"
    # Off the list: the same answer whether the bucket exists or not, and nothing written there.
    staging = stack.settings.bucket("aws", "staging")
    for destination in (staging, "no-such-bucket-for-checkouts"):
        with pytest.raises(Forbidden) as refused:
            start("aws", uuid, version, destination, None, USER)
        assert refused.value.error_code == "destination_not_allowed"
    assert not list(stack.blobstores["aws"].list_keys(staging, "bundles/"))
    with pytest.raises(Unauthorized):
        start("aws", uuid, version)


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
        job_id = cluster.checkout.start_bundle_checkout(replica, uuid, version, bucket, EMAIL, USER)["checkout_job_id"]
        delete_bucket(blobstores, dss_settings, replica, bucket)
        assert cluster.checkout.get_checkout_job(replica, job_id) == {"status": "RUNNING"}

        runner_factory(checkout_config, CheckoutService).start()
        scheme = {"aws": "s3", "gcp": "gs"}[replica]
        cause = f"destination_gone: the destination bucket {scheme}://{bucket}/ no longer exists"
        assert stack.wait_for_job(replica, job_id) == {"status": "FAILED", "cause": cause}

    [notice] = wait_until(smtp_server.messages, 10, "the notice received")
    assert notice["To"] == EMAIL and notice["Subject"] == f"DSS bundle checkout FAILED: {uuid}.{version}"
    assert cause in notice.get_content() and job_id in notice.get_content()


def test_notices_per_caller_are_limited_across_checkout_processes(checkout_config, runner_factory, blobstores,
                                                                 dss_settings, smtp_server):
    """Two checkout services share the jobs (as two pods would): the quota is kept in the checkout
    bucket, so neither can send beyond it."""
    config = {**checkout_config, "DSS_CHECKOUT_MAIL_PER_HOUR": 2}
    runner_factory(config, FilesService, BundlesService, CheckoutService).start()
    runner_factory(config, CheckoutService).start()
    # Callers of their own: the emulators' buckets, and the quota in them, outlive each test.
    caller, other = ({"email": f"{who}-{new_uuid()[:8]}@example.org", "groups": ["dbio"], "is_admin": False}
                     for who in ("researcher", "colleague"))
    with ClusterRpcProxy(config, timeout=60) as cluster:
        stack = Stack(cluster, blobstores, dss_settings)
        uuid, version = stack.put_bundle("aws", {"one.bin": os.urandom(1000)})
        jobs = [cluster.checkout.start_bundle_checkout("aws", uuid, version, None, caller["email"],
                                                       caller)["checkout_job_id"] for _ in range(5)]
        jobs.append(cluster.checkout.start_bundle_checkout("aws", uuid, version, None, other["email"],
                                                           other)["checkout_job_id"])
        for job_id in jobs:
            assert stack.wait_for_job("aws", job_id)["status"] == "SUCCEEDED"
    checkout = dss_settings.bucket("aws", "checkout")

    def notice_outcomes():
        records = [json.loads(blobstores["aws"].get_bytes(checkout, job_key(job_id))) for job_id in jobs]
        outcomes = [record["emailed"] for record in records]
        return outcomes if None not in outcomes else None
    outcomes = wait_until(notice_outcomes, 30, "every job's notice sent or withheld", interval=0.2)
    # The limit is per clock hour: a run that straddles two hours may send up to 2 in each.
    hours = Counter(key.split("/")[1] for key in blobstores["aws"].list_keys(checkout, "mail-quota/")
                    if key.endswith(tuple(jobs[:5])))
    expected = sum(min(2, count) for count in hours.values())
    assert outcomes[:5].count("sent") == expected and outcomes[:5].count("rate_limited") == 5 - expected
    assert outcomes[5] == "sent"  # another caller's quota is its own
    received = wait_until(lambda: len(smtp_server.messages()) >= expected + 1 and smtp_server.messages(), 10,
                          "the notices received")
    assert sorted(message["To"] for message in received) == sorted([caller["email"]] * expected + [other["email"]])


@pytest.mark.parametrize("replica", ["aws", "gcp"])
def test_a_copy_carries_only_the_checkouts_metadata_and_is_swept_in_time(replica, checkout_config, runner_factory,
                                                                        blobstores, dss_settings):
    """A blob of the main bucket with user metadata of its own (say, copied from what was staged),
    among it a `dss-checked-out` far in the future: neither a bundle checkout (single and, on S3,
    multipart copies) nor a file checkout carries it over, and the sweeper deletes the bundle's
    copies once their own lifetime is over."""
    config = {**checkout_config, "DSS_COPY_PART_BYTES": 5 * 1024 * 1024, "DSS_CHECKOUT_EXPIRY_DAYS": 3 / 86400,
              "DSS_CHECKOUT_REFRESH_DAYS": 0, "DSS_CHECKOUT_KEEP_JSON_BYTES": 0}
    runner_factory(config, FilesService, BundlesService, CheckoutService).start()
    store, main, checkout = blobstores[replica], dss_settings.bucket(replica), dss_settings.bucket(replica, "checkout")
    contents = {"small.bin": os.urandom(1000), "parted.bin": os.urandom(6 * 1024 * 1024)}
    with ClusterRpcProxy(config, timeout=60) as cluster:
        stack = Stack(cluster, blobstores, dss_settings)
        uuid, version = stack.put_bundle(replica, contents)
        manifest = json.loads(store.get_bytes(main, Keys.bundle(uuid, version)))
        for entry in manifest["files"]:
            blob_key = Checksums.from_stored(entry).blob_key()
            store.put_bytes(main, blob_key, contents[entry["name"]], content_type=entry["content-type"],
                            metadata={"dss-checked-out": "2999-01-01T00:00:00.000000Z", "note": "from staging"})
        job_id = cluster.checkout.start_bundle_checkout(replica, uuid, version, None, None, USER)["checkout_job_id"]
        assert stack.wait_for_job(replica, job_id)["status"] == "SUCCEEDED"
        prefix = f"bundles/{uuid}.{version}/"
        for name in contents:
            metadata = store.stat(checkout, prefix + name).metadata
            assert list(metadata) == ["dss-checked-out"], metadata
            assert abs(parse_rfc3339(metadata["dss-checked-out"]) - time.time()) < 120
        small = next(entry for entry in manifest["files"] if entry["name"] == "small.bin")
        assert cluster.checkout.get_file(replica, small["uuid"], small["version"])["status"] == "ready"
        blob_copy = store.stat(checkout, Checksums.from_stored(small).blob_key())
        assert list(blob_copy.metadata) == ["dss-checked-out"]

        def swept():  # the sweep of just this bundle's keys (the bucket holds every other test's too)
            cluster.checkout.sweep(replica, prefix.rstrip("/"), len(contents))
            return not list(store.list_keys(checkout, prefix))
        wait_until(swept, 30, "the bundle's copies swept once expired", interval=0.5)
