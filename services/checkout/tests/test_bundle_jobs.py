"""Unit tests of bundle checkout jobs: the checkout service built with worker_factory over in-memory
buckets (``devtools.fakes.MemoryBlobStore``) and a settable clock; the job store, the runner and the
copies (``copies``) are real, the broker is not: a test hands the dispatched
``bundle_checkout_requested`` payload to the handler itself, with the attempt number it chooses.
E-mail is a mock here (test_mail.py and the integration tests use a real server)."""
import json

import eventlet
import pytest
from nameko.testing.services import worker_factory
from prometheus_client import REGISTRY

from shared import events
from shared.blobstore import BlobStoreError, BlobStoreUnavailable
from shared.checksums import checksum_bytes
from shared.config import Settings
from shared.exceptions import Forbidden, InvalidParameter, NotFound, Unauthorized, Unavailable
from shared.identifiers import Keys, new_uuid, new_version
from shared.storage import ReplicaStorage, Replicas
from devtools.fakes import MemoryBlobStore, store_bundle
from devtools.waiting import wait_until

from services.checkout.bundle_jobs.jobs import (FAILED, RUNNING, SUCCEEDED, CheckoutJobsAPI, decode_token,
                                                destination_allowed, encode_token, job_key, seconds_of, urls_job_id)
from services.checkout.bundle_jobs.mail import MailNotSent
from services.checkout.service import CheckoutService

EMAIL = "user@example.org"
CALLER = {"email": EMAIL, "groups": ["dbio"], "is_admin": False}
RETRY_DELAYS = "1,5"  # attempts 1 and 2 are retried, attempt 3 is the last
# The operator's list: a bucket that does not exist and the main bucket too, to see that being
# listed does not skip the other checks.
ALLOWED = "user-bucket,s3://read-only,no-such-bucket,dss-main"


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


class World:
    """Both replicas' buckets in memory, and workers of the checkout service over them."""

    def __init__(self, store_class=MemoryBlobStore, **overrides):
        self.settings = Settings.from_config({"DSS_CHECKOUT_JOB_RETRY_DELAYS": RETRY_DELAYS,
                                              "DSS_CHECKOUT_JOB_STALL_SECONDS": 600,
                                              "DSS_CHECKOUT_DESTINATIONS": ALLOWED, **overrides},
                                             environ={})
        self.stores = {name: store_class(name) for name in ("aws", "gcp")}
        for name, store in self.stores.items():
            store.create_bucket(self.settings.bucket(name))
            store.create_bucket(self.settings.bucket(name, "checkout"))
            store.create_bucket("user-bucket")
        self.replicas = Replicas({name: ReplicaStorage(name, store, self.settings)
                                  for name, store in self.stores.items()})
        self.clock = Clock()
        self.metrics = MetricsStub()
        self.dispatched = []

    def api(self):
        return CheckoutJobsAPI(self.replicas, self.settings, self.metrics, clock=self.clock)

    def worker(self, attempt=1, mail=None):
        worker = worker_factory(CheckoutService, checkout_jobs=self.api(), attempt=attempt)
        worker.dispatch.side_effect = lambda event, payload: self.dispatched.append((event, payload))
        if mail is not None:
            worker.mail = mail
        else:
            worker.mail.send.return_value = True
        return worker

    def deliver(self, payload, attempt=1, mail=None):
        worker = self.worker(attempt, mail)
        return worker.handle_bundle_checkout_requested(payload), worker.mail

    def last_request(self):
        event, payload = self.dispatched[-1]
        assert event == events.BUNDLE_CHECKOUT_REQUESTED
        return payload

    def put_bundle(self, replica="aws", files=None):
        """A bundle as the files and bundles services store it; (uuid, version, contents)."""
        files = files if files is not None else {f"dir/file-{i}.bin": f"bytes of file {i}".encode() * (i + 1)
                                                 for i in range(6)}
        uuid, version, _ = store_bundle(self.stores[replica], self.settings.bucket(replica), files)
        return uuid, version, files

    def record(self, job_id, replica="aws"):
        data = self.stores[replica].buckets[self.settings.bucket(replica, "checkout")][job_key(job_id)][0]
        return json.loads(data)

    def checked_out(self, uuid, version, replica="aws", bucket=None):
        bucket = bucket or self.settings.bucket(replica, "checkout")
        prefix = f"bundles/{uuid}.{version}/"
        return {key[len(prefix):]: value[0] for key, value in self.stores[replica].buckets[bucket].items()
                if key.startswith(prefix)}


class MetricsStub:
    def __init__(self):
        self.copied = 0

    def bytes_copied(self, replica, kind, count):
        assert kind == "bundle_checkout"
        self.copied += count


@pytest.fixture
def world():
    return World()


def jobs_ended(replica, outcome):
    return REGISTRY.get_sample_value("dss_checkout_jobs_total", {"replica": replica, "outcome": outcome}) or 0


# --- accepting a job -----------------------------------------------------------------------------------

