"""`shipper demo` (the README's first command) end to end: embedded Tansu, the real pipeline, verify,
and a proof; deleted pods' chains are proven complete."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(300)
@pytest.mark.tansu
def test_the_demo_delivers_verifies_proves_and_proves_closed_chains_complete():
    done = subprocess.run([sys.executable, "-m", "shipper.cli", "demo", "--seconds", "3", "--pods", "4"],
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "missing            0" in out
    assert "2 closed chains proven complete" in out, out[-3000:]
    assert "offline check: OK" in out
    assert "VERDICT OK" in out and "RESULT: every line written is in Kafka" in out
