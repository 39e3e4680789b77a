"""One active indexer per index directory: the leader lock.

The embedded engine takes one writer per index (tantivy's ``LockBusy`` for any other process), and
the indexer serialises the writes of one bundle (a CREATE read from the bucket against a TOMBSTONE
of the same version, the journal's stamps) inside its process only. So of the indexer processes
sharing ``DSS_INDEX_DIR`` one leads: it holds an exclusive ``flock`` on ``{DSS_INDEX_DIR}/indexer.leader``
for as long as it runs, and the others wait for the lock before their container consumes anything
(hot standbys: no queue, RPC or event reaches them). The operating system releases the lock when the
leader's process ends, however it ends (``kill -9`` too), and a standby takes over within
``POLL_SECONDS``; what the leader had not acknowledged the broker delivers again.
"""
from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

import eventlet

logger = logging.getLogger(__name__)

LOCK_NAME = "indexer.leader"
POLL_SECONDS = 1.0


class LeaderLock:
    """The leader lock of the index directory ``root``: ``acquire()`` returns once this process
    holds it (waiting green, never blocking the event loop); ``release()`` lets a standby lead."""

    def __init__(self, root, poll_seconds: float = POLL_SECONDS):
        self.path = Path(root) / LOCK_NAME
        self.poll_seconds = poll_seconds
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def try_acquire(self) -> bool:
        if self._file is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")  # who leads, for an operator; the lock is the flock
        handle.flush()
        self._file = handle
        return True

    def acquire(self) -> None:
        waited = False
        while not self.try_acquire():
            if not waited:
                logger.info("another indexer leads %s: standing by until its lock is free", self.path.parent)
                waited = True
            eventlet.sleep(self.poll_seconds)
        logger.info("leading the indexer of %s%s", self.path.parent, " (took over)" if waited else "")

    def release(self) -> None:
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()  # closing the last descriptor releases the flock
