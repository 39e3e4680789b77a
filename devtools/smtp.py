"""A real SMTP server for tests of the e-mail the store sends (aiosmtpd, in a process of its own)."""
from __future__ import annotations

import ssl

from devtools.local_cloud import free_port, port_open
from devtools.waiting import wait_until


class SmtpServer:
    """A real SMTP server (aiosmtpd) on 127.0.0.1, in a process of its own (its asyncio loop has
    nothing to do with the tests' eventlet hub), keeping every message it accepts in a Maildir
    that ``messages()`` reads back, parsed.

    ``tls``: ``none``, ``starttls`` (required before MAIL) or ``ssl`` (implicit TLS), with the
    ``certificate`` file of ``issue_server_certificate``; ``login``: (user, password) the server
    requires (over TLS only, as relays do)."""

    def __init__(self, directory, tls: str = "none", certificate: str | None = None,
                 login: tuple[str, str] | None = None):
        import pathlib
        self.directory = pathlib.Path(directory)
        self.maildir = self.directory / "maildir"
        self.log_path = self.directory / "smtp.log"
        self.tls, self.certificate, self.login = tls, certificate, login
        self.port = free_port()
        self.process = None

    @property
    def settings(self) -> dict:
        """The ``DSS_SMTP_*`` settings that send through this server (the CA bundle is the test's)."""
        return {"DSS_SMTP_HOST": "127.0.0.1", "DSS_SMTP_PORT": self.port, "DSS_SMTP_TLS": self.tls,
                "DSS_SMTP_USER": self.login[0] if self.login else "",
                "DSS_SMTP_PASSWORD": self.login[1] if self.login else "", "DSS_SMTP_TIMEOUT": 5}

    def start(self) -> "SmtpServer":
        import pathlib
        import subprocess
        import sys
        arguments = ["--port", str(self.port), "--maildir", str(self.maildir), "--tls", self.tls]
        if self.certificate:
            arguments += ["--certificate", self.certificate]
        if self.login:
            arguments += ["--login", ":".join(self.login)]
        root = pathlib.Path(__file__).resolve().parent.parent
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "import sys; from devtools.smtp import serve_smtp; serve_smtp(sys.argv[1:])",
                 *arguments], cwd=str(root), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: port_open("127.0.0.1", self.port) or self.process.poll() is not None, 30,
                   "the SMTP server listening", interval=0.05)
        if self.process.poll() is not None:
            raise RuntimeError(f"the SMTP server exited:\n{self.log_path.read_text(errors='replace')}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def messages(self) -> list:
        """The messages received so far (``email.message.EmailMessage``), oldest first."""
        import email.policy
        import mailbox
        if not self.maildir.exists():
            return []
        box = mailbox.Maildir(str(self.maildir), factory=None, create=False)
        received = [(message.get_date(), email.message_from_bytes(bytes(message), policy=email.policy.default))
                    for message in box]
        return [message for _, message in sorted(received, key=lambda pair: pair[0])]


def serve_smtp(argv: list[str]) -> None:
    """The SMTP server process of ``SmtpServer`` (not for eventlet-patched processes)."""
    import argparse
    import signal
    import sys

    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Mailbox
    from aiosmtpd.smtp import AuthResult

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--tls", choices=("none", "starttls", "ssl"), default="none")
    parser.add_argument("--certificate")
    parser.add_argument("--login")
    args = parser.parse_args(argv)
    options: dict = {}
    context = None
    if args.tls != "none":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.certificate)
    if args.tls == "starttls":
        options.update(tls_context=context, require_starttls=True)
    elif args.tls == "ssl":
        options.update(ssl_context=context)
    if args.login:
        user, password = args.login.split(":", 1)

        def authenticate(server, session, envelope, mechanism, credentials):
            accepted = (credentials.login.decode(), credentials.password.decode()) == (user, password)
            return AuthResult(success=accepted, handled=False)  # False: the server answers 535 itself
        # PLAIN only: smtplib falls back to LOGIN after a refused PLAIN, and aiosmtpd's LOGIN then
        # waits for a line smtplib never sends (a refused password would look like a timeout).
        options.update(authenticator=authenticate, auth_required=True, auth_exclude_mechanism=["LOGIN"])
    controller = Controller(Mailbox(args.maildir), hostname="127.0.0.1", port=args.port, **options)
    controller.start()
    signal.signal(signal.SIGTERM, lambda *_: (controller.stop(), sys.exit(0)))
    while True:
        signal.pause()
