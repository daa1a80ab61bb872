"""How far a one-shot verify of a topic has come: records read against the records to read (the end
offsets captured at the start), the rate and the time left.

On a terminal it is one line redrawn in place on standard error; `json` writes one JSON object a line
(for a job runner's log), `none` stays quiet. `auto` is the terminal line when standard error is a
terminal, else quiet, so a pipeline's output and a CI log stay clean.
"""
from __future__ import annotations

import json
import sys
import time
from typing import TextIO

MODES = ("auto", "tty", "json", "none")


class Progress:
    """Call it with (records read, records to read) as reading goes; `close()` at the end."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None, interval_s: float = 0.5,
                 clock=time.monotonic) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {', '.join(MODES)}")
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "tty" if _is_tty(self.stream) else "none"
        self.mode = mode
        self.interval_s = interval_s
        self.clock = clock
        self.started = clock()
        self._last_shown = -interval_s
        self._drawn = False
        self.done = 0
        self.total = 0

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if self.mode == "none":
            return
        now = self.clock()
        if now - self._last_shown < self.interval_s:
            return
        self._last_shown = now
        self._show(now, final=False)

    def close(self) -> None:
        if self.mode == "none":
            return
        self._show(self.clock(), final=True)
        if self.mode == "tty" and self._drawn:
            self.stream.write("\n")
            self.stream.flush()

    def _show(self, now: float, final: bool) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        left = max(0, self.total - self.done)
        eta = left / rate if rate > 0 and not final else None
        if self.mode == "json":
            self.stream.write(json.dumps({"progress": "final" if final else "reading", "records": self.done,
                                          "records_to_read": self.total, "records_per_s": round(rate),
                                          "eta_s": None if eta is None else round(eta, 1),
                                          "elapsed_s": round(elapsed, 1)}) + "\n")
        else:
            share = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
            tail = f", {_duration(eta)} left" if eta is not None else f" in {_duration(elapsed)}"
            self.stream.write(f"\rverify: {self.done:,} of {self.total:,} records{share}, {rate:,.0f}/s{tail}\033[K")
            self._drawn = True
        self.stream.flush()


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
