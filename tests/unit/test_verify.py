"""`shipper verify` offline: each test builds chains with the real sealing code (records.py, seal.py),
tampers with them the way an attacker or a broken pipeline would, and proves the verifier names it.

The builders here (`Node`, `ChainWriter`, `Topic`) are reused by tests/integration/test_verify_kafka.py.
"""
from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings, strategies as st

from shipper import seal as seal_module
from shipper.parse import Entries
from shipper.records import ChainContext, seal_control, seal_entries
from shipper.merkle import Frontier
from shipper.seal import (ChainHead, Identity, Signer, checkpoint_body, checkpoint_note_text, gap_body, genesis_hash,
                          link, manifest_note_text, parse_checkpoint, sign_statement, statement_text)
from shipper.verify import (DEFAULT_WINDOW, BadManifest, Report, Verifier, cli_main, load_public_keys,
                            manifest_statement, parse_manifest, verify_file)

TS = b"2026-11-28T18:00:00.123456789Z"
OBSERVED = "2026-11-28T18:00:01.000000000Z"
NODE = "node-a"
RESOURCE = '{"k8s.namespace.name":"shop","k8s.pod.name":"web-1","k8s.pod.labels":{"app":"web"}}'


def new_signer() -> tuple[Signer, dict]:
    key = Ed25519PrivateKey.generate()
    signer = Signer(key)
    return signer, {signer.key_id: key.public_key()}


SIGNER, KEYS = new_signer()
ATTACKER, ATTACKER_KEYS = new_signer()


# -- builders ---------------------------------------------------------------------------------------------

class ChainWriter:
    """One chain as the shipper writes it: log batches, checkpoints, gaps, close."""

    def __init__(self, node: Node, chain: str) -> None:
        self.node = node
        self.chain = chain
        self.head = ChainHead.genesis(chain)
        self.ctx = ChainContext(chain, RESOURCE, f"/var/log/pods/shop_web-1_{chain.split('/')[0]}/app/0.log")
        self.offset = 0

    def logs(self, count: int, text: str = "line") -> list[bytes]:
        entries = Entries()
        for _ in range(count):
            body = f"{text} {self.head.seq + len(entries) + 1} of {self.chain}".encode()
            entries.add(self.offset, TS, b"stdout" if len(entries) % 3 else b"stderr", body, 0)
            self.offset += len(body) + 40
        values, self.head = seal_entries(self.head, entries, self.ctx, OBSERVED, None)
        self.node.emit(self.chain, values)
        return values

    def control(self, type_: str, body: str, extra: str = "") -> bytes:
        value, self.head = seal_control(self.head, type_, body, self.ctx, OBSERVED, extra)
        self.node.emit(self.chain, [value])
        return value

    def checkpoint(self, signer: Signer | None = None, unsigned: bool = False) -> bytes:
        statement = statement_text(self.chain, self.head.seq, self.head.hash, OBSERVED, self.node.name)
        signer = signer or self.node.signer
        return self.control("checkpoint", checkpoint_body(statement, [] if unsigned else [signer.sign(statement)]))

    def gap(self, reason: str = "rotated_unread", lost: int = 4096, missing_seq: int | None = None,
            missing_hash: str | None = None) -> bytes:
        body = gap_body(reason, lost, self.ctx.path, 1234, "", missing_seq, missing_hash)
        return self.control("gap", body, ',"gap":' + json.dumps({"reason": reason, "bytes": lost}))

    def close(self) -> bytes:
        return self.control("close", "stream ended: files removed and drained")


class Node:
    """A node's chains and its manifest chain `node/<name>`; `emitted` is the produce order."""

    def __init__(self, name: str = NODE, signer: Signer = SIGNER) -> None:
        self.name = name
        self.signer = signer
        self.chains: dict[str, ChainWriter] = {}
        self.emitted: list[tuple[bytes, bytes]] = []
        self.manifest_writer = ChainWriter(self, f"node/{name}")

    def chain(self, name: str) -> ChainWriter:
        writer = self.chains[name] = ChainWriter(self, name)
        return writer

    def emit(self, chain: str, values: list[bytes]) -> None:
        self.emitted += [(chain.encode(), value) for value in values]

    def manifest(self, signer: Signer | None = None) -> bytes:
        heads = [(name, writer.head.seq, writer.head.hash) for name, writer in sorted(self.chains.items())]
        statement = manifest_statement(self.name, OBSERVED, heads)
        body = checkpoint_body(statement, [(signer or self.signer).sign(statement)])
        return self.manifest_writer.control("manifest", body)

    def topic(self, partitions: int = 3) -> Topic:
        topic = Topic(partitions)
        for key, value in self.emitted:
            topic.append(key, value)
        return topic


@dataclass
class Topic:
    """Records per partition, keyed like the shipper keys them (a stand-in for murmur2 is enough here)."""

    partition_count: int
    partitions: dict[int, list[tuple[bytes, bytes]]] = field(default_factory=dict)

    def partition_of(self, key: bytes) -> int:
        return zlib.crc32(key) % self.partition_count

    def append(self, key: bytes, value: bytes) -> None:
        self.partitions.setdefault(self.partition_of(key), []).append((key, value))

    def locate(self, chain: str, seq: int, type_: str | None = None) -> tuple[int, int]:
        part = self.partition_of(chain.encode())
        for index, (key, value) in enumerate(self.partitions[part]):
            record = json.loads(value)
            if record["seal"]["chain"] == chain and record["seal"]["seq"] == seq:
                return part, index
        raise KeyError((chain, seq))

    def record(self, chain: str, seq: int) -> dict:
        part, index = self.locate(chain, seq)
        return json.loads(self.partitions[part][index][1])

    def replace(self, chain: str, seq: int, record: dict) -> None:
        part, index = self.locate(chain, seq)
        self.partitions[part][index] = (chain.encode(), json.dumps(record).encode())

    def delete(self, chain: str, seq: int) -> None:
        part, index = self.locate(chain, seq)
        del self.partitions[part][index]

    def insert_before(self, chain: str, seq: int, record: dict) -> None:
        part, index = self.locate(chain, seq)
        self.partitions[part].insert(index, (chain.encode(), json.dumps(record).encode()))

    def swap(self, chain: str, seq_a: int, seq_b: int) -> None:
        part, index_a = self.locate(chain, seq_a)
        _, index_b = self.locate(chain, seq_b)
        records = self.partitions[part]
        records[index_a], records[index_b] = records[index_b], records[index_a]

    def truncate_chain(self, chain: str, from_seq: int) -> None:
        part = self.partition_of(chain.encode())
        self.partitions[part] = [(key, value) for key, value in self.partitions[part]
                                 if not (key == chain.encode() and json.loads(value)["seal"]["seq"] >= from_seq)]

    def chain_records(self, chain: str) -> list[dict]:
        part = self.partition_of(chain.encode())
        return [json.loads(value) for key, value in self.partitions.get(part, []) if key == chain.encode()]

    def rows(self) -> list[tuple[int, int, bytes, bytes]]:
        """(partition, offset, key, value), partitions interleaved round-robin as a consumer sees them."""
        out = []
        longest = max((len(records) for records in self.partitions.values()), default=0)
        for offset in range(longest):
            for part in sorted(self.partitions):
                if offset < len(self.partitions[part]):
                    key, value = self.partitions[part][offset]
                    out.append((part, offset, key, value))
        return out

    def verify(self, public_keys: dict | None = None, **options) -> Report:
        verifier = Verifier(KEYS if public_keys is None else public_keys, **options)
        for part, offset, key, value in self.rows():
            verifier.feed(value, key, part, offset, topic="logs")
        return verifier.finish()

    def write_jsonl(self, path, wrapped: bool = True) -> None:
        with open(path, "w") as out:
            for part, offset, key, value in self.rows():
                if wrapped:
                    out.write(json.dumps({"topic": "logs", "partition": part, "offset": offset,
                                          "key": key.decode(), "value": value.decode()}) + "\n")
                else:
                    out.write(value.decode() + "\n")


