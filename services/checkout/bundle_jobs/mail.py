"""E-mail through an SMTP relay, behind one small API: ``Mailer.send(recipient, subject, body)``.

The checkout service declares ``mail = Mail()`` (``dependencies``) and gets the process's
``Mailer``. It is configured from the ``DSS_SMTP_*`` settings and ``DSS_MAIL_SENDER``: an empty
``DSS_SMTP_HOST`` turns e-mail off (a send is logged and reports False), ``DSS_SMTP_TLS`` is
``none``, ``starttls`` or ``ssl`` (implicit TLS, "SMTPS"); TLS certificates are checked against the
system CAs or ``DSS_SMTP_CA_BUNDLE``; with ``DSS_SMTP_USER`` the relay is logged in to. The
password is never logged nor shown in a repr.

smtplib is blocking code, but under eventlet's monkey patching its sockets are green, so a send
only waits for the relay; every socket operation has the ``DSS_SMTP_TIMEOUT``.
"""
from __future__ import annotations

import dataclasses
import email.message
import email.utils
import logging
import smtplib
import ssl

from shared.config import Settings

logger = logging.getLogger(__name__)

TLS_MODES = ("none", "starttls", "ssl")


class MailNotSent(Exception):
    """The relay could not be reached or refused the message. ``permanent``: the relay refused it
    for good (a 5xx answer, e.g. an unknown recipient); trying again will not help."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


@dataclasses.dataclass(frozen=True)
class MailSettings:
    host: str
    port: int
    tls: str
    user: str
    password: str = dataclasses.field(repr=False)
    sender: str
    timeout: float
    ca_bundle: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "MailSettings":
        tls = settings.smtp_tls.strip().lower()
        if tls not in TLS_MODES:
            raise ValueError(f"DSS_SMTP_TLS must be one of {', '.join(TLS_MODES)}, not {settings.smtp_tls!r}")
        return cls(host=settings.smtp_host.strip(), port=settings.smtp_port, tls=tls, user=settings.smtp_user,
                   password=settings.smtp_password, sender=settings.mail_sender, timeout=settings.smtp_timeout,
                   ca_bundle=settings.smtp_ca_bundle)


class Mailer:
    """Sends plain-text messages, one SMTP session each (notices are rare: no pool to keep alive)."""

    def __init__(self, settings: MailSettings):
        self.settings = settings

    def __repr__(self) -> str:
        return f"Mailer({self.settings!r})"  # the settings' repr leaves the password out

    @property
    def enabled(self) -> bool:
        return bool(self.settings.host)

    def compose(self, recipient: str, subject: str, body: str) -> email.message.EmailMessage:
        message = email.message.EmailMessage()
        message["From"] = self.settings.sender
        message["To"] = recipient
        message["Subject"] = subject
        message["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
        domain = self.settings.sender.rpartition("@")[2] or None
        message["Message-ID"] = email.utils.make_msgid(domain=domain)
        message.set_content(body)
        return message

    def send(self, recipient: str, subject: str, body: str) -> bool:
        """Send ``body`` to ``recipient``: True once the relay accepted it, False when e-mail is
        disabled (no ``DSS_SMTP_HOST``). Raises ``MailNotSent``."""
        if not self.enabled:
            logger.info("e-mail is disabled (DSS_SMTP_HOST is empty): not sending %r to %s", subject, recipient)
            return False
        message = self.compose(recipient, subject, body)
        where = f"{self.settings.host}:{self.settings.port}"
        try:
            with self._session() as session:
                session.send_message(message)
        except smtplib.SMTPRecipientsRefused as error:
            raise MailNotSent(f"{where} refused the recipient {recipient}: {error.recipients.get(recipient)}",
                              permanent=True) from None
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as error:
            raise MailNotSent(f"{where} refused the message: {error.smtp_code} {error.smtp_error!r}",
                              permanent=error.smtp_code >= 500) from None
        except smtplib.SMTPAuthenticationError as error:
            # Credentials are the operator's to fix; a later attempt may find them fixed.
            raise MailNotSent(f"{where} refused the login of {self.settings.user}: {error.smtp_code}") from None
        except (smtplib.SMTPException, ssl.SSLError, OSError) as error:
            raise MailNotSent(f"could not send through {where}: {type(error).__name__}: {error}") from None
        logger.info("e-mail %r sent to %s through %s", subject, recipient, where)
        return True

    def _tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.settings.ca_bundle or None)

    def _session(self) -> smtplib.SMTP:
        settings = self.settings
        if settings.tls == "ssl":
            session = smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout,
                                       context=self._tls_context())
        else:
            session = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
        try:
            if settings.tls == "starttls":
                session.starttls(context=self._tls_context())
            if settings.user:
                session.login(settings.user, settings.password)
        except BaseException:
            session.close()
            raise
        return session
