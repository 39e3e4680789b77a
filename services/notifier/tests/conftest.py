"""Fixtures of the notifier's integration and fault tests: a nameko config with main buckets of the
test's own (subscriptions are per bucket: another test's would fire on this test's events), an
embedded search index in a temporary directory, loopback webhooks allowed, short retry delays; and
a signature-verifying webhook receiver."""
import uuid

import pytest

from devtools.receivers import Receiver

SECRET = "integration-hmac-secret"
KEY_ID = "subscriber-key"
RETRY_DELAYS = "1,1,1"


@pytest.fixture
def notifier_config(service_config, blobstores, tmp_path):
    bucket = f"notifier-{uuid.uuid4().hex[:12]}"
    for store in blobstores.values():
        store.create_bucket(bucket)
    return {**service_config, "DSS_S3_BUCKET": bucket, "DSS_GS_BUCKET": bucket,
            "DSS_INDEX_DIR": str(tmp_path / "index"), "DSS_NOTIFY_ALLOWED_HOSTS": "127.0.0.1",
            "DSS_NOTIFY_RETRY_DELAYS": RETRY_DELAYS, "DSS_NOTIFY_CONNECT_TIMEOUT": 2, "DSS_NOTIFY_READ_TIMEOUT": 5,
            "DSS_PUBLIC_URL": "https://dss.example"}


@pytest.fixture
def receiver():
    server = Receiver({KEY_ID: SECRET.encode()})
    yield server
    server.stop()
