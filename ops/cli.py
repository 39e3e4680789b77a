"""`dss-ops`: the operator commands of a running store, against the broker at AMQP_URI and the
stores the DSS_* settings name (the same settings as the services).

    dss-ops status [--json]                                    (ops.status)
    dss-ops dead-letters list | show QUEUE | replay QUEUE     (ops.dead_letters)
    dss-ops replicas verify | repair [--prefix P] [--deep]     (ops.replicas)
    dss-ops reindex --replica aws|gcp                          (the indexer's reindex RPCs)
    dss-ops collections index [--replica aws|gcp]              (the bundles service's owner index)
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings

from ops.broker import amqp_uri, management_url, management_urls, vhost_of

logger = logging.getLogger(__name__)


def cmd_status(args) -> int:
    """The broker's nodes, the services' instances and queues, replication backlog, dead letters."""
    from ops import status
    return status.run_command(management_urls(), vhost_of(), as_json=args.json)


def cmd_dead_letters(args) -> int:
    """List, show or replay the messages that background work gave up on (shared.retry)."""
    from ops import dead_letters
    return dead_letters.run_command(args.action, amqp_uri(), management_url(), args.queue, args.limit)


def cmd_replicas(args) -> int:
    """Compare the two main buckets key by key; `repair` re-enqueues what differs."""
    from ops import replicas
    from shared.config import Settings
    return replicas.run_command(args.action, Settings.from_config({}), amqp_uri(), prefix=args.prefix,
                                deep=args.deep, wait=args.wait)


def cmd_reindex(args) -> int:
    """Rebuild a replica's search index on the running indexer, following it with a progress bar."""
    from services.indexer.cli import run_reindex_command
    return run_reindex_command(args.replica, amqp_uri())


def cmd_collections(args) -> int:
    """Index the collections of a store written before the owner index (services/bundles/owner_index.py)."""
    from services.bundles.cli import run_owner_index_command
    from shared.config import Settings
    return run_owner_index_command(Settings.from_config({}), (args.replica,) if args.replica else ("aws", "gcp"))


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dss-ops", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    state = commands.add_parser("status", help="the live system at a glance (exit 1: something needs attention)")
    state.add_argument("--json", action="store_true", help="print it as JSON")
    state.set_defaults(run=cmd_status)
    letters = commands.add_parser("dead-letters", help="list, show or replay dead-lettered background work")
    letters.add_argument("action", choices=("list", "show", "replay"))
    letters.add_argument("queue", nargs="?", help="the handler queue, as `list` prints it")
    letters.add_argument("--limit", type=int, default=None, help="at most this many messages")
    letters.set_defaults(run=cmd_dead_letters)
    replicas = commands.add_parser("replicas", help="compare the replicas' main buckets; repair what differs")
    replicas.add_argument("action", choices=("verify", "repair"))
    replicas.add_argument("--prefix", default="", help="only keys starting with this (e.g. files/)")
    replicas.add_argument("--deep", action="store_true", help="hash every blob, compare documents byte for byte")
    replicas.add_argument("--wait", type=float, default=0, help="repair: seconds to wait for the copies to match")
    replicas.set_defaults(run=cmd_replicas)
    reindex = commands.add_parser("reindex", help="rebuild a replica's search index without downtime")
    reindex.add_argument("--replica", required=True, choices=("aws", "gcp"))
    reindex.set_defaults(run=cmd_reindex)
    collections = commands.add_parser("collections", help="index the collections of a store written before the "
                                                          "owner index (once, after upgrading)")
    collections.add_argument("action", choices=("index",))
    collections.add_argument("--replica", choices=("aws", "gcp"), help="one replica (default: both)")
    collections.set_defaults(run=cmd_collections)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # eventlet (imported by the blob stores) warns about its own deprecation on import: noise here.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("botocore", "boto3", "urllib3", "google", "amqp", "kombu"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
