"""Bundle checkout jobs: every file of a bundle version copied, verified, into a bucket of the
bundle's replica's cloud, under ``bundles/{uuid}.{version}/{name}``; the job's state is durable.

The record. Each job is one JSON document in the replica's checkout bucket, ``checkout-jobs/{id}.json``:

    {job_id, purpose: "request" (POST /bundles/{uuid}/checkout) | "urls" (GET /bundles with URLs),
     replica, uuid, version, destination (a bucket), email (or null),
     requested_by (the authenticated caller's e-mail; null for "urls" jobs),
     status: RUNNING | SUCCEEDED | FAILED, location (SUCCEEDED: s3://bucket/bundles/{uuid}.{version}/),
     cause (FAILED), created, updated, finished (ISO 8601 UTC),
     files_total, files_done, bytes_total, attempts, retry_at, last_error,
     emailed: null (not yet, or no e-mail) | "sent" | "disabled" | "rate_limited" | "failed", email_error}

Who may ask for what: a caller is authenticated (the gateway passes it on); the destination is
the replica's checkout bucket or a bucket of ``DSS_CHECKOUT_DESTINATIONS``, decided before the
bucket is looked at; the notice goes to the caller's own address unless an administrator asks, at
most ``DSS_CHECKOUT_MAIL_PER_HOUR`` per caller (``mail_quota``). A failed job's ``cause`` is a code
and a generic title (``JobFailure``): never a key, a listing or a store's error text, which are
logged (and kept in ``last_error``, which no caller sees).

It is written before the RPC that accepts the job answers, and the job is then carried out by the
``bundle_checkout_requested`` handler (broker retries with ``DSS_CHECKOUT_JOB_RETRY_DELAYS``). A
record, once SUCCEEDED or FAILED, never changes status again (only its e-mail fields), so every
reader sees one outcome.

How a job never stays RUNNING forever:
- a permanent error (the destination gone or refusing writes, a blob missing) ends it FAILED;
- a passing error (storage unreachable, a copy that did not verify) is retried by the broker, and
  the record says when (``retry_at``); a failure of the last attempt ends it FAILED;
- a process killed mid-job leaves its message unacknowledged: the broker delivers it again, and
  the next run skips every file already copied and verified (so it resumes, not redoes);
- while a job runs, its record is rewritten every ``DSS_CHECKOUT_JOB_HEARTBEAT`` seconds; a
  RUNNING record untouched for ``DSS_CHECKOUT_JOB_STALL_SECONDS`` (past any ``retry_at``) belongs
  to a job whose message was lost, and whoever reads it ends it FAILED with cause "stalled ...".

GET /bundles with URLs uses a job of its own per (replica, bundle version, checkout bucket), whose
id is derived from them (``urls_job_id``), so every request for that bundle finds the same job.

Copies are server-side (``copies.copy_verified``): no file's bytes pass through this
process, so a job needs little memory whatever the bundle's size.
"""
from __future__ import annotations

import base64
import binascii
import datetime
import json
import logging
import re
import time
import uuid as uuid_module
from typing import Callable

import eventlet
import eventlet.event
from prometheus_client import Counter, Gauge, Histogram

from shared import tracing
from shared.blobstore import (BlobAlreadyExists, BlobNotFound, BlobPreconditionFailed, BlobStoreError,
                              BlobStoreUnavailable)
from shared.checksums import Checksums
from shared.config import Settings
from shared.exceptions import DSSError, NotFound, bundle_not_found, illegal_token
from shared.identifiers import REPLICAS, Keys, new_uuid
from shared.metrics import MetricsAPI
from shared.storage import JSON, ReplicaStorage, Replicas

from services.checkout import exceptions as errors
from services.checkout.bundle_jobs.mail_quota import MailQuota
from services.checkout.copies import copy_verified, verify_copy
from services.checkout.lifetime import copy_metadata

logger = logging.getLogger(__name__)

RUNNING, SUCCEEDED, FAILED = "RUNNING", "SUCCEEDED", "FAILED"
ENDED = (SUCCEEDED, FAILED)
REQUEST, URLS = "request", "urls"  # the two purposes of a job
JOBS_PREFIX = "checkout-jobs/"
PROBE_PREFIX = "bundles/.dss-write-probe-"
STAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
TOKEN_PREFIX = "bundle-checkout:"
# A bucket name as S3 and GCS allow them (GCS also allows underscores and dotted names up to 222).
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
# Fixed for good: the id of a bundle's URL checkout must come out the same in every release.
URLS_JOB_NAMESPACE = uuid_module.UUID("6c0f1e7a-3b5d-4c8e-9f21-5a7d2e4b8c90")

