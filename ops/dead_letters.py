"""`dss-ops dead-letters list|show|replay`: the messages that background work gave up on
(``shared.retry`` parks them in ``<handler queue>.dead``), listed per queue, shown, or replayed
into their handler's queue."""
from __future__ import annotations

import json
import sys
from typing import TextIO

from ops.broker import vhost_of
from shared import retry


def run_command(action: str, amqp_uri: str, management_url: str, queue: str | None = None,
                limit: int | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``list``: every dead-letter queue of the AMQP URI's vhost with its count; ``show``: up to
    ``limit`` (20) of ``queue``'s dead letters as JSON lines; ``replay``: move them (all, or
    ``limit``) back into ``queue``. 2 when ``queue`` is needed and missing."""
    out, err = out or sys.stdout, err or sys.stderr
    if action == "list":
        vhost = vhost_of(amqp_uri)  # of the first node when AMQP_URI lists a cluster's
        queues = retry.dead_letter_queues(management_url, vhost)
        for name, count in sorted(queues.items()):
            out.write(f"{count:8d}  {name}\n")
        if not queues:
            err.write("no dead-letter queues\n")
        return 0
    if not queue:
        err.write(f"dss-ops dead-letters {action} needs the handler queue (see `dead-letters list`)\n")
        return 2
    if action == "show":
        for letter in retry.peek_dead_letters(amqp_uri, queue, limit or 20):
            out.write(json.dumps(letter, sort_keys=True) + "\n")
        return 0
    if action == "replay":
        moved = retry.replay_dead_letters(amqp_uri, queue, limit)
        err.write(f"replayed {moved} message(s) into {queue}\n")
        return 0
    raise ValueError(action)
