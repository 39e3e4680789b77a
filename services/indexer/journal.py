"""The bundle event journal of a replica (GET /events): every bundle event its indexer announced,
one JSON object per event in the replica's own main bucket. Keys outside the DSS layout are not
replicated, so each replica's indexer keeps the journal of what it indexed.

| key | content |
|---|---|
| ``events/{stamp}.{uuid}.{version}.{event_type}`` | ``{event_id, event_type, event_timestamp, bundle_fqid, document}`` |
| ``announced/{uuid}.{version}.{event_type}`` | ``{event_id, dispatched}``: the version's latest event of that type |

An entry whose document lacks indexed files (``documents.py``: the document's cap, files too large
or unparseable) says how many, by reason: ``files_left_out: {reason: count}``.

An event is journaled once however often its announcement is redone. The ``announced/`` marker is
written (``dispatched: false``) before the entry, and set to ``dispatched: true`` once the event is on
the bus. A redo (a redelivery after a crash or a failed dispatch, possibly in another indexer
process) that finds an undispatched marker whose entry exists dispatches that entry again instead of
journaling a second one. A marker whose entry is missing was left by a writer that died before the
entry was written: the event takes a new stamp, since pollers may already have passed the old one.
A marker written before markers had ``dispatched`` counts as dispatched.

``stamp`` is the moment of journaling in the DSS version format (``2017-06-20T214506.766634Z``),
which sorts lexicographically in time order. So a listing of ``events/`` is the journal in time
order, and a time range is one listing that starts after ``events/{from}`` and stops at
``events/{to}``: what lies before ``from`` is never read. The event id is the key without
``events/``; a page's token is the id of its last event.

A poller that was handed a token must never miss an event journaled later with an earlier stamp.
Stamps are taken in this process, strictly increasing, and a listing stops before the oldest
entry still being written (``JournalClock.horizon``): an entry is visible only once every entry
stamped before it is. This holds because one process, the indexer, writes a replica's journal.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import re

from prometheus_client import Counter

from shared.concurrency import green_map
from shared.bundle_documents import EVENT_TYPES
from shared.exceptions import illegal_token
from shared.identifiers import VERSION_FORMAT, fqid, is_version
from shared.storage import Replicas

from services.indexer.exceptions import illegal_date


logger = logging.getLogger(__name__)

JOURNAL_PREFIX = "events/"
ANNOUNCED_PREFIX = "announced/"
READ_CONCURRENCY = 32

_STAMP = r"\d{4}-\d{2}-\d{2}T\d{6}\.\d{6}Z"
_EVENT_ID = re.compile(rf"^{_STAMP}\.[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}\."
                       rf"{_STAMP}\.({'|'.join(EVENT_TYPES)})$")

EVENTS_JOURNALED = Counter("dss_bundle_events_journaled_total", "Bundle events written to a replica's journal.",
                           ["replica", "event_type"])


def journal_stamp(value: str, what: str) -> str:
    """A ``from_date`` / ``to_date`` as a journal stamp: a DSS version, or an ISO 8601 date or
    date-time (UTC unless it says otherwise)."""
    if is_version(value):
        return value
    try:
        moment = datetime.datetime.fromisoformat(value.strip())
    except (TypeError, ValueError, AttributeError):
        raise illegal_date(what, value) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).strftime(VERSION_FORMAT)


def check_token(token: str) -> str:
    if not isinstance(token, str) or not _EVENT_ID.match(token):
        raise illegal_token(f"token {token!r} is not one this API returned")
    return token


class JournalClock:
    """Stamps of one process's journal entries, strictly increasing per replica, and the entries
    still being written (shared by the workers of the provider)."""

    def __init__(self, now=lambda: datetime.datetime.now(datetime.timezone.utc)):
        self.now = now
        self._last: dict[str, datetime.datetime] = {}
        self._writing: dict[str, list[str]] = {}

    @contextlib.contextmanager
    def stamp(self, replica: str):
        """A new stamp, counted as being written until the block ends. No green thread switch can
        happen between taking the stamp and registering it (no I/O in between)."""
        moment = self.now()
        last = self._last.get(replica)
        if last is not None and moment <= last:
            moment = last + datetime.timedelta(microseconds=1)
        self._last[replica] = moment
        stamp = moment.strftime(VERSION_FORMAT)
        writing = self._writing.setdefault(replica, [])
        writing.append(stamp)
        try:
            yield moment, stamp
        finally:
            writing.remove(stamp)

    def horizon(self, replica: str) -> str | None:
        """The oldest stamp still being written: a listing must stop before it."""
        writing = self._writing.get(replica)
        return min(writing) if writing else None


class EventJournalAPI:
    def __init__(self, replicas: Replicas, clock: JournalClock):
        self.replicas = replicas
        self.clock = clock

    def append(self, replica: str, event_type: str, uuid: str, version: str, document: dict,
               files_left_out: dict[str, int] | None = None) -> dict:
        """Journal one event, or return the entry an earlier attempt journaled and did not mark
        dispatched (see above); its ``event_timestamp`` is the stamp's ISO form.
        ``files_left_out``: indexed files the document lacks, by reason (see ``documents.py``)."""
        storage = self.replicas[replica]
        marker_key = self._announced_key(uuid, version, event_type)
        marker = storage.find_json(marker_key)
        if marker is not None and not marker.get("dispatched", True):
            earlier = storage.find_json(JOURNAL_PREFIX + marker["event_id"])
            if earlier is not None:
                logger.info("%s of %s in %s was journaled by an earlier attempt: announcing that entry",
                            event_type, earlier["bundle_fqid"], replica)
                return earlier
        with self.clock.stamp(replica) as (moment, stamp):
            event_id = f"{stamp}.{uuid}.{version}.{event_type}"
            entry = {"event_id": event_id, "event_type": event_type,
                     "event_timestamp": moment.isoformat(timespec="microseconds").replace("+00:00", "Z"),
                     "bundle_fqid": fqid(uuid, version), "document": document}
            if files_left_out:
                entry["files_left_out"] = dict(files_left_out)
            storage.write_json(marker_key, {"event_id": event_id, "dispatched": False})
            storage.write_json_once(JOURNAL_PREFIX + event_id, entry)
        EVENTS_JOURNALED.labels(replica, event_type).inc()
        logger.info("journaled %s of %s in %s", event_type, entry["bundle_fqid"], replica)
        return entry

    def announced(self, replica: str, uuid: str, version: str, event_type: str) -> bool:
        """Whether the version's latest event of that type is journaled and on the bus."""
        marker = self.replicas[replica].find_json(self._announced_key(uuid, version, event_type))
        return marker is not None and marker.get("dispatched", True)

    def mark_announced(self, replica: str, uuid: str, version: str, event_type: str, event_id: str) -> None:
        self.replicas[replica].write_json(self._announced_key(uuid, version, event_type),
                                          {"event_id": event_id, "dispatched": True})

    @staticmethod
    def _announced_key(uuid: str, version: str, event_type: str) -> str:
        return f"{ANNOUNCED_PREFIX}{uuid}.{version}.{event_type}"

    def page(self, replica: str, from_date: str | None, to_date: str | None, per_page: int,
             token: str | None) -> dict:
        """Up to ``per_page`` entries from ``from_date`` (inclusive) to ``to_date`` (exclusive),
        after ``token``, in time order. ``token`` is None once the range is exhausted."""
        storage = self.replicas[replica]
        starts = [JOURNAL_PREFIX + journal_stamp(from_date, "from_date")] if from_date else []
        if token:
            starts.append(JOURNAL_PREFIX + check_token(token))
        start_after = max(starts) if starts else None
        end = JOURNAL_PREFIX + journal_stamp(to_date, "to_date") if to_date else None
        horizon = self.clock.horizon(replica)
        held = JOURNAL_PREFIX + horizon if horizon else None
        held_back = False
        keys: list[str] = []
        for key in storage.list_keys(JOURNAL_PREFIX, start_after):
            if end is not None and key >= end:
                break
            if held is not None and key >= held:
                held_back = True  # an older entry is still being written: the next page starts here
                break
            keys.append(key)
            if len(keys) > per_page:  # one more than a page tells whether another page follows
                break
        more = len(keys) > per_page or held_back
        page = keys[:per_page]
        entries = green_map(storage.read_json, page, READ_CONCURRENCY)
        if page:
            next_token = entries[-1]["event_id"] if more else None
        else:
            next_token = token if held_back else None
        return {"event_streams": entries, "token": next_token}
