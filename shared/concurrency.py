"""Concurrent storage calls from an eventlet worker."""
from __future__ import annotations

from typing import Callable, Iterable

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
