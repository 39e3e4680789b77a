"""The ``gcp`` replica: Google Cloud Storage (or fake-gcs-server) through google-cloud-storage."""
from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import logging
import uuid
from typing import Callable, Iterable, Iterator, Mapping
from urllib.parse import quote

import eventlet
import google.auth
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
import requests
import urllib3.exceptions
from google.api_core import exceptions as api_exceptions
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption
from google.cloud.storage.retry import DEFAULT_RETRY

from shared import tracing
from shared.sessions import read_environment_once
from shared.blobstore.base import (BlobAlreadyExists, BlobInfo, BlobNotFound, BlobPreconditionFailed, BlobStore,
                                   BlobStoreError, BlobStoreUnavailable, ChunkReader)

logger = logging.getLogger(__name__)

# Resumable upload chunks must be multiples of 256 KiB.
RESUMABLE_CHUNK_MULTIPLE = 256 * 1024
# (connect, read) seconds per request.
TIMEOUT = (3.05, 60)
# The library's default keeps retrying a refused connection for two minutes; five seconds of
# retries rides out a blip yet reports an unreachable endpoint in seconds.
RETRY = DEFAULT_RETRY.with_timeout(5.0)
# Parallel uploads write their parts here, in the same bucket (compose needs that), and delete
# them once composed. Keys outside the DSS layout: readers and the replicator ignore them.
COMPOSE_PREFIX = "tmp/compose/"
MAX_COMPOSE_SOURCES = 32  # GCS's limit per compose request

_TRANSIENT = (api_exceptions.ServerError, api_exceptions.TooManyRequests, api_exceptions.RetryError,
              requests.RequestException, ConnectionError, http.client.HTTPException, urllib3.exceptions.HTTPError,
              google.auth.exceptions.TransportError)


@contextlib.contextmanager
def _errors(what: str, precondition: type[BlobStoreError] = BlobPreconditionFailed):
    """Translate google-cloud-storage and transport errors into the blob-store errors."""
    try:
        yield
    except api_exceptions.NotFound as error:
        raise BlobNotFound(f"{what}: {error.message}") from error
    except api_exceptions.PreconditionFailed as error:
        raise precondition(f"{what}: {error.message}") from error
    except _TRANSIENT as error:
        raise BlobStoreUnavailable(f"{what}: {error}") from error
    except (api_exceptions.GoogleAPICallError, DataCorruption) as error:
        raise BlobStoreError(f"{what}: {error}") from error


