"""Fixtures of the compatibility suite: the real DSS command-line clients (tests/compat/clients.py)
run as subprocesses against the whole API, served in-process over HTTPS on a real port (the
clients only speak https), on the real broker and the session's emulators.

Each client is configured as a user would (README "Using the old DSS clients"): a config file
naming our /v1/swagger.json, the test CA in REQUESTS_CA_BUNDLE, a service-account key from
``create_service_account_key`` (what `make sa-key` runs) in GOOGLE_APPLICATION_CREDENTIALS, and the
staging bucket's S3 endpoint in AWS_ENDPOINT_URL_S3.

The replicator runs too, as in `make up`: the test's own S3 main bucket notifies a queue of the
test's own, so what the clients write through `aws` appears in `gcp`. The other way is not wired:
fake-gcs-server publishes only the session's main bucket, and the clients upload through S3.
"""
from __future__ import annotations

import dataclasses
import uuid

import pytest

from devtools import local_cloud
from devtools.certificates import ensure_dev_certificate
from devtools.receivers import Receiver
from ops import provision
from services.replicator.service import ReplicatorService
from shared.config import Settings
from tests.compat.clients import CLIENTS, Cli, InstallError, install
from tests.e2e.conftest import start_api

MiB = 1024 * 1024


@pytest.fixture(scope="session")
def client_venvs():
    """{name: virtualenv} of both clients, installed once per machine (cached)."""
    try:
        return {name: install(client) for name, client in CLIENTS.items()}
    except InstallError as error:
        # Never a skip: without the clients this suite proves nothing.
        pytest.fail(f"the DSS clients could not be installed: {error}", pytrace=False)


@dataclasses.dataclass
class CompatStack:
    url: str                   # https://127.0.0.1:PORT (no /v1)
    ca_file: str
    settings: Settings         # as the services under test resolve them
    service_accounts: str      # the DSS_AUTH_ISSUERS value trusting per-account JWKS files


@pytest.fixture
def compat_bucket(blobstores):
    """The name of a main bucket of this test's own, made in both replicas."""
    bucket = f"compat-{uuid.uuid4().hex[:10]}"
    for store in blobstores.values():
        store.create_bucket(bucket)
    return bucket


@pytest.fixture
def compat_replication(local_cloud_settings, compat_bucket, bucket_notifications):
    """Config overrides for the replicator behind the compat stack: the S3 main bucket notifies a
    queue of this test's own; the GCS bridge gets a subscription of its own when the Pub/Sub
    emulator is there (nothing the test writes reaches it, see the module)."""
    overrides = {**bucket_notifications(compat_bucket), "DSS_REPLICATION_RETRY_DELAYS": "1,1,2"}
    subscription = overrides["DSS_GCS_NOTIFICATION_SUBSCRIPTION"] = overrides["DSS_S3_NOTIFICATION_QUEUE"]
    settings = Settings.from_config({**local_cloud_settings, **overrides}, environ={})
    emulator = local_cloud.pubsub_emulator_binary() is not None
    if emulator:
        provision.ensure_pubsub_subscription(settings.pubsub_emulator_host, settings.gcp_project, subscription,
                                               settings.gcs_notification_topic)
    yield overrides
    if emulator:
        provision.delete_pubsub_subscription(settings.pubsub_emulator_host, settings.gcp_project, subscription)


# The access policies the clients are run against (DSS_ACCESS_POLICY, services/gateway/access.py):
# in `private` every operation but the description needs a token, and reading one of the read
# groups (or of the writers', which the clients' accounts are in).
ACCESS_MODES = {"public": {}, "private": {"DSS_ACCESS_POLICY": "private", "DSS_AUTH_READ_GROUPS": "dbio,hca"}}


@pytest.fixture(params=sorted(ACCESS_MODES))
def access_mode(request):
    return request.param


@pytest.fixture
def compat_stack(service_config, web_config, compat_bucket, compat_replication, runner_factory, tmp_path,
                 access_mode):
    """The API over HTTPS with a main bucket and search index of this test's own (subscriptions
    and listings are per bucket) and the replicator, large files made to take the asynchronous
    paths: a copy above 1 MiB answers PUT /files 202, a GET /files of a blob above 512 KiB answers
    301 + Retry-After; under each access policy of ACCESS_MODES."""
    # runner_factory is asked for after compat_replication so that it is torn down first: the
    # replicator stops before its queue is deleted.
    bucket = compat_bucket
    certificate = ensure_dev_certificate(tmp_path / "tls", names=("127.0.0.1", "localhost"))
    accounts = f"*={tmp_path / 'service-accounts'}/{{iss}}.json"
    config = {**service_config, **compat_replication,
              "DSS_S3_BUCKET": bucket, "DSS_GS_BUCKET": bucket, "DSS_INDEX_DIR": str(tmp_path / "index"),
              "DSS_TLS_CERT_FILE": certificate.cert_file, "DSS_TLS_KEY_FILE": certificate.key_file,
              "DSS_AUTH_ISSUERS": f"{service_config['DSS_AUTH_ISSUERS']},{accounts}",
              "DSS_ADMIN_EMAILS": "dbio-compat@dss-local.iam.example.org,hca-compat@dss-local.iam.example.org",
              "DSS_NOTIFY_ALLOWED_HOSTS": "127.0.0.1", "DSS_NOTIFY_RETRY_DELAYS": "1,1,1",
              "DSS_ASYNC_COPY_THRESHOLD": MiB, "DSS_CHECKOUT_WARM_BYTES": 0,
              "DSS_CHECKOUT_INLINE_BYTES": MiB // 2, "DSS_CHECKOUT_RETRY_AFTER": 1, **ACCESS_MODES[access_mode]}
    start_api(config, web_config, runner_factory, ReplicatorService)
    return CompatStack(url=f"https://{web_config['WEB_SERVER_ADDRESS']}", ca_file=certificate.ca_file,
                       settings=Settings.from_config(config, environ={}), service_accounts=config["DSS_AUTH_ISSUERS"])


@pytest.fixture
def receiver():
    server = Receiver({})
    yield server
    server.stop()


@pytest.fixture(params=sorted(CLIENTS))
def cli(request, client_venvs, compat_stack, tmp_path):
    name = request.param
    return Cli(CLIENTS[name], client_venvs[name], tmp_path / f"{name}-home", api_url=compat_stack.url,
               ca_file=compat_stack.ca_file, issuers=compat_stack.service_accounts,
               s3_endpoint=compat_stack.settings.s3_endpoint)