@pytest.mark.parametrize("replica", ["aws", "gcp"])
def test_a_checkout_is_recorded_then_carried_out(world, replica):
    uuid, version, files = world.put_bundle(replica)
    succeeded_before = jobs_ended(replica, "succeeded")
    worker = world.worker()
    started = worker.start_bundle_checkout(replica, uuid.upper(), None, None, EMAIL, caller=CALLER)
    job_id = started["checkout_job_id"]
    assert started == {"checkout_job_id": job_id, "version": version}
    record = world.record(job_id, replica)
    assert record["status"] == RUNNING and record["files_total"] == len(files) and record["files_done"] == 0
    assert (record["uuid"], record["version"], record["email"], record["purpose"]) == (uuid, version, EMAIL, "request")
    assert record["destination"] == world.settings.bucket(replica, "checkout")
    assert world.last_request() == {"replica": replica, "checkout_job_id": job_id, "uuid": uuid, "version": version}
    assert worker.get_checkout_job(replica, job_id) == {"status": RUNNING}

    world.clock.now += 3
    result, mail = world.deliver(world.last_request())
    scheme = {"aws": "s3", "gcp": "gs"}[replica]
    location = f"{scheme}://{world.settings.bucket(replica, 'checkout')}/bundles/{uuid}.{version}/"
    assert result == {"checkout_job_id": job_id, "status": SUCCEEDED, "location": location}
    assert world.checked_out(uuid, version, replica) == files
    assert world.metrics.copied == sum(len(data) for data in files.values())
    assert world.worker().get_checkout_job(replica, job_id.upper()) == {"status": SUCCEEDED, "location": location}
    record = world.record(job_id, replica)
    assert record["files_done"] == len(files) and record["attempts"] == 1 and record["emailed"] == "sent"
    assert seconds_of(record["finished"]) - seconds_of(record["created"]) == pytest.approx(3)
    assert jobs_ended(replica, "succeeded") == succeeded_before + 1
    [(recipient, subject, body)] = [call.args for call in mail.send.call_args_list]
    assert recipient == EMAIL and subject == f"DSS bundle checkout SUCCEEDED: {uuid}.{version}"
    assert location in body and job_id in body and f"{len(files)} of {len(files)}" in body


def test_the_latest_live_version_is_checked_out(world):
    uuid, old, _ = world.put_bundle()
    store, bucket = world.stores["aws"], world.settings.bucket("aws")
    newer = new_version()
    store.put_bytes(bucket, Keys.bundle(uuid, newer), store.get_bytes(bucket, Keys.bundle(uuid, old)))
    worker = world.worker()
    assert worker.start_bundle_checkout("aws", uuid, caller=CALLER)["version"] == newer
    assert worker.start_bundle_checkout("aws", uuid, old, caller=CALLER)["version"] == old
    store.put_bytes(bucket, Keys.bundle_tombstone(uuid, newer), b"{}")
    assert worker.start_bundle_checkout("aws", uuid, caller=CALLER)["version"] == old
    with pytest.raises(NotFound):
        worker.start_bundle_checkout("aws", uuid, newer, caller=CALLER)
    store.put_bytes(bucket, Keys.bundle_tombstone(uuid), b"{}")
    with pytest.raises(NotFound):
        worker.start_bundle_checkout("aws", uuid, caller=CALLER)
    with pytest.raises(NotFound):
        worker.start_bundle_checkout("aws", new_uuid(), caller=CALLER)
    with pytest.raises(NotFound):
        worker.start_bundle_checkout("gcp", uuid, old, caller=CALLER)  # not in that replica


@pytest.mark.parametrize("replica, destination", [
    ("aws", "user-bucket"), ("aws", "s3://user-bucket"), ("aws", "s3://user-bucket/"), ("gcp", "gs://user-bucket"),
    ("gcp", " user-bucket "),
])
def test_destinations_are_buckets_of_the_replicas_cloud(world, replica, destination):
    uuid, version, files = world.put_bundle(replica)
    job_id = world.worker().start_bundle_checkout(replica, uuid, version, destination, caller=CALLER)["checkout_job_id"]
    assert world.stores[replica].buckets["user-bucket"] == {}  # the write probe was removed
    world.deliver(world.last_request())
    assert world.checked_out(uuid, version, replica, "user-bucket") == files
    assert world.record(job_id, replica)["location"].endswith(f"://user-bucket/bundles/{uuid}.{version}/")


@pytest.mark.parametrize("replica, destination, title", [
    ("aws", "gs://user-bucket", "bucket of this replica's cloud"),
    ("gcp", "s3://user-bucket", "bucket of this replica's cloud"),
    ("aws", "https://user-bucket", "bucket of this replica's cloud"),
    ("aws", "s3://user-bucket/some/prefix", "no path within it"),
    ("aws", "User_Bucket!", "no path within it"),
    ("aws", "no-such-bucket", "does not exist"),
    ("aws", "dss-main", "main bucket"),
])
def test_bad_destinations_are_refused_before_anything_is_recorded(world, replica, destination, title):
    uuid, version, _ = world.put_bundle(replica)
    with pytest.raises(InvalidParameter) as refused:
        world.worker().start_bundle_checkout(replica, uuid, version, destination, caller=CALLER)
    assert refused.value.error_code == "invalid_destination" and title in refused.value.title
    assert not [key for key in world.stores[replica].buckets[world.settings.bucket(replica, "checkout")]
                if key.startswith("checkout-jobs/")]
    assert world.dispatched == []


