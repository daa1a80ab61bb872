"""The bulk path of the verifier (Kafka batches -> batches.verify_records -> Verifier.feed_scanned) gives the
same report as feeding every record to Verifier.feed in the same order, on the topics of test_verify.py
with every kind of tampering, cut into batches of random sizes, in every codec, read a few batches at a
time with partitions interleaved, in both record formats (audit-shipper/v1 and the compact /v2: every test
here runs over each). The verifiers' inner state (heads, windows, trees, attribution) must match too, so a
difference shows where it starts, not only at the end.
"""
from __future__ import annotations

import functools
import json
import random

import pytest
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from hypothesis import HealthCheck, given, settings, strategies as st

import tests.unit.test_verify as builders
from shipper.kafka.wire import _CODECS
from shipper.records import ChainContext
from shipper.verify import Verifier
from shipper.verify.batches import batch_records, split_batches, verify_records
from shipper.verify.tree import PENDING_MAX, RECENT_LEAVES
from tests.unit.test_verify import (ATTACKER, KEYS, SPEC_END, FakeNode, Node, Topic, refused_record_node, rehash,
                                    rewrite_chain_without_the_key, rewrite_identity, spec_node, standard_node)

CODEC_NAMES = ["none", "gzip", "snappy", "lz4", "zstd"]
Row = tuple  # (key, value, headers)


@pytest.fixture(autouse=True, scope="module", params=["v1", "v2"])
def record_format(request):
    """The builders of tests/unit/test_verify.py write v1 records, then (as test_verify_v2.py has them) v2."""
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "v2":
            patch.setattr(builders, "ChainContext", functools.partial(ChainContext, compact=True))
        yield request.param


def headers_for(value: bytes | None) -> list[tuple[str, bytes]]:
    """The shipper's headers: the value's own schema, and the event_id its seal implies."""
    try:
        record = json.loads(value)
        schema = str(record.get("schema", "audit-shipper/v1")).encode()
        event_id = str(record.get("event_id") or f"{record['seal']['chain']}:{record['seal']['seq']}").encode()
    except (TypeError, ValueError, AttributeError, KeyError):
        schema, event_id = b"audit-shipper/v1", b""
    return [("schema", schema), ("event_id", event_id)]


def rows_of(topic: Topic) -> dict[int, list[Row]]:
    return {part: [(key, value, headers_for(value)) for key, value in records]
            for part, records in topic.partitions.items()}


def encode(rows: list[Row], base_offset: int, codec: str) -> bytes:
    builder = _DefaultRecordBatchBuilderPy(2, _CODECS[codec], 0, -1, -1, -1, 1 << 30)
    for index, (key, value, headers) in enumerate(rows):
        builder.append(index, 1_700_000_000_000, key, value, headers)
    batch = bytearray(builder.build())
    batch[0:8] = base_offset.to_bytes(8, "big")
    return bytes(batch)


def reads_of(rows: list[Row], rng: random.Random, codec: str) -> list[tuple[int, list[bytes]]]:
    """The partition as a consumer fetches it: batches of random sizes, a few per fetch; (first offset of
    the fetch, its batches)."""
    batches, offset = [], 0
    while offset < len(rows):
        size = rng.choice([1, 2, 3, 7, 20, 50, 200])
        batches.append((offset, encode(rows[offset:offset + size], offset, codec)))
        offset += size
    reads = []
    while batches:
        take = rng.randrange(1, 4)
        reads.append((batches[0][0], [batch for _, batch in batches[:take]]))
        del batches[:take]
    return reads


def verify_both(partitions: dict[int, list[Row]], seed: int = 0, codec: str = "none", trusted: list | None = None,
                **options) -> tuple[Verifier, Verifier]:
    """(fed record by record, fed in bulk), partitions interleaved fetch by fetch in the same order."""
    rng = random.Random(seed)
    options.setdefault("now", SPEC_END + 60)
    public_keys = options.pop("public_keys", KEYS)
    slow, fast = Verifier(public_keys, **options), Verifier(public_keys, **options)
    if trusted:
        slow.trust_heads(trusted, "saved")
        fast.trust_heads(trusted, "saved")
    pending = {part: reads_of(rows, rng, codec) for part, rows in sorted(partitions.items()) if rows}
    while pending:
        part = rng.choice(sorted(pending))
        first, batches = pending[part].pop(0)
        if not pending[part]:
            del pending[part]
        for offset in range(first, first + sum(_count(batch) for batch in batches)):
            key, value, headers = partitions[part][offset]
            slow.feed(value, key, part, offset, topic="logs", headers=headers)
        scanned = verify_records([_records(batch) for batch in batches], first)
        assert scanned.errors == []
        fast.feed_scanned(scanned, "logs", part)
    return slow, fast


