"""A chain's verify state survives its JSON snapshot (snapshot.py): a verifier restored from the snapshots
taken midway judges the rest of the topic as one that read it all, violations included."""
from __future__ import annotations

import json

import pytest

from shipper.verify import Verifier
from shipper.verify.snapshot import chain_from_dict, chain_to_dict
from tests.unit.test_verify import KEYS, SPEC_END, spec_node, standard_node


def judged(report) -> dict:
    out = report.to_dict()
    del out["meta"]
    for chain in out["chains"]:
        # issues found before the snapshot were reported then; the restored verifier keeps their counts only
        chain["violations"] = chain["findings"] = None
    return out


def tampered(name: str):
    topic = spec_node().topic() if name != "legacy" else standard_node().topic()
    if name == "altered_after":
        record = topic.record("uid-1/app", 250)
        record["body"] = "changed"
        topic.replace("uid-1/app", 250, record)
    elif name == "deleted_across":
        for seq in range(140, 160):
            topic.delete("uid-1/app", seq)
    elif name == "swapped":
        topic.swap("uid-3/web", 80, 90)
    return topic


@pytest.mark.parametrize("name", ["clean", "legacy", "altered_after", "deleted_across", "swapped"])
@pytest.mark.parametrize("cut", [0.3, 0.5, 0.8])
def test_a_verifier_restored_midway_judges_as_one_that_read_it_all(name, cut):
    topic = tampered(name)
    rows = topic.rows()
    whole = Verifier(KEYS, now=SPEC_END + 60)
    for partition, offset, key, value in rows:
        whole.feed(value, key, partition, offset, topic="logs")
    expected = judged(whole.finish())

    first = Verifier(KEYS, now=SPEC_END + 60)
    split = int(len(rows) * cut)
    for partition, offset, key, value in rows[:split]:
        first.feed(value, key, partition, offset, topic="logs")
    saved = json.loads(json.dumps([chain_to_dict(state, 100_000) for state in first.chains.values()]))
    second = Verifier(KEYS, now=SPEC_END + 60)
    second.records = first.records
    second.violation_counts = first.violation_counts
    for data in saved:
        second.chains[data["name"]] = chain_from_dict(data, second.window)
    for partition, offset, key, value in rows[split:]:
        second.feed(value, key, partition, offset, topic="logs")
    assert judged(second.finish()) == expected


def test_a_snapshot_keeps_only_the_latest_seqs_of_the_window():
    verifier = Verifier(KEYS)
    for partition, offset, key, value in spec_node().topic().rows():
        verifier.feed(value, key, partition, offset, topic="logs")
    state = verifier.chains["uid-1/app"]
    data = chain_to_dict(state, 10)
    assert [seq for seq, _ in data["window"]] == list(range(state.head_seq - 9, state.head_seq + 1))
    restored = chain_from_dict(data, verifier.window)
    assert restored.window.get(state.head_seq) == (state.window.get(state.head_seq)[0], -1)
