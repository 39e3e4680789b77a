"""What bundle manifests and collections have in common in a replica's main bucket: every document
is written once (an identical repeat is a no-op, different content a conflict) and listed by uuid
with the versions a tombstone hides (layout in docs/architecture.md, "Storage layout")."""
from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Callable, Iterator

from shared.exceptions import DSSError
from shared.identifiers import is_version
from shared.storage import ReplicaStorage, split_versions

logger = logging.getLogger(__name__)

# Parallel storage reads per request: a bundle may list thousands of files, each one GET.
LOOKUP_CONCURRENCY = 32

CREATED, EXISTS = "created", "exists"


@dataclasses.dataclass(frozen=True)
class Written:
    """The outcome of a write-once: ``status`` is "created", or "exists" for an identical repeat."""
    status: str
    key: str
    uuid: str
    version: str | None
    doc: dict

    @property
    def created(self) -> bool:
        return self.status == CREATED


def write_once(storage: ReplicaStorage, key: str, uuid: str, version: str | None, doc: dict,
               conflict: Callable[[], DSSError]) -> Written:
    """Write ``doc`` at ``key`` unless something is there already: an identical document makes the
    write a repeat ("exists"), a different one raises ``conflict()``."""
    existing = storage.write_json_once(key, doc)
    if existing is None:
        logger.info("wrote %s to replica %s", key, storage.replica)
        return Written(CREATED, key, uuid, version, doc)
    if existing != doc:
        raise conflict()
    return Written(EXISTS, key, uuid, version, existing)


def version_groups(storage: ReplicaStorage, root: str, prefix: str = "", start_after: str | None = None
            ) -> Iterator[tuple[str, list[str], set[str]]]:
    """(uuid, versions, tombstoned versions) for each uuid under ``root`` (``bundles/`` or
    ``collections/``), in key order. A uuid's keys are contiguous and its tombstones sort after
    the versions they cover, so each uuid is judged only once all its keys have been seen."""
    keys = storage.list_keys(root + prefix, start_after)
    for uuid, group in itertools.groupby(keys, key=lambda key: key[len(root):].partition(".")[0]):
        versions, dead = split_versions(key[len(root) + len(uuid) + 1:] for key in group)
        yield uuid, [version for version in versions if is_version(version)], dead