def _count(batch: bytes) -> int:
    return int.from_bytes(batch[57:61], "big")


def _records(batch: bytes) -> tuple:
    (raw,), _, _ = split_batches(batch)
    return batch_records(raw), raw.base_offset, raw.count


def snapshot(verifier: Verifier) -> dict:
    out = {"records": verifier.records, "where": verifier._where}
    for name, state in verifier.chains.items():
        tree, window, attribution = state.tree, state.window, state.attribution
        out[name] = (state.records, state.log_records, state.links, state.first_seq, state.head_seq, state.head_hash,
                     list(state.head_alternatives), state.partition, window.high, window.hashes.tobytes(),
                     window.offsets.tobytes(), tree.next, tree.start, bytes(tree.pending), tree.frontier, tree.future,
                     tree.checked, tree.unchecked,
                     None if attribution is None else (attribution.identity, attribution.buckets, attribution.recent,
                                                       attribution.overflow))
    return out


def assert_same(partitions: dict[int, list[Row]], **options) -> dict:
    slow, fast = verify_both(partitions, **options)
    assert snapshot(fast) == snapshot(slow)
    expected = slow.finish().to_dict()
    assert fast.finish().to_dict() == expected
    return expected


def test_a_clean_topic_is_judged_in_bulk_but_for_control_records_and_each_chain_s_first(monkeypatch):
    fed = []
    original = Verifier.feed

    def counting(self, *args, **kwargs):
        fed.append(args[3])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Verifier, "feed", counting)
    rows = rows_of(spec_node().topic())
    for seed in range(4):
        fed.clear()
        slow, fast = verify_both(rows, seed=seed, codec="snappy")
        total = sum(len(records) for records in rows.values())
        controls = sum(1 for records in rows.values() for _, value, _ in records if b'"type":' in value)
        assert fast.finish().to_dict() == slow.finish().to_dict()
        container_chains = [name for name in slow.chains if not name.startswith("node/")]   # (a node's: manifests)
        assert len(fed) - total == controls + len(container_chains)    # (the slow verifier feeds every record)


# -- the topics of test_verify.py, changed the ways it changes them -----------------------------------------

def _standard(change) -> Topic:
    topic = standard_node().topic()
    change(topic)
    return topic


def _spec(change) -> Topic:
    topic = spec_node().topic()
    change(topic)
    return topic


def _alter(chain: str, seq: int, **fields):
    def change(topic: Topic) -> None:
        record = topic.record(chain, seq)
        record.update(fields)
        topic.replace(chain, seq, record)
    return change


def _inserted(topic: Topic) -> None:
    forged = topic.record("uid-1/app", 200)
    forged["body"] = "admin logged in"
    topic.insert_before("uid-1/app", 200, rehash(forged, bytes.fromhex(topic.record("uid-1/app", 199)["seal"]["hash"])))


def _conflicting(topic: Topic) -> None:
    copy = topic.record("uid-3/web", 30)
    copy["body"] = "something else entirely"
    copy = rehash(copy, bytes.fromhex(copy["seal"]["prev"]))
    part, index = topic.locate("uid-3/web", 40)
    topic.partitions[part].insert(index, (b"uid-3/web", json.dumps(copy).encode()))


def _replayed(topic: Topic) -> None:
    part, index = topic.locate("uid-1/app", 150)
    records = topic.partitions[part]
    records[index + 60:index + 60] = records[index:index + 40]        # a WAL resent: exact duplicates


def _retention(topic: Topic) -> None:
    for seq in range(1, 11):
        topic.delete("uid-1/app", seq)


