"""The ``aws`` replica: S3 (or an S3 emulator such as moto) through boto3."""
from __future__ import annotations

import base64
import contextlib
import logging
from typing import Callable, Iterable, Iterator, Mapping

import boto3
import eventlet
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError

from shared import tracing
from shared.blobstore.base import (BlobAlreadyExists, BlobInfo, BlobNotFound, BlobPreconditionFailed, BlobStore,
                                   BlobStoreError, BlobStoreUnavailable, ChunkReader)

logger = logging.getLogger(__name__)

GiB = 1024 ** 3
MAX_PARTS = 10000
MAX_SINGLE_COPY = 5 * GiB  # CopyObject's limit; above it only UploadPartCopy works
COPY_CONCURRENCY = 8
# Refused connections fail at once; a black-holed endpoint fails after the connect timeout of
# each of the 3 attempts, so an unreachable S3 is reported in seconds rather than minutes.
CONNECT_TIMEOUT = 3
READ_TIMEOUT = 60
MAX_ATTEMPTS = 3

_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_PRECONDITION = {"412", "PreconditionFailed"}
# 409 ConditionalRequestConflict: a concurrent conditional write; AWS says to retry.
_TRANSIENT = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "ConditionalRequestConflict"}


def _quoted(etag: str) -> str:
    # moto's HEAD compares If-Match with the quoted ETag verbatim; real S3 accepts either form.
    return f'"{etag}"'


