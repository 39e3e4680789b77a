"""File reads: GET /files and DRS access answered with presigned URLs of verified copies of
blobs in a replica's checkout bucket. File metadata and bundle manifests are read from each
replica's main bucket; a blob's copy is made on demand (inline up to ``DSS_CHECKOUT_INLINE_BYTES``,
else in the background after a ``file_checkout_requested`` event, while the client comes back with
a token), warmed on ``file_created`` for small files and refreshed when read near the end of its
``lifetime``; the sweeper (``sweeping``) deletes it once expired.

A background copy under way is marked by ``copying/blobs/...`` in the checkout bucket (JSON
``{reason, requested, deadline}``), so that clients coming back meanwhile do not start another; the
copying worker removes it, and one past its deadline (a lost copy) is replaced by the next request
and deleted by the sweeper.

What a process has seen is shared by its workers (``CheckoutState``): file documents for good (a
version never changes), a file's latest version and a copy's freshness for
``DSS_CHECKOUT_CACHE_SECONDS``. A new version is announced by ``file_created`` or
``object_replicated``, which make every checkout process drop an older latest version it knew.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Callable

import eventlet
from prometheus_client import Counter, Histogram

from shared import tracing
from shared.blobstore import BlobAlreadyExists, BlobNotFound, BlobStoreUnavailable
from shared.concurrency import ExpiringCache, SingleFlight
from shared.config import Settings
from shared.exceptions import NotFound, Unavailable, Unprocessable, bundle_not_found
from shared.identifiers import Keys, REPLICAS
from shared.storage import JSON, ReplicaStorage, Replicas

from services.checkout.copies import copy_verified
from services.checkout.file_reads import drs
from services.checkout.file_reads.blobs import Blob
from services.checkout.file_reads.tokens import CheckoutToken
from services.checkout.lifetime import CopyState, Lifetime, Verdict, copy_metadata, parse_rfc3339, rfc3339

logger = logging.getLogger(__name__)

MARKER_PREFIX = "copying/"
# How long a background copy may take before the next request may start another: a floor, plus
# the size at a rate any cloud's server-side copy beats.
MARKER_MIN_SECONDS = 900
MARKER_RATE_BYTES = 20 * 1024 * 1024
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8080"  # the gateway of `make up`, when DSS_PUBLIC_URL is empty

COPIES = Counter("dss_checkout_copies_total", "Copies made into a checkout bucket, by why they were made: "
                 "inline (a read), background (a large read), warm (a new file), refresh (a copy near its expiry).",
                 ["replica", "reason"])
COPIED_BYTES = Counter("dss_checkout_bytes_copied_total", "Bytes copied into a checkout bucket.",
                       ["replica", "reason"])
COPY_SECONDS = Histogram("dss_checkout_copy_seconds", "Time to make and verify one checkout copy.",
                         ["replica", "reason"],
                         buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800))
READS = Counter("dss_checkout_reads_total", "GET /files and DRS access answers: ready (a URL) or pending "
                "(come back later).", ["replica", "outcome"])


def marker_key(blob_key: str) -> str:
    return MARKER_PREFIX + blob_key


def marker_deadline(storage: ReplicaStorage, blob_key: str) -> float | None:
    """Until when the background copy of ``blob_key`` requested last may run; None without a
    (readable) marker."""
    try:
        marker = json.loads(storage.store.get_bytes(storage.checkout_bucket, marker_key(blob_key)))
    except BlobNotFound:
        return None
    except ValueError:  # unreadable: treat as lost
        return None
    return parse_rfc3339(marker.get("deadline")) if isinstance(marker, dict) else None


@dataclasses.dataclass
class CheckoutState:
    """What one checkout process has seen, shared by its workers."""
    cache_seconds: float
    clock: Callable[[], float] = time.time
    copies: ExpiringCache = None       # (replica, blob key) -> True: a fresh copy, seen lately
    requested: ExpiringCache = None    # (replica, blob key) -> True: a background copy was requested
    latest: ExpiringCache = None       # (replica, uuid) -> the latest version, seen lately
    announced: ExpiringCache = None    # (replica, uuid) -> the newest version file_created & co. announced
    documents: ExpiringCache = None    # (replica, uuid, version) -> the file document (never changes)
    flights: SingleFlight = None
    sweep_cursors: dict = None         # replica -> the key the sweeper's next run starts after

    def __post_init__(self):
        self.copies = ExpiringCache(self.clock)
        self.requested = ExpiringCache(self.clock)
        self.latest = ExpiringCache(self.clock)
        self.announced = ExpiringCache(self.clock)
        self.documents = ExpiringCache(self.clock, max_entries=20_000)
        self.flights = SingleFlight()
        self.sweep_cursors = {}


@dataclasses.dataclass(frozen=True)
class Checkout:
    """The outcome of asking for a blob's checkout copy: ``ready`` to serve now, and the payload of
    a ``file_checkout_requested`` event to dispatch (a background copy or refresh), if any."""
    ready: bool
    copy_request: dict | None = None


class FileReadsAPI:
    def __init__(self, replicas: Replicas, settings: Settings, state: CheckoutState):
        self.replicas = replicas
        self.settings = settings
        self.state = state
        self.clock = state.clock
        self.lifetime = Lifetime.from_settings(settings)

    # --- file metadata ---------------------------------------------------------------------------
    def file_metadata(self, replica: str, uuid: str, version: str | None = None) -> dict:
        """The file document plus ``uuid``, as ``files.head_file`` answers (the latest version when
        ``version`` is None); ``NotFound``. Each lookup runs once at a time per process: a read
        arriving while the warming of a new file looks the file up shares its answer. While the latest
        version is listed, the document of the newest one announced (most likely the latest) is read
        alongside, so the usual answer costs one round trip less."""
        storage = self.replicas[replica]
        if version is None:
            self._read_announced_document(replica, uuid)
            version = self.latest_version(replica, uuid)
        key = (replica, uuid, version)
        doc = self.state.documents.get(key)
        if doc is None:
            doc = self.state.flights.run(("document",) + key, lambda: self._read_document(storage, uuid, version))
        return {**doc, "uuid": uuid}

    def _read_announced_document(self, replica: str, uuid: str) -> None:
        """Start reading the document of the version announced last, unless it is known already or
        the latest version needs no listing (nothing would run alongside)."""
        key = (replica, uuid)
        announced = self.state.announced.get(key)
        if announced is None or self._trusted_latest(key) is not None:
            return
        document = (replica, uuid, announced)
        if self.state.documents.get(document) is None and not self.state.flights.running(("document",) + document):
            eventlet.spawn_n(tracing.carry(self._prime), self.file_metadata, replica, uuid, announced)

    def _read_document(self, storage: ReplicaStorage, uuid: str, version: str) -> dict:
        doc = storage.find_json(Keys.file(uuid, version))
        if doc is None:
            raise NotFound(f"no file {uuid} version {version} in replica {storage.replica}")
        self.state.documents.put((storage.replica, uuid, version), doc, until=float("inf"))
        return doc

    def remember_document(self, replica: str, uuid: str, version: str, blob: Blob, document: dict | None) -> bool:
        """Keep the document of a new file version that an event carried, if it is that version's
        and names that blob (anything else is read from the bucket when needed)."""
        if not isinstance(document, dict) or document.get("version") != version:
            return False
        try:
            if Blob.of_file(document) != blob:
                return False
        except (KeyError, TypeError, ValueError, Unprocessable):
            return False
        self.state.documents.put((replica, uuid, version), document, until=float("inf"))
        return True

    def _trusted_latest(self, key: tuple[str, str]) -> str | None:
        """The latest version listed lately, unless a newer one was announced since."""
        cached, announced = self.state.latest.get(key), self.state.announced.get(key)
        return cached if cached is not None and (announced is None or announced <= cached) else None

    def latest_version(self, replica: str, uuid: str) -> str:
        key = (replica, uuid)
        cached = self._trusted_latest(key)
        if cached is not None:
            return cached
        return self.state.flights.run(("latest",) + key, lambda: self._list_latest_version(replica, uuid))

    def _list_latest_version(self, replica: str, uuid: str) -> str:
        storage, key = self.replicas[replica], (replica, uuid)
        listed_at = self.clock()
        versions, _ = storage.versions(Keys.file_prefix(uuid))  # tombstones do not apply to files
        if not versions:
            raise NotFound(f"no file {uuid} in replica {replica}")
        version = versions[-1]
        announced = self.state.announced.get(key)
        # A listing that missed a version announced meanwhile is answered but not kept.
        if announced is None or announced <= version:
            self.state.latest.put(key, version, until=listed_at + self.settings.checkout_cache_seconds)
        return version

    def announce_version(self, replica: str, uuid: str, version: str) -> None:
        """That version of the file was just written (or replicated) into ``replica``: a latest
        version known before it is no longer trusted. Remembered for longer than anything is cached."""
        key = (replica, uuid)
        newest = max(version, self.state.announced.get(key) or version)
        self.state.announced.put(key, newest, until=self.clock() + 2 * self.settings.checkout_cache_seconds + 60)
        cached = self.state.latest.get(key)
        if cached is not None and cached < newest:
            self.state.latest.forget(key)

    def bundle_manifest(self, replica: str, uuid: str, version: str | None = None) -> tuple[str, dict]:
        """(version, manifest) of a live bundle version (the latest live one when ``version`` is
        None); ``NotFound`` when missing or tombstoned."""
        storage = self.replicas[replica]
        live = storage.live_version(Keys.bundle_prefix(uuid), version)
        if live is None:
            raise bundle_not_found(replica, uuid, version)
        return live, storage.read_json(Keys.bundle(uuid, live))

    # --- reading a file (GET /files, DRS access) -------------------------------------------------
    def read_file(self, replica: str, uuid: str, version: str | None, directurl: bool,
                  content_disposition: str | None, token: str | None) -> tuple[dict, dict | None]:
        """The answer of ``get_file`` and the copy request to dispatch, if any."""
        now = self.clock()
        waiting = CheckoutToken.decode(token, now) if token is not None else None
        if waiting is not None:
            waiting.check_request(replica, uuid, version)
            version = waiting.version  # every round serves the version the first one found
        metadata = self.file_metadata(replica, uuid, version)
        blob = Blob.of_file(metadata)
        checkout = self.check_out(replica, blob)
        if checkout.ready:
            READS.labels(replica, "ready").inc()
            if waiting is not None:
                logger.info("served %s of %s after %d round(s), %.0f s", blob.key, replica, waiting.attempt,
                            waiting.waited(now))
            return {"status": "ready", "metadata": metadata,
                    "url": self.url(replica, blob, directurl, content_disposition)}, checkout.copy_request
        READS.labels(replica, "pending").inc()
        following = waiting.next() if waiting else CheckoutToken.first(replica, uuid, metadata["version"], now)
        return {"status": "pending", "metadata": metadata, "token": following.encode(),
                "retry_after": self.settings.checkout_retry_after}, checkout.copy_request

    def access_file(self, replica: str, uuid: str, version: str) -> tuple[dict, dict | None]:
        """The answer of ``drs_access`` for a file version in ``replica``, and the copy request."""
        metadata = self.file_metadata(replica, uuid, version)
        blob = Blob.of_file(metadata)
        checkout = self.check_out(replica, blob)
        if checkout.ready:
            READS.labels(replica, "ready").inc()
            return {"status": "ready", "url": self.url(replica, blob)}, checkout.copy_request
        READS.labels(replica, "pending").inc()
        return {"status": "pending", "retry_after": self.settings.checkout_retry_after}, checkout.copy_request

    def url(self, replica: str, blob: Blob, directurl: bool = False, content_disposition: str | None = None) -> str:
        storage = self.replicas[replica]
        if directurl:
            return storage.direct_url(blob.key, bucket=storage.checkout_bucket)
        return storage.presigned_url(blob.key, content_disposition=content_disposition,
                                     bucket=storage.checkout_bucket)

    def check_out(self, replica: str, blob: Blob) -> Checkout:
        """Make sure ``blob`` can be served from ``replica``'s checkout bucket: at once when a fresh
        copy is known or is being made in this process, else after one stat; a missing copy up to
        ``DSS_CHECKOUT_INLINE_BYTES`` is made now, a larger one requested in the background."""
        flight_key = (replica, blob.key)
        if self.state.copies.get(flight_key):
            return Checkout(True)
        if self.state.flights.running(flight_key):  # e.g. the warming of a file just created
            self.ensure_copy(replica, blob, "inline")
            return Checkout(True)
        verdict = self.look(replica, blob)
        inline = blob.size <= self.settings.checkout_inline_bytes
        if verdict.state is CopyState.FRESH:
            return Checkout(True)
        if verdict.state is CopyState.DUE:
            if not inline:
                return Checkout(True, self.request_copy(replica, blob, "refresh"))
            try:
                self.ensure_copy(replica, blob, "refresh", verdict)
            except Exception:  # noqa: BLE001 - the copy there is still good for days: serve it
                logger.warning("could not refresh the checkout copy of %s in %s; serving the current one",
                               blob.key, replica, exc_info=True)
            return Checkout(True)
        if inline:
            self.ensure_copy(replica, blob, "inline", verdict)
            return Checkout(True)
        return Checkout(False, self.request_copy(replica, blob, "read"))

    # --- copies ----------------------------------------------------------------------------------
    def look(self, replica: str, blob: Blob) -> Verdict:
        """What can be done with the checkout copy of ``blob``: from this process's memory if it
        saw it fresh lately, else from one stat."""
        flight_key = (replica, blob.key)
        if self.state.copies.get(flight_key):
            return Verdict(CopyState.FRESH, why="seen lately")
        storage = self.replicas[replica]
        try:
            info = storage.store.stat(storage.checkout_bucket, blob.key)
        except BlobNotFound:
            info = None
        now = self.clock()
        verdict = self.lifetime.judge(info, blob, now)
        if verdict.state is CopyState.FRESH:
            self._remember_fresh(replica, blob, verdict, now)
        return verdict

    def ensure_copy(self, replica: str, blob: Blob, reason: str, verdict: Verdict | None = None,
                    look_first: bool = True) -> Verdict:
        """Copy ``blob`` into the checkout bucket unless a fresh copy is there; one copy at a time per
        blob in this process (a caller arriving meanwhile waits for it). ``verdict``: what a look
        just found, so that the copy does not stat again. ``look_first`` False (a blob most likely
        not there yet): copy without looking (a copy already there is made again, which costs one
        request as the look would)."""
        def copy_unless_fresh() -> Verdict:
            if self.state.copies.get((replica, blob.key)):
                return Verdict(CopyState.FRESH, why="seen lately")
            current = verdict or (self.look(replica, blob) if look_first else None)
            if current is not None and current.state is CopyState.FRESH:
                return current
            return self._copy(replica, blob, reason)

        return self.state.flights.run((replica, blob.key), copy_unless_fresh)

    def _copy(self, replica: str, blob: Blob, reason: str) -> Verdict:
        """A server-side copy, judged from the store's answer (``copy_verified``): for a small blob
        one request, the look included."""
        storage = self.replicas[replica]
        now = self.clock()
        started = time.perf_counter()
        try:
            copy_verified(storage.store, storage.bucket, blob.key, storage.checkout_bucket, blob.key,
                          blob.checksums, blob.size, content_type=blob.content_type, metadata=copy_metadata(now))
        except BlobNotFound:
            logger.warning("blob %s is not in replica %s (yet): nothing to check out", blob.key, replica)
            raise Unavailable(f"the file's bytes are not in replica {replica} yet", "blob_unavailable") from None
        elapsed = time.perf_counter() - started
        COPIES.labels(replica, reason).inc()
        COPIED_BYTES.labels(replica, reason).inc(blob.size)
        COPY_SECONDS.labels(replica, reason).observe(elapsed)
        logger.info("checked out %s (%d bytes) in %s (%s) in %.3f s", blob.key, blob.size, replica, reason, elapsed)
        verdict = self.lifetime.new_copy(blob, now)
        self._remember_fresh(replica, blob, verdict, self.clock())
        return verdict

    def _remember_fresh(self, replica: str, blob: Blob, verdict: Verdict, now: float) -> None:
        until = now + self.settings.checkout_cache_seconds
        if verdict.refresh_at is not None:
            until = min(until, verdict.refresh_at)
        self.state.copies.put((replica, blob.key), True, until)

    # --- background copies -----------------------------------------------------------------------
    def request_copy(self, replica: str, blob: Blob, reason: str) -> dict | None:
        """The ``file_checkout_requested`` payload for a background copy of ``blob``, or None when
        one is under way already (its marker is there and within its deadline)."""
        flight_key = (replica, blob.key)
        if self.state.requested.get(flight_key):
            return None
        storage = self.replicas[replica]
        now = self.clock()
        deadline = now + MARKER_MIN_SECONDS + blob.size / MARKER_RATE_BYTES
        marker = json.dumps({"reason": reason, "requested": rfc3339(now), "deadline": rfc3339(deadline)}).encode()
        try:
            storage.store.put_bytes(storage.checkout_bucket, marker_key(blob.key), marker, content_type=JSON,
                                    if_absent=True)
        except BlobAlreadyExists:
            existing = marker_deadline(storage, blob.key)
            if existing is not None and existing > now:
                self.state.requested.put(flight_key, True, min(existing, now + self.settings.checkout_cache_seconds))
                return None
            logger.warning("the background copy of %s in %s requested earlier did not finish in time; "
                           "requesting it again", blob.key, replica)
            storage.store.put_bytes(storage.checkout_bucket, marker_key(blob.key), marker, content_type=JSON)
        self.state.requested.put(flight_key, True, min(deadline, now + self.settings.checkout_cache_seconds))
        return {"replica": replica, "blob_key": blob.key, "size": blob.size, "content_type": blob.content_type,
                "reason": reason}

    def withdraw_copy_request(self, replica: str, blob_key: str) -> None:
        """The request could not be dispatched: remove its marker, so the next read asks again."""
        storage = self.replicas[replica]
        self.state.requested.forget((replica, blob_key))
        storage.store.delete(storage.checkout_bucket, marker_key(blob_key))

    def copy_requested(self, request: dict) -> Verdict:
        """Carry out a ``file_checkout_requested`` copy (idempotent: a fresh copy is left alone)."""
        replica = request["replica"]
        blob = Blob.from_key(request["blob_key"], request["size"], request["content_type"])
        verdict = self.ensure_copy(replica, blob, "refresh" if request["reason"] == "refresh" else "background")
        storage = self.replicas[replica]
        storage.store.delete(storage.checkout_bucket, marker_key(blob.key))
        self.state.requested.forget((replica, blob.key))
        return verdict

    def warm(self, replica: str, uuid: str, version: str, blob: Blob, document: dict | None = None) -> Verdict | None:
        """Copy a new file's blob now if it is small enough to be worth it (``DSS_CHECKOUT_WARM_BYTES``),
        and meanwhile look the file up as its first read will (latest version and document): a read
        arriving during the warming shares these lookups and the copy instead of waiting for its own.
        ``document``: the file document the event carried, kept instead of read back."""
        if blob.size > self.settings.checkout_warm_bytes:
            return None
        lookups = [eventlet.spawn(tracing.carry(self._prime), self.latest_version, replica, uuid)]
        if not self.remember_document(replica, uuid, version, blob, document):
            lookups.append(eventlet.spawn(tracing.carry(self._prime), self.file_metadata, replica, uuid, version))
        try:
            return self.ensure_copy(replica, blob, "warm", look_first=False)
        finally:
            for lookup in lookups:
                lookup.wait()

    @staticmethod
    def _prime(lookup: Callable, *args) -> None:
        try:
            lookup(*args)
        except Exception:  # noqa: BLE001 - only a head start for a read, which looks again
            logger.warning("looking ahead: %s%s failed", lookup.__name__, args, exc_info=True)

    # --- DRS -------------------------------------------------------------------------------------
    def drs_object(self, replica: str, object_id: str, version: str | None, base_url: str | None) -> dict:
        """The DRS object of a file (looked up first) or bundle (see ``drs``)."""
        uuid, version = drs.parse_object_id(object_id, version)
        host = drs.host_of(base_url or self.settings.public_url or DEFAULT_PUBLIC_URL)
        try:
            metadata = self.file_metadata(replica, uuid, version)
        except NotFound:
            try:
                bundle_version, manifest = self.bundle_manifest(replica, uuid, version)
            except NotFound:
                raise NotFound(f"no file or bundle {object_id} in replica {replica}", "not_found") from None
            return drs.bundle_object(uuid, bundle_version, manifest, host)
        return drs.file_object(metadata, host, self._access_methods(replica, metadata))

    def _access_methods(self, replica: str, metadata: dict) -> list[dict]:
        """One per replica holding this version, ``replica``'s first; with a URL where a fresh copy is."""
        blob = Blob.of_file(metadata)
        order = [replica] + [other for other in REPLICAS if other != replica]

        def method(name: str) -> dict | None:
            try:
                if name != replica:
                    self.file_metadata(name, metadata["uuid"], metadata["version"])
                fresh = self.look(name, blob).state is CopyState.FRESH
            except NotFound:
                return None
            except Unavailable as error:  # another replica out of reach: offer what can be served
                if name == replica:
                    raise
                logger.warning("DRS: replica %s left out of the access methods of %s: %s", name, blob.key, error)
                return None
            url = self.url(name, blob) if fresh else None
            region = self.settings.s3_region if name == "aws" else None
            return drs.access_method(name, metadata["version"], region, url)

        return [found for found in eventlet.GreenPool(len(order)).imap(tracing.carry(method), order)
                if found is not None]

    def drs_access(self, object_id: str, access_id: str, version: str | None) -> tuple[dict, dict | None]:
        uuid, version = drs.parse_object_id(object_id, version)
        access_replica, access_version = drs.parse_access_id(access_id)
        if version not in (None, access_version):
            raise NotFound(f"no access method {access_id} for object {object_id}", "not_found")
        return self.access_file(access_replica, uuid, access_version)

    # --- health ----------------------------------------------------------------------------------
    def health(self) -> dict:
        report = {name: _bucket_health(storage) for name, storage in self.replicas.items()}
        return {"ok": all(state["ok"] for state in report.values()), **report}


def _bucket_health(storage: ReplicaStorage) -> dict:
    try:
        missing = [bucket for bucket in (storage.bucket, storage.checkout_bucket)
                   if not storage.store.bucket_exists(bucket)]
    except BlobStoreUnavailable as error:
        return {"ok": False, "detail": f"unreachable: {error}"}
    if missing:
        return {"ok": False, "detail": f"bucket(s) {', '.join(missing)} missing"}
    return {"ok": True, "detail": f"buckets {storage.bucket}, {storage.checkout_bucket}"}