class GCSBlobStore(BlobStore):
    replica = "gcp"
    scheme = "gs"

    def __init__(self, client: storage.Client, endpoint: str = "", list_page_size: int = 1000):
        self._client = client
        # Set only for an emulator: it cannot sign URLs (see presigned_url).
        self._endpoint = endpoint.rstrip("/")
        self.list_page_size = list_page_size

    @classmethod
    def from_settings(cls, settings, **kwargs) -> "GCSBlobStore":
        endpoint = settings.gcs_endpoint
        if endpoint:
            client = storage.Client(project=settings.gcp_project,
                                    credentials=google.auth.credentials.AnonymousCredentials(),
                                    client_options={"api_endpoint": endpoint})
        else:
            client = storage.Client(project=settings.gcp_project or None)
        read_environment_once(client._http)  # the client's own session (credentials, mTLS), made now
        return cls(client, endpoint, **kwargs)

    @property
    def client(self) -> storage.Client:
        """The underlying google-cloud-storage client, for what the interface does not cover (benchmarks)."""
        return self._client

    def _blob(self, bucket: str, key: str, **kwargs) -> storage.Blob:
        return self._client.bucket(bucket).blob(key, **kwargs)

    # --- reading -----------------------------------------------------------------------------
    def stat(self, bucket: str, key: str) -> BlobInfo:
        with _errors(f"stat gs://{bucket}/{key}"):
            blob = self._client.bucket(bucket).get_blob(key, timeout=TIMEOUT, retry=RETRY)
        if blob is None:
            raise BlobNotFound(f"gs://{bucket}/{key} does not exist")
        return self._info(key, blob)

    @staticmethod
    def _info(key: str, blob) -> BlobInfo:
        return BlobInfo(
            key=key,
            size=blob.size,
            content_type=blob.content_type,
            metadata={k.lower(): v for k, v in (blob.metadata or {}).items()},
            revision=str(blob.generation),
            # The API gives the big-endian CRC32C in base64; the DSS writes it as 8 hex digits.
            crc32c=base64.b64decode(blob.crc32c).hex() if blob.crc32c else None,
            last_modified=blob.updated,
        )

    def get_tags(self, bucket: str, key: str) -> dict[str, str]:
        self.stat(bucket, key)  # GCS has no object tags; still report a missing object
        return {}

    def get_bytes(self, bucket: str, key: str) -> bytes:
        with _errors(f"get gs://{bucket}/{key}"):
            return self._blob(bucket, key).download_as_bytes(timeout=TIMEOUT, retry=RETRY)

    def iter_chunks(self, bucket: str, key: str, chunk_size: int, revision: str | None = None) -> Iterator[bytes]:
        """Ranged reads pinned to the generation seen first: a slow consumer holds no connection
        open, and a replaced object fails instead of mixing two contents."""
        info = self.stat(bucket, key)
        if revision is not None and info.revision != revision:
            raise BlobPreconditionFailed(f"gs://{bucket}/{key} is no longer revision {revision}")
        return (self._read_range(bucket, key, start, min(start + chunk_size, info.size), info.revision)
                for start in range(0, info.size, chunk_size))

    def _read_range(self, bucket: str, key: str, start: int, end: int, revision: str) -> bytes:
        # Reading the pinned generation (fake-gcs-server ignores ifGenerationMatch on downloads):
        # once replaced or deleted it is gone. raw_download: the stored bytes even if gzip-encoded,
        # as the size counts them; a range has no whole-object checksum to validate.
        try:
            with _errors(f"get gs://{bucket}/{key} bytes {start}-{end - 1}"):
                return self._blob(bucket, key, generation=int(revision)).download_as_bytes(
                    start=start, end=end - 1, raw_download=True, checksum=None, timeout=TIMEOUT, retry=RETRY)
        except BlobNotFound as error:
            raise BlobPreconditionFailed(f"gs://{bucket}/{key} is no longer generation {revision}") from error

    def list_keys(self, bucket: str, prefix: str = "", start_after: str | None = None) -> Iterator[str]:
        with _errors(f"list gs://{bucket}/{prefix}"):
            blobs = self._client.list_blobs(bucket, prefix=prefix or None, start_offset=start_after,
                                            page_size=self.list_page_size, fields="items(name),nextPageToken",
                                            timeout=TIMEOUT, retry=RETRY)
            for blob in blobs:
                if blob.name != start_after:  # start_offset is inclusive
                    yield blob.name

    # --- writing -----------------------------------------------------------------------------
    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream",
                  metadata: Mapping[str, str] | None = None, if_absent: bool = False) -> BlobInfo | None:
        metadata = tracing.object_metadata(metadata)  # the writer's trace, for its replication
        blob = self._blob(bucket, key)
        blob.metadata = dict(metadata or {})
        with _errors(f"put gs://{bucket}/{key}", precondition=BlobAlreadyExists):
            blob.upload_from_string(data, content_type=content_type, if_generation_match=0 if if_absent else None,
                                    timeout=TIMEOUT, retry=RETRY)
        return self._written(key, blob)

    @classmethod
    def _written(cls, key: str, blob) -> BlobInfo | None:
        """The object an upload's answer describes (the library keeps its resource on ``blob``),
        or None when that answer lacks what judging it needs (a generation and a CRC32C)."""
        if blob.generation is None or not blob.crc32c or blob.size is None:
            return None
        return cls._info(key, blob)

    def put_stream(self, bucket: str, key: str, chunks: Iterable[bytes], size: int,
                   content_type: str = "application/octet-stream",
                   metadata: Mapping[str, str] | None = None, part_size: int = 64 * 1024 * 1024, *,
                   concurrency: int = 1, before_commit: Callable[[], None] | None = None) -> BlobInfo | None:
        metadata = tracing.object_metadata(metadata)  # the writer's trace, for its replication
        chunk_size = -(-part_size // RESUMABLE_CHUNK_MULTIPLE) * RESUMABLE_CHUNK_MULTIPLE
        reader = ChunkReader(chunks, size, before_last=before_commit)
        if concurrency > 1 and size > part_size:
            self._put_composite(bucket, key, reader, size, part_size, concurrency, content_type, metadata)
            return None
        blob = self._blob(bucket, key, chunk_size=chunk_size)
        blob.metadata = dict(metadata or {})
        with _errors(f"put gs://{bucket}/{key}"):
            if size <= chunk_size:
                blob.upload_from_file(reader, size=size, content_type=content_type, timeout=TIMEOUT, retry=RETRY)
                return self._written(key, blob)
            # A resumable upload reading one chunk per request. Driven here rather than by
            # upload_from_file, whose loop keeps each response (and through it the chunk sent)
            # alive while it reads the next chunk: one chunk more in memory. The request carrying
            # the last chunk commits the object, and reading that chunk runs ``before_commit``.
            upload, transport = blob._initiate_resumable_upload(
                self._client, reader, content_type, size, chunk_size=chunk_size, timeout=TIMEOUT, retry=RETRY)
            try:
                while not upload.finished:
                    upload.transmit_next_chunk(transport, timeout=TIMEOUT)
            except DataCorruption:
                self.delete(bucket, key)  # the crc32c of what arrived differs from what was sent
                raise

    def _put_composite(self, bucket: str, key: str, reader: ChunkReader, size: int, part_size: int,
                       concurrency: int, content_type: str, metadata: Mapping[str, str] | None) -> None:
        """A parallel composite upload: parts are uploaded at once as temporary objects under
        ``COMPOSE_PREFIX`` (a resumable upload is strictly sequential), then composed into ``key``
        only after ``before_commit`` passed, and deleted whatever happens."""
        prefix = f"{COMPOSE_PREFIX}{uuid.uuid4().hex}/"
        written: list[str] = []
        failures: list[BaseException] = []

        def upload(name: str, data: bytes) -> None:
            try:
                with _errors(f"put gs://{bucket}/{name}"):
                    RETRY(self._upload_part)(bucket, name, data)
            except Exception as error:  # noqa: BLE001 - re-raised in the caller below
                failures.append(error)

        pool = eventlet.GreenPool(concurrency)
        try:
            try:
                for number in range(-(-size // part_size)):
                    if failures:
                        break
                    written.append(f"{prefix}{number:05d}")
                    pool.spawn_n(tracing.carry(upload), written[-1], reader.read(part_size))  # blocks while the pool is full
            finally:
                pool.waitall()
            if failures:
                raise failures[0]
            reader.finish()  # the last read ran it already; this only re-checks
            self._compose(bucket, key, written, prefix, content_type, metadata)
        finally:
            self._delete_all(bucket, written)

    def _upload_part(self, bucket: str, name: str, data: bytes) -> None:
        """One temporary part as a plain media upload of the bytes themselves. The library's
        upload_from_string builds a multipart body (a second copy of every part in flight), and a
        bytes body is re-sliced (copied) by each partial send of a green socket; a memoryview is
        neither. Parts need no metadata, and what they add up to is checked once composed."""
        # The client's own authorised session and endpoint: real GCS or the emulator alike.
        response = self._client._http.post(
            f"{self._client._connection.API_BASE_URL}/upload/storage/v1/b/{quote(bucket, safe='')}/o",
            params={"uploadType": "media", "name": name}, data=memoryview(data),
            headers={"Content-Type": "application/octet-stream"}, timeout=TIMEOUT)
        if response.status_code >= 400:
            raise api_exceptions.from_http_response(response)

    def _compose(self, bucket: str, key: str, names: list[str], prefix: str, content_type: str,
                 metadata: Mapping[str, str] | None, level: int = 0) -> None:
        """Compose ``names`` into ``key``, in rounds of intermediate objects above 32 sources."""
        if len(names) > MAX_COMPOSE_SOURCES:
            groups = [names[i:i + MAX_COMPOSE_SOURCES] for i in range(0, len(names), MAX_COMPOSE_SOURCES)]
            intermediates = [f"{prefix}level{level}-{i:05d}" for i in range(len(groups))]
            try:
                for group, name in zip(groups, intermediates):
                    self._compose(bucket, name, group, prefix, "application/octet-stream", None, level + 1)
                self._compose(bucket, key, intermediates, prefix, content_type, metadata, level + 1)
            finally:
                self._delete_all(bucket, intermediates)
            return
        destination = self._blob(bucket, key)
        destination.content_type = content_type
        destination.metadata = dict(metadata or {})
        with _errors(f"compose gs://{bucket}/{key}"):
            destination.compose([self._blob(bucket, name) for name in names], timeout=TIMEOUT, retry=RETRY)

    def _delete_all(self, bucket: str, names: list[str]) -> None:
        def delete(name: str) -> None:
            try:
                self.delete(bucket, name)
            except BlobStoreError:  # a lifecycle rule on COMPOSE_PREFIX is the backstop
                logger.warning("could not delete the temporary gs://%s/%s", bucket, name, exc_info=True)

        for _ in eventlet.GreenPool(8).imap(delete, names):
            pass

    def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str, *,
             if_source_revision: str | None = None, content_type: str | None = None,
             metadata: Mapping[str, str] | None = None, part_size: int = 64 * 1024 * 1024,
             source_size: int | None = None) -> BlobInfo:
        if metadata is not None:  # new properties: with the writer's trace (None keeps the source's)
            metadata = tracing.object_metadata(metadata)
        # A rewrite is server-side and chunked by the server (``part_size`` has no say): loop on its
        # token until done; the last answer describes the copy. The destination's properties, when
        # set, replace the source's.
        source = self._blob(src_bucket, src_key)
        destination = self._blob(dst_bucket, dst_key)
        revision = None
        # The source is looked at only to check its revision or to keep the one property not given:
        # a rewrite needs no size, so ``source_size`` has no say either.
        if if_source_revision is not None or (content_type is None) != (metadata is None):
            # Checked here too, as fake-gcs-server ignores ifSourceGenerationMatch on a rewrite.
            info = self.stat(src_bucket, src_key)
            if if_source_revision is not None and info.revision != if_source_revision:
                raise BlobPreconditionFailed(f"gs://{src_bucket}/{src_key} is no longer revision {if_source_revision}")
            revision = info.revision  # copy the very content that was checked and described
            content_type = content_type or info.content_type
            metadata = info.metadata if metadata is None else metadata
        if content_type is not None or metadata is not None:
            destination.content_type = content_type
            destination.metadata = dict(metadata)
        token = None
        with _errors(f"copy gs://{src_bucket}/{src_key} to gs://{dst_bucket}/{dst_key}"):
            while True:
                token, _, _ = destination.rewrite(
                    source, token=token, if_source_generation_match=int(revision) if revision else None,
                    timeout=TIMEOUT, retry=RETRY)
                if token is None:
                    return self._info(dst_key, destination)

    def delete(self, bucket: str, key: str) -> None:
        try:
            with _errors(f"delete gs://{bucket}/{key}"):
                self._blob(bucket, key).delete(timeout=TIMEOUT, retry=RETRY)
        except BlobNotFound:
            pass

    # --- addressing --------------------------------------------------------------------------
    def presigned_url(self, bucket: str, key: str, expires_in: int,
                      content_disposition: str | None = None) -> str:
        if self._endpoint:
            # An emulator runs with anonymous credentials: there is no key to sign with, and
            # fake-gcs-server serves any object at its plain download URL without one. The
            # disposition is asked for as of GCS itself (fake-gcs-server ignores it), so that the
            # URL says what the reader asked for on either.
            url = f"{self._endpoint}/download/storage/v1/b/{bucket}/o/{quote(key, safe='')}?alt=media"
            if content_disposition:
                url += f"&response-content-disposition={quote(content_disposition, safe='')}"
            return url
        credentials = self._client._credentials
        signer = {}
        if not isinstance(credentials, google.auth.credentials.Signing):
            # Compute Engine / workload identity credentials hold no private key: have the IAM API
            # sign for the service account with the current access token.
            credentials.refresh(google.auth.transport.requests.Request())
            signer = {"service_account_email": credentials.service_account_email,
                      "access_token": credentials.token}
        return self._blob(bucket, key).generate_signed_url(
            version="v4", expiration=datetime.timedelta(seconds=expires_in), method="GET",
            response_disposition=content_disposition, **signer)

    # --- buckets -----------------------------------------------------------------------------
    def bucket_exists(self, bucket: str) -> bool:
        with _errors(f"get bucket gs://{bucket}"):
            return self._client.bucket(bucket).exists(timeout=TIMEOUT, retry=RETRY)

    def create_bucket(self, bucket: str) -> None:
        if self.bucket_exists(bucket):
            return
        with _errors(f"create bucket gs://{bucket}"):
            try:
                self._client.create_bucket(bucket, timeout=TIMEOUT, retry=RETRY)
            except api_exceptions.Conflict:  # created meanwhile
                pass
