"""`dss-ops reindex --replica aws`: start a reindex of a replica's search index on the running
indexer (RPC ``start_reindex``) and follow it (``reindex_status``) with a progress bar until it
ends. A reindex already running is followed instead of started."""
from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

logger = logging.getLogger(__name__)


class ProgressBar:
    """A one-line bar on a terminal, or a line every few seconds in a log."""

    WIDTH = 30

    def __init__(self, stream: TextIO, interval: float | None = None):
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.started = time.monotonic()
        self.last = None

    def update(self, status: dict, force: bool = False) -> None:
        now = time.monotonic()
        if not force and self.last is not None and now - self.last < self.interval:
            return
        self.last = now
        done, total = status.get("done") or 0, status.get("total")
        rate = done / max(now - self.started, 1e-6)
        if total:
            fraction = min(done / total, 1.0)
            filled = int(fraction * self.WIDTH)
            bar = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction * 100:3.0f}% {done}/{total}"
        else:
            bar = f"[{'?' * self.WIDTH}]      {done}/?"
        line = f"{bar} documents, {rate:.0f}/s, generation {status.get('generation')}"
        if self.tty:
            self.stream.write("\r" + line.ljust(100)[:100])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self, status: dict) -> None:
        self.update(status, force=True)
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()


def run_reindex_command(replica: str, amqp_uri: str, err: TextIO | None = None, poll: float = 0.5,
                        rpc_timeout: float = 30) -> int:
    """0 once the new generation is live; 1 if the reindex failed; 2 if the indexer is not running."""
    from nameko.exceptions import UnknownService
    from nameko.standalone.rpc import ClusterRpcProxy

    err = err or sys.stderr
    try:
        with ClusterRpcProxy({"AMQP_URI": amqp_uri}, timeout=rpc_timeout) as cluster:
            status = cluster.indexer.start_reindex(replica)
            if status.get("started"):
                err.write(f"reindexing {replica} into generation {status['generation']}\n")
            else:
                err.write(f"a reindex of {replica} is already running (generation {status['generation']}); "
                          "following it\n")
            bar = ProgressBar(err)
            while status["state"] == "running":
                bar.update(status)
                time.sleep(poll)
                status = cluster.indexer.reindex_status(replica)
            bar.finish(status)
    except UnknownService:
        err.write("the indexer is not running (make up)\n")
        return 2
    if status["state"] != "succeeded":
        err.write(f"reindex of {replica} {status['state']} after {status['done']} documents: "
                  f"{status.get('error', 'no reason given')}; the live index is unchanged\n")
        return 1
    err.write(f"reindexed {status['done']} documents of {replica}; generation {status['generation']} is live\n")
    return 0
