"""The one progress bar of the operator commands (`dss-ops replicas`, `dss-ops reindex`): a line
redrawn in place on a terminal, or a plain line every few seconds when the output is a log."""
from __future__ import annotations

import time
from typing import TextIO

WIDTH = 30


class ProgressBar:
    def __init__(self, stream: TextIO, interval: float | None = None, line_width: int = 110):
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.line_width = line_width
        self.started = time.monotonic()
        self.last: float | None = None

    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-6)

    def due(self) -> bool:
        """Whether a redraw is due (at most one per ``interval``); claims it if so."""
        now = time.monotonic()
        if self.last is not None and now - self.last < self.interval:
            return False
        self.last = now
        return True

    def draw(self, fraction: float | None, text: str) -> None:
        """``fraction`` of the work done (None: unknown), then ``text``."""
        if fraction is None:
            bar = f"[{'?' * WIDTH}]    "
        else:
            fraction = min(max(fraction, 0.0), 1.0)
            filled = int(fraction * WIDTH)
            bar = f"[{'#' * filled}{'.' * (WIDTH - filled)}] {fraction * 100:3.0f}%"
        line = f"{bar} {text}"
        if self.tty:
            self.stream.write("\r" + line.ljust(self.line_width)[:self.line_width])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()