class ReadOnlyBucketStore(MemoryBlobStore):
    """Writes to the bucket ``read-only`` are refused as a bucket policy would (403)."""

    def put_bytes(self, bucket, key, data, *args, **kwargs):
        if bucket == "read-only":
            raise BlobStoreError(f"put s3://{bucket}/{key}: AccessDenied")
        return super().put_bytes(bucket, key, data, *args, **kwargs)


def test_an_unwritable_destination_is_a_400_and_an_unreachable_store_a_503():
    world = World(ReadOnlyBucketStore)
    world.stores["aws"].create_bucket("read-only")
    uuid, version, _ = world.put_bundle()
    with pytest.raises(InvalidParameter) as refused:
        world.worker().start_bundle_checkout("aws", uuid, version, "read-only", caller=CALLER)
    assert refused.value.error_code == "invalid_destination" and "not writable" in refused.value.title
    world.stores["aws"].unavailable = True
    with pytest.raises(Unavailable):
        world.worker().start_bundle_checkout("aws", uuid, version, "user-bucket", caller=CALLER)


@pytest.mark.parametrize("call, code", [
    (lambda w, uuid: w.start_bundle_checkout("aws", uuid, None, None, "not-an-address", caller=CALLER),
     "invalid_email"),
    (lambda w, uuid: w.start_bundle_checkout("aws", uuid, None, None, "a@b.org\nBcc: c@d.org", caller=CALLER),
     "invalid_email"),
    (lambda w, uuid: w.start_bundle_checkout("aws", "not-a-uuid", caller=CALLER), "illegal_uuid"),
    (lambda w, uuid: w.start_bundle_checkout("aws", uuid, "yesterday", caller=CALLER), "illegal_version"),
    (lambda w, uuid: w.start_bundle_checkout("azure", uuid, caller=CALLER), "unknown_replica"),
    (lambda w, uuid: w.get_checkout_job("aws", "job-1"), "illegal_checkout_job_id"),
    (lambda w, uuid: w.bundle_urls("aws", uuid, None, "signed"), "illegal_arguments"),
])
def test_malformed_arguments_are_400(world, call, code):
    uuid, _, _ = world.put_bundle()
    with pytest.raises(InvalidParameter) as refused:
        call(world.worker(), uuid)
    assert refused.value.error_code == code


def test_unknown_jobs_are_404(world):
    uuid, version, _ = world.put_bundle()
    job_id = world.worker().start_bundle_checkout("aws", uuid, version, caller=CALLER)["checkout_job_id"]
    with pytest.raises(NotFound):
        world.worker().get_checkout_job("aws", new_uuid())
    with pytest.raises(NotFound):
        world.worker().get_checkout_job("gcp", job_id)  # recorded in the replica it copies in


# --- who may ask for what --------------------------------------------------------------------------------

@pytest.mark.parametrize("caller", [None, {}, {"email": ""}, "user@example.org"])
def test_a_checkout_needs_a_caller(world, caller):
    uuid, version, _ = world.put_bundle()
    with pytest.raises(Unauthorized) as refused:
        world.worker().start_bundle_checkout("aws", uuid, version, caller=caller)
    assert refused.value.error_code == "unauthorized" and world.dispatched == []


def test_the_caller_is_recorded_in_the_job(world):
    uuid, version, _ = world.put_bundle()
    job_id = world.worker().start_bundle_checkout("aws", uuid, version, caller=CALLER)["checkout_job_id"]
    assert world.record(job_id)["requested_by"] == EMAIL


@pytest.mark.parametrize("replica, destination", [
    ("aws", "dss-staging"), ("aws", "s3://dss-staging"), ("aws", "no-bucket-of-that-name"),
    ("gcp", "gs://dss-staging"), ("gcp", "read-only"),  # listed for s3 only
])
def test_destinations_off_the_operators_list_are_403_before_the_bucket_is_touched(world, replica, destination):
    uuid, version, _ = world.put_bundle(replica)
    store = world.stores[replica]
    store.create_bucket("dss-staging")
    store.create_bucket("read-only")
    calls = dict(store.calls)
    with pytest.raises(Forbidden) as refused:
        world.worker().start_bundle_checkout(replica, uuid, version, destination, caller=CALLER)
    assert refused.value.error_code == "destination_not_allowed"
    assert "DSS_CHECKOUT_DESTINATIONS" in refused.value.title
    # Not a single call to the store: the answer is the same whether the bucket exists or not.
    assert dict(store.calls) == calls and world.dispatched == []


