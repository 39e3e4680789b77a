"""``bundle_jobs.mail`` against a real SMTP server (aiosmtpd in a process of its own,
``devtools.smtp.SmtpServer``): plain, STARTTLS and implicit TLS with a certificate from the test's
own CA, a required login, refusals and an unreachable relay."""
import logging

import pytest

from shared.config import Settings
from devtools.certificates import issue_server_certificate
from devtools.local_cloud import free_port
from devtools.smtp import SmtpServer

from services.checkout.bundle_jobs.mail import MailNotSent, Mailer, MailSettings

PASSWORD = "relay-password-never-logged"


def mailer(**overrides) -> Mailer:
    config = {"DSS_MAIL_SENDER": "dss@store.example", **overrides}
    return Mailer(MailSettings.from_settings(Settings.from_config(config, environ={})))


@pytest.fixture
def certificate(tmp_path):
    return issue_server_certificate(tmp_path, names=["localhost"], addresses=["127.0.0.1"])


@pytest.fixture
def start_smtp_server(tmp_path):
    servers = []

    def start(**options):
        server = SmtpServer(tmp_path / f"smtp-{len(servers)}", **options).start()
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.stop()


def test_a_plain_message_is_delivered(start_smtp_server):
    server = start_smtp_server()
    assert mailer(**server.settings).send("user@example.org", "Bundle checkout SUCCEEDED", "All copied.\n")
    [message] = server.messages()
    assert message["From"] == "dss@store.example" and message["To"] == "user@example.org"
    assert message["Subject"] == "Bundle checkout SUCCEEDED"
    assert message["Message-ID"].endswith("@store.example>") and message["Date"]
    assert message.get_content() == "All copied.\n"


def test_starttls_with_a_login(start_smtp_server, certificate, caplog):
    ca_bundle, server_certificate = certificate
    server = start_smtp_server(tls="starttls", certificate=server_certificate, login=("dss", PASSWORD))
    sender = mailer(**server.settings, DSS_SMTP_CA_BUNDLE=ca_bundle)
    with caplog.at_level(logging.DEBUG):
        assert sender.send("user@example.org", "over TLS", "secret-free body\n")
    assert [m["Subject"] for m in server.messages()] == ["over TLS"]
    assert PASSWORD not in caplog.text and PASSWORD not in repr(sender)
    with pytest.raises(MailNotSent) as refused:
        mailer(**{**server.settings, "DSS_SMTP_PASSWORD": "wrong"}, DSS_SMTP_CA_BUNDLE=ca_bundle).send(
            "user@example.org", "x", "y")
    assert not refused.value.permanent and "refused the login" in str(refused.value)


def test_starttls_checks_the_certificate(start_smtp_server, certificate):
    _, server_certificate = certificate
    server = start_smtp_server(tls="starttls", certificate=server_certificate)
    with pytest.raises(MailNotSent) as untrusted:  # the system CAs do not know the test's CA
        mailer(**server.settings).send("user@example.org", "x", "y")
    assert "SSL" in str(untrusted.value) and server.messages() == []


def test_implicit_tls(start_smtp_server, certificate):
    ca_bundle, server_certificate = certificate
    server = start_smtp_server(tls="ssl", certificate=server_certificate)
    assert mailer(**server.settings, DSS_SMTP_CA_BUNDLE=ca_bundle).send("user@example.org", "SMTPS", "body\n")
    assert [m["Subject"] for m in server.messages()] == ["SMTPS"]


def test_a_relay_requiring_starttls_refuses_a_plain_session(start_smtp_server, certificate):
    _, server_certificate = certificate
    server = start_smtp_server(tls="starttls", certificate=server_certificate)
    with pytest.raises(MailNotSent) as refused:
        mailer(**{**server.settings, "DSS_SMTP_TLS": "none"}).send("user@example.org", "x", "y")
    assert refused.value.permanent and server.messages() == []


def test_an_unreachable_relay_is_worth_retrying():
    with pytest.raises(MailNotSent) as unreachable:
        mailer(DSS_SMTP_HOST="127.0.0.1", DSS_SMTP_PORT=free_port(), DSS_SMTP_TLS="none",
               DSS_SMTP_TIMEOUT=2).send("user@example.org", "x", "y")
    assert not unreachable.value.permanent and "could not send" in str(unreachable.value)


def test_no_host_means_no_mail(caplog):
    with caplog.at_level(logging.INFO, logger="services.checkout.bundle_jobs.mail"):
        assert mailer(DSS_SMTP_HOST="").send("user@example.org", "Bundle checkout FAILED", "body") is False
    assert "e-mail is disabled" in caplog.text


def test_settings_are_checked():
    with pytest.raises(ValueError, match="DSS_SMTP_TLS"):
        mailer(DSS_SMTP_TLS="tls1.3")
