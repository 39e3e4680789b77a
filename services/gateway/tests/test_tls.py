"""The gateway over HTTPS (DSS_TLS_CERT_FILE), and the development CA of devtools.certificates."""
import datetime
import os
import socket
import ssl

import pytest
import requests
from cryptography import x509

from devtools import certificates
from services.gateway.tests.test_gateway import gateway_config, issuer, start_gateway  # noqa: F401 (fixtures)


@pytest.fixture
def certificate(tmp_path):
    return certificates.ensure_dev_certificate(tmp_path / "tls", names=("localhost", "127.0.0.1"))


@pytest.fixture
def https_gateway(container_factory, gateway_config, certificate):
    gateway_config.update(DSS_TLS_CERT_FILE=certificate.cert_file, DSS_TLS_KEY_FILE=certificate.key_file)
    gateway = start_gateway(container_factory, gateway_config)
    gateway.url = f"https://{gateway_config['WEB_SERVER_ADDRESS']}"
    return gateway


def test_https_with_links_and_spec_in_https(https_gateway, certificate):
    def get(path):  # verify= per request: a session's is overridden by REQUESTS_CA_BUNDLE
        return requests.get(f"{https_gateway.url}{path}", verify=certificate.ca_file, timeout=10)

    doc = get("/v1/swagger.json").json()
    assert doc["schemes"] == ["https"] and doc["host"] == https_gateway.url.removeprefix("https://")
    https_gateway.bundles.list_bundles.return_value = {"bundles": [], "search_after": "x.y"}
    page = get("/v1/bundles/all?replica=aws&per_page=10")
    assert page.links["next"]["url"].startswith(f"{https_gateway.url}/v1/bundles/all?")
    # The CLIs open their session with the client id served here.
    assert get("/internal/application_secrets").json() == {"installed": {"client_id": "dss-cli"}}


def test_plain_http_and_broken_handshakes_do_not_stop_the_server(https_gateway, certificate):
    host, port = https_gateway.url.removeprefix("https://").split(":")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{host}:{port}/v1/swagger.json", timeout=5)
    with socket.create_connection((host, int(port))) as idle:  # connects and never says hello
        idle.sendall(b"\x16\x03")
        response = requests.get(f"{https_gateway.url}/v1/swagger.json", verify=certificate.ca_file, timeout=5)
    assert response.status_code == 200


def test_untrusted_certificate_is_refused_by_clients(https_gateway):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{https_gateway.url}/v1/swagger.json", timeout=5)  # the public CAs only


def test_a_renewed_certificate_is_served_without_restart(https_gateway, certificate, tmp_path):
    def served_serial():
        host, port = https_gateway.url.removeprefix("https://").split(":")
        context = ssl.create_default_context(cafile=certificate.ca_file)
        with socket.create_connection((host, int(port))) as raw:
            with context.wrap_socket(raw, server_hostname=host) as secure:
                return x509.load_der_x509_certificate(secure.getpeercert(binary_form=True)).serial_number

    before = served_serial()
    old_mtime = os.stat(certificate.cert_file).st_mtime_ns
    os.remove(certificate.cert_file)  # as a renewal replaces it, with the same CA
    certificates.ensure_dev_certificate(os.path.dirname(certificate.cert_file), names=("localhost", "127.0.0.1"))
    # The server notices a renewal by the files' mtimes; a file system's clock may tick coarser than
    # the time the renewal took, so the new file is dated a second on rather than slept for.
    later = max(old_mtime, os.stat(certificate.cert_file).st_mtime_ns) + 10**9
    os.utime(certificate.cert_file, ns=(later, later))
    assert served_serial() != before


def test_dev_certificate_is_made_once_and_reissued_for_new_names(tmp_path):
    first = certificates.ensure_dev_certificate(tmp_path, names=("localhost", "127.0.0.1"))
    ca, cert = open(first.ca_file, "rb").read(), open(first.cert_file, "rb").read()
    assert os.stat(first.key_file).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "ca-key.pem").st_mode & 0o777 == 0o600
    certificates.ensure_dev_certificate(tmp_path, names=("localhost", "127.0.0.1"))
    assert open(first.cert_file, "rb").read() == cert  # idempotent
    certificates.ensure_dev_certificate(tmp_path, names=("localhost", "127.0.0.1", "dss.example.test"))
    assert open(first.ca_file, "rb").read() == ca  # the CA is kept: trusting it once is enough
    leaf = x509.load_pem_x509_certificate(open(first.cert_file, "rb").read())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "dss.example.test" in names.get_values_for_type(x509.DNSName)
    assert leaf.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc) > datetime.timedelta(days=300)


def test_a_key_file_without_a_certificate_is_a_configuration_error(container_factory, gateway_config, certificate):
    gateway_config["DSS_TLS_KEY_FILE"] = certificate.key_file
    with pytest.raises(Exception, match="DSS_TLS_KEY_FILE"):
        start_gateway(container_factory, gateway_config)