JOBS_ENDED = Counter("dss_checkout_jobs_total", "Bundle checkout jobs ended, by outcome (succeeded, failed).",
                     ["replica", "outcome"])
JOB_FILES = Counter("dss_checkout_job_files_total",
                    "Files handled by bundle checkout jobs: copied, or already there and verified.",
                    ["replica", "result"])
JOB_DURATION = Histogram("dss_checkout_job_duration_seconds",
                         "From a bundle checkout job's acceptance to its end, retries included.", ["replica", "outcome"],
                         buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 86400))
JOBS_RUNNING = Gauge("dss_checkout_jobs_running", "Bundle checkout jobs being carried out by this process.",
                     ["replica"])
JOB_EMAILS = Counter("dss_checkout_job_emails_total",
                     "Notices of ended bundle checkout jobs: sent, disabled (no SMTP relay), failed.", ["outcome"])


# --- pure helpers ----------------------------------------------------------------------------------

def job_key(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}.json"


def checkout_prefix(uuid: str, version: str) -> str:
    return f"bundles/{uuid}.{version}/"


def urls_job_id(replica: str, uuid: str, version: str, bucket: str) -> str:
    """The one job id of the checkout serving GET /bundles URLs of that bundle version."""
    return str(uuid_module.uuid5(URLS_JOB_NAMESPACE, "|".join((replica, uuid, version, bucket))))


