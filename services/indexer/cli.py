"""`dss-ops reindex --replica aws`: start a reindex of a replica's search index on the running
indexer (RPC ``start_reindex``) and follow it (``reindex_status``) with a progress bar until it
ends. A reindex already running is followed instead of started."""
from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from shared.progress_bar import ProgressBar

logger = logging.getLogger(__name__)


class ReindexProgress:
    """The reindex job's status as a progress bar."""

    def __init__(self, stream: TextIO, interval: float | None = None):
        self.bar = ProgressBar(stream, interval, line_width=100)

    def update(self, status: dict, force: bool = False) -> None:
        if not (self.bar.due() or force):
            return
        done, total = status.get("done") or 0, status.get("total")
        fraction = done / total if total else None
        counted = f"{done}/{total}" if total else f"{done}/?"
        self.bar.draw(fraction, f"{counted} documents, {done / self.bar.elapsed():.0f}/s, "
                                f"generation {status.get('generation')}")

    def finish(self, status: dict) -> None:
        self.update(status, force=True)
        self.bar.close()


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
            bar = ReindexProgress(err)
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