@pytest.mark.parametrize("bucket, scheme, allowed, expected", [
    ("lab-data", "s3", ("lab-data",), True), ("lab-data", "gs", ("lab-data",), True),
    ("lab-data", "s3", ("s3://lab-data/",), True), ("lab-data", "gs", ("s3://lab-data",), False),
    ("lab-data-2", "s3", ("lab-data",), False), ("lab", "s3", ("lab-data",), False),
    ("lab-2", "gs", ("gs://lab-*",), True), ("lab-2", "s3", ("gs://lab-*",), False), ("lab", "s3", ("lab-*",), False),
    ("anything", "s3", ("*", ""), False), ("anything", "s3", (), False),
])
def test_the_operators_list_of_destinations(bucket, scheme, allowed, expected):
    assert destination_allowed(bucket, scheme, allowed) is expected


def test_the_checkout_bucket_needs_no_listing():
    world = World(DSS_CHECKOUT_DESTINATIONS="")
    uuid, version, files = world.put_bundle("gcp")
    world.worker().start_bundle_checkout("gcp", uuid, version, "gs://dss-checkout", caller=CALLER)
    world.deliver(world.last_request())
    assert world.checked_out(uuid, version, "gcp") == files
    with pytest.raises(Forbidden):
        world.worker().start_bundle_checkout("gcp", uuid, version, "user-bucket", caller=CALLER)


def test_the_notice_goes_to_the_caller_unless_an_administrator_asks(world):
    uuid, version, _ = world.put_bundle()
    with pytest.raises(Forbidden) as refused:
        world.worker().start_bundle_checkout("aws", uuid, version, None, "someone@example.org", caller=CALLER)
    assert refused.value.error_code == "email_not_allowed" and world.dispatched == []
    world.worker().start_bundle_checkout("aws", uuid, version, None, EMAIL.upper(), caller=CALLER)
    admin = {"email": "admin@example.org", "groups": [], "is_admin": True}
    job_id = world.worker().start_bundle_checkout("aws", uuid, version, None, "someone@example.org",
                                                  caller=admin)["checkout_job_id"]
    _, mail = world.deliver(world.last_request())
    assert mail.send.call_args.args[0] == "someone@example.org"
    assert world.record(job_id)["requested_by"] == "admin@example.org"


# --- carrying it out -------------------------------------------------------------------------------------

def test_a_redelivered_job_resumes_skipping_verified_copies_and_replacing_bad_ones(world):
    uuid, version, files = world.put_bundle()
    job_id = world.worker().start_bundle_checkout("aws", uuid, version, "user-bucket", caller=CALLER)["checkout_job_id"]
    request = world.last_request()
    names = sorted(files)
    destination = world.stores["aws"].buckets["user-bucket"]
    prefix = f"bundles/{uuid}.{version}/"
    # As a process killed mid-job leaves it: some files copied, one copy cut short.
    for name in names[:3]:
        destination[prefix + name] = (files[name], "application/octet-stream", {})
    destination[prefix + names[3]] = (files[names[3]][:5], "application/octet-stream", {})
    copies_before = world.stores["aws"].calls["copy"]

    result, _ = world.deliver(request, attempt=1)
    assert result["status"] == SUCCEEDED
    assert world.stores["aws"].calls["copy"] - copies_before == len(names) - 3
    assert world.checked_out(uuid, version, "aws", "user-bucket") == files
    assert world.record(job_id)["files_done"] == len(names)

    copies_before = world.stores["aws"].calls["copy"]
    result, mail = world.deliver(request, attempt=1)  # a redelivery of an ended job changes nothing
    assert result["status"] == SUCCEEDED and world.stores["aws"].calls["copy"] == copies_before
    assert not mail.send.called  # no e-mail was asked for


class FlakyCopyStore(MemoryBlobStore):
    """``failing_copies`` copies fail as an unreachable endpoint would; ``copy_delay`` slows each
    copy down; the most copies in flight at once is counted."""

    failing_copies = 0
    copy_delay = 0.0

    def __init__(self, replica):
        super().__init__(replica)
        self.in_flight = self.most_in_flight = 0

    def copy(self, *args, **kwargs):
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            eventlet.sleep(self.copy_delay)
            if self.failing_copies:
                self.failing_copies -= 1
                raise BlobStoreUnavailable("connection reset")
            return super().copy(*args, **kwargs)
        finally:
            self.in_flight -= 1


def test_a_passing_error_is_retried_by_the_broker_and_the_record_says_when():
    world = World(FlakyCopyStore)
    uuid, version, files = world.put_bundle()
    job_id = world.worker().start_bundle_checkout("aws", uuid, version, None, EMAIL, caller=CALLER)["checkout_job_id"]
    world.stores["aws"].failing_copies = 1
    with pytest.raises(BlobStoreUnavailable):
        world.deliver(world.last_request(), attempt=1)
    record = world.record(job_id)
    assert record["status"] == RUNNING and record["attempts"] == 1 and "connection reset" in record["last_error"]
    assert seconds_of(record["retry_at"]) == pytest.approx(world.clock.now + 1)  # the first delay
    assert record["emailed"] is None

    result, mail = world.deliver(world.last_request(), attempt=2)
    assert result["status"] == SUCCEEDED and world.record(job_id)["attempts"] == 2
    assert world.checked_out(uuid, version) == files
    assert mail.send.call_count == 1


