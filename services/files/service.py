"""The files service: ingests files from staging buckets and answers file metadata queries.

PUT /files copies the staged object into the replica's main bucket under its content address,
after checking its bytes against the checksums the client declared. Sources outside the staging
areas of `DSS_INGEST_SOURCES` are refused before anything is read (``sources.py``). Copies above
`DSS_ASYNC_COPY_THRESHOLD` are accepted at once and finished by ``handle_file_upload_accepted``,
whose message is acknowledged only after the file metadata is written (or the failure is
scheduled for a retry or dead-lettered), so a crash mid-copy means the copy runs again rather
than being lost. One such copy runs per file version at a time (``claims.py``).
"""
import logging
import uuid as uuid_module


from shared import events
from shared.checksums import Checksums
from shared.entrypoints import EventDispatcher, rpc
from shared.exceptions import Conflict, Forbidden, InvalidParameter, InvalidRequest, NotFound, Unprocessable
from shared.identifiers import Keys
from shared.metrics import Metrics, Progress
from shared.tracing import Tracing
from shared.retry import retrying_event_handler
from shared.schemas import FileCreated, FileUploadAccepted, schema_instance

from services.files.dependencies import FileStore
from services.files.exceptions import file_already_exists, source_changed
from services.files.metadata import file_identity, file_metadata_doc
from services.files.sources import parse_source_url

logger = logging.getLogger(__name__)

# Errors that another attempt of a background copy cannot cure (more than a handler of another
# service's events gives up on: shared.retry.PERMANENT_ERRORS).
PERMANENT_COPY_ERRORS = (Unprocessable, Conflict, InvalidParameter, InvalidRequest, NotFound, Forbidden)


def _task_id(uuid: str, version: str, source_url: str, checksums: Checksums) -> str:
    # Deterministic, so a retried PUT names the same background task.
    name = "|".join([uuid, version, source_url, checksums.blob_key()])
    return str(uuid_module.uuid5(uuid_module.NAMESPACE_URL, name))