def _forged_checkpoint(topic: Topic) -> None:
    from shipper.seal import checkpoint_body

    checkpoint = topic.record("uid-3/web", 51)
    statement = checkpoint["body"].partition("\n\n")[0] + "\n"
    checkpoint["body"] = checkpoint_body(statement, [ATTACKER.sign(statement)])
    topic.replace("uid-3/web", 51, rehash(checkpoint, bytes.fromhex(checkpoint["seal"]["prev"])))


def _malformed(topic: Topic) -> None:
    rendered = json.dumps(topic.record("uid-1/app", 80), indent=2).encode()     # scans natively all the same
    worker_part, worker_index = topic.locate("uid-2/worker", 12)
    part, index = topic.locate("uid-1/app", 77)
    topic.partitions[worker_part][worker_index] = (b"uid-2/worker", b'{"seal": nope')
    topic.partitions[part].insert(index + 3, (b"uid-1/app", rendered))
    topic.partitions[part].insert(index, (b"uid-1/app", b"{}"))


def _wrong_key(topic: Topic) -> None:
    part, index = topic.locate("uid-1/app", 33)
    topic.partitions[part][index] = (b"uid-9/other", topic.partitions[part][index][1])


def _two_partitions(topic: Topic) -> None:
    part, index = topic.locate("uid-3/web", 60)
    moved = topic.partitions[part][index:index + 20]
    del topic.partitions[part][index:index + 20]
    other = (part + 1) % 3
    topic.partitions.setdefault(other, [])[5:5] = moved


STANDARD = {
    "clean": lambda: standard_node().topic(),
    "body_changed": lambda: _standard(_alter("uid-1/app", 123, body="payment of 10 EUR approved")),
    "altered_then_linked": lambda: _standard(lambda t: t.replace("uid-1/app", 40, rehash(
        dict(t.record("uid-1/app", 40), body="x"), bytes.fromhex(t.record("uid-1/app", 40)["seal"]["prev"])))),
    "record_deleted": lambda: _standard(lambda t: t.delete("uid-3/web", 64)),
    "run_deleted": lambda: _standard(lambda t: [t.delete("uid-1/app", seq) for seq in range(20, 35)]),
    "record_inserted": lambda: _standard(_inserted),
    "records_swapped": lambda: _standard(lambda t: t.swap("uid-2/worker", 30, 31)),
    "swapped_far": lambda: _standard(lambda t: t.swap("uid-1/app", 5, 250)),
    "first_two_swapped": lambda: _standard(lambda t: t.swap("uid-1/app", 1, 2)),
    "tail_removed": lambda: _standard(lambda t: t.truncate_chain("uid-1/app", 300)),
    "chain_removed": lambda: _standard(lambda t: t.truncate_chain("uid-3/web", 1)),
    "checkpoint_forged": lambda: _standard(_forged_checkpoint),
    "rewritten_without_key": lambda: _standard(lambda t: rewrite_chain_without_the_key(t, "uid-3/web", "keep")),
    "conflicting_duplicate": lambda: _standard(_conflicting),
    "replayed": lambda: _standard(_replayed),
    "retention": lambda: _standard(_retention),
    "malformed": lambda: _standard(_malformed),
    "event_id_changed": lambda: _standard(_alter("uid-1/app", 50, event_id="uid-1/app:49")),
    "schema_changed": lambda: _standard(_alter("uid-2/worker", 3, schema="audit-shipper/v0")),
    "wrong_key": lambda: _standard(_wrong_key),
    "two_partitions": lambda: _standard(_two_partitions),
    "refused_and_declared": lambda: refused_record_node()[0].topic(),
}

SPEC = {
    "spec_clean": lambda: spec_node().topic(),
    "misattributed": lambda: _spec(lambda t: rewrite_identity(t, "uid-1/app", [5, 77, 150, 151, 152, 305],
                                                              namespace="kube-system", pod="admin-0")),
    "misattributed_before_checkpoint": lambda: _spec(lambda t: rewrite_identity(t, "uid-1/app", range(2, 60, 3),
                                                                                pod="other")),
    "resource_dropped": lambda: _spec(lambda t: [t.replace("uid-2/worker", seq, {
        k: v for k, v in t.record("uid-2/worker", seq).items() if k != "resource"}) for seq in (3, 4, 5, 40)]),
    "tree_mismatch_swap": lambda: _spec(lambda t: t.swap("uid-1/app", 30, 31)),
    "tree_deleted": lambda: _spec(lambda t: t.delete("uid-1/app", 50)),
    "spec_tail_removed": lambda: _spec(lambda t: (t.truncate_chain("uid-1/app", 300),
                                                  t.truncate_chain("node/node-a", 3))),
    "spec_replayed": lambda: _spec(_replayed),
}