def test_a_failure_of_the_last_attempt_ends_the_job_failed():
    world = World(FlakyCopyStore)
    uuid, version, _ = world.put_bundle()
    job_id = world.worker().start_bundle_checkout("aws", uuid, version, None, EMAIL, caller=CALLER)["checkout_job_id"]
    failed_before = jobs_ended("aws", "failed")
    world.stores["aws"].failing_copies = 1
    result, mail = world.deliver(world.last_request(), attempt=3)  # delays "1,5": attempt 3 is the last
    assert result["status"] == FAILED
    assert result["cause"] == ("gave_up: gave up after 3 attempts (storage_unavailable); start the checkout again "
                               "later")
    assert world.worker().get_checkout_job("aws", job_id) == {"status": FAILED, "cause": result["cause"]}
    assert jobs_ended("aws", "failed") == failed_before + 1
    [(recipient, subject, body)] = [call.args for call in mail.send.call_args_list]
    assert subject == f"DSS bundle checkout FAILED: {uuid}.{version}" and result["cause"] in body


def test_a_destination_deleted_after_acceptance_fails_the_job_at_once(world):
    uuid, version, _ = world.put_bundle()
    job_id = world.worker().start_bundle_checkout("aws", uuid, version, "s3://user-bucket", EMAIL,
                                                  caller=CALLER)["checkout_job_id"]
    del world.stores["aws"].buckets["user-bucket"]
    result, mail = world.deliver(world.last_request(), attempt=1)  # not retried: no attempt can help
    assert result["status"] == FAILED
    assert result["cause"] == "destination_gone: the destination bucket s3://user-bucket/ no longer exists"
    assert world.record(job_id)["emailed"] == "sent" and mail.send.call_count == 1


def test_a_blob_missing_from_the_replica_fails_the_job(world):
    uuid, version, files = world.put_bundle()
    world.worker().start_bundle_checkout("aws", uuid, version, caller=CALLER)
    name = sorted(files)[2]
    blob_key = checksum_bytes(files[name]).blob_key()
    del world.stores["aws"].buckets[world.settings.bucket("aws")][blob_key]
    result, _ = world.deliver(world.last_request())
    assert result["status"] == FAILED and result["cause"] == (
        f"file_missing: the bytes of file {name} are missing from replica aws")


class LeakyStore(FlakyCopyStore):
    """A store whose errors name buckets and keys, as S3's and GCS's do."""

    refusing = False

    def copy(self, src_bucket, src_key, dst_bucket, dst_key, **kwargs):
        if self.refusing:
            raise BlobStoreError(f"copy s3://{src_bucket}/{src_key} to s3://{dst_bucket}/{dst_key}: AccessDenied "
                                 "secret-policy-text")
        if self.failing_copies:
            self.failing_copies -= 1
            raise BlobStoreUnavailable(f"copy s3://{src_bucket}/{src_key}: connection reset by secret-host")
        return super().copy(src_bucket, src_key, dst_bucket, dst_key, **kwargs)


def test_what_callers_are_told_of_a_failure_names_no_key_and_no_store_error():
    world = World(LeakyStore)
    uuid, version, files = world.put_bundle()
    blob_keys = [checksum_bytes(data).blob_key() for data in files.values()]

    def assert_generic(text):
        assert "secret" not in text and "dss-main" not in text and not any(key in text for key in blob_keys), text

    world.worker().start_bundle_checkout("aws", uuid, version, "user-bucket", EMAIL, caller=CALLER)
    world.stores["aws"].refusing = True
    result, mail = world.deliver(world.last_request())
    assert result["cause"] == "destination_unusable: the store could not write to the destination bucket " \
                              "s3://user-bucket/"
    assert_generic(mail.send.call_args.args[2])

    world.stores["aws"].refusing = False
    job_id = world.worker().start_bundle_checkout("aws", uuid, version, None, EMAIL, caller=CALLER)["checkout_job_id"]
    world.stores["aws"].failing_copies = 1
    result, _ = world.deliver(world.last_request(), attempt=3)
    assert result["cause"].startswith("gave_up: ")
    assert_generic(world.worker().get_checkout_job("aws", job_id)["cause"])
    assert "secret-host" in world.record(job_id)["last_error"]  # kept for the operator, shown to nobody

    # An unreachable store is a generic 503 at every RPC, whatever the store said.
    world.stores["aws"].unavailable = True
    for call in (lambda worker: worker.start_bundle_checkout("aws", uuid, version, caller=CALLER),
                 lambda worker: worker.get_checkout_job("aws", job_id),
                 lambda worker: worker.bundle_urls("aws", uuid)):
        with pytest.raises(Unavailable) as unavailable:
            call(world.worker())
        assert unavailable.value.error_code == "storage_unavailable"
        assert "unreachable" not in unavailable.value.title and "aws" not in unavailable.value.title.split()


