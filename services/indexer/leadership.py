"""One active indexer per index directory: the leader lock.

The embedded engine takes one writer per index (tantivy's ``LockBusy`` for any other process), and
the indexer serialises the writes of one bundle (a CREATE read from the bucket against a TOMBSTONE
of the same version, the journal's stamps) inside its process only. So of the indexer processes
sharing ``DSS_INDEX_DIR`` one leads: it holds an exclusive ``flock`` on ``{DSS_INDEX_DIR}/indexer.leader``
for as long as it runs, and the others wait for the lock before their container consumes anything
(hot standbys: no queue, RPC or event reaches them). The operating system releases the lock when the
leader's process ends, however it ends (``kill -9`` too), and a standby takes over within
``POLL_SECONDS``; what the leader had not acknowledged the broker delivers again.

A standby is still an instance an operator should see: while it waits it keeps a broker connection
consuming a queue of its own (``StandbyPresence``, ``shared.entrypoints.standby_queue``), which
``dss-ops status`` counts as a standing-by instance of its service.
"""
from __future__ import annotations

import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Callable

import eventlet
from kombu import Connection, Consumer

from shared.entrypoints import DROPPED_CONNECTION_ERRORS, standby_queue

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

    def acquire(self, while_waiting: Callable[[], None] = lambda: None) -> None:
        """``while_waiting`` is called once per poll as long as another process leads."""
        waited = False
        while not self.try_acquire():
            if not waited:
                logger.info("another indexer leads %s: standing by until its lock is free", self.path.parent)
                waited = True
            while_waiting()
            eventlet.sleep(self.poll_seconds)
        logger.info("leading the indexer of %s%s", self.path.parent, " (took over)" if waited else "")

    def release(self) -> None:
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()  # closing the last descriptor releases the flock


class StandbyPresence:
    """A broker connection consuming an exclusive queue of its own while this process stands by;
    ``keep()`` (called each poll) opens it, or opens it again once the connection has dropped (a
    node lost), and ``close()`` ends it. Failing to reach the broker only delays being seen."""

    def __init__(self, amqp_uri: str, service_name: str):
        self.amqp_uri = amqp_uri
        self.service_name = service_name
        self._connection: Connection | None = None

    def keep(self) -> None:
        try:
            if self._connection is None:
                self._open()
            else:
                self._connection.drain_events(timeout=0.01)  # raises if the connection has dropped
        except socket.timeout:
            pass  # alive, and nothing came (nothing ever does)
        except DROPPED_CONNECTION_ERRORS as error:
            logger.info("standby presence on the broker lost (%r): opening it again", error)
            self.close()

    def _open(self) -> None:
        connection = Connection(self.amqp_uri, connect_timeout=5)
        try:
            channel = connection.channel()
            queue = standby_queue(self.service_name)(channel)
            queue.declare()
            Consumer(channel, [queue], no_ack=True, auto_declare=False).consume()
        except BaseException:
            connection.release()
            raise
        self._connection = connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.release()
            except DROPPED_CONNECTION_ERRORS:
                pass  # gone already: so is its queue
