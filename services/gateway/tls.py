"""TLS of the gateway: its server context, re-read when the certificate files change (the
development certificate `make up TLS=1` serves is made by ``devtools.certificates``)."""
from __future__ import annotations

import logging
import os
import ssl
import threading

logger = logging.getLogger(__name__)


class ServerContext:
    """An ``SSLContext`` for serving ``cert_file`` (with ``key_file``, or the key inside
    ``cert_file`` when that is empty), rebuilt when either file changes, so a renewed
    certificate is served without a restart. A change that does not load (a half-written file)
    keeps the previous context and is logged."""

    def __init__(self, cert_file: str, key_file: str = "", context_class=ssl.SSLContext):
        self.cert_file = cert_file
        self.key_file = key_file or None
        self._context_class = context_class
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._context = self._load()  # at start-up a bad certificate is an error, not a log line

    def _file_stamp(self) -> tuple:
        return tuple(os.stat(path).st_mtime_ns for path in (self.cert_file, self.key_file) if path)

    def _load(self) -> ssl.SSLContext:
        context = self._context_class(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def context(self) -> ssl.SSLContext:
        with self._lock:
            try:
                stamp = self._file_stamp()
                if stamp != self._stamp:
                    self._context, self._stamp = self._load(), stamp
                    logger.info("TLS certificate %s reloaded", self.cert_file)
            except (OSError, ssl.SSLError) as error:
                logger.error("TLS certificate %s unusable, still serving the previous one: %s",
                             self.cert_file, error)
            return self._context
