"""The memory the copies of one replicator process may hold at once, shared out in arrival order."""
from __future__ import annotations

import collections
import contextlib

from eventlet.event import Event


class MemoryBudget:
    """Bytes of blob data all the copies of one process may hold; a copy waits for its share, in
    arrival order (so a large copy is not starved by a stream of small ones)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.free = limit
        self._waiting: collections.deque[tuple[int, Event]] = collections.deque()

    @contextlib.contextmanager
    def hold(self, amount: int):
        amount = min(amount, self.limit)  # a copy larger than the budget runs alone
        if self._waiting or self.free < amount:
            turn = Event()
            self._waiting.append((amount, turn))
            turn.wait()  # the release that made room took our share for us
        else:
            self.free -= amount
        try:
            yield
        finally:
            self.free += amount
            while self._waiting and self._waiting[0][0] <= self.free:
                share, turn = self._waiting.popleft()
                self.free -= share
                turn.send()
