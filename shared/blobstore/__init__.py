"""Blob stores of the two replicas behind one interface; ``open_blobstore`` picks one by replica."""
from shared.blobstore.base import (BlobAlreadyExists, BlobInfo, BlobNotFound, BlobPreconditionFailed,
                                   BlobStore, BlobStoreError, BlobStoreUnavailable)


def open_blobstore(replica: str, settings) -> BlobStore:
    """The blob store of ``replica`` ("aws" or "gcp") configured from ``shared.config.Settings``."""
    if replica == "aws":
        from shared.blobstore.s3 import S3BlobStore
        return S3BlobStore.from_settings(settings)
    if replica == "gcp":
        from shared.blobstore.gcs import GCSBlobStore
        return GCSBlobStore.from_settings(settings)
    raise ValueError(f"unknown replica {replica!r}")


__all__ = ["BlobAlreadyExists", "BlobInfo", "BlobNotFound", "BlobPreconditionFailed", "BlobStore",
           "BlobStoreError", "BlobStoreUnavailable", "open_blobstore"]