@pytest.mark.parametrize("name", list(STANDARD))
@pytest.mark.parametrize("codec", ["none", "snappy"])
def test_bulk_reports_equal_per_record_reports_on_tampered_topics(name, codec):
    assert_same(rows_of(STANDARD[name]()), seed=len(name), codec=codec)


@pytest.mark.parametrize("name", list(SPEC))
def test_bulk_reports_equal_per_record_reports_on_note_topics(name):
    expected = assert_same(rows_of(SPEC[name]()), seed=len(name), codec="lz4")
    assert expected["totals"]["records_read"] > 0


@pytest.mark.parametrize("options", [dict(window=7), dict(window=64), dict(public_keys={}),
                                     dict(require_attested=True, require_complete=True), dict(max_open_ranges=2)])
def test_bulk_reports_equal_per_record_reports_with_every_option(options):
    for name in ("replayed", "conflicting_duplicate", "run_deleted", "swapped_far", "clean"):
        assert_same(rows_of(STANDARD[name]()), seed=3, codec="gzip", **options)


def test_headers_and_null_keys_and_values_judged_alike():
    rows = rows_of(standard_node().topic())
    records = max(rows.values(), key=len)
    records[10] = (None, records[10][1], records[10][2])                        # a null key is not checked
    records[11] = (records[11][0], records[11][1], [])                          # no headers
    records[12] = (records[12][0], records[12][1], records[12][2] + [("schema", b"x")])
    records[13] = (records[13][0], None, records[13][2])                        # a tombstone
    records[14] = (records[14][0], records[14][1], list(reversed(records[14][2])))
    expected = assert_same(rows, seed=5, codec="zstd")
    assert expected["totals"]["violation_kinds"]["envelope_mismatch"] == 2


def test_saved_heads_inside_a_run_are_checked_in_bulk_as_per_record():
    verifier = Verifier(KEYS)
    for part, offset, key, value in spec_node().topic().rows():
        verifier.feed(value, key, part, offset, topic="logs")
    trusted = verifier.latest_heads()
    topic = spec_node().topic()
    rewrite = topic.record("uid-1/app", 101)
    rewrite["body"] = rewrite["body"] + " "
    topic.replace("uid-1/app", 101, rehash(rewrite, bytes.fromhex(rewrite["seal"]["prev"])))
    assert_same(rows_of(topic), seed=1, trusted=trusted)
    assert_same(rows_of(spec_node().topic()), seed=2, trusted=trusted)


@pytest.mark.parametrize("rewritten", [False, True])
def test_seqs_a_manifest_read_first_attests_are_checked_inside_runs(rewritten, monkeypatch):
    """Manifests naming log records as heads, read before those records: the claim is checked inside a run."""
    node = Node()
    app, web = node.chain("uid-1/app"), node.chain("uid-3/web")
    for _ in range(3):
        app.checkpoint()
        web.checkpoint()
        app.logs(30)
        web.logs(20)
        node.manifest()
    topic = node.topic(1)
    saved = Verifier(KEYS)
    for part, offset, key, value in topic.rows():
        saved.feed(value, key, part, offset)
    trusted = [record for record in saved.latest_heads() if record["seal"]["chain"] == "node/node-a"]
    if rewritten:
        rewrite_chain_without_the_key(topic, "uid-3/web", "keep")
    (records,) = topic.partitions.values()
    topic.partitions[0] = sorted(records, key=lambda row: row[0] != b"node/node-a")      # manifests first
    checked = []
    for method in ("_check_claim", "_check_trusted"):
        original = getattr(Verifier, method)
        monkeypatch.setattr(Verifier, method, lambda self, *args, _original=original, _method=method: (
            checked.append(_method), _original(self, *args)))
    for seed in range(3):
        checked.clear()
        expected = assert_same(rows_of(topic), seed=seed)
        assert bool(expected["totals"]["violation_kinds"].get("manifest_mismatch")) == rewritten
        assert checked == ["_check_claim"] * 4           # each chain's last head, once per verifier
        checked.clear()
        expected = assert_same(rows_of(topic), seed=seed, trusted=trusted)       # a saved manifest: the same heads
        assert bool(expected["totals"]["violation_kinds"].get("trusted_head_mismatch")) == rewritten
        # (and the node chain's own saved manifest, twice)
        assert sorted(checked) == ["_check_claim"] * 4 + ["_check_trusted"] * 6


