"""The checkout service: owns each replica's checkout bucket, from which clients read file bytes.

Two parts, each with its own module:

- file checkout (``files.py`` and ``dependencies.py``): GET /files and DRS are answered with
  presigned URLs of verified copies of blobs in the checkout bucket; copies are made on demand
  (inline for small blobs, in the background for large ones), warmed on ``file_created`` for small
  files, refreshed when read near the end of their life and swept when expired;
- bundle checkout jobs (``jobs.py``): a bundle copied, verified, to the checkout bucket or a
  bucket of the user's choice, its job state durable in the checkout bucket, with an e-mail when
  it ends.
"""
import logging

from marshmallow import EXCLUDE, ValidationError
from nameko.events import EventDispatcher
from nameko.rpc import rpc

from shared import events
from shared.mail import Mail, MailNotSent
from shared.metrics import Metrics
from shared.retry import AttemptNumber
from shared.schemas import BundleCheckoutRequested, load_arguments

from services.checkout.jobs import CheckoutJobs, checkout_job_event_handler, completion_email, job_view
from services.checkout.jobs_schemas import BundleUrlsCall, CheckoutJobCall, StartBundleCheckoutCall

logger = logging.getLogger(__name__)


class CheckoutService:
    name = "checkout"

    metrics = Metrics()
    dispatch = EventDispatcher()

    # --- file checkout (GET /files, DRS) -------------------------------------------------------------

    # --- bundle checkout jobs ------------------------------------------------------------------------
    checkout_jobs = CheckoutJobs()
    mail = Mail()
    attempt = AttemptNumber()

    @rpc
    def start_bundle_checkout(self, replica, uuid, version=None, destination=None, email=None):
        """POST /bundles/{uuid}/checkout: ``{"checkout_job_id", "version"}`` once the job is recorded
        and requested; 404 no such (live) bundle version, 400 ``invalid_destination``, ``invalid_email``."""
        call = load_arguments(StartBundleCheckoutCall(), {"replica": replica, "uuid": uuid, "version": version,
                                                          "destination": destination, "email": email})
        job = self.checkout_jobs.start(call["replica"], call["uuid"], call["version"], call["destination"],
                                       call["email"])
        self._request_checkout(job)
        return {"checkout_job_id": job["job_id"], "version": job["version"]}

    @rpc
    def get_checkout_job(self, replica, checkout_job_id):
        """GET /bundles/checkout/{id}: ``{"status", "location"?, "cause"?}``; 404 unknown id."""
        call = load_arguments(CheckoutJobCall(), {"replica": replica, "checkout_job_id": checkout_job_id})
        job, ended_now = self.checkout_jobs.status(call["replica"], call["checkout_job_id"])
        if ended_now and self.checkout_jobs.owes_email(job):
            self._request_checkout(job)  # found stalled: the handler sends its notice
        return job_view(job)

    @rpc
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

    @checkout_job_event_handler("checkout", events.BUNDLE_CHECKOUT_REQUESTED, give_up_on=(ValidationError,))
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
        subject, body = completion_email(job)
        try:
            sent = self.mail.send(job["email"], subject, body)
        except MailNotSent as error:
            if not error.permanent and not self.checkout_jobs.is_last_attempt(self.attempt):
                raise  # the job has ended: the next attempt only sends its notice
            logger.error("checkout job %s: its notice to %s was not sent: %s", job["job_id"], job["email"], error)
            return self.checkout_jobs.email_outcome(job, "failed", str(error))
        return self.checkout_jobs.email_outcome(job, "sent" if sent else "disabled")