def encode_token(job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{TOKEN_PREFIX}{job_id}".encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    """The job id an ``encode_token`` token carries; 400 ``illegal_token`` for anything else."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    job_id = text.removeprefix(TOKEN_PREFIX)
    if not text.startswith(TOKEN_PREFIX) or not _is_job_id(job_id):
        raise illegal_token("the token is not one this service gave out")
    return job_id


def _is_job_id(value: str) -> bool:
    try:
        return str(uuid_module.UUID(value)) == value
    except ValueError:
        return False


def stamp(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(STAMP_FORMAT)


def seconds_of(value: str) -> float:
    return datetime.datetime.strptime(value, STAMP_FORMAT).replace(tzinfo=datetime.timezone.utc).timestamp()


def destination_bucket(destination: str | None, scheme: str, default_bucket: str) -> str:
    """The bucket a checkout writes to: ``default_bucket`` when none is given, else a bucket name,
    bare or as ``{scheme}://bucket`` of the replica's cloud; 400 ``invalid_destination`` otherwise."""
    if destination is None or not destination.strip():
        return default_bucket
    name = destination.strip()
    if "://" in name:
        given, _, name = name.partition("://")
        if given != scheme:
            raise errors.invalid_destination(f"the destination must be a bucket of this replica's cloud "
                                              f"({scheme}://bucket or a bare bucket name)")
        name = name.removesuffix("/")
    if not _BUCKET_NAME.fullmatch(name):
        raise errors.invalid_destination("the destination must be a bucket name (no path within it), "
                                          f"as {scheme}://bucket or bare")
    return name


def destination_allowed(bucket: str, scheme: str, allowed: tuple[str, ...]) -> bool:
    """Whether ``bucket`` of the ``scheme`` cloud is on the operator's list: ``{scheme}://bucket``
    or a bare name (either cloud); a name ending in ``*`` allows every bucket it begins."""
    for entry in allowed:
        given, _, name = entry.strip().rpartition("://")
        name = name.removesuffix("/")
        if given not in ("", scheme) or not name:
            continue
        if name == bucket or (name.endswith("*") and len(name) > 1 and bucket.startswith(name[:-1])):
            return True
    return False


def job_view(record: dict) -> dict:
    """What GET /bundles/checkout/{id} shows of a record."""
    view = {"status": record["status"]}
    if record["status"] == SUCCEEDED:
        view["location"] = record["location"]
    if record["status"] == FAILED:
        view["cause"] = record["cause"]
    return view


def completion_email(record: dict) -> tuple[str, str]:
    """Subject and body of the notice of an ended job."""
    fqid = f"{record['uuid']}.{record['version']}"
    outcome = "succeeded" if record["status"] == SUCCEEDED else "failed"
    subject = f"DSS bundle checkout {record['status']}: {fqid}"
    lines = [f"The checkout of bundle {record['uuid']}, version {record['version']}, from replica "
             f"{record['replica']} {outcome}.", "",
             f"Checkout job: {record['job_id']}",
             f"Status: {record['status']}"]
    if record["status"] == SUCCEEDED:
        lines.append(f"Location: {record['location']}")
    else:
        lines.append(f"Cause: {record['cause']}")
    lines.append(f"Files copied: {record['files_done']} of {record['files_total']}")
    return subject, "\n".join(lines) + "\n"


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:500]


def error_code(error: BaseException) -> str:
    """A code for what went wrong, fit for a caller: the typed error's, or a generic one."""
    if isinstance(error, DSSError):
        return error.error_code
    return "storage_error" if isinstance(error, BlobStoreError) else "internal_error"


class JobFailure(Exception):
    """The job cannot succeed however often it is tried; ``str()`` is its cause, ``{code}: {title}``.
    The title says what failed in general terms; the detail is logged by whoever raises it."""

    def __init__(self, code: str, title: str):
        super().__init__(f"{code}: {title}")


class JobEnded(Exception):
    """The record was ended elsewhere while this run was copying (e.g. found stalled)."""


def live_bundle_version(storage: ReplicaStorage, uuid: str, version: str | None) -> str:
    """``version`` (the latest if None) when its manifest exists and no tombstone hides it; else 404."""
    live = storage.live_version(Keys.bundle_prefix(uuid), version)
    if live is None:
        raise bundle_not_found(storage.replica, uuid, version)
    return live


# --- the job store and runner ----------------------------------------------------------------------

class CheckoutJobsAPI:
    def __init__(self, replicas: Replicas, settings: Settings, metrics: MetricsAPI,
                 clock: Callable[[], float] = time.time):
        self.replicas = replicas
        self.settings = settings
        self.metrics = metrics
        self.clock = clock

    # --- accepting jobs ------------------------------------------------------------------------
    def start(self, replica: str, uuid: str, version: str | None, destination: str | None,
              email: str | None, caller: dict | None) -> dict:
        """Accept ``caller``'s checkout of the bundle to ``destination`` (allowed, then checked
        writable); its record, written. The caller dispatches ``bundle_checkout_requested``.
        401 without a caller; 403 ``destination_not_allowed``, ``email_not_allowed``."""
        requested_by = caller.get("email") if isinstance(caller, dict) else None
        if not isinstance(requested_by, str) or not requested_by:
            raise errors.caller_required()
        storage = self.replicas[replica]
        scheme = storage.store.scheme
        bucket = destination_bucket(destination, scheme, storage.checkout_bucket)
        # Decided before the bucket is touched: a refusal says nothing of whether it exists.
        if bucket != storage.checkout_bucket and not destination_allowed(bucket, scheme,
                                                                         self.settings.checkout_destinations):
            raise errors.destination_not_allowed(storage.store.direct_url(bucket, ""))
        if bucket == storage.bucket:  # bundles/{uuid}.{version}/... would pollute the main bucket's layout
            raise errors.invalid_destination("the store's main bucket cannot be a checkout destination")
        if email is not None and email.lower() != requested_by.lower() and not caller.get("is_admin"):
            # Notices reach only whoever asked for them: the store is no mail relay for others.
            raise errors.email_not_allowed()
        version = live_bundle_version(storage, uuid, version)
        manifest = storage.read_json(Keys.bundle(uuid, version))
        self.check_writable(storage, bucket)
        record = self._new_record(new_uuid(), REQUEST, storage, uuid, version, bucket, email, manifest,
                                  requested_by)
        self._write(storage, record, if_absent=True)
        logger.info("checkout job %s accepted: bundle %s.%s of %s to %s (%d files) for %s", record["job_id"], uuid,
                    version, replica, bucket, record["files_total"], requested_by)
        return record

    def check_writable(self, storage: ReplicaStorage, bucket: str) -> None:
        """Write and delete a small object in ``bucket``; 400 ``invalid_destination`` if it cannot be."""
        store, probe = storage.store, f"{PROBE_PREFIX}{new_uuid()}"
        where = store.direct_url(bucket, "")
        try:
            store.put_bytes(bucket, probe, b"checking that a bundle checkout can write here", content_type="text/plain")
        except BlobStoreUnavailable:
            raise  # the store, not the bucket: a 503 worth retrying
        except BlobNotFound:
            raise errors.invalid_destination(f"the destination bucket {where} does not exist") from None
        except BlobStoreError as error:
            logger.info("destination %s refused a probe write: %s", where, error)
            raise errors.invalid_destination(f"the destination bucket {where} is not writable by the store") from None
        try:
            store.delete(bucket, probe)
        except BlobStoreError as error:  # a leftover probe is harmless
            logger.warning("could not delete the write probe %s%s: %s", where, probe, error)

    def _new_record(self, job_id: str, purpose: str, storage: ReplicaStorage, uuid: str, version: str,
                    bucket: str, email: str | None, manifest: dict, requested_by: str | None = None) -> dict:
        now = stamp(self.clock())
        return {"job_id": job_id, "purpose": purpose, "replica": storage.replica, "uuid": uuid, "version": version,
                "destination": bucket, "email": email, "requested_by": requested_by, "status": RUNNING, "location": None, "cause": None,
                "created": now, "updated": now, "finished": None, "files_total": len(manifest["files"]),
                "files_done": 0, "bytes_total": sum(entry["size"] for entry in manifest["files"]), "attempts": 0,
                "retry_at": None, "last_error": None, "emailed": None, "email_error": None}

    # --- reading jobs --------------------------------------------------------------------------
    def status(self, replica: str, job_id: str) -> tuple[dict, bool]:
        """The job's record, and whether this call ended it (a stalled job found: FAILED now)."""
        storage = self.replicas[replica]
        record = self._find(storage, job_id)
        if record is None:
            raise errors.checkout_job_not_found(replica, job_id)
        return self._unless_stalled(storage, record)

    def bundle_urls(self, replica: str, uuid: str, version: str | None, kind: str,
                    token: str | None) -> tuple[dict, dict | None]:
        """URLs of the bundle's files checked out into the checkout bucket, or how long to wait for
        them; and the record of a job this call started (to be dispatched), if any."""
        storage = self.replicas[replica]
        followed = decode_token(token) if token is not None else None
        version = live_bundle_version(storage, uuid, version)
        job_id = urls_job_id(replica, uuid, version, storage.checkout_bucket)
        if followed is not None and followed != job_id:
            raise illegal_token("the token belongs to the checkout of another bundle version")
        record = self._find(storage, job_id)
        if record is not None:
            record, _ = self._unless_stalled(storage, record)
            if record["status"] == SUCCEEDED and self._fresh(record):
                return self._ready(storage, record, kind), None
            if record["status"] == RUNNING:
                return self._pending(record), None
            if record["status"] == FAILED and followed is not None:
                raise errors.bundle_checkout_failed(uuid, version, record["cause"])
        # None yet, or a failed one asked for afresh, or one old enough for its copies to expire.
        manifest = storage.read_json(Keys.bundle(uuid, version))
        started = self._new_record(job_id, URLS, storage, uuid, version, storage.checkout_bucket, None, manifest)
        try:
            self._write(storage, started, if_absent=record is None)
        except BlobAlreadyExists:  # another request started it just now
            return self._pending(self._load(storage, job_id)), None
        logger.info("checkout job %s started for the URLs of bundle %s.%s in %s", job_id, uuid, version, replica)
        return self._pending(started), started

    def _fresh(self, record: dict) -> bool:
        return self.clock() - seconds_of(record["finished"]) < self.settings.checkout_bundle_urls_max_age

    def _pending(self, record: dict) -> dict:
        return {"status": "pending", "version": record["version"], "token": encode_token(record["job_id"]),
                "retry_after": self.settings.checkout_retry_after}

    def _ready(self, storage: ReplicaStorage, record: dict, kind: str) -> dict:
        manifest = storage.read_json(Keys.bundle(record["uuid"], record["version"]))
        prefix, bucket = checkout_prefix(record["uuid"], record["version"]), record["destination"]
        if kind == "direct":
            urls = {entry["name"]: storage.direct_url(prefix + entry["name"], bucket=bucket)
                    for entry in manifest["files"]}
        else:
            urls = {entry["name"]: storage.presigned_url(prefix + entry["name"], bucket=bucket)
                    for entry in manifest["files"]}
        return {"status": "ready", "version": record["version"], "urls": urls}

    def _unless_stalled(self, storage: ReplicaStorage, record: dict) -> tuple[dict, bool]:
        if record["status"] != RUNNING:
            return record, False
        last_sign = seconds_of(record["updated"])
        if record.get("retry_at"):
            last_sign = max(last_sign, seconds_of(record["retry_at"]))
        silent = self.clock() - last_sign
        if silent <= self.settings.checkout_job_stall_seconds:
            return record, False
        logger.error("checkout job %s of %s stalled: its record was not written for %.0f s; ended FAILED",
                     record["job_id"], storage.replica, silent)
        failure = JobFailure("stalled", f"no progress for {silent:.0f} s (the job was lost; start it again)")
        return self._end(storage, record, FAILED, cause=str(failure))

    # --- carrying jobs out -----------------------------------------------------------------------
    def is_last_attempt(self, attempt: int) -> bool:
        """Whether a failure of this delivery goes to the dead letters rather than to another attempt."""
        return attempt > len(self.settings.checkout_job_retry_delays)

    def run(self, replica: str, job_id: str, attempt: int) -> dict | None:
        """Carry out (or resume) the job; its record as it ends, or as found if it had ended already.
        None if there is no such job. Raises a passing error for the broker to retry, except on the
        last attempt, which ends the job FAILED."""
        storage = self.replicas[replica]
        record = self._find(storage, job_id)
        if record is None:
            logger.error("checkout job %s of %s has no record: nothing to do", job_id, replica)
            return None
        if record["status"] != RUNNING:
            return record
        record.update(attempts=record.get("attempts", 0) + 1, retry_at=None, updated=stamp(self.clock()))
        self._write(storage, record)
        run = _JobRun(self, storage, record)
        try:
            with JOBS_RUNNING.labels(replica).track_inprogress():
                run.copy_all()
        except JobEnded:
            return self._load(storage, job_id)
        except JobFailure as failure:
            return self._end(storage, run.progress(), FAILED, cause=str(failure))[0]
        except Exception as error:
            if self.is_last_attempt(attempt):
                logger.error("checkout job %s: attempt %d failed (%s), the last one: ended FAILED", job_id, attempt,
                             describe(error))
                failure = JobFailure("gave_up", f"gave up after {attempt} attempts ({error_code(error)}); "
                                                "start the checkout again later")
                return self._end(storage, run.progress(last_error=describe(error)), FAILED, cause=str(failure))[0]
            delay = self.settings.checkout_job_retry_delays[attempt - 1]
            try:  # the record says when the next attempt comes, so a long delay does not look stalled
                self.record_progress(storage, run.progress(retry_at=stamp(self.clock() + delay),
                                                              last_error=describe(error)))
            except JobEnded:
                return self._load(storage, job_id)
            raise
        logger.info("checkout job %s: this run copied %d of the %d files, the others were there and verified",
                    job_id, run.files_copied, record["files_total"])
        location = storage.store.direct_url(record["destination"], checkout_prefix(record["uuid"], record["version"]))
        return self._end(storage, run.progress(), SUCCEEDED, location=location)[0]

    # --- e-mail ------------------------------------------------------------------------------------
    @staticmethod
    def owes_email(record: dict | None) -> bool:
        return bool(record and record.get("email") and record["status"] in ENDED and record.get("emailed") is None)

    def may_email(self, record: dict) -> bool:
        """Whether the notice of this job is within its caller's hourly quota (counted as taken
        when it is). Every caller's quota is kept in the checkout bucket of the first replica, so
        it holds for both replicas and any number of checkout processes."""
        home = self.replicas[REPLICAS[0]]
        quota = MailQuota(home.store, home.checkout_bucket, self.settings.checkout_mail_per_hour, self.clock)
        return quota.admit(record.get("requested_by") or "", record["job_id"])

    def email_outcome(self, record: dict, outcome: str, error: str | None = None) -> dict:
        """Record that the notice was ``sent``, ``disabled``, ``rate_limited`` or ``failed``, so it
        is not sent again."""
        storage = self.replicas[record["replica"]]
        current = self._load(storage, record["job_id"])
        current.update(emailed=outcome, email_error=error)
        self._write(storage, current)
        JOB_EMAILS.labels(outcome).inc()
        return current

    # --- the record ----------------------------------------------------------------------------------
    def _find(self, storage: ReplicaStorage, job_id: str) -> dict | None:
        try:
            return json.loads(storage.store.get_bytes(storage.checkout_bucket, job_key(job_id)))
        except BlobNotFound:
            return None

    def _load(self, storage: ReplicaStorage, job_id: str) -> dict:
        record = self._find(storage, job_id)
        if record is None:
            raise errors.checkout_job_not_found(storage.replica, job_id)
        return record

    def _write(self, storage: ReplicaStorage, record: dict, if_absent: bool = False) -> None:
        data = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        storage.store.put_bytes(storage.checkout_bucket, job_key(record["job_id"]), data, content_type=JSON,
                                if_absent=if_absent)

    def record_progress(self, storage: ReplicaStorage, record: dict) -> None:
        """Write a RUNNING record's progress, unless someone ended the job meanwhile (JobEnded)."""
        current = self._find(storage, record["job_id"])
        if current is not None and current["status"] in ENDED:
            raise JobEnded(record["job_id"])
        self._write(storage, record)

    def _end(self, storage: ReplicaStorage, record: dict, status: str, *, location: str | None = None,
             cause: str | None = None) -> tuple[dict, bool]:
        """End the job ``status``, unless it has ended already; (the ended record, whether now)."""
        current = self._find(storage, record["job_id"])
        if current is not None and current["status"] in ENDED:
            return current, False
        now = self.clock()
        ended = {**record, "status": status, "location": location, "cause": cause, "updated": stamp(now),
                 "finished": stamp(now), "retry_at": None}
        self._write(storage, ended)
        outcome = status.lower()
        JOBS_ENDED.labels(storage.replica, outcome).inc()
        JOB_DURATION.labels(storage.replica, outcome).observe(max(0.0, now - seconds_of(record["created"])))
        if status == SUCCEEDED:
            logger.info("checkout job %s SUCCEEDED: %s (%d files)", record["job_id"], location, record["files_done"])
        else:
            logger.warning("checkout job %s FAILED: %s", record["job_id"], cause)
        return ended, True


class _JobRun:
    """One run of a job: the bundle's files copied ``DSS_CHECKOUT_JOB_CONCURRENCY`` at a time, a
    file already there and verified skipped, the record rewritten every heartbeat."""

    def __init__(self, jobs: CheckoutJobsAPI, storage: ReplicaStorage, record: dict):
        self.jobs, self.storage, self.record = jobs, storage, record
        self.store = storage.store
        self.files_done = 0
        self.files_copied = 0
        self.present: set[str] = set()
        self.error: BaseException | None = None
        self._stopped = eventlet.event.Event()

    def progress(self, **changes) -> dict:
        """The record with this run's progress (and ``changes``), not written."""
        return {**self.record, "files_done": self.files_done, "updated": stamp(self.jobs.clock()), **changes}

    def copy_all(self) -> None:
        record = self.record
        try:
            manifest = self.storage.read_json(Keys.bundle(record["uuid"], record["version"]))
        except NotFound:
            raise JobFailure("bundle_gone", f"bundle {record['uuid']}.{record['version']} is gone from replica "
                                            f"{record['replica']}") from None
        self.present = self._copies_present()
        pool = eventlet.GreenPool(max(1, self.jobs.settings.checkout_job_concurrency))
        heartbeat = eventlet.spawn(self._heartbeat)
        try:
            # Largest first: the long copies start at once and the small ones fill the other slots,
            # rather than a large one left to run alone at the end.
            for entry in sorted(manifest["files"], key=lambda entry: -entry["size"]):
                if self.error is not None:
                    break
                pool.spawn_n(tracing.carry(self._copy_file), entry)  # waits while the pool is full
            pool.waitall()
        finally:
            self._stopped.send(True)  # wait() answers None on a timeout, True once stopped
            heartbeat.wait()
        if self.error is not None:
            raise self.error

    def _copies_present(self) -> set[str]:
        """Keys already under the bundle's prefix in the destination, listed once: only those are
        looked at before copying (a first run into a fresh place makes no request per file)."""
        record = self.record
        bucket = record["destination"]
        try:
            return set(self.store.list_keys(bucket, checkout_prefix(record["uuid"], record["version"])))
        except BlobNotFound:
            raise self._destination_gone() from None
        except BlobStoreUnavailable:
            raise
        except BlobStoreError as error:
            raise self._destination_unusable(error) from None

    def _destination_gone(self) -> JobFailure:
        where = self.store.direct_url(self.record["destination"], "")
        return JobFailure("destination_gone", f"the destination bucket {where} no longer exists")

    def _destination_unusable(self, error: BaseException) -> JobFailure:
        where = self.store.direct_url(self.record["destination"], "")
        logger.warning("checkout job %s: the destination %s is not usable: %s", self.record["job_id"], where,
                       describe(error))
        return JobFailure("destination_unusable", f"the store could not write to the destination bucket {where}")

    def _heartbeat(self) -> None:
        interval = self.jobs.settings.checkout_job_heartbeat
        while not self._stopped.wait(interval):
            try:
                self.jobs.record_progress(self.storage, self.progress())
            except JobEnded as ended:
                self._fail(ended)
            except Exception as error:  # noqa: BLE001 - a missed beat is not the job's failure
                logger.warning("checkout job %s: could not record progress: %s", self.record["job_id"],
                               describe(error))

    def _fail(self, error: BaseException) -> None:
        # The first error stops the run; a permanent one (or the job ended elsewhere) decides
        # over a passing one that copies still in flight raised.
        if self.error is None or (isinstance(error, (JobFailure, JobEnded))
                                  and not isinstance(self.error, (JobFailure, JobEnded))):
            self.error = error

    def _copy_file(self, entry: dict) -> None:
        if self.error is not None:
            return
        try:
            copied = self._copy(entry)
        except Exception as error:  # noqa: BLE001 - handed to copy_all, which raises it
            self._fail(error)
            return
        self.files_done += 1
        self.files_copied += copied
        JOB_FILES.labels(self.storage.replica, "copied" if copied else "already_there").inc()
        if copied:
            self.jobs.metrics.bytes_copied(self.storage.replica, "bundle_checkout", entry["size"])

    def _copy(self, entry: dict) -> bool:
        """Copy one file unless a verified copy is there already; whether it copied."""
        record = self.record
        bucket, key = record["destination"], checkout_prefix(record["uuid"], record["version"]) + entry["name"]
        expected, size = Checksums.from_stored(entry), entry["size"]
        info = None
        if key in self.present:
            try:
                info = self.store.stat(bucket, key)
            except BlobNotFound:
                pass
        blob_key = expected.blob_key()
        if info is not None and verify_copy(self.store, bucket, key, expected, size, info,
                                            source=(self.storage.bucket, blob_key)):
            return False
        try:
            # The copy's metadata is the checkout's own, never the source blob's.
            copy_verified(self.store, self.storage.bucket, blob_key, bucket, key, expected, size,
                          content_type=entry["content-type"], metadata=copy_metadata(self.jobs.clock()),
                          part_size=self.jobs.settings.copy_part_bytes)
        except (BlobStoreUnavailable, BlobPreconditionFailed):
            raise  # passing: the store unreachable, or the blob replaced (repaired) mid-copy
        except BlobNotFound:
            self._judge_missing(bucket, blob_key, entry["name"])
            raise
        except BlobStoreError as error:
            raise self._destination_unusable(error) from None
        return True

    def _judge_missing(self, bucket: str, blob_key: str, name: str) -> None:
        """A copy found something missing: the destination bucket, or the source blob (JobFailure);
        neither, as far as can be seen now, leaves the error to be retried."""
        try:
            destination_there = self.store.bucket_exists(bucket)
            source_there = self.store.exists(self.storage.bucket, blob_key)
        except BlobStoreUnavailable:
            return
        except BlobStoreError as error:
            raise self._destination_unusable(error) from None
        if not destination_there:
            raise self._destination_gone()
        if not source_there:
            logger.error("checkout job %s: blob %s of file %s is missing from replica %s", self.record["job_id"],
                         blob_key, name, self.storage.replica)
            raise JobFailure("file_missing", f"the bytes of file {name} are missing from replica "
                                             f"{self.storage.replica}")
