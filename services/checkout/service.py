"""The checkout service: owns each replica's checkout bucket, from which clients read file bytes.

Its entrypoints, for its two parts (each in a package of its own):

- file reads (``file_reads``): GET /files and DRS are answered with presigned URLs of verified
  copies of blobs in the checkout bucket; copies are made on demand (inline for small blobs, in
  the background for large ones), warmed on ``file_created`` for small files and refreshed when
  read near the end of their life;
- bundle checkout jobs (``bundle_jobs``): a bundle copied, verified, to the checkout bucket or a
  bucket the operator allowed, its job state durable in the checkout bucket, with an e-mail to the
  caller when it ends (at most ``DSS_CHECKOUT_MAIL_PER_HOUR`` per caller);

and the sweeper of the bucket (``sweeping``), which deletes what expired of both.

Every RPC answers an unreachable store with a generic 503 (``exceptions.hides_storage_details``):
what callers are told never names another bucket's keys or carries a store's error text.
"""
import importlib.metadata
import logging

from marshmallow import EXCLUDE, ValidationError
from nameko.events import BROADCAST

from shared import events
from shared.entrypoints import EventDispatcher, event_handler, rpc, size_above_setting
from shared.exceptions import InvalidParameter, Unprocessable
from shared.identifiers import REPLICAS
from shared.metrics import Metrics
from shared.tracing import Tracing
from shared.retry import AttemptNumber, retrying_event_handler
from shared.schemas import (BundleCheckoutRequested, FileCheckoutRequested, FileCreated, ObjectReplicated,
                            load_arguments, schema_instance)

from services.checkout.bundle_jobs.jobs import completion_email, job_view
from services.checkout.bundle_jobs.mail import MailNotSent
from services.checkout.dependencies import CheckoutJobs, FileReads, Mail, Sweeps
from services.checkout.exceptions import hides_storage_details
from services.checkout.file_reads import drs
from services.checkout.file_reads.blobs import Blob, file_version_of_key
from services.checkout.schemas import (BundleUrlsCall, CheckoutJobCall, DrsAccessCall, DrsObjectCall,
                                       DrsServiceInfoCall, GetFileCall, StartBundleCheckoutCall, SweepCall)
from services.checkout.sweeping import sweep_timer

logger = logging.getLogger(__name__)


