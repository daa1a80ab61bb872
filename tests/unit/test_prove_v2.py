"""Per-record proofs of audit-shipper/v2 records: every test of tests/unit/test_prove.py runs again here
over the same chains written as v2 records (no event_id member: the proof names the record by its seal)."""
from __future__ import annotations

import functools

import pytest

import tests.unit.test_verify as v1_tests
from shipper.records import ChainContext
from tests.unit.test_prove import *  # noqa: F401,F403  (collected again: over v2 records here)


@pytest.fixture(autouse=True, scope="module")
def compact_records():
    """The builders of tests/unit/test_verify.py write v2 records in this module (before its topic)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(v1_tests, "ChainContext", functools.partial(ChainContext, compact=True))
        yield


def test_the_proven_records_here_are_v2_records(proof):
    assert proof["record"]["schema"] == "audit-shipper/v2" and "event_id" not in proof["record"]
