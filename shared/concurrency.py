"""Concurrent storage calls from an eventlet worker, and the per-process memory its workers share."""
from __future__ import annotations

import collections
import math
import time
from typing import Any, Callable, Hashable, Iterable

import eventlet
import eventlet.event

from shared import tracing


def green_map(function: Callable, items: Iterable, concurrency: int) -> list:
    """``[function(item) for item in items]`` with up to ``concurrency`` calls at once, in order; the
    first error is raised here, in the caller's green thread (an exception escaping a green thread
    would also be printed by the hub as unhandled)."""
    def attempt(item):
        try:
            return function(item), None
        except Exception as error:  # noqa: BLE001 - handed back to the caller below
            return None, error

    outcomes = list(eventlet.GreenPool(concurrency).imap(tracing.carry(attempt), items))
    for _, error in outcomes:
        if error is not None:
            raise error
    return [result for result, _ in outcomes]


class ExpiringCache:
    """Values by key until a time of their own (by default for ever), at most ``max_entries`` (the
    least recently used go first)."""

    def __init__(self, clock: Callable[[], float] = time.time, max_entries: int = 100_000):
        self.clock = clock
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[Hashable, tuple[float, Any]] = collections.OrderedDict()

    def get(self, key: Hashable) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return None
        until, value = entry
        if self.clock() >= until:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any, until: float = math.inf) -> None:
        if until <= self.clock():
            return
        self._entries[key] = (until, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


class SingleFlight:
    """One run at a time per key in this process: a caller arriving while a run is under way waits
    for it and shares its result instead of starting the same work again (a blob's own event and its
    file's event arrive together; many readers ask for the same copy at once).

    When the run fails, waiters re-raise its error with ``share_failures`` (the default: the same
    request would fail the same way), or each try for themselves without it (the failure may belong
    to the first caller alone, e.g. a retry that another event can still win)."""

    def __init__(self, share_failures: bool = True):
        self.share_failures = share_failures
        self._flights: dict[Hashable, eventlet.event.Event] = {}

    def running(self, key: Hashable) -> bool:
        return key in self._flights

    def run(self, key: Hashable, function: Callable[[], Any]) -> Any:
        flight = self._flights.get(key)
        if flight is not None:
            try:
                return flight.wait()
            except Exception:
                if self.share_failures:
                    raise
            # the run this caller waited for failed: it makes its own (a later arrival may be waiting
            # on that one already)
            return self.run(key, function)
        flight = self._flights[key] = eventlet.event.Event()
        try:
            result = function()
        except BaseException as error:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.send_exception(error)
            raise
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.send(result)
        return result