class CheckoutService:
    name = "checkout"

    metrics = Metrics()
    tracing = Tracing()
    dispatch = EventDispatcher()

    # --- file reads (GET /files, DRS) ----------------------------------------------------------------
    file_reads = FileReads()

    @rpc
    @hides_storage_details
    def get_file(self, replica, uuid, version=None, directurl=False, content_disposition=None, token=None):
        """GET /files/{uuid}: ``{"status": "ready", "metadata", "url"}`` (a presigned URL of the
        blob's copy in the checkout bucket, or its ``s3://`` / ``gs://`` URL with ``directurl``), or
        ``{"status": "pending", "metadata", "token", "retry_after"}`` while a large copy runs;
        ``metadata`` is what ``files.head_file`` answers. 404; 400 ``illegal_token``."""
        call = load_arguments(GetFileCall(), {"replica": replica, "uuid": uuid, "version": version,
                                              "directurl": directurl, "content_disposition": content_disposition,
                                              "token": token}, none_is_default=True)
        answer, copy_request = self.file_reads.read_file(call["replica"], call["uuid"], call["version"],
                                                             call["directurl"], call["content_disposition"],
                                                             call["token"])
        self._request_copy(copy_request)
        return answer

    @rpc
    @hides_storage_details
    def drs_service_info(self, base_url):
        """GET /ga4gh/drs/v1/service-info: the GA4GH service-info document of DRS 1.4."""
        call = load_arguments(DrsServiceInfoCall(), {"base_url": base_url})
        return drs.service_info(call["base_url"], importlib.metadata.version("dss"))

    @rpc
    @hides_storage_details
    def drs_object(self, replica, object_id, version=None, base_url=None, expand=False):
        """GET /ga4gh/drs/v1/objects/{object_id}: the DRS object of a file version or of a bundle
        version (``drs``: ids are ``{uuid}`` or ``{uuid}.{version}``, files looked up first; DSS
        bundles hold files only, so ``expand`` changes nothing). ``base_url``: where clients reach
        the gateway (``DSS_PUBLIC_URL`` when None), for ``drs://`` URIs. 404; 400 ``illegal_object_id``."""
        call = load_arguments(DrsObjectCall(), {"replica": replica, "object_id": object_id, "version": version,
                                                "base_url": base_url, "expand": expand}, none_is_default=True)
        return self.file_reads.drs_object(call["replica"], call["object_id"], call["version"],
                                              call["base_url"])

    @rpc
    @hides_storage_details
    def drs_access(self, replica, object_id, access_id, version=None):
        """GET /ga4gh/drs/v1/objects/{object_id}/access/{access_id}: ``{"status": "ready", "url"}``
        or ``{"status": "pending", "retry_after"}`` (202) while the copy runs. The access id names
        the replica (``replica`` is only checked); 404 an unknown access id."""
        call = load_arguments(DrsAccessCall(), {"replica": replica, "object_id": object_id, "access_id": access_id,
                                                "version": version}, none_is_default=True)
        answer, copy_request = self.file_reads.drs_access(call["object_id"], call["access_id"], call["version"])
        self._request_copy(copy_request)
        return answer

    @retrying_event_handler("checkout", events.FILE_CHECKOUT_REQUESTED, delays_setting="checkout_copy_retry_delays",
                            give_up_on=(ValidationError, Unprocessable, InvalidParameter))
    def handle_file_checkout_requested(self, payload):
        """A large copy (or refresh) into the checkout bucket, acknowledged once made and verified."""
        request = schema_instance(FileCheckoutRequested).load(payload, unknown=EXCLUDE)
        verdict = self.file_reads.copy_requested(request)
        return {"replica": request["replica"], "blob_key": request["blob_key"], "state": verdict.state.value}

    # A file above DSS_CHECKOUT_WARM_BYTES (every file, by default) is not warmed: no worker for it.
    @retrying_event_handler("files", events.FILE_CREATED, delays_setting="checkout_copy_retry_delays",
                            give_up_on=(ValidationError, Unprocessable, InvalidParameter),
                            skip=size_above_setting("checkout_warm_bytes"))
    def handle_file_created(self, payload):
        """Warm the checkout bucket with a small new file, so that its first GET is a plain 302."""
        created = schema_instance(FileCreated).load(payload, unknown=EXCLUDE)
        blob = Blob.from_key(created["blob_key"], created["size"], created["content_type"])
        verdict = self.file_reads.warm(created["replica"], created["uuid"], created["version"], blob,
                                           created["metadata"])
        return None if verdict is None else {"replica": created["replica"], "blob_key": blob.key,
                                             "state": verdict.state.value}

    # Every checkout process learns of each new file version, so that it never serves an older
    # one as the latest from its memory.
    @event_handler("files", events.FILE_CREATED, handler_type=BROADCAST, reliable_delivery=False)
    def note_file_version(self, payload):
        created = schema_instance(FileCreated).load(payload, unknown=EXCLUDE)
        self.file_reads.announce_version(created["replica"], created["uuid"], created["version"])

    @event_handler("replicator", events.OBJECT_REPLICATED, handler_type=BROADCAST, reliable_delivery=False,
                   key_prefixes=("files/",))
    def note_replicated_file_version(self, payload):
        replicated = schema_instance(ObjectReplicated).load(payload, unknown=EXCLUDE)
        file_version = file_version_of_key(replicated["key"])
        if file_version is not None:
            self.file_reads.announce_version(replicated["destination_replica"], *file_version)

    @rpc
    @hides_storage_details
    def health(self):
        """``{"ok", "aws": {"ok", "detail"}, "gcp": {...}}``: both replicas' main and checkout buckets."""
        return self.file_reads.health()

    def _request_copy(self, copy_request):
        if copy_request is None:
            return
        try:
            self.dispatch(events.FILE_CHECKOUT_REQUESTED, schema_instance(FileCheckoutRequested).dump(copy_request))
        except Exception:
            # Not on its way: without its marker, the client's next round asks again.
            self.file_reads.withdraw_copy_request(copy_request["replica"], copy_request["blob_key"])
            raise


    # --- bundle checkout jobs ------------------------------------------------------------------------
    checkout_jobs = CheckoutJobs()
    mail = Mail()
    attempt = AttemptNumber()

    @rpc
    @hides_storage_details
    def start_bundle_checkout(self, replica, uuid, version=None, destination=None, email=None, caller=None):
        """POST /bundles/{uuid}/checkout by ``caller`` (the gateway's authenticated caller, recorded
        in the job): ``{"checkout_job_id", "version"}`` once the job is recorded and requested; 401
        without a caller, 403 ``destination_not_allowed`` / ``email_not_allowed``, 404 no such (live)
        bundle version, 400 ``invalid_destination``, ``invalid_email``."""
        call = load_arguments(StartBundleCheckoutCall(), {"replica": replica, "uuid": uuid, "version": version,
                                                          "destination": destination, "email": email})
        job = self.checkout_jobs.start(call["replica"], call["uuid"], call["version"], call["destination"],
                                       call["email"], caller)
        self._request_checkout(job)
        return {"checkout_job_id": job["job_id"], "version": job["version"]}

    @rpc
    @hides_storage_details
    def get_checkout_job(self, replica, checkout_job_id):
        """GET /bundles/checkout/{id}: ``{"status", "location"?, "cause"?}``; 404 unknown id."""
        call = load_arguments(CheckoutJobCall(), {"replica": replica, "checkout_job_id": checkout_job_id})
        job, ended_now = self.checkout_jobs.status(call["replica"], call["checkout_job_id"])
        if ended_now and self.checkout_jobs.owes_email(job):
            self._request_checkout(job)  # found stalled: the handler sends its notice
        return job_view(job)

    @rpc
    @hides_storage_details
    def bundle_urls(self, replica, uuid, version=None, kind="presigned", token=None):
        """GET /bundles with presignedurls / directurls: ``{"status": "ready", "version", "urls":
        {name: url}}`` from the bundle's checkout into the checkout bucket, or ``{"status":
        "pending", "version", "token", "retry_after"}`` while it runs; 503 ``checkout_failed`` when
        the checkout the token follows failed."""
        call = load_arguments(BundleUrlsCall(), {"replica": replica, "uuid": uuid, "version": version,
                                                 "kind": kind, "token": token})
        answer, started = self.checkout_jobs.bundle_urls(call["replica"], call["uuid"], call["version"],
                                                         call["kind"], call["token"])
        if started is not None:
            self._request_checkout(started)
        return answer

    @retrying_event_handler("checkout", events.BUNDLE_CHECKOUT_REQUESTED, give_up_on=(ValidationError,),
                            delays_setting="checkout_job_retry_delays")
    def handle_bundle_checkout_requested(self, payload):
        request = BundleCheckoutRequested(unknown=EXCLUDE).load(payload)
        job = self.checkout_jobs.run(request["replica"], request["checkout_job_id"], self.attempt)
        if self.checkout_jobs.owes_email(job):
            job = self._send_notice(job)
        return None if job is None else {"checkout_job_id": job["job_id"], **job_view(job)}

    def _request_checkout(self, job):
        # Confirmed by the broker before this returns: the job is recorded and on its way.
        self.dispatch(events.BUNDLE_CHECKOUT_REQUESTED, BundleCheckoutRequested().dump(
            {"replica": job["replica"], "checkout_job_id": job["job_id"], "uuid": job["uuid"],
             "version": job["version"]}))

    def _send_notice(self, job):
        if self.mail.enabled and not self.checkout_jobs.may_email(job):
            return self.checkout_jobs.email_outcome(job, "rate_limited")
        subject, body = completion_email(job)
        try:
            sent = self.mail.send(job["email"], subject, body)
        except MailNotSent as error:
            if not error.permanent and not self.checkout_jobs.is_last_attempt(self.attempt):
                raise  # the job has ended: the next attempt only sends its notice
            logger.error("checkout job %s: its notice to %s was not sent: %s", job["job_id"], job["email"], error)
            return self.checkout_jobs.email_outcome(job, "failed", str(error))
        return self.checkout_jobs.email_outcome(job, "sent" if sent else "disabled")

    # --- the sweeper of the checkout buckets (what both parts leave expires) -------------------------
    sweeper = Sweeps()

    @rpc
    @hides_storage_details
    def sweep(self, replica, start_after=None, limit=None):
        """Delete expired copies of ``replica``'s checkout bucket now (for operators and tests):
        ``{"replica", "examined", "deleted", "kept", "markers_deleted", "next_start_after"}``, at most
        ``limit`` (``DSS_CHECKOUT_SWEEP_BATCH``) copies examined after ``start_after``."""
        call = load_arguments(SweepCall(), {"replica": replica, "start_after": start_after, "limit": limit},
                              none_is_default=True)
        return self.sweeper.sweep(call["replica"], call["start_after"], call["limit"])

    @sweep_timer
    def sweep_expired_copies(self):
        """Every ``DSS_CHECKOUT_SWEEP_INTERVAL`` seconds: the next batch of each replica's copies."""
        return {replica: self.sweeper.sweep_next_batch(replica) for replica in REPLICAS}