def test_files_are_copied_concurrently_within_the_bound():
    world = World(FlakyCopyStore, DSS_CHECKOUT_JOB_CONCURRENCY=3)
    world.stores["aws"].copy_delay = 0.01
    uuid, version, files = world.put_bundle(files={f"f{i}": bytes([i]) * 100 for i in range(12)})
    world.worker().start_bundle_checkout("aws", uuid, version, caller=CALLER)
    stats_before = world.stores["aws"].calls["stat"]
    result, _ = world.deliver(world.last_request())
    assert result["status"] == SUCCEEDED and world.checked_out(uuid, version) == files
    assert world.stores["aws"].most_in_flight == 3
    # A fresh destination is listed once, not looked at per file, and each copy is judged from the
    # store's answer: no stat at all.
    assert world.stores["aws"].calls["stat"] - stats_before == 0


class RecordWatchingStore(FlakyCopyStore):
    """Keeps every ``files_done`` written to a job record."""

    def __init__(self, replica):
        super().__init__(replica)
        self.progress = []

    def put_bytes(self, bucket, key, data, *args, **kwargs):
        if key.startswith("checkout-jobs/"):
            self.progress.append(json.loads(data)["files_done"])
        return super().put_bytes(bucket, key, data, *args, **kwargs)


def test_progress_is_recorded_while_a_job_runs():
    world = World(RecordWatchingStore, DSS_CHECKOUT_JOB_CONCURRENCY=1, DSS_CHECKOUT_JOB_HEARTBEAT=0.02)
    world.stores["aws"].copy_delay = 0.01
    uuid, version, files = world.put_bundle(files={f"f{i}": bytes([i]) * 10 for i in range(20)})
    world.worker().start_bundle_checkout("aws", uuid, version, caller=CALLER)
    world.deliver(world.last_request())
    progress = world.stores["aws"].progress
    assert progress[0] == 0 and progress[-1] == 20
    assert any(0 < done < 20 for done in progress), progress
    assert progress == sorted(progress)


# --- jobs that would otherwise stay RUNNING ----------------------------------------------------------------

def test_a_job_whose_message_was_lost_is_reported_failed_once_stalled(world):
    uuid, version, _ = world.put_bundle()
    worker = world.worker()
    job_id = worker.start_bundle_checkout("aws", uuid, version, None, EMAIL, caller=CALLER)["checkout_job_id"]
    request = world.last_request()
    world.clock.now += 600
    assert world.worker().get_checkout_job("aws", job_id) == {"status": RUNNING}
    world.clock.now += 1
    view = world.worker().get_checkout_job("aws", job_id)
    assert view["status"] == FAILED and view["cause"].startswith("stalled")
    assert world.record(job_id)["status"] == FAILED  # persisted
    assert world.last_request() == request and len(world.dispatched) == 2  # asked again, for the notice
    result, mail = world.deliver(request)
    assert result["status"] == FAILED and world.checked_out(uuid, version) == {}  # not carried out after all
    assert mail.send.call_count == 1 and "stalled" in mail.send.call_args.args[2]
    assert world.worker().get_checkout_job("aws", job_id) == view and len(world.dispatched) == 2


def test_a_job_waiting_for_its_retry_is_not_stalled():
    world = World(FlakyCopyStore, DSS_CHECKOUT_JOB_RETRY_DELAYS="1,1000")
    uuid, version, _ = world.put_bundle()
    job_id = world.worker().start_bundle_checkout("aws", uuid, version, caller=CALLER)["checkout_job_id"]
    world.stores["aws"].failing_copies = 1
    with pytest.raises(BlobStoreUnavailable):
        world.deliver(world.last_request(), attempt=2)  # the next attempt in 1000 s
    world.clock.now += 1000 + 600
    assert world.worker().get_checkout_job("aws", job_id) == {"status": RUNNING}
    world.clock.now += 1
    assert world.worker().get_checkout_job("aws", job_id)["status"] == FAILED


def test_a_run_stops_when_its_job_is_ended_elsewhere():
    world = World(FlakyCopyStore, DSS_CHECKOUT_JOB_CONCURRENCY=1, DSS_CHECKOUT_JOB_HEARTBEAT=0.01)
    world.stores["aws"].copy_delay = 0.02
    uuid, version, _ = world.put_bundle(files={f"f{i}": bytes([i]) * 10 for i in range(30)})
    job_id = world.worker().start_bundle_checkout("aws", uuid, version, caller=CALLER)["checkout_job_id"]
    request = world.last_request()

    def end_it_as_stalled():
        wait_until(lambda: world.checked_out(uuid, version), timeout=10, interval=0.005,
                   what="the run under way (a file copied)")
        world.clock.now += 10_000
        world.worker().get_checkout_job("aws", job_id)

    ender = eventlet.spawn(end_it_as_stalled)
    result, _ = world.deliver(request)
    ender.wait()
    assert result["status"] == FAILED and result["cause"].startswith("stalled")
    assert 0 < len(world.checked_out(uuid, version)) < 30