def test_a_chain_longer_than_the_pending_leaves_folds_at_the_same_records():
    """The Merkle leaves kept unfolded decide which restarted trees can be rebuilt: bulk appends must fold
    exactly where one-at-a-time appends do."""
    assert PENDING_MAX // 32 == 2 * RECENT_LEAVES
    node = FakeNode()
    app = node.chain("uid-1/app")
    for before, after in ((3000, 7000), (4000, 6000), (5500, 4600), (2000, 10500), (6000, 6300)):
        app.logs(before)
        app.restart_tree()
        app.logs(after)
        app.checkpoint()
    app.logs(9000)
    node.manifest()
    rows = rows_of(node.topic(1))
    for seed in range(2):
        expected = assert_same(rows, seed=seed, codec="snappy")
        assert expected["totals"]["trees_checked"] + expected["totals"]["trees_unchecked"] == 6


def test_a_run_longer_than_the_window_wraps_it_as_per_record():
    node = Node()
    app = node.chain("uid-1/app")
    app.logs(700)
    emitted = list(node.emitted)
    node.emitted += emitted[650:] + emitted[100:105]
    app.logs(100)
    app.checkpoint()
    for window in (1, 7, 64, 100, 1000):
        assert_same(rows_of(node.topic(1)), seed=window, window=window)


# -- random tampering, random batches ---------------------------------------------------------------------

OPERATIONS = ["delete", "alter", "rehash", "swap", "duplicate", "identity", "event_id", "key", "malformed",
              "headers", "move", "truncate"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=st.booleans(), operations=st.lists(st.tuples(st.sampled_from(OPERATIONS), st.integers(0, 10 ** 6)),
                                                max_size=6),
       codec=st.sampled_from(CODEC_NAMES), seed=st.integers(0, 2 ** 32), window=st.sampled_from([5, 100, 100_000]),
       keys=st.booleans())
def test_any_tampering_any_batching_bulk_equals_per_record(spec, operations, codec, seed, window, keys):
    topic = spec_node().topic() if spec else standard_node().topic()
    rows = rows_of(topic)
    for operation, pick in operations:
        part = sorted(rows)[pick % len(rows)]
        records = rows[part]
        if not records:
            continue
        index = pick % len(records)
        key, value, headers = records[index]
        if operation == "delete":
            del records[index]
        elif operation == "swap":
            other = (index + 1 + pick % 7) % len(records)
            records[index], records[other] = records[other], records[index]
        elif operation == "duplicate":
            records[index:index] = records[max(0, index - pick % 50):index]
        elif operation == "key":
            records[index] = (None if pick % 2 else b"uid-0/none", value, headers)
        elif operation == "headers":
            records[index] = (key, value, headers[:pick % 2] + [("event_id", b"x")][:pick % 3 // 2])
        elif operation == "move":
            del records[index]
            rows[sorted(rows)[(pick + 1) % len(rows)]].insert(pick % 5, (key, value, headers))
        elif operation == "truncate":
            del records[index:]
        elif operation == "malformed":
            records[index] = (key, value[:pick % len(value)] if value else b"{", headers)
        elif value is not None:
            try:
                record = json.loads(value)
                record["seal"]["seq"]
            except (ValueError, KeyError, TypeError):
                continue
            if operation == "alter":
                record["body"] = str(record.get("body")) + "!"
            elif operation == "rehash":
                record["body"] = str(record.get("body")) + "?"
                record = rehash(record, bytes.fromhex(record["seal"]["prev"]))
            elif operation == "identity" and isinstance(record.get("resource"), dict):
                record["resource"]["k8s.pod.name"] = f"pod-{pick % 3}"
            elif operation == "event_id":
                record["event_id"] = "nope"
            records[index] = (key, json.dumps(record).encode(), headers)
    assert_same(rows, seed=seed, codec=codec, window=window, public_keys=KEYS if keys else {})
