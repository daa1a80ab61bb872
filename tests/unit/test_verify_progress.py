"""The progress of a topic verify: a redrawn line on a terminal, JSON lines on request, nothing otherwise."""
from __future__ import annotations

import io
import json

import pytest

from shipper.verify.progress import Progress


class FakeTerminal(io.StringIO):
    """Standard error as a terminal (a stand-in: what is tested is what Progress writes to it)."""

    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_on_a_terminal_one_line_shows_records_rate_and_time_left():
    clock, out = Clock(), FakeTerminal()
    progress = Progress("auto", out, clock=clock)
    clock.now += 2
    progress(100_000, 400_000)
    assert out.getvalue() == "\rverify: 100,000 of 400,000 records (25 %), 50,000/s, 6s left\x1b[K"
    clock.now += 0.1
    progress(110_000, 400_000)       # within the interval: not redrawn
    assert out.getvalue().count("\r") == 1
    clock.now += 6
    progress(400_000, 400_000)
    progress.close()
    assert out.getvalue().endswith("\rverify: 400,000 of 400,000 records (100 %), 49,383/s in 8s\x1b[K\n")


def test_not_a_terminal_stays_quiet_unless_json_is_asked():
    quiet = io.StringIO()
    progress = Progress("auto", quiet)
    progress(5, 10)
    progress.close()
    assert quiet.getvalue() == ""
    clock, out = Clock(), io.StringIO()
    progress = Progress("json", out, clock=clock)
    clock.now += 1
    progress(10, 40)
    progress.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {"progress": "reading", "records": 10, "records_to_read": 40, "records_per_s": 10,
                        "eta_s": 3.0, "elapsed_s": 1.0}
    assert lines[-1]["progress"] == "final" and lines[-1]["eta_s"] is None


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="progress mode"):
        Progress("fancy")