class FilesService:
    name = "files"

    store = FileStore()
    metrics = Metrics()
    tracing = Tracing()
    dispatch = EventDispatcher()

    @rpc
    def put_file(self, uuid, version, source_url, creator_uid, caller=None):
        source = self.store.ingest.inspect_source(source_url)
        checksums = source.checksums()
        doc = file_metadata_doc(version, creator_uid, source.content_type, source.size, checksums)
        if source.size > self.store.settings.async_copy_threshold:
            # A large repeat must not start a second background copy: look before accepting.
            existing = self.store.files.find(source.replica, uuid, version)
            if existing is not None:
                return self._repeat(source.replica, uuid, doc, existing)
            return self._accept(source, uuid, doc, _task_id(uuid, version, source_url, checksums))
        return self._ingest(source, uuid, doc)

    @retrying_event_handler("files", events.FILE_UPLOAD_ACCEPTED, give_up_on=PERMANENT_COPY_ERRORS,
                            delays_setting="files_retry_delays")
    def handle_file_upload_accepted(self, payload):
        """Finish an accepted copy. Transient failures retry with backoff on the broker; permanent
        ones (the source changed or vanished, its bytes do not match) are dead-lettered at once for
        an operator to inspect (`dss-ops dead-letters`); HEAD stays 404 for the client. The claim
        of the copy is released when the file is written or the copy is given up, not while a
        retry is pending."""
        accepted = schema_instance(FileUploadAccepted).load(payload)
        replica, _, _ = parse_source_url(accepted["source_url"])
        try:
            self._finish_background_copy(accepted)
        except PERMANENT_COPY_ERRORS:
            # Given up: a repeat of the PUT may start over (with a corrected source, say).
            self.store.claims.release(replica, accepted["uuid"], accepted["version"], accepted["task_id"])
            raise
        self.store.claims.release(replica, accepted["uuid"], accepted["version"], accepted["task_id"])

    @rpc
    def head_file(self, replica, uuid, version=None):
        return self.store.files.get(replica, uuid, version)

    @rpc
    def get_file(self, replica, uuid, version=None, directurl=False, content_disposition=None):
        doc = self.store.files.get(replica, uuid, version)
        return {**doc, "url": self.store.files.blob_url(replica, doc, directurl, content_disposition)}

    @rpc
    def health(self):
        return self.store.health()

    # --- helpers ---------------------------------------------------------------------------------
    def _accept(self, source, uuid, doc, task_id):
        """Answer 202 for a large copy, starting it unless one of this file version is under way."""
        version = doc["version"]
        current = self.store.claims.claim(source.replica, uuid, doc, task_id)
        if current is not None:
            if current.file != file_identity(doc):
                raise file_already_exists(uuid, version, "is being written")
            logger.info("%s is being copied already as task %s", source.url, current.task_id)
            return {"status": "accepted", "version": version, "task_id": current.task_id}
        try:
            self.dispatch(events.FILE_UPLOAD_ACCEPTED, schema_instance(FileUploadAccepted).dump({
                "uuid": uuid, "version": version, "source_url": source.url, "creator_uid": doc["creator_uid"],
                "task_id": task_id, "checksums": Checksums.from_stored(doc).as_api()}))
        except Exception:
            # Not on its way: without the claim, a repeat starts it.
            self.store.claims.release(source.replica, uuid, version, task_id)
            raise
        logger.info("accepted %s (%d bytes) for background copy as task %s", source.url, source.size, task_id)
        return {"status": "accepted", "version": version, "task_id": task_id}

    def _finish_background_copy(self, accepted):
        source = self.store.ingest.inspect_source(accepted["source_url"])
        checksums = Checksums.parse(accepted["checksums"])
        if source.checksums() != checksums:
            raise source_changed(f"{accepted['source_url']} was re-tagged after it was accepted")
        doc = file_metadata_doc(accepted["version"], accepted["creator_uid"], source.content_type, source.size,
                                checksums)
        existing = self.store.files.find(source.replica, accepted["uuid"], accepted["version"])
        if existing is not None:
            self._repeat(source.replica, accepted["uuid"], doc, existing)
        else:
            self._ingest(source, accepted["uuid"], doc)

    def _ingest(self, source, uuid, doc):
        checksums = Checksums.from_stored(doc)
        # Only objects read in several chunks are long enough to be worth progress lines.
        progress = Progress(f"checksumming {source.url}", source.size) \
            if source.size > self.store.settings.stream_chunk_bytes else None

        def on_chunk(count):
            self.metrics.bytes_hashed(source.replica, count)
            if progress:
                progress.advance(count)

        with self.metrics.copy_in_progress():
            if self.store.ingest.ingest_blob(source, checksums, on_chunk=on_chunk):
                self.metrics.bytes_copied(source.replica, "blob", source.size)
        existing = self.store.files.put(source.replica, uuid, doc)
        if existing is not None:  # a concurrent PUT of the same uuid+version won the race
            return self._repeat(source.replica, uuid, doc, existing)
        self.metrics.object_written(source.replica, "file")
        self._file_created(source.replica, uuid, doc)
        return {"status": "created", "version": doc["version"]}

    def _repeat(self, replica, uuid, doc, existing):
        if file_identity(existing) != file_identity(doc):
            raise file_already_exists(uuid, doc["version"], "already exists")
        self._file_created(replica, uuid, existing)  # at-least-once: a retried write re-announces itself
        return {"status": "exists", "version": doc["version"]}

    def _file_created(self, replica, uuid, doc):
        self.dispatch(events.FILE_CREATED, schema_instance(FileCreated).dump({
            "replica": replica, "uuid": uuid, "version": doc["version"], "key": Keys.file(uuid, doc["version"]),
            "blob_key": Checksums.from_stored(doc).blob_key(), "size": doc["size"],
            "content_type": doc["content-type"], "metadata": doc}))
