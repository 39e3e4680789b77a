"""`dss-ops collections index [--replica R]`: build each replica's owner index of collections
(owner_index.py) from the collections it holds, once, for a store written before the index
existed; run again it changes nothing but stale markers. Runs in the command's own process,
straight against the buckets (the services may keep running)."""
from __future__ import annotations

import sys
from typing import TextIO

from shared.config import Settings
from shared.storage import open_replicas

from services.bundles.dependencies import BundleStoreAPI


def run_owner_index_command(settings: Settings, replicas: tuple[str, ...], out: TextIO | None = None) -> int:
    out = out or sys.stdout
    store = BundleStoreAPI(open_replicas(settings), settings)
    for replica in replicas:
        counts = store.collections.rebuild_owner_index(replica)
        print(f"{replica}: {counts['indexed']} live collection(s) indexed by owner, "
              f"{counts['removed']} stale marker(s) removed", file=out)
    return 0
