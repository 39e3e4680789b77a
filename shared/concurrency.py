"""Concurrent storage calls from an eventlet worker, and the per-process memory its workers share."""
from __future__ import annotations

import collections
import math
import time
from typing import Any, Callable, Hashable, Iterable

import eventlet


def green_map(function: Callable, items: Iterable, concurrency: int) -> list:
    """``[function(item) for item in items]`` with up to ``concurrency`` calls at once, in order; the
    first error is raised here, in the caller's green thread (an exception escaping a green thread
    would also be printed by the hub as unhandled)."""
    def attempt(item):
        try:
            return function(item), None
        except Exception as error:  # noqa: BLE001 - handed back to the caller below
            return None, error

    outcomes = list(eventlet.GreenPool(concurrency).imap(attempt, items))
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
