"""Measuring helpers shared by the benchmarks in bench/ (not a benchmark itself: `make bench` runs
only the scripts whose names do not start with an underscore)."""
from __future__ import annotations

import threading

import psutil


def percentile(values, pct):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


class PeakRSS:
    """Samples the RSS of a process and its children in a thread; ``peak`` in bytes."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.process = psutil.Process(pid)
        self.interval, self.peak, self.samples = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def current(self) -> int:
        return self.process.memory_info().rss + sum(c.memory_info().rss for c in self.process.children(True))

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.current())
                self.samples += 1
            except psutil.Error:  # a child that ended between listing and reading
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