def _part_size(size: int, part_size: int) -> int:
    """``part_size``, grown if needed so that ``size`` bytes fit in S3's 10,000 parts."""
    return max(part_size, -(-size // MAX_PARTS))


@contextlib.contextmanager
def _errors(what: str, precondition: type[BlobStoreError] = BlobPreconditionFailed):
    """Translate botocore errors into the blob-store errors."""
    try:
        yield
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        message = f"{what}: {code or status} {error.response.get('Error', {}).get('Message', '')}".rstrip()
        if code in _NOT_FOUND or status == 404:
            raise BlobNotFound(message) from error
        if code in _PRECONDITION or status == 412:
            raise precondition(message) from error
        if code in _TRANSIENT or status >= 500:
            raise BlobStoreUnavailable(message) from error
        raise BlobStoreError(message) from error
    except (BotoConnectionError, HTTPClientError, IncompleteReadError) as error:
        # Connection refused / reset, connect or read timeouts, truncated bodies.
        raise BlobStoreUnavailable(f"{what}: {error}") from error


class S3BlobStore(BlobStore):
    replica = "aws"
    scheme = "s3"

    def __init__(self, client, region: str = "us-east-1", list_page_size: int = 1000):
        self._client = client
        self._region = region
        self.list_page_size = list_page_size

    @property
    def client(self):
        """The underlying boto3 S3 client, for what the interface does not cover (object tagging in tests)."""
        return self._client

    @classmethod
    def from_settings(cls, settings, **kwargs) -> "S3BlobStore":
        endpoint = settings.s3_endpoint
        config = Config(
            region_name=settings.s3_region,
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            max_pool_connections=COPY_CONCURRENCY * 2,
            # Emulators and custom endpoints rarely resolve virtual-host bucket names.
            s3={"addressing_style": "path"} if endpoint else {},
            # The DSS verifies its own four checksums; botocore's extra CRC32 of every body would
            # only cost CPU on the service's event loop.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # The store's own calls, whose arguments its tests cover: botocore's check of every
            # call's parameters against the API model costs more than a small object's checksums.
            parameter_validation=False,
        )
        credentials = {}
        key_id, secret = settings.s3_access_key_id, settings.s3_secret_access_key
        if not key_id and endpoint:
            key_id, secret = "test", "test"  # an emulator accepts any keys: work with no setup
        if key_id:
            credentials = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
        # A session per store: boto3's default session is not safe to share between threads.
        client = boto3.session.Session().client("s3", endpoint_url=endpoint or None, config=config, **credentials)
        return cls(client, settings.s3_region, **kwargs)

    # --- reading -----------------------------------------------------------------------------
    def _head(self, bucket: str, key: str, revision: str | None = None) -> dict:
        conditions = {"IfMatch": _quoted(revision)} if revision else {}
        with _errors(f"head s3://{bucket}/{key}"):
            return self._client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED", **conditions)

    def stat(self, bucket: str, key: str) -> BlobInfo:
        head = self._head(bucket, key)
        crc32c = None
        # A multipart object's checksum may be COMPOSITE (a checksum of checksums): not the CRC32C.
        if head.get("ChecksumCRC32C") and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
            crc32c = base64.b64decode(head["ChecksumCRC32C"]).hex()
        return BlobInfo(
            key=key,
            size=head["ContentLength"],
            content_type=head.get("ContentType"),
            metadata={k.lower(): v for k, v in head.get("Metadata", {}).items()},
            revision=head["ETag"].strip('"'),
            crc32c=crc32c,
            last_modified=head.get("LastModified"),
        )

    def read_small(self, bucket: str, key: str, limit: int) -> tuple[BlobInfo, bytes | None]:
        # One ranged GET answers the size (Content-Range), the properties and, for an object within
        # ``limit``, every byte of that revision. A larger object's body is dropped unread.
        try:
            with _errors(f"get s3://{bucket}/{key}"):
                answer = self._client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{max(0, limit - 1)}")
        except BlobStoreError as error:
            if "InvalidRange" not in str(error) and "416" not in str(error):
                raise
            return super().read_small(bucket, key, limit)  # an empty object has no byte 0
        content_range = answer.get("ContentRange") or ""
        size = int(content_range.rpartition("/")[2]) if "/" in content_range else answer["ContentLength"]
        info = BlobInfo(key=key, size=size, content_type=answer.get("ContentType"),
                        metadata={k.lower(): v for k, v in answer.get("Metadata", {}).items()},
                        revision=answer["ETag"].strip('"'), crc32c=None, last_modified=answer.get("LastModified"))
        body = answer["Body"]
        if size > limit:
            body.close()
            return info, None
        with contextlib.closing(body), _errors(f"read s3://{bucket}/{key}"):
            data = body.read()
        if len(data) != size:
            raise BlobStoreUnavailable(f"read s3://{bucket}/{key}: {len(data)} of {size} bytes")
        return info, data

    def get_tags(self, bucket: str, key: str) -> dict[str, str]:
        with _errors(f"get tags of s3://{bucket}/{key}"):
            tag_set = self._client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
        return {tag["Key"]: tag["Value"] for tag in tag_set}

    def get_bytes(self, bucket: str, key: str) -> bytes:
        with _errors(f"get s3://{bucket}/{key}"):
            return self._client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def iter_chunks(self, bucket: str, key: str, chunk_size: int, revision: str | None = None) -> Iterator[bytes]:
        """One streaming GET (one response is one version of the object, so it cannot mix two).

        Ranged reads per chunk would also be consistent, but an S3 emulator (moto) serves each
        range in time proportional to the whole object: 8 MiB ranges of 1 GiB took 70 s against
        0.7 s for one stream. The request is made here, so a missing object or a stale revision
        raises before the first chunk.
        """
        conditions = {"IfMatch": _quoted(revision)} if revision else {}
        with _errors(f"get s3://{bucket}/{key}"):
            body = self._client.get_object(Bucket=bucket, Key=key, **conditions)["Body"]
        return self._stream(body, chunk_size, f"s3://{bucket}/{key}")

    @staticmethod
    def _stream(body, chunk_size: int, what: str) -> Iterator[bytes]:
        with contextlib.closing(body):
            while True:
                with _errors(f"read {what}"):
                    chunk = body.read(chunk_size)
                if not chunk:
                    return
                yield chunk

    def list_keys(self, bucket: str, prefix: str = "", start_after: str | None = None) -> Iterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        params = {"Bucket": bucket, "Prefix": prefix, "PaginationConfig": {"PageSize": self.list_page_size}}
        if start_after:
            params["StartAfter"] = start_after
        with _errors(f"list s3://{bucket}/{prefix}"):
            for page in paginator.paginate(**params):
                for item in page.get("Contents", ()):
                    yield item["Key"]

    # --- writing -----------------------------------------------------------------------------
    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream",
                  metadata: Mapping[str, str] | None = None, if_absent: bool = False) -> BlobInfo:
        metadata = tracing.object_metadata(metadata)  # the writer's trace, for its replication
        conditions = {"IfNoneMatch": "*"} if if_absent else {}
        with _errors(f"put s3://{bucket}/{key}", precondition=BlobAlreadyExists):
            answer = self._client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type,
                                             Metadata=dict(metadata or {}), **conditions)
        return BlobInfo(key=key, size=len(data), content_type=content_type,
                        metadata={k.lower(): v for k, v in (metadata or {}).items()},
                        revision=answer["ETag"].strip('"'), crc32c=None, last_modified=None)

    def put_stream(self, bucket: str, key: str, chunks: Iterable[bytes], size: int,
                   content_type: str = "application/octet-stream",
                   metadata: Mapping[str, str] | None = None, part_size: int = 64 * 1024 * 1024, *,
                   concurrency: int = 1, before_commit: Callable[[], None] | None = None) -> BlobInfo | None:
        metadata = tracing.object_metadata(metadata)  # the writer's trace, for its replication
        reader = ChunkReader(chunks, size, before_last=before_commit)
        if size <= part_size:
            return self.put_bytes(bucket, key, reader.read(), content_type, metadata)
        part_size = _part_size(size, part_size)
        count = -(-size // part_size)
        with self._multipart_upload(bucket, key, content_type, metadata) as upload_id:
            if concurrency > 1:
                parts = self._upload_parts_in_parallel(bucket, key, upload_id, reader, part_size, count, concurrency)
            else:
                parts = [self._upload_part(bucket, key, upload_id, number, reader.read(part_size))
                         for number in range(1, count + 1)]
            reader.finish()  # the last read ran it already; this only re-checks
            self._complete(bucket, key, upload_id, parts)

    def _upload_part(self, bucket: str, key: str, upload_id: str, number: int, body: bytes) -> dict:
        with _errors(f"upload part {number} of s3://{bucket}/{key}"):
            response = self._client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                                Body=body)
        return {"PartNumber": number, "ETag": response["ETag"]}

    def _upload_parts_in_parallel(self, bucket: str, key: str, upload_id: str, reader: ChunkReader,
                                  part_size: int, count: int, concurrency: int) -> list[dict]:
        """Read parts in order (the stream is sequential) and upload up to ``concurrency`` at once:
        ``spawn`` blocks while the pool is full, which bounds memory to ``concurrency + 1`` parts."""
        parts: dict[int, dict] = {}
        failures: list[BaseException] = []

        def upload(number: int, body: bytes) -> None:
            try:
                parts[number] = self._upload_part(bucket, key, upload_id, number, body)
            except Exception as error:  # noqa: BLE001 - re-raised in the caller below
                failures.append(error)

        pool = eventlet.GreenPool(concurrency)
        try:
            for number in range(1, count + 1):
                if failures:
                    break
                pool.spawn_n(tracing.carry(upload), number, reader.read(part_size))
        finally:
            pool.waitall()  # no part upload may still be running when the upload is aborted
        if failures:
            raise failures[0]
        return [parts[number] for number in range(1, count + 1)]

    @contextlib.contextmanager
    def _multipart_upload(self, bucket: str, key: str, content_type: str, metadata: Mapping[str, str]):
        """Yield a new upload id; abort the upload if the body of the ``with`` fails."""
        with _errors(f"start multipart upload of s3://{bucket}/{key}"):
            upload_id = self._client.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type,
                                                             Metadata=dict(metadata or {}))["UploadId"]
        try:
            yield upload_id
        except BaseException:
            try:
                self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except Exception:  # the original error matters more; S3 lifecycle rules clean up leftovers
                logger.warning("could not abort multipart upload %s of s3://%s/%s", upload_id, bucket, key,
                               exc_info=True)
            raise

    def _complete(self, bucket: str, key: str, upload_id: str, parts: list[dict]) -> dict:
        with _errors(f"complete multipart upload of s3://{bucket}/{key}"):
            return self._client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                                          MultipartUpload={"Parts": parts})

    def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str, *,
             if_source_revision: str | None = None, content_type: str | None = None,
             metadata: Mapping[str, str] | None = None, part_size: int = 64 * 1024 * 1024,
             source_size: int | None = None) -> BlobInfo:
        if metadata is not None:  # new properties: with the writer's trace (None keeps the source's)
            metadata = tracing.object_metadata(metadata)
        # The HEAD checks the revision (moto ignores CopySourceIfMatch), gives the size and the
        # properties to keep; every later request is pinned to the ETag it saw so the copy is of
        # one consistent content. An unchanging source of known size and new properties needs none.
        if if_source_revision is None and source_size is not None and content_type is not None \
                and metadata is not None:
            head, pinned, size = {}, {}, source_size
        else:
            head = self._head(src_bucket, src_key, if_source_revision)
            pinned, size = {"CopySourceIfMatch": _quoted(head["ETag"].strip('"'))}, head["ContentLength"]
        new_type = content_type or head.get("ContentType", "application/octet-stream")
        new_metadata = dict(head.get("Metadata", {}) if metadata is None else metadata)
        source = {"Bucket": src_bucket, "Key": src_key}
        what = f"copy s3://{src_bucket}/{src_key} to s3://{dst_bucket}/{dst_key}"
        if size <= min(part_size, MAX_SINGLE_COPY):
            replace = {}
            if content_type is not None or metadata is not None:
                replace = {"MetadataDirective": "REPLACE", "ContentType": new_type, "Metadata": new_metadata}
            with _errors(what):
                result = self._client.copy_object(CopySource=source, Bucket=dst_bucket, Key=dst_key, **pinned,
                                                  **replace)["CopyObjectResult"]
            return self._copied(dst_key, size, new_type, new_metadata, result)
        part_size = _part_size(size, part_size)

        def copy_part(number: int) -> dict:
            start = (number - 1) * part_size
            end = min(start + part_size, size) - 1
            with _errors(f"{what} (part {number})"):
                response = self._client.upload_part_copy(
                    CopySource=source, Bucket=dst_bucket, Key=dst_key, UploadId=upload_id, PartNumber=number,
                    CopySourceRange=f"bytes={start}-{end}", **pinned)
            return {"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]}

        with self._multipart_upload(dst_bucket, dst_key, new_type, new_metadata) as upload_id:
            pool = eventlet.GreenPool(COPY_CONCURRENCY)
            try:
                parts = list(pool.imap(tracing.carry(copy_part), range(1, -(-size // part_size) + 1)))
            finally:
                pool.waitall()  # no part copy may still be running when the upload is aborted
            result = self._complete(dst_bucket, dst_key, upload_id, parts)
        return self._copied(dst_key, size, new_type, new_metadata, result)

    @staticmethod
    def _copied(key: str, size: int, content_type: str, metadata: Mapping[str, str], result: dict) -> BlobInfo:
        """A copy's BlobInfo from the answer that completed it (its ETag; no CRC32C is asked for)."""
        return BlobInfo(key=key, size=size, content_type=content_type,
                        metadata={k.lower(): v for k, v in metadata.items()},
                        revision=result["ETag"].strip('"'), crc32c=None, last_modified=result.get("LastModified"))

    def delete(self, bucket: str, key: str) -> None:
        with _errors(f"delete s3://{bucket}/{key}"):
            self._client.delete_object(Bucket=bucket, Key=key)

    # --- addressing --------------------------------------------------------------------------
    def presigned_url(self, bucket: str, key: str, expires_in: int,
                      content_disposition: str | None = None) -> str:
        params = {"Bucket": bucket, "Key": key}
        if content_disposition:
            params["ResponseContentDisposition"] = content_disposition
        return self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)

    # --- buckets -----------------------------------------------------------------------------
    def bucket_exists(self, bucket: str) -> bool:
        try:
            with _errors(f"head bucket s3://{bucket}"):
                self._client.head_bucket(Bucket=bucket)
        except BlobNotFound:
            return False
        return True

    def create_bucket(self, bucket: str) -> None:
        if self.bucket_exists(bucket):
            return
        # us-east-1 is the one region that refuses an explicit LocationConstraint.
        location = {} if self._region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": self._region}}
        with _errors(f"create bucket s3://{bucket}"):
            try:
                self._client.create_bucket(Bucket=bucket, **location)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":  # ours: fine
                    raise
