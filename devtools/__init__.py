"""Development and test tooling, never installed with the store: fakes, test servers (webhook
receivers, SMTP, a TCP proxy), real service processes for fault tests, certificates, the local
token issuer, the cloud emulators, and the local stack of `make up` (``devtools.stack``).

Imported from the repository root (pytest's rootdir, the Makefile's working directory); nothing
under ``shared/``, ``services/`` or ``ops/`` imports it (tests/unit/test_layout.py).
"""