def standard_node() -> Node:
    """Three chains with checkpoints and manifests, one gap at source, one chain closed."""
    node = Node()
    app, worker, web = node.chain("uid-1/app"), node.chain("uid-2/worker"), node.chain("uid-3/web")
    for _ in range(3):
        app.logs(100)
        worker.logs(20)
        web.logs(50)
        for writer in (app, worker, web):
            writer.checkpoint()
        node.manifest()
    worker.gap("rotated_unread", 4096)
    worker.logs(5)
    worker.close()
    worker.checkpoint()
    app.logs(10)
    app.checkpoint()
    web.logs(7)
    web.checkpoint()
    node.manifest()
    return node


# -- SPEC-15 builders: checkpoints and manifests as signed notes over each chain's Merkle tree ------------

START = 1_795_888_800.0          # 2026-11-28T18:00:00Z


def rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(epoch))) + f".{int(round(epoch % 1 * 1e9)):09d}Z"


class NoteChain:
    """One chain as the SPEC-15 shipper writes it: records, the Merkle frontier of their hashes, checkpoint
    notes attesting tree, head, time and identity."""

    def __init__(self, node: FakeNode, chain: str, identity: Identity, resource: dict) -> None:
        self.node = node
        self.chain = chain
        self.identity = identity
        self.head = ChainHead.genesis(chain)
        self.tree = Frontier()
        self.ctx = ChainContext(chain, json.dumps(resource), f"/var/log/pods/{chain.replace('/', '_')}/0.log")
        self.offset = 0

    def _emit(self, values: list[bytes]) -> list[bytes]:
        self.tree = self.tree.extend_packed(b"".join(bytes.fromhex(json.loads(v)["seal"]["hash"]) for v in values))
        self.node.emit(self.chain, values)
        return values

    def logs(self, count: int, text: str = "line") -> list[bytes]:
        entries = Entries()
        stamp = self.node.now().encode()
        for _ in range(count):
            body = f"{text} {self.head.seq + len(entries) + 1} of {self.chain}".encode()
            entries.add(self.offset, stamp, b"stdout" if len(entries) % 3 else b"stderr", body, 0)
            self.offset += len(body) + 40
        values, self.head = seal_entries(self.head, entries, self.ctx, self.node.now(), None)
        return self._emit(values)

    def control(self, type_: str, body: str) -> bytes:
        value, self.head = seal_control(self.head, type_, body, self.ctx, self.node.now())
        return self._emit([value])[0]

    def checkpoint(self, signer: Signer | None = None, unsigned: bool = False, identity: Identity | None = None,
                   tree: Frontier | None = None) -> bytes:
        text = checkpoint_note_text(self.chain, self.tree if tree is None else tree, self.head, self.node.now(),
                                    identity or self.identity)
        return self.control("checkpoint", sign_statement(text, [] if unsigned else [signer or self.node.signer]))

    def gap(self, reason: str = "rotated_unread", lost: int = 4096, missing_seq: int | None = None,
            missing_hash: str | None = None) -> bytes:
        return self.control("gap", gap_body(reason, lost, self.ctx.path, 1234, "", missing_seq, missing_hash))

    def close(self) -> bytes:
        return self.control("close", "stream ended: files removed and drained")

    def restart_tree(self) -> None:
        """What a shipper restored from a release without trees does: its tree starts at the next record."""
        self.tree = Frontier()


class FakeNode:
    """A node of SPEC-15 chains with a clock: `tick` moves it on; manifests list every chain's head."""

    def __init__(self, name: str = NODE, signer: Signer = SIGNER, start: float = START) -> None:
        self.name = name
        self.signer = signer
        self.clock = start
        self.chains: dict[str, NoteChain] = {}
        self.emitted: list[tuple[bytes, bytes]] = []
        self.node_chain = NoteChain(self, f"node/{name}", Identity(node=name), {"k8s.node.name": name})

    def now(self) -> str:
        return rfc3339(self.clock)

    def tick(self, seconds: float) -> None:
        self.clock += seconds

    def chain(self, name: str, namespace: str = "shop", pod: str = "web-1") -> NoteChain:
        pod_uid, container = name.split("/", 1)
        identity = Identity(namespace, pod, pod_uid, container, self.name)
        resource = {"k8s.namespace.name": namespace, "k8s.pod.name": pod, "k8s.pod.uid": pod_uid,
                    "k8s.container.name": container, "k8s.container.restart_count": 0, "k8s.node.name": self.name,
                    "k8s.pod.labels": {"app": pod.split("-")[0]}}
        writer = self.chains[name] = NoteChain(self, name, identity, resource)
        return writer

    def emit(self, chain: str, values: list[bytes]) -> None:
        self.emitted += [(chain.encode(), value) for value in values]

    def manifest(self, signer: Signer | None = None) -> bytes:
        heads = [(name, writer.head.seq, writer.head.hash) for name, writer in sorted(self.chains.items())]
        node = self.node_chain
        text = manifest_note_text(self.name, node.tree, node.head, self.now(), heads)
        return node.control("manifest", sign_statement(text, [signer or self.signer]))

    def topic(self, partitions: int = 3) -> Topic:
        topic = Topic(partitions)
        for key, value in self.emitted:
            topic.append(key, value)
        return topic


def spec_node() -> FakeNode:
    """standard_node's shape in the SPEC-15 format, a minute between rounds: three chains with checkpoints
    and manifests, one gap at source, one chain closed."""
    node = FakeNode()
    app, worker = node.chain("uid-1/app", pod="web-1"), node.chain("uid-2/worker", pod="worker-7")
    web = node.chain("uid-3/web", namespace="front", pod="edge-2")
    for _ in range(3):
        app.logs(100)
        worker.logs(20)
        web.logs(50)
        for writer in (app, worker, web):
            writer.checkpoint()
        node.manifest()
        node.tick(60)
    worker.gap("rotated_unread", 4096)
    worker.logs(5)
    worker.close()
    worker.checkpoint()
    app.logs(10)
    app.checkpoint()
    web.logs(7)
    web.checkpoint()
    node.manifest()
    return node


SPEC_END = START + 180           # the spec_node's last statements


def rehash(record: dict, prev: bytes) -> dict:
    """What someone without the key can do to any record: set prev and recompute its hash."""
    record["seal"]["prev"] = prev.hex()
    record["seal"]["hash"] = link(prev, record["seal"]["seq"], record["time"].encode(), record["stream"].encode(),
                                  record["body"].encode(), record.get("type", "").encode()).hex()
    return record


def kinds(report: Report) -> set[str]:
    return set(report.totals["violation_kinds"])


def violations_of(report: Report, kind: str) -> list:
    return [issue for issue in report.all_violations() if issue.kind == kind]


# -- a clean topic ----------------------------------------------------------------------------------------

def test_clean_chain_set_verifies_with_no_violation():
    report = standard_node().topic().verify()
    assert report.ok, report.human()
    assert report.totals["chains"] == 4               # three containers and the node's manifest chain
    assert report.totals["links_verified"] == report.totals["records"]
    assert report.chain("uid-2/worker").complete      # closed, attested after the close, starts at 1
    assert not report.chain("uid-1/app").complete     # still open
    assert report.totals["unattested_records"] == 0
    assert report.human().rstrip().endswith(f"VERDICT OK: {report.totals['records']} records in 4 chains verified")