# --- e-mail, once ----------------------------------------------------------------------------------------

def test_a_notice_that_could_not_be_sent_is_retried_alone_and_sent_once(world):
    uuid, version, _ = world.put_bundle()
    job_id = world.worker().start_bundle_checkout("aws", uuid, version, None, EMAIL, caller=CALLER)["checkout_job_id"]
    request = world.last_request()
    relay_down = world.worker().mail
    relay_down.send.side_effect = MailNotSent("could not send through relay:587: ConnectionRefusedError")
    with pytest.raises(MailNotSent):
        world.deliver(request, attempt=1, mail=relay_down)
    assert world.record(job_id)["status"] == SUCCEEDED and world.record(job_id)["emailed"] is None
    copies = world.stores["aws"].calls["copy"]

    result, mail = world.deliver(request, attempt=2)
    assert result["status"] == SUCCEEDED and mail.send.call_count == 1 and world.record(job_id)["emailed"] == "sent"
    assert world.stores["aws"].calls["copy"] == copies
    _, mail = world.deliver(request, attempt=3)
    assert not mail.send.called


def test_a_notice_refused_for_good_or_on_the_last_attempt_is_recorded_not_retried(world):
    uuid, version, _ = world.put_bundle()
    refusing = world.worker().mail
    refusing.send.side_effect = MailNotSent("relay refused the recipient", permanent=True)
    job_id = world.worker().start_bundle_checkout("aws", uuid, version, None, EMAIL, caller=CALLER)["checkout_job_id"]
    world.deliver(world.last_request(), mail=refusing)
    record = world.record(job_id)
    assert (record["emailed"], record["email_error"]) == ("failed", "relay refused the recipient")

    job_id = world.worker().start_bundle_checkout("aws", uuid, version, None, EMAIL, caller=CALLER)["checkout_job_id"]
    relay_down = world.worker().mail
    relay_down.send.side_effect = MailNotSent("relay unreachable")
    world.deliver(world.last_request(), attempt=3, mail=relay_down)
    assert world.record(job_id)["emailed"] == "failed"


def test_without_an_smtp_relay_the_notice_is_recorded_as_disabled(world):
    uuid, version, _ = world.put_bundle()
    no_relay = world.worker().mail
    no_relay.send.return_value = False
    job_id = world.worker().start_bundle_checkout("aws", uuid, version, None, EMAIL, caller=CALLER)["checkout_job_id"]
    world.deliver(world.last_request(), mail=no_relay)
    assert world.record(job_id)["emailed"] == "disabled"


def sent_and_outcome(world, caller, email, mail_outcomes):
    uuid, version, _ = world.bundle
    job_id = world.worker().start_bundle_checkout("aws", uuid, version, None, email, caller=caller)["checkout_job_id"]
    _, mail = world.deliver(world.last_request())
    mail_outcomes.append(world.record(job_id)["emailed"])
    return mail.send.call_count


def test_notices_per_caller_and_hour_are_limited_durably():
    world = World(DSS_CHECKOUT_MAIL_PER_HOUR=2)
    world.bundle = world.put_bundle()
    world.clock.now = 3600 * 500_000 + 10  # early in an hour
    other = {"email": "other@example.org", "groups": [], "is_admin": False}
    outcomes = []
    assert [sent_and_outcome(world, CALLER, EMAIL, outcomes) for _ in range(3)] == [1, 1, 0]
    assert outcomes == ["sent", "sent", "rate_limited"]
    assert sent_and_outcome(world, other, "other@example.org", outcomes) == 1  # each caller has a quota
    # The count lives in the first replica's checkout bucket, not in the process: new workers
    # (another process, a restart) see it.
    checkout = world.stores["aws"].buckets[world.settings.bucket("aws", "checkout")]
    assert len([key for key in checkout if key.startswith("mail-quota/")]) == 4
    assert not any(EMAIL in key for key in checkout)  # the key holds a hash, not the address
    world.clock.now += 3600
    assert sent_and_outcome(world, CALLER, EMAIL, outcomes) == 1  # a new hour


def test_a_retried_notice_counts_once():
    world = World(DSS_CHECKOUT_MAIL_PER_HOUR=1)
    uuid, version, _ = world.put_bundle()
    job_id = world.worker().start_bundle_checkout("aws", uuid, version, None, EMAIL, caller=CALLER)["checkout_job_id"]
    relay_down = world.worker().mail
    relay_down.send.side_effect = MailNotSent("relay unreachable")
    with pytest.raises(MailNotSent):
        world.deliver(world.last_request(), attempt=1, mail=relay_down)
    _, mail = world.deliver(world.last_request(), attempt=2)
    assert mail.send.call_count == 1 and world.record(job_id)["emailed"] == "sent"


