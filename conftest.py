"""Test fixtures shared by every test in the repository (the one place test helpers live).

Integration tests run against the real RabbitMQ (nameko's `rabbit_config` gives each test its own
vhost through the management API) and real emulators started here on free ports: moto for S3 and
fake-gcs-server for GCS, so a running `make up` stack is never touched.
"""
import eventlet

eventlet.monkey_patch()  # must precede every other import (nameko >= 2.14 no longer does it)

import pytest  # noqa: E402

from shared.config import Settings  # noqa: E402
from shared import local_cloud  # noqa: E402


@pytest.fixture(scope="session")
def local_cloud_settings(tmp_path_factory):
    """Start moto and fake-gcs-server for the session; yield the settings that point at them."""
    logs = tmp_path_factory.mktemp("emulator-logs")
    moto = local_cloud.start_moto(log_path=str(logs / "moto.log"))
    gcs = local_cloud.start_fake_gcs(log_path=str(logs / "fake-gcs.log"))
    overrides = {
        "DSS_S3_ENDPOINT": moto.url,
        "DSS_GCS_ENDPOINT": gcs.url,
        "DSS_S3_ACCESS_KEY_ID": "test",
        "DSS_S3_SECRET_ACCESS_KEY": "test",
    }
    settings = Settings.from_config(overrides, environ={})
    local_cloud.create_buckets(settings)
    yield overrides
    moto.stop()
    gcs.stop()


@pytest.fixture(scope="session")
def dss_settings(local_cloud_settings):
    """Settings resolved only from defaults and the emulator overrides (the environment is ignored)."""
    return Settings.from_config(local_cloud_settings, environ={})


@pytest.fixture(scope="session")
def local_issuer_settings(tmp_path_factory):
    """A token issuer of the tests' own (key + JWKS in a temp dir) that services under test trust."""
    from shared.auth_local import ensure_local_issuer
    directory = tmp_path_factory.mktemp("auth")
    key, jwks = directory / "issuer.pem", directory / "jwks.json"
    ensure_local_issuer(key, jwks)
    return {"DSS_LOCAL_ISSUER_KEY": str(key), "DSS_AUTH_ISSUERS": f"https://dss.local/={jwks}"}


@pytest.fixture(scope="session")
def mint_token(local_cloud_settings, local_issuer_settings):
    """``mint_token(email, groups, lifetime_s=3600)`` -> a bearer token the services under test accept."""
    from shared.auth_local import mint_token_for_settings
    settings = Settings.from_config({**local_cloud_settings, **local_issuer_settings}, environ={})

    def mint(email="user@example.org", groups=("dbio",), lifetime_s=3600):
        return mint_token_for_settings(settings, email, groups, lifetime_s=lifetime_s)
    return mint


@pytest.fixture
def service_config(rabbit_config, local_cloud_settings, local_issuer_settings):
    """A nameko config for a service under test: its own vhost, the emulators, the test issuer,
    metrics off."""
    config = dict(rabbit_config)
    config.update(local_cloud_settings)
    config.update(local_issuer_settings)
    config["METRICS_PORT"] = 0
    return config


@pytest.fixture
def web_session(web_config_port):
    """nameko's ``web_session`` (which imports ``werkzeug.urls.url_join``, gone in werkzeug 3):
    a requests session whose relative URLs go to the service under test."""
    from urllib.parse import urljoin

    import requests

    class WebSession(requests.Session):
        def request(self, method, url, *args, **kwargs):
            return super().request(method, urljoin(f"http://127.0.0.1:{web_config_port}/", url), *args, **kwargs)

    with WebSession() as session:
        yield session


@pytest.fixture(scope="session")
def blobstores(dss_settings):
    from shared.blobstore import open_blobstore
    return {replica: open_blobstore(replica, dss_settings) for replica in ("aws", "gcp")}

