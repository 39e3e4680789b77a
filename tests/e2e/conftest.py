"""Fixtures of the end-to-end suites: the gateway and the services behind it in one runner,
reached over real HTTP, on the real broker and both emulators."""
import pytest

from services.bundles.service import BundlesService
from services.checkout.service import CheckoutService
from services.files.service import FilesService
from services.gateway.service import GatewayService
from services.indexer.service import IndexerService
from services.notifier.service import NotifierService
from services.replicator.service import ReplicatorService
from devtools.fakes import stage_object


# Every service the gateway's health report asks about (services/gateway/service.py PROBED_SERVICES).
API_SERVICES = (GatewayService, FilesService, BundlesService, IndexerService, NotifierService, CheckoutService)


def start_api(config, web_config, runner_factory, *extra_services):
    runner = runner_factory({**config, **web_config}, *API_SERVICES, *extra_services)
    runner.start()
    return f"http://{web_config['WEB_SERVER_ADDRESS']}/v1"


@pytest.fixture
def api(service_config, web_config, runner_factory):
    return start_api({**service_config, "DSS_MAX_REQUEST_BYTES": 64 * 1024}, web_config, runner_factory)


@pytest.fixture
def replicated_api(service_config, web_config, runner_factory, s3_notification_settings, gcs_notification_settings):
    """The API with the replicator behind it, fed by both buckets' change notifications."""
    config = {**service_config, **s3_notification_settings, **gcs_notification_settings,
              "DSS_REPLICATION_RETRY_DELAYS": "1,1,2"}
    return start_api(config, web_config, runner_factory, ReplicatorService)


@pytest.fixture
def auth(mint_token):
    return {"Authorization": f"Bearer {mint_token('user@example.org', ['dbio'])}"}


@pytest.fixture
def admin(mint_token):
    return {"Authorization": f"Bearer {mint_token('admin@example.org', ['dbio'])}"}


@pytest.fixture
def stage(blobstores, dss_settings):
    def stage(data=b"hello", replica="aws", **kwargs):
        return stage_object(blobstores[replica], dss_settings.bucket(replica, "staging"), data, **kwargs)
    return stage