def test_without_a_quota_no_notice_is_sent_and_without_a_relay_none_is_counted():
    world = World(DSS_CHECKOUT_MAIL_PER_HOUR=0)
    uuid, version, _ = world.put_bundle()
    job_id = world.worker().start_bundle_checkout("aws", uuid, version, None, EMAIL, caller=CALLER)["checkout_job_id"]
    result, mail = world.deliver(world.last_request())
    assert result["status"] == SUCCEEDED and not mail.send.called
    assert world.record(job_id)["emailed"] == "rate_limited"

    world = World()
    uuid, version, _ = world.put_bundle()
    no_relay = world.worker().mail
    no_relay.enabled = False
    no_relay.send.return_value = False
    world.worker().start_bundle_checkout("aws", uuid, version, None, EMAIL, caller=CALLER)
    world.deliver(world.last_request(), mail=no_relay)
    checkout = world.stores["aws"].buckets[world.settings.bucket("aws", "checkout")]
    assert not [key for key in checkout if key.startswith("mail-quota/")]


# --- GET /bundles URLs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("replica", ["aws", "gcp"])
def test_bundle_urls_are_pending_until_the_checkout_is_done(world, replica):
    uuid, version, files = world.put_bundle(replica)
    pending = world.worker().bundle_urls(replica, uuid)
    job_id = urls_job_id(replica, uuid, version, world.settings.bucket(replica, "checkout"))
    assert pending == {"status": "pending", "version": version, "token": encode_token(job_id), "retry_after": 10}
    assert decode_token(pending["token"]) == job_id
    assert world.last_request()["checkout_job_id"] == job_id and len(world.dispatched) == 1
    assert world.worker().bundle_urls(replica, uuid, version, "presigned", pending["token"]) == pending
    assert len(world.dispatched) == 1  # the running checkout is found, not started again

    world.deliver(world.last_request())
    ready = world.worker().bundle_urls(replica, uuid, None, "presigned", pending["token"])
    checkout = world.settings.bucket(replica, "checkout")
    assert ready == {"status": "ready", "version": version,
                     "urls": {name: f"memory://{checkout}/bundles/{uuid}.{version}/{name}?expires_in=3600"
                              for name in files}}
    scheme = {"aws": "s3", "gcp": "gs"}[replica]
    direct = world.worker().bundle_urls(replica, uuid, version, "direct")
    assert direct["urls"] == {name: f"{scheme}://{checkout}/bundles/{uuid}.{version}/{name}" for name in files}
    assert world.checked_out(uuid, version, replica) == files and len(world.dispatched) == 1


def test_bundle_urls_tokens_are_checked(world):
    uuid, version, _ = world.put_bundle()
    other, _, _ = world.put_bundle()
    token = world.worker().bundle_urls("aws", other)["token"]
    for bad in ("garbage", "", encode_token("not-a-uuid"), token):
        with pytest.raises(InvalidParameter) as refused:
            world.worker().bundle_urls("aws", uuid, version, "presigned", bad)
        assert refused.value.error_code == "illegal_token"
    with pytest.raises(NotFound):
        world.worker().bundle_urls("aws", new_uuid())


def test_a_failed_bundle_urls_checkout_is_a_503_to_its_followers_and_started_again_when_asked_afresh(world):
    uuid, version, files = world.put_bundle()
    token = world.worker().bundle_urls("aws", uuid)["token"]
    blob_key = checksum_bytes(files[sorted(files)[0]]).blob_key()
    main = world.stores["aws"].buckets[world.settings.bucket("aws")]
    blob = main.pop(blob_key)
    world.deliver(world.last_request())
    with pytest.raises(Unavailable) as failed:
        world.worker().bundle_urls("aws", uuid, None, "presigned", token)
    assert failed.value.error_code == "checkout_failed" and "file_missing" in failed.value.title
    assert blob_key not in failed.value.title

    main[blob_key] = blob  # repaired meanwhile
    assert world.worker().bundle_urls("aws", uuid)["status"] == "pending" and len(world.dispatched) == 2
    world.deliver(world.last_request())
    assert world.worker().bundle_urls("aws", uuid, None, "presigned", token)["status"] == "ready"


def test_an_old_bundle_urls_checkout_is_run_again_before_it_serves(world):
    uuid, version, files = world.put_bundle()
    world.worker().bundle_urls("aws", uuid)
    world.deliver(world.last_request())
    assert world.worker().bundle_urls("aws", uuid)["status"] == "ready"
    name = sorted(files)[0]
    del world.stores["aws"].buckets[world.settings.bucket("aws", "checkout")][f"bundles/{uuid}.{version}/{name}"]
    world.clock.now += 86400
    assert world.worker().bundle_urls("aws", uuid)["status"] == "pending"  # its copies may have expired
    copies = world.stores["aws"].calls["copy"]
    world.deliver(world.last_request())
    assert world.stores["aws"].calls["copy"] == copies + 1  # only the missing copy is made again
    assert world.worker().bundle_urls("aws", uuid)["status"] == "ready"