def test_clean_chain_set_exits_0_from_the_command_line(tmp_path, capsys):
    dump = tmp_path / "logs.jsonl"
    standard_node().topic().write_jsonl(dump)
    public = tmp_path / "signing-key.pub.pem"
    public.write_bytes(next(iter(KEYS.values())).public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    assert cli_main(["--file", str(dump), "--public-key", str(public), "--require-attested"]) == 0
    assert "VERDICT OK" in capsys.readouterr().out
    assert cli_main(["--file", str(dump), "--public-key", str(public), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_gap_at_source_is_a_finding_with_reason_and_bytes_not_a_violation():
    report = standard_node().topic().verify()
    worker = report.chain("uid-2/worker")
    assert worker.gaps == 1 and worker.gap_bytes == 4096 and worker.gap_reasons == {"rotated_unread": 1}
    assert worker.finding_counts["gap"] == 1 and worker.ok


# -- tampering, one change at a time ----------------------------------------------------------------------

def test_changed_body_is_an_altered_record_named_by_chain_seq_partition_offset():
    topic = standard_node().topic()
    record = topic.record("uid-1/app", 42)
    record["body"] = "transfer approved by alice"
    topic.replace("uid-1/app", 42, record)
    report = topic.verify()
    assert kinds(report) == {"altered"}
    (issue,) = violations_of(report, "altered")
    part, index = topic.locate("uid-1/app", 42)
    assert (issue.chain, issue.seq, issue.partition, issue.offset) == ("uid-1/app", 42, part, index)
    assert f"altered seq 42 at logs/{part}@{index}" in report.human()
    assert report.human().rstrip().splitlines()[-1] == "VERDICT FAILED: 1 violation in 1 of 4 chains (altered 1)"


def test_changed_body_with_its_own_hash_recomputed_breaks_the_next_link():
    topic = standard_node().topic()
    record = topic.record("uid-1/app", 42)
    record["body"] = "transfer approved by alice"
    topic.replace("uid-1/app", 42, rehash(record, bytes.fromhex(record["seal"]["prev"])))
    report = topic.verify()
    assert kinds(report) == {"broken_link"}
    assert violations_of(report, "broken_link")[0].seq == 43


def test_deleted_record_is_missing_and_named():
    topic = standard_node().topic()
    topic.delete("uid-3/web", 77)
    report = topic.verify()
    assert kinds(report) == {"missing"}
    (issue,) = violations_of(report, "missing")
    assert (issue.chain, issue.seq, issue.seq_last) == ("uid-3/web", 77, 77)
    assert issue.offset == topic.locate("uid-3/web", 78)[1]          # where the hole shows


def test_deleted_run_of_records_is_one_missing_range():
    topic = standard_node().topic()
    for seq in range(10, 20):
        topic.delete("uid-1/app", seq)
    (issue,) = violations_of(topic.verify(), "missing")
    assert (issue.seq, issue.seq_last) == (10, 19)


def test_inserted_record_linked_like_a_real_one_is_a_conflicting_duplicate():
    topic = standard_node().topic()
    forged = topic.record("uid-1/app", 43)
    forged["body"] = "user alice logged in from 10.0.0.1"
    forged = rehash(forged, bytes.fromhex(topic.record("uid-1/app", 42)["seal"]["hash"]))
    topic.insert_before("uid-1/app", 43, forged)
    report = topic.verify()
    assert kinds(report) == {"conflicting_duplicate"}
    (issue,) = violations_of(report, "conflicting_duplicate")
    assert (issue.chain, issue.seq) == ("uid-1/app", 43)
    assert report.chain("uid-1/app").duplicates_conflicting == 1


def test_inserted_record_with_a_new_seq_is_caught():
    topic = standard_node().topic()
    forged = topic.record("uid-1/app", 5)
    forged["body"] = "an extra line"
    forged["seal"]["seq"] = 6
    forged["event_id"] = "uid-1/app:6"
    topic.insert_before("uid-1/app", 6, rehash(forged, bytes.fromhex(forged["seal"]["hash"])))
    report = topic.verify()
    assert not report.ok
    assert {"conflicting_duplicate"} <= kinds(report)


def test_two_swapped_records_are_reordered_naming_both_seqs():
    topic = standard_node().topic()
    topic.swap("uid-1/app", 60, 61)
    report = topic.verify()
    assert kinds(report) == {"reordered"}
    (issue,) = violations_of(report, "reordered")
    assert issue.seq == 60 and "arrived after seq 61" in issue.detail
    assert report.chain("uid-1/app").links_verified == report.chain("uid-1/app").records


def test_records_swapped_far_apart_are_reordered():
    topic = standard_node().topic()
    topic.swap("uid-1/app", 20, 30)
    report = topic.verify()
    assert kinds(report) == {"reordered"}


def test_removed_chain_tail_is_caught_by_the_node_manifest():
    topic = standard_node().topic()
    last = topic.chain_records("uid-1/app")[-1]["seal"]["seq"]
    topic.truncate_chain("uid-1/app", last - 14)       # the last 10 lines and the checkpoints after them
    report = topic.verify()
    assert kinds(report) == {"tail_removed"}
    (issue,) = violations_of(report, "tail_removed")
    assert (issue.chain, issue.seq, issue.seq_last) == ("uid-1/app", last - 14, last)
    assert f"seqs {last - 14}..{last} were removed" in issue.detail


def test_removed_whole_chain_is_caught_by_the_node_manifest():
    topic = standard_node().topic()
    topic.truncate_chain("uid-3/web", 1)
    report = topic.verify()
    assert kinds(report) == {"tail_removed"}
    assert topic.verify(allow_absent_chains=True).ok


def test_removed_tail_without_a_manifest_leaves_only_an_unattested_tail_finding():
    """What a manifest is for: without one, a cut tail is a valid shorter chain."""
    node = Node()
    app = node.chain("uid-1/app")
    app.logs(50)
    app.checkpoint()
    app.logs(20)
    topic = node.topic()
    topic.truncate_chain("uid-1/app", 60)
    report = topic.verify()
    assert report.ok
    assert report.chain("uid-1/app").unattested_records == 8
    assert not topic.verify(require_attested=True).ok


def test_checkpoint_forged_with_another_key_is_an_unknown_key():
    node = standard_node()
    topic = node.topic()
    checkpoint = topic.record("uid-1/app", 101)
    statement, _, _ = checkpoint["body"].partition("\n\n")
    statement += "\n"
    checkpoint["body"] = checkpoint_body(statement, [ATTACKER.sign(statement)])
    topic.replace("uid-1/app", 101, rehash(checkpoint, bytes.fromhex(checkpoint["seal"]["prev"])))
    report = topic.verify()
    assert "unknown_key" in kinds(report)
    assert violations_of(report, "unknown_key")[0].seq == 101


def test_checkpoint_signature_with_one_bit_flipped_is_a_bad_signature():
    topic = standard_node().topic()
    checkpoint = topic.record("uid-3/web", 51)
    parsed = parse_checkpoint(checkpoint["body"])
    (key_id, signature), = parsed.signatures
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    checkpoint["body"] = checkpoint_body(parsed.statement, [(key_id, flipped)])
    topic.replace("uid-3/web", 51, rehash(checkpoint, bytes.fromhex(checkpoint["seal"]["prev"])))
    report = topic.verify()
    assert "bad_signature" in kinds(report)
    (issue,) = violations_of(report, "bad_signature")
    assert (issue.chain, issue.seq) == ("uid-3/web", 51)


def rewrite_chain_without_the_key(topic: Topic, chain: str, how: str) -> None:
    """Someone who can rewrite the topic but lacks the signing key: every body edited, every hash and
    every checkpoint statement recomputed so the chain links perfectly; signatures kept, re-made with
    another key, or stripped."""
    rewritten = []
    prev = genesis_hash(chain)
    for record in topic.chain_records(chain):
        if record.get("type") == "checkpoint":
            parsed = parse_checkpoint(record["body"])
            statement = statement_text(chain, record["seal"]["seq"] - 1, prev, parsed.time, parsed.node)
            signatures = {"keep": list(parsed.signatures), "resign": [ATTACKER.sign(statement)], "strip": []}[how]
            record["body"] = checkpoint_body(statement, signatures)
        elif not record.get("type"):
            record["body"] = record["body"].replace("line", "LINE")
        rehash(record, prev)
        prev = bytes.fromhex(record["seal"]["hash"])
        rewritten.append(record)
    part = topic.partition_of(chain.encode())
    others = iter(rewritten)
    topic.partitions[part] = [(key, json.dumps(next(others)).encode()) if key == chain.encode() else (key, value)
                              for key, value in topic.partitions[part]]


@pytest.mark.parametrize("how, kind", [("keep", "bad_signature"), ("resign", "unknown_key"), ("strip", "unsigned")])
def test_consistent_rewrite_by_someone_without_the_key_fails_the_signature_check(how, kind):
    topic = standard_node().topic()
    rewrite_chain_without_the_key(topic, "uid-1/app", how)
    report = topic.verify()
    app = report.chain("uid-1/app")
    assert app.links_verified == app.records        # the rewrite is internally consistent ...
    assert app.violation_counts[kind] == 4          # ... but no checkpoint carries a valid signature
    assert app.last_good_checkpoint_seq is None and app.unattested_records == app.records
    assert "altered" not in kinds(report) and "broken_link" not in kinds(report)


def test_consistent_rewrite_is_also_caught_by_the_manifest_hash():
    topic = standard_node().topic()
    rewrite_chain_without_the_key(topic, "uid-1/app", "resign")
    assert "manifest_mismatch" in kinds(topic.verify())


# -- what is not tampering --------------------------------------------------------------------------------

def refused_record_node() -> tuple[Node, int, str]:
    """Kafka refused seq 6 of uid-1/app; the shipper wrote a gap record naming it."""
    node = Node()
    app = node.chain("uid-1/app")
    values = app.logs(9)
    refused = json.loads(values[5])
    node.emitted.remove((b"uid-1/app", values[5]))
    app.gap("kafka_refused", len(values[5]), missing_seq=6, missing_hash=refused["seal"]["hash"])
    app.logs(3)
    app.checkpoint()
    node.manifest()
    return node, 6, refused["seal"]["hash"]


def test_gap_record_explaining_a_refused_record_is_a_finding_and_exits_0(tmp_path):
    node, missing_seq, _ = refused_record_node()
    report = node.topic().verify()
    assert report.ok, report.human()
    app = report.chain("uid-1/app")
    assert app.finding_counts["gap_explains_missing"] == 1
    assert [issue.seq for issue in app.findings if issue.kind == "gap_explains_missing"] == [missing_seq]
    dump = tmp_path / "dump.jsonl"
    node.topic().write_jsonl(dump, wrapped=False)
    assert cli_main(["--file", str(dump)]) == 0


def test_gap_record_naming_another_hash_than_the_missing_one_is_a_violation():
    node = Node()
    app = node.chain("uid-1/app")
    values = app.logs(9)
    node.emitted.remove((b"uid-1/app", values[5]))
    app.gap("kafka_refused", 100, missing_seq=6, missing_hash="00" * 32)
    report = node.topic().verify()
    assert "gap_mismatch" in kinds(report)


def test_exact_duplicates_after_a_replay_are_harmless_and_exit_0():
    node = Node()
    app = node.chain("uid-1/app")
    app.logs(100)
    emitted = list(node.emitted)
    node.emitted += emitted[80:]                       # the crash: the WAL resends its unacked tail
    app.logs(20)
    app.checkpoint()
    report = node.topic().verify()
    assert report.ok, report.human()
    assert report.chain("uid-1/app").duplicates_exact == 20
    assert report.chain("uid-1/app").duplicates_conflicting == 0


def test_conflicting_duplicate_with_the_same_seq_and_other_content_is_tampering():
    topic = standard_node().topic()
    copy = topic.record("uid-3/web", 30)
    copy["body"] = "something else entirely"
    copy = rehash(copy, bytes.fromhex(copy["seal"]["prev"]))
    part, index = topic.locate("uid-3/web", 40)
    topic.partitions[part].insert(index, (b"uid-3/web", json.dumps(copy).encode()))
    report = topic.verify()
    assert kinds(report) == {"conflicting_duplicate"}
    assert report.chain("uid-3/web").duplicates_conflicting == 1


def test_refused_record_that_arrives_in_a_crash_replay_is_a_replay_not_a_reorder():
    node = Node()
    app = node.chain("uid-1/app")
    values = app.logs(9)
    node.emitted.remove((b"uid-1/app", values[5]))     # seq 6 failed the first time ...
    node.emitted += [(b"uid-1/app", value) for value in values[5:]]   # ... and came with the replay
    app.checkpoint()
    report = node.topic().verify()
    assert report.ok, report.human()
    assert report.chain("uid-1/app").finding_counts["replayed_late"] == 1


def test_chain_starting_after_seq_1_is_a_finding_unless_complete_is_required():
    topic = standard_node().topic()
    for seq in range(1, 11):
        topic.delete("uid-1/app", seq)                # retention took the oldest records
    report = topic.verify()
    assert report.ok
    assert report.chain("uid-1/app").finding_counts["starts_at_seq"] == 1
    assert report.chain("uid-1/app").first_seq == 11
    assert kinds(topic.verify(require_complete=True)) == {"starts_at_seq"}


def test_first_two_records_swapped_is_a_reorder_not_a_late_start():
    topic = standard_node().topic()
    topic.swap("uid-1/app", 1, 2)
    assert kinds(topic.verify()) == {"reordered"}


def test_late_start_records_leave_a_hole_that_is_missing_not_a_late_start():
    node = Node()
    values = node.chain("uid-1/app").logs(8)
    verifier = Verifier({})
    for offset, value in enumerate([values[4], values[5], values[0], values[1], values[6], values[7]]):
        verifier.feed(value, b"uid-1/app", 0, offset)
    report = verifier.finish()
    assert report.chain("uid-1/app").violation_counts == {"reordered": 1, "missing": 1}
    (missing,) = violations_of(report, "missing")
    assert (missing.seq, missing.seq_last) == (3, 4)


# -- checkpoints and close ---------------------------------------------------------------------------------

def test_unsigned_checkpoint_is_a_violation_when_public_keys_are_given():
    node = Node()
    app = node.chain("uid-1/app")
    app.logs(10)
    app.checkpoint(unsigned=True)
    topic = node.topic()
    assert kinds(topic.verify()) == {"unsigned"}
    unchecked = topic.verify(public_keys={})
    assert unchecked.ok and unchecked.meta["signatures"] == "unchecked"
    assert "signatures were not checked" in unchecked.human()


def test_checkpoint_statement_that_does_not_match_the_chain_is_a_violation_even_when_signed():
    node = Node()
    app = node.chain("uid-1/app")
    app.logs(10)
    statement = statement_text("uid-1/app", app.head.seq - 1, app.head.hash, OBSERVED, NODE)   # off by one
    app.control("checkpoint", checkpoint_body(statement, [SIGNER.sign(statement)]))
    report = node.topic().verify()
    assert kinds(report) == {"checkpoint_mismatch"}
    assert "attests seq 9, not the seq before it (10)" in report.all_violations()[0].detail


def test_record_after_close_is_a_violation():
    node = Node()
    app = node.chain("uid-1/app")
    app.logs(3)
    app.close()
    app.checkpoint()
    app.logs(1, "appended later")
    app.checkpoint()
    report = node.topic().verify()
    assert kinds(report) == {"after_close"}
    assert not report.chain("uid-1/app").complete


def test_signer_with_a_custom_key_id_verifies_through_the_known_key():
    key = Ed25519PrivateKey.generate()
    node = Node(signer=Signer(key, key_id="prod-2026"))
    app = node.chain("uid-1/app")
    app.logs(5)
    app.checkpoint()
    report = node.topic().verify({seal_module.key_id_of(key.public_key()): key.public_key()})
    assert report.ok and report.chain("uid-1/app").finding_counts["key_alias"] == 1


# -- malformed input ---------------------------------------------------------------------------------------

def test_malformed_json_and_missing_fields_are_violations_with_their_location():
    verifier = Verifier(KEYS)
    verifier.feed(b'{"schema": "audit-shipper/v1", "seal": {', b"k", 2, 17)
    verifier.feed(b'{"schema": "audit-shipper/v1", "body": "x"}', b"k", 2, 18)
    report = verifier.finish()
    assert [(issue.kind, issue.partition, issue.offset) for issue in report.violations] == [
        ("malformed", 2, 17), ("malformed", 2, 18)]
    assert "missing field 'seal'" in report.violations[1].detail


def test_event_id_or_key_that_disagrees_with_the_seal_is_an_envelope_mismatch():
    topic = standard_node().topic()
    record = topic.record("uid-1/app", 7)
    record["event_id"] = "uid-1/app:8"
    topic.replace("uid-1/app", 7, record)
    assert kinds(topic.verify()) == {"envelope_mismatch"}
    verifier = Verifier()
    verifier.feed(topic.partitions[topic.partition_of(b"uid-3/web")][0][1], b"other/key", 0, 0)
    assert "envelope_mismatch" in verifier.finish().totals["violation_kinds"]


# -- bounded memory ----------------------------------------------------------------------------------------

def test_window_stays_bounded_over_a_chain_of_one_million_records():
    verifier = Verifier(KEYS)
    head = ChainHead.genesis("uid-big/app")
    ctx = ChainContext("uid-big/app", "{}", "/var/log/pods/x/app/0.log")
    body = b"GET /healthz 200 0.3ms"
    offset = 0
    for _ in range(100):
        entries = Entries()
        for _ in range(10_000):
            entries.add(offset, TS, b"stdout", body, 0)
            offset += 1
        values, head = seal_entries(head, entries, ctx, OBSERVED, None)
        for value in values:
            verifier.feed(value, None, 0, offset)
        assert verifier.window_size("uid-big/app") <= DEFAULT_WINDOW
    assert verifier.window_size("uid-big/app") == DEFAULT_WINDOW
    report = verifier.finish()
    assert report.ok and report.chain("uid-big/app").links_verified == 1_000_000


def test_duplicate_older_than_the_window_is_named_with_the_window_it_needs():
    node = Node()
    app = node.chain("uid-1/app")
    app.logs(50)
    node.emitted.append(node.emitted[4])
    verifier = Verifier({}, window=10)
    for offset, (key, value) in enumerate(node.emitted):
        verifier.feed(value, key, 0, offset)
    report = verifier.finish()
    (issue,) = violations_of(report, "out_of_window")
    assert issue.seq == 5 and "--window 46" in issue.detail


def test_many_jumps_keep_open_ranges_bounded():
    node = Node()
    app = node.chain("uid-1/app")
    values = app.logs(400)
    verifier = Verifier({}, max_open_ranges=10)
    for offset, value in enumerate(values[::2]):          # every other record deleted
        verifier.feed(value, b"uid-1/app", 0, offset)
        assert verifier.open_ranges("uid-1/app") <= 10
    assert verifier.finish().chain("uid-1/app").violation_counts["missing"] == 199   # 2, 4, ... 398


# -- any single tampering is detected ----------------------------------------------------------------------

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(6, 60), st.sampled_from(["delete", "alter", "alter_rehash", "swap", "insert", "duplicate_other"]),
       st.data())
def test_any_single_change_to_a_sealed_and_attested_chain_is_detected(length, change, data):
    node = Node()
    app = node.chain("uid-1/app")
    app.logs(length // 2)
    app.checkpoint()
    app.logs(length - length // 2)
    app.checkpoint()
    node.manifest()
    topic = node.topic(partitions=2)
    last = app.head.seq
    seq = data.draw(st.integers(1, last), label="seq")
    record = topic.record("uid-1/app", seq)
    if change == "delete":
        topic.delete("uid-1/app", seq)
    elif change == "alter":
        record["body"] += "!"
        topic.replace("uid-1/app", seq, record)
    elif change == "alter_rehash":
        record["body"] += "!"
        topic.replace("uid-1/app", seq, rehash(record, bytes.fromhex(record["seal"]["prev"])))
    elif change == "swap":
        other = data.draw(st.integers(1, last).filter(lambda s: s != seq), label="other")
        topic.swap("uid-1/app", seq, other)
    elif change == "insert":
        record["body"] += " (inserted)"
        topic.insert_before("uid-1/app", seq, rehash(record, bytes.fromhex(record["seal"]["prev"])))
    else:
        record["body"] += " (copy)"
        topic.append(b"uid-1/app", json.dumps(rehash(record, bytes.fromhex(record["seal"]["prev"]))).encode())
    assert not topic.verify(require_complete=True).ok   # without it, losing seq 1 reads as retention


@settings(max_examples=200, deadline=None)
@given(seq=st.integers(1, 2**63), time=st.text(max_size=40), stream=st.text(max_size=10), body=st.text(max_size=300),
       type_=st.sampled_from(["", "gap", "checkpoint", "close", "manifest"]))
def test_verifier_hashes_exactly_like_seal_link(seq, time, stream, body, type_):
    prev = genesis_hash("c/x") if seq == 1 else bytes(range(32))
    digest = link(prev, seq, time.encode("utf-8", "surrogatepass"), stream.encode("utf-8", "surrogatepass"),
                  body.encode("utf-8", "surrogatepass"), type_.encode())
    record = {"schema": "audit-shipper/v1", "event_id": f"c/x:{seq}", "time": time, "stream": stream, "body": body,
              "seal": {"chain": "c/x", "seq": seq, "prev": prev.hex(), "hash": digest.hex()}}
    if type_:
        record["type"] = type_
    verifier = Verifier({})
    verifier.feed(json.dumps(record).encode())
    report = verifier.finish()
    unencodable = any(0xD800 <= ord(ch) <= 0xDFFF for ch in time + stream + body)
    # control bodies here are nonsense: only the hash is judged, and a record that cannot be hashed
    assert "altered" not in report.totals["violation_kinds"]
    assert [issue.kind for issue in report.violations] == (["malformed"] if unencodable else [])


# -- manifests, files, output ------------------------------------------------------------------------------

def test_manifest_statement_round_trips_and_matches_the_signed_note_format():
    heads = [("uid-1/app", 310, b"\x01" * 32), ("uid-2/worker", 0, b"\x02" * 32)]
    statement = manifest_statement(NODE, OBSERVED, heads)
    assert statement.splitlines()[0] == "audit-shipper/manifest/v1" and statement.endswith("\n")
    body = checkpoint_body(statement, [SIGNER.sign(statement)])
    parsed = parse_manifest(body)
    assert (parsed.node, parsed.time, list(parsed.heads)) == (NODE, OBSERVED, heads)
    assert parsed.statement == statement and parsed.signatures[0][0] == SIGNER.key_id
    assert parse_manifest(statement).signatures == ()
    with pytest.raises(BadManifest):
        parse_manifest(statement.replace("head uid-1/app 310", "head uid-1/app x"))


def test_verify_file_reads_plain_values_and_wrapped_topic_rows(tmp_path):
    topic = standard_node().topic()
    plain, wrapped = tmp_path / "plain.jsonl", tmp_path / "wrapped.jsonl"
    topic.write_jsonl(plain, wrapped=False)
    topic.write_jsonl(wrapped, wrapped=True)
    for path in (plain, wrapped):
        report = verify_file(path, public_keys=KEYS)
        assert report.ok and report.totals["records"] == sum(len(p) for p in topic.partitions.values())
    with open(plain, "a") as out:
        out.write("not json\n")
    report = verify_file(plain, public_keys=KEYS)
    assert [issue.where for issue in report.violations] == [f"line {report.totals['records_read'] + 1}"]


def test_report_json_names_chain_seq_partition_and_offset_of_each_violation():
    topic = standard_node().topic()
    topic.delete("uid-1/app", 150)
    report = json.loads(topic.verify().to_json())
    assert report["ok"] is False and report["verdict"].startswith("FAILED")
    (chain,) = [c for c in report["chains"] if c["chain"] == "uid-1/app"]
    (violation,) = chain["violations"]
    assert {key: violation[key] for key in ("kind", "chain", "seq", "topic")} == {
        "kind": "missing", "chain": "uid-1/app", "seq": 150, "topic": "logs"}
    assert violation["partition"] is not None and violation["offset"] is not None


def test_human_summary_lists_chains_with_problems_and_only_counts_routine_unattested_tails():
    node = standard_node()
    node.chains["uid-1/app"].logs(5)                 # a live chain: its newest records await a checkpoint
    topic = node.topic()
    topic.delete("uid-3/web", 9)
    text = topic.verify().human()
    chain_lines = [line for line in text.splitlines() if line.startswith("chain ")]
    assert [line.split(":")[0] for line in chain_lines] == ["chain uid-3/web", "chain uid-2/worker"]
    assert "5 unattested records" in text
    assert "uid-2/worker: ok" in text and "rotated_unread 1, 4096 bytes lost at source" in text


def test_cli_exit_status_is_1_on_violation_and_2_when_it_cannot_verify(tmp_path, capsys):
    topic = standard_node().topic()
    topic.delete("uid-1/app", 150)
    dump = tmp_path / "dump.jsonl"
    topic.write_jsonl(dump)
    assert cli_main(["--file", str(dump)]) == 1
    assert "VERDICT FAILED" in capsys.readouterr().out
    assert cli_main(["--file", str(tmp_path / "absent.jsonl")]) == 2
    assert cli_main([]) == 2
    assert cli_main(["--file", str(dump), "--require-attested"]) == 2
    with pytest.raises(SystemExit):
        cli_main(["--bogus"])


def test_load_public_keys_refuses_a_private_key_and_accepts_a_labelled_key(tmp_path):
    private_pem, public_pem = seal_module.generate_key_pair()
    (tmp_path / "key.pem").write_bytes(private_pem)
    (tmp_path / "key.pub.pem").write_bytes(public_pem)
    with pytest.raises(Exception, match="private key"):
        load_public_keys([str(tmp_path / "key.pem")])
    keys = load_public_keys([f"prod={tmp_path / 'key.pub.pem'}"])
    assert "prod" in keys and len(set(map(id, keys.values()))) == 1


# -- SPEC-15: notes, trees, attribution, staleness, saved heads ---------------------------------------------

def spec_verify(topic: Topic, public_keys: dict | None = None, **options) -> Report:
    return topic.verify(public_keys, now=options.pop("now", SPEC_END + 60), **options)


def test_note_chain_set_verifies_with_every_tree_root_and_identity_checked():
    report = spec_verify(spec_node().topic())
    assert report.ok, report.human()
    # 12 checkpoints and 4 manifests
    assert report.totals["trees_checked"] == 16 and report.totals["trees_unchecked"] == 0
    assert report.chain("uid-3/web").identity == {"namespace": "front", "pod": "edge-2", "pod-uid": "uid-3",
                                                  "container": "web", "node": NODE}
    assert report.chain("uid-2/worker").complete and not report.chain("uid-1/app").complete
    assert report.chain("node/node-a").identity is None
    assert report.totals["stale_chains"] == 0 and report.totals["unattested_records"] == 0
    assert not report.all_findings() or {issue.kind for issue in report.all_findings()} == {"gap"}


def test_note_chains_verify_from_the_command_line_with_a_verifier_key_file(tmp_path, capsys):
    dump = tmp_path / "logs.jsonl"
    spec_node().topic().write_jsonl(dump)
    vkey = tmp_path / "signing-key.vkey"
    vkey.write_text(SIGNER.verifier_key + "\n")
    args = ["--file", str(dump), "--public-key", str(vkey), "--now", rfc3339(SPEC_END + 60)]
    assert cli_main(args + ["--require-attested"]) == 0
    assert "16 tree roots checked (0 not)" in capsys.readouterr().out
    assert cli_main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["totals"]["trees_checked"] == 16 and out["meta"]["stale_after_s"] == 900


def test_load_public_keys_reads_verifier_keys_under_their_name_and_derived_key_id(tmp_path):
    renamed = Signer(Ed25519PrivateKey.generate(), "prod-2026")
    path = tmp_path / "keys.vkey"
    path.write_text(f"# auditors' keys\n{SIGNER.verifier_key}\n\n{renamed.verifier_key}\n")
    keys = load_public_keys([str(path)])
    derived = seal_module.key_id_of(renamed.note_signer.private_key.public_key())
    assert set(keys) == {SIGNER.key_id, "prod-2026", derived}
    (tmp_path / "bad.vkey").write_text(SIGNER.verifier_key[:-2] + "AA\n")
    with pytest.raises(Exception, match="line 1"):
        load_public_keys([str(tmp_path / "bad.vkey")])


def test_note_signed_under_a_key_id_verifies_by_its_vkey_and_through_the_pem_key_as_an_alias():
    key = Ed25519PrivateKey.generate()
    renamed = Signer(key, "prod-2026")
    node = FakeNode(signer=renamed)
    app = node.chain("uid-1/app")
    app.logs(5)
    app.checkpoint()
    node.manifest()
    by_name = spec_verify(node.topic(), {"prod-2026": key.public_key()})
    assert by_name.ok and not by_name.chain("uid-1/app").finding_counts.get("key_alias")
    by_pem = spec_verify(node.topic(), {seal_module.key_id_of(key.public_key()): key.public_key()})
    assert by_pem.ok and by_pem.chain("uid-1/app").finding_counts["key_alias"] == 1
    assert by_pem.chain("uid-1/app").last_good_checkpoint_seq == 6


@pytest.mark.parametrize("how, kind", [("attacker", "unknown_key"), ("flip", "bad_signature"), ("strip", "unsigned")])
def test_note_checkpoint_forged_flipped_or_stripped_is_named(how, kind):
    topic = spec_node().topic()
    record = topic.record("uid-3/web", 51)
    text = record["body"][:record["body"].rindex("\n\n") + 1]
    if how == "attacker":
        record["body"] = sign_statement(text, [ATTACKER])
    elif how == "flip":
        record["body"] = record["body"][:-4] + ("A" if record["body"][-4] != "A" else "B") + record["body"][-3:]
    else:
        record["body"] = text
    topic.replace("uid-3/web", 51, rehash(record, bytes.fromhex(record["seal"]["prev"])))
    report = spec_verify(topic)
    assert {(issue.kind, issue.chain, issue.seq) for issue in report.all_violations()} >= {(kind, "uid-3/web", 51)}


def test_malformed_note_checkpoint_is_malformed():
    node = FakeNode()
    app = node.chain("uid-1/app")
    app.logs(3)
    app.control("checkpoint", "audit-shipper.io/v1/chain/uid-1/app\n3\nnot base64\n")
    report = spec_verify(node.topic())
    (issue,) = violations_of(report, "malformed")
    assert issue.seq == 4 and "checkpoint body" in issue.detail


def test_TREE_a_signed_root_that_is_not_the_records_root_is_a_tree_mismatch():
    node = FakeNode()
    app = node.chain("uid-1/app")
    app.logs(10)
    app.checkpoint()
    app.logs(10)
    app.checkpoint(tree=Frontier().extend([b"\x01" * 32] * 21))      # a signed root over other leaves
    report = spec_verify(node.topic())
    (issue,) = violations_of(report, "tree_mismatch")
    assert (issue.chain, issue.seq) == ("uid-1/app", 22) and "seqs 1..21" in issue.detail
    assert report.chain("uid-1/app").trees_checked == 1


def test_TREE_a_chain_held_from_a_later_seq_leaves_its_trees_unchecked_as_one_finding():
    topic = spec_node().topic()
    for seq in range(1, 11):
        topic.delete("uid-1/app", seq)
    report = spec_verify(topic)
    assert report.ok
    app = report.chain("uid-1/app")
    assert app.trees_unchecked == 4 and app.trees_checked == 0 and app.finding_counts["tree_unchecked"] == 1
    (issue,) = [issue for issue in app.findings if issue.kind == "tree_unchecked"]
    assert issue.seq == 101 and "starts at seq 1, the topic holds the chain from seq 11" in issue.detail


def test_TREE_a_tree_restarted_by_an_upgraded_shipper_is_rebuilt_and_checked():
    node = FakeNode()
    app = node.chain("uid-1/app")
    app.logs(30)
    statement = statement_text(app.chain, app.head.seq, app.head.hash, node.now(), node.name)
    app.control("checkpoint", checkpoint_body(statement, [SIGNER.sign(statement)]))    # the previous release
    app.restart_tree()
    app.logs(20)
    app.checkpoint()
    app.logs(5)
    app.checkpoint()
    report = spec_verify(node.topic())
    assert report.ok, report.human()
    assert report.chain("uid-1/app").trees_checked == 2 and report.chain("uid-1/app").trees_unchecked == 0


def test_TREE_a_restart_further_back_than_the_leaves_kept_is_unchecked():
    from shipper.verify.tree import RECENT_LEAVES as TREE_RECENT_LEAVES

    node = FakeNode()
    app = node.chain("uid-1/app")
    app.logs(10)
    app.restart_tree()
    app.logs(2 * TREE_RECENT_LEAVES + 10)
    app.checkpoint()
    report = spec_verify(node.topic())
    assert report.ok and report.chain("uid-1/app").trees_unchecked == 1
    assert "restarts at seq 11" in next(i for i in report.all_findings() if i.kind == "tree_unchecked").detail


def test_TREE_a_refused_record_declared_by_a_gap_keeps_the_tree_checked():
    node = FakeNode()
    app = node.chain("uid-1/app")
    values = app.logs(9)
    refused = json.loads(values[5])
    node.emitted.remove((b"uid-1/app", values[5]))
    app.gap("kafka_refused", len(values[5]), missing_seq=6, missing_hash=refused["seal"]["hash"])
    app.logs(3)
    app.checkpoint()
    report = spec_verify(node.topic())
    assert report.ok and report.chain("uid-1/app").trees_checked == 1


def test_TREE_swapped_records_are_reordered_and_the_tree_still_checked_after_them():
    topic = spec_node().topic()
    topic.swap("uid-1/app", 30, 31)
    report = spec_verify(topic)
    assert kinds(report) == {"reordered"}
    assert report.chain("uid-1/app").trees_checked == 4


def test_TREE_a_deleted_record_leaves_later_trees_unchecked():
    topic = spec_node().topic()
    topic.delete("uid-1/app", 50)
    report = spec_verify(topic)
    assert kinds(report) == {"missing"}
    app = report.chain("uid-1/app")
    assert app.trees_checked == 0 and app.trees_unchecked == 4
    assert "seq 50 is not in the topic" in next(i for i in app.findings if i.kind == "tree_unchecked").detail


def rewrite_identity(topic: Topic, chain: str, seqs, **changes) -> list[tuple[int, int, int]]:
    """Change resource fields (outside the hash) of some records; their (seq, partition, offset)."""
    keys = {"namespace": "k8s.namespace.name", "pod": "k8s.pod.name", "container": "k8s.container.name",
            "node": "k8s.node.name", "pod_uid": "k8s.pod.uid"}
    where = []
    for seq in seqs:
        record = topic.record(chain, seq)
        for field_name, value in changes.items():
            record["resource"][keys[field_name]] = value
        topic.replace(chain, seq, record)
        where.append((seq, *topic.locate(chain, seq)))
    return where


def test_ATTRIBUTION_records_rewritten_to_another_pod_are_misattributed_each_named():
    topic = spec_node().topic()
    changed = rewrite_identity(topic, "uid-1/app", [5, 77, 150, 305], namespace="kube-system", pod="admin-0",
                               container="shell")
    report = spec_verify(topic)
    assert kinds(report) == {"misattributed"}
    named = sorted((issue.seq, issue.partition, issue.offset) for issue in violations_of(report, "misattributed"))
    assert named == changed
    issue = next(issue for issue in violations_of(report, "misattributed") if issue.seq == 5)
    assert "namespace 'kube-system', pod 'admin-0', container 'shell'" in issue.detail
    assert "attests namespace 'shop', pod 'web-1', container 'app'" in issue.detail
    assert "misattributed" in report.human() and "seq 77" in report.human()


def test_ATTRIBUTION_counts_are_exact_and_examples_bounded():
    from shipper.verify import ISSUES_KEPT_PER_CHAIN

    topic = spec_node().topic()
    rewrite_identity(topic, "uid-1/app", range(1, 201), pod="web-2")        # half before the first checkpoint
    report = spec_verify(topic)
    app = report.chain("uid-1/app")
    assert app.violation_counts == {"misattributed": 200}
    assert len(app.violations) == ISSUES_KEPT_PER_CHAIN


def test_ATTRIBUTION_many_identities_before_the_first_checkpoint_stay_bounded_and_counted():
    from shipper.verify.attribution import MAX_IDENTITIES_BUFFERED

    topic = spec_node().topic()
    for seq in range(1, 61):
        rewrite_identity(topic, "uid-1/app", [seq], pod=f"pod-{seq}")
    verifier = Verifier(KEYS, now=SPEC_END)
    for part, offset, key, value in topic.rows():
        verifier.feed(value, key, part, offset, topic="logs")
        state = verifier.chains.get("uid-1/app")
        buckets = state.attribution.buckets if state is not None else None
        assert buckets is None or len(buckets) <= MAX_IDENTITIES_BUFFERED
    report = verifier.finish()
    named = [issue for issue in report.chain("uid-1/app").violations if issue.seq is not None]
    assert len(named) == MAX_IDENTITIES_BUFFERED - 1 and all(issue.seq <= 60 for issue in named)
    (summary,) = [issue for issue in report.chain("uid-1/app").violations if issue.seq is None]
    assert f"more than {MAX_IDENTITIES_BUFFERED} distinct identities" in summary.detail
    assert "45 of them" in summary.detail          # the true identity, the most common, was never evicted


def test_ATTRIBUTION_a_null_resource_value_equals_an_empty_attested_one():
    node = FakeNode()
    app = node.chain("uid-1/app", namespace="")
    app.logs(3)
    app.checkpoint()
    topic = node.topic()
    record = topic.record("uid-1/app", 2)
    record["resource"]["k8s.namespace.name"] = None
    topic.replace("uid-1/app", 2, record)
    assert spec_verify(topic).ok


def test_ATTRIBUTION_checkpoints_attesting_two_identities_are_an_identity_mismatch():
    node = FakeNode()
    app = node.chain("uid-1/app")
    app.logs(5)
    app.checkpoint()
    app.logs(5)
    app.checkpoint(identity=Identity("shop", "web-9", "uid-1", "app", NODE))
    report = spec_verify(node.topic())
    (issue,) = violations_of(report, "identity_mismatch")
    assert issue.seq == 12 and "pod 'web-9'" in issue.detail and "seq 6" in issue.detail


def test_ATTRIBUTION_is_not_judged_on_unsigned_or_forged_checkpoints():
    node = FakeNode()
    app = node.chain("uid-1/app")
    app.logs(5)
    app.checkpoint(signer=ATTACKER, identity=Identity("evil", "x", "uid-1", "app", NODE))
    app.logs(5)
    app.checkpoint()
    report = spec_verify(node.topic())
    assert kinds(report) == {"unknown_key"}
    assert report.chain("uid-1/app").identity["namespace"] == "shop"


def test_STALE_a_chain_and_node_not_attested_for_longer_than_stale_after_are_findings():
    topic = spec_node().topic()
    fresh = spec_verify(topic, now=SPEC_END + 899)
    assert fresh.totals["stale_chains"] == 0
    report = spec_verify(topic, now=SPEC_END + 3600)
    assert report.ok       # a finding: a node may simply have stopped
    stale = {issue.chain: issue for issue in report.all_findings() if issue.kind == "stale"}
    assert set(stale) == {"uid-1/app", "uid-3/web", "node/node-a"}      # uid-2/worker is closed
    assert "3600 s before now" in stale["uid-1/app"].detail and rfc3339(SPEC_END) in stale["uid-1/app"].detail
    assert stale["node/node-a"].detail.startswith("the node's last manifest")
    assert spec_verify(topic, now=SPEC_END + 3600, stale_after_s=7200).totals["stale_chains"] == 0
    assert topic.verify().totals["stale_chains"] == 0         # no `now`: the pure verifier keeps no clock


def test_STALE_from_the_command_line_with_now_and_stale_after(tmp_path, capsys):
    dump = tmp_path / "logs.jsonl"
    spec_node().topic().write_jsonl(dump)
    base = ["--file", str(dump), "--json", "--now", rfc3339(SPEC_END + 1000)]
    assert cli_main(base) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["stale_chains"] == 3
    assert cli_main(base + ["--stale-after", "2000"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["stale_chains"] == 0
    assert cli_main(["--file", str(dump), "--now", "yesterday"]) == 2


def drop_tail_and_later_manifests(topic: Topic, chain: str, keep_to_seq: int, manifests_from: int) -> None:
    topic.truncate_chain(chain, keep_to_seq + 1)
    topic.truncate_chain("node/node-a", manifests_from)


def test_TAIL_REMOVED_via_note_manifests():
    topic = spec_node().topic()
    topic.truncate_chain("uid-1/app", 300)          # the last 11 records and the last checkpoint
    report = spec_verify(topic)
    assert kinds(report) == {"tail_removed"}
    (issue,) = violations_of(report, "tail_removed")
    assert (issue.chain, issue.seq, issue.seq_last) == ("uid-1/app", 300, 314)


def test_SAVED_HEADS_catch_a_tail_removed_with_the_manifests_that_named_it(tmp_path):
    full = spec_node().topic()
    full_dump, cut_dump, heads = tmp_path / "full.jsonl", tmp_path / "cut.jsonl", tmp_path / "heads.json"
    full.write_jsonl(full_dump)
    report = verify_file(full_dump, public_keys=KEYS, now=SPEC_END + 60, save_heads=heads)
    assert report.ok and report.meta["saved_heads"] == 4
    saved = json.loads(heads.read_text())
    assert saved["format"] == "audit-shipper/heads/v1"
    assert [(h["seal"]["chain"], h["seal"]["seq"]) for h in saved["heads"]] == [
        ("node/node-a", 4), ("uid-1/app", 314), ("uid-2/worker", 71), ("uid-3/web", 161)]

    cut = spec_node().topic()
    drop_tail_and_later_manifests(cut, "uid-1/app", 299, 3)      # app's last round and the last two manifests
    cut.write_jsonl(cut_dump)
    alone = verify_file(cut_dump, public_keys=KEYS, now=SPEC_END + 3600)
    assert alone.ok                                  # a valid shorter topic ...
    assert {i.chain for i in alone.all_findings() if i.kind == "stale"} >= {"uid-1/app", "node/node-a"}   # ... stale
    trusted = verify_file(cut_dump, public_keys=KEYS, now=SPEC_END + 3600, trusted_heads=heads)
    assert kinds(trusted) == {"tail_removed"}
    by_chain = {issue.chain: issue for issue in violations_of(trusted, "tail_removed")}
    assert (by_chain["uid-1/app"].seq, by_chain["uid-1/app"].seq_last) == (300, 314)
    assert str(heads) in by_chain["uid-1/app"].detail and set(by_chain) == {"uid-1/app", "node/node-a"}
    assert trusted.meta["trusted_heads"] == 4


def test_SAVED_HEADS_a_rewritten_chain_differs_at_the_trusted_head(tmp_path):
    heads = tmp_path / "heads.json"
    full_dump = tmp_path / "full.jsonl"
    standard_node().topic().write_jsonl(full_dump)
    assert verify_file(full_dump, public_keys=KEYS, save_heads=heads).ok
    topic = standard_node().topic()
    rewrite_chain_without_the_key(topic, "uid-1/app", "resign")
    topic.write_jsonl(tmp_path / "rewritten.jsonl")
    report = verify_file(tmp_path / "rewritten.jsonl", public_keys=KEYS, trusted_heads=heads)
    (issue,) = violations_of(report, "trusted_head_mismatch")
    assert issue.chain == "uid-1/app" and issue.seq == topic.chain_records("uid-1/app")[-1]["seal"]["seq"]


def test_SAVED_HEADS_never_go_back_and_bad_files_are_refused(tmp_path, capsys):
    heads = tmp_path / "heads.json"
    dump, cut_dump = tmp_path / "full.jsonl", tmp_path / "cut.jsonl"
    spec_node().topic().write_jsonl(dump)
    cut = spec_node().topic()
    cut.truncate_chain("uid-1/app", 300)
    cut.write_jsonl(cut_dump)
    assert cli_main(["--file", str(dump), "--save-heads", str(heads), "--now", rfc3339(SPEC_END)]) == 0
    assert "saved the heads of 4 chains" in capsys.readouterr().err
    assert cli_main(["--file", str(cut_dump), "--trusted-heads", str(heads), "--save-heads", str(heads)]) == 1
    assert {h["seal"]["chain"]: h["seal"]["seq"] for h in json.loads(heads.read_text())["heads"]}["uid-1/app"] == 314

    saved = json.loads(heads.read_text())
    saved["heads"][1]["body"] = saved["heads"][1]["body"].replace("seq ", "seq 1")
    (tmp_path / "edited.json").write_text(json.dumps(saved))
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something/else", "heads": []}))
    for name in ("edited.json", "junk.json", "other.json", "absent.json"):
        assert cli_main(["--file", str(dump), "--trusted-heads", str(tmp_path / name)]) == 2, name
        assert "trusted heads" in capsys.readouterr().err
    resigned = json.loads(heads.read_text())
    record = resigned["heads"][1]
    record["body"] = sign_statement(record["body"][:record["body"].rindex("\n\n") + 1], [ATTACKER])
    rehash(record, bytes.fromhex(record["seal"]["prev"]))
    (tmp_path / "resigned.json").write_text(json.dumps(resigned))
    public = tmp_path / "key.vkey"
    public.write_text(SIGNER.verifier_key + "\n")
    assert cli_main(["--file", str(dump), "--trusted-heads", str(tmp_path / "resigned.json"), "--public-key",
                     str(public)]) == 2
    assert "unknown key" in capsys.readouterr().err


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(change=st.sampled_from(["body", "time", "stream", "delete", "swap", "insert", "resource"]),
       data=st.data())
def test_any_single_change_to_a_note_chain_is_detected(change, data):
    node = FakeNode()
    app = node.chain("uid-1/app")
    app.logs(20)
    app.checkpoint()
    app.logs(20)
    app.checkpoint()
    node.manifest()
    topic = node.topic(1)
    # (deleting seq 1 looks like retention: a finding, starts_at_seq, unless --require-complete)
    seq = data.draw(st.integers(2 if change == "delete" else 1, 41))
    record = topic.record("uid-1/app", seq)
    if change == "delete":
        topic.delete("uid-1/app", seq)
    elif change == "swap":
        topic.swap("uid-1/app", seq, seq + 1)
    elif change == "insert":
        forged = rehash(dict(record, body="forged"), bytes.fromhex(record["seal"]["prev"]))
        topic.insert_before("uid-1/app", seq, forged)
    elif change == "resource":
        record["resource"]["k8s.pod.name"] = "other"
        topic.replace("uid-1/app", seq, record)
    else:
        record[change] = record[change] + "x"
        topic.replace("uid-1/app", seq, record)
    assert not spec_verify(topic).ok


@pytest.mark.parametrize("value", [
    b'{"attributes":' + b"[" * 100_000 + b"]" * 100_000 + b'}',
    '{"seal":{"chain":"a/\\ud800","seq":1,"prev":"%s","hash":"%s"},"body":"","time":"","stream":""}'
    % ("0" * 64, "0" * 64),
])
def test_a_value_nested_beyond_recursion_or_with_a_lone_surrogate_chain_is_malformed_not_a_crash(value):
    verifier = Verifier()
    verifier.feed(value, partition=0, offset=7)
    report = verifier.finish()
    assert not report.ok and report.totals["malformed"] == 1
