"""schema/audit-shipper-v1.json and -v2.json describe what records.py really emits: every kind of record built
by the sealing code validates against the schema of its format (kafka.record_format full: v1, compact: v2),
the schemas reject what the design forbids, and what a consumer rebuilds from v2 records is the v1 record."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from shipper.config import Settings
from shipper.demo.simnode import SimNode
from shipper.enrich import build_provider
from shipper.enrich.provider import path_resource
from shipper.ingest import Ingest
from shipper.metrics import Metrics
from shipper.model import ContainerRef
from shipper.parse import EntryFlag, Entries
from shipper.records import IDENTITY_KEYS, ChainContext, seal_control, seal_entries
from shipper.seal import ChainHead, checkpoint_body, gap_body, generate_key_pair, statement_text
from shipper.state import Snapshot
from tests.support import full_context
from tests.unit.test_verify import OBSERVED, SIGNER, TS, standard_node

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schema"
SCHEMA_PATH = SCHEMA_DIR / "audit-shipper-v1.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
SCHEMA_V2 = json.loads((SCHEMA_DIR / "audit-shipper-v2.json").read_text())
VALIDATORS = {name: Draft202012Validator(schema, format_checker=FormatChecker())
              for name, schema in (("audit-shipper/v1", SCHEMA), ("audit-shipper/v2", SCHEMA_V2))}
GAP_BODY = Draft202012Validator({**SCHEMA["$defs"]["gap_body"], "$defs": SCHEMA["$defs"]})

REF = ContainerRef(namespace="shop", pod="web-1", pod_uid="0b7c4a52-8d1e-4b8e-9a55-2f0e1c3d4e5f", container="app",
                   restart_count=2)
CTX = ChainContext(REF.chain, path_resource(REF, "node-a"), "/var/log/pods/shop_web-1_0b7c/app/2.log")
CTX_V2 = dataclasses.replace(CTX, compact=True)
FORMATS = {"full": CTX, "compact": CTX_V2}


@pytest.fixture(params=sorted(FORMATS))
def ctx(request) -> ChainContext:
    """The same chain's context in each record format."""
    return FORMATS[request.param]


def errors(record: dict) -> list[str]:
    """Against the schema the record names (v1 when it names none known)."""
    validator = VALIDATORS.get(record.get("schema"), VALIDATORS["audit-shipper/v1"])
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(record)]


def assert_valid(value: bytes) -> dict:
    record = json.loads(value)
    assert errors(record) == [], record
    return record


@pytest.mark.parametrize("schema", [SCHEMA, SCHEMA_V2], ids=["v1", "v2"])
def test_schema_is_a_valid_draft_2020_12_schema(schema):
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_log_records_with_every_parse_flag_and_extracted_fields_validate(ctx):
    entries = Entries()
    entries.add(0, TS, b"stdout", b"plain line", 0)
    entries.add(11, b"", b"stderr", b"no runtime time", EntryFlag.BAD_HEADER)
    entries.add(30, TS, b"stdout", b"bad \xff utf-8", 0)
    entries.add(45, TS, b"stdout", b"x" * 100, EntryFlag.TRUNCATED)
    entries.add(145, TS, b"stdout", b"rest", EntryFlag.CONTINUED | EntryFlag.BAD_JSON)
    entries.add(150, TS, b"stderr", b"Traceback\n  File", EntryFlag.MULTILINE | EntryFlag.UNTERMINATED)

    def extract(body: str):
        return (body.replace("secret", "[REDACTED]"),
                ',"severity_text":"ERROR","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7"',
                '"request_id":"req-42","correlation_id":"c-7"')

    values, head = seal_entries(ChainHead.genesis(ctx.chain), entries, ctx, OBSERVED, extract)
    values += seal_entries(head, entries, dataclasses.replace(ctx, full=False), OBSERVED, None)[0]
    records = [assert_valid(value) for value in values]
    assert records[2]["attributes"]["log.invalid_utf8"] is True
    assert records[1]["attributes"]["log.parse_error"] == "cri_header"
    assert records[0]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_control_records_of_every_type_validate(ctx):
    head = ChainHead.genesis(ctx.chain)
    values, head = seal_entries(head, _entries(3), ctx, OBSERVED, None)
    gap_at_source, head = seal_control(head, "gap", gap_body("rotated_unread", 4096, ctx.path, 10, "rotated"), ctx,
                                       OBSERVED, ',"gap":{"reason":"rotated_unread","bytes":4096}')
    refused = json.loads(values[1])
    gap_refused, head = seal_control(head, "gap", gap_body("kafka_refused", 300, ctx.path, 0, "", 2,
                                                           refused["seal"]["hash"]), ctx, OBSERVED)
    statement = statement_text(ctx.chain, head.seq, head.hash, OBSERVED, "node-a")
    signed, head = seal_control(head, "checkpoint", checkpoint_body(statement, [SIGNER.sign(statement)]), ctx,
                                OBSERVED)
    close, head = seal_control(head, "close", "stream ended: files removed and drained", ctx, OBSERVED)
    statement = statement_text(ctx.chain, head.seq, head.hash, OBSERVED, "node-a")
    unsigned, head = seal_control(head, "checkpoint", checkpoint_body(statement, []), ctx, OBSERVED)
    for value in (gap_at_source, gap_refused, signed, close, unsigned):
        record = assert_valid(value)
        assert record["schema"] == ("audit-shipper/v2" if ctx.compact else "audit-shipper/v1")
        if record["type"] == "gap":
            assert list(GAP_BODY.iter_errors(json.loads(record["body"]))) == []


def test_manifest_records_validate():
    node = standard_node()
    manifests = [json.loads(value) for key, value in node.emitted if key.startswith(b"node/")]
    assert manifests and all(record["type"] == "manifest" for record in manifests)
    for record in manifests:
        assert errors(record) == []


def test_every_record_of_a_whole_chain_set_validates():
    for _key, value in standard_node().emitted:
        assert_valid(value)


@pytest.mark.parametrize("change, where", [
    (lambda r: r.pop("seal"), ""),                               # a missing member is the parent's error
    (lambda r: r["seal"].update(hash="ABC"), "seal/hash"),
    (lambda r: r["seal"].update(seq=0), "seal/seq"),
    (lambda r: r.update(stream=""), "stream"),                   # a log entry has a stream
    (lambda r: r.update(time="yesterday"), "time"),
    (lambda r: r.update(extra_field=1), ""),                     # the top level is closed
    (lambda r: r.update(type="note"), "type"),
    (lambda r: r["resource"].update({"k8s.pod.labels": {"app": 1}}), "resource/k8s.pod.labels/app"),
    (lambda r: r.update(event_id="no-seq"), "event_id"),
], ids=["no_seal", "hash_not_hex", "seq_0", "log_without_stream", "time_not_rfc3339", "unknown_member",
        "unknown_type", "label_not_string", "event_id_without_seq"])
def test_schema_rejects_what_the_design_forbids(change, where):
    values, _ = seal_entries(ChainHead.genesis(CTX.chain), _entries(1), CTX, OBSERVED, None)
    record = json.loads(values[0])
    change(record)
    found = errors(record)
    assert found and any(error.startswith(f"{where}:") for error in found), found


V2_FORBIDS = {
    "event_id_member": lambda r: r.update(event_id=f"{r['seal']['chain']}:{r['seal']['seq']}"),
    "empty_attributes": lambda r: r.update(attributes={}),
    "identity_missing": lambda r: r["resource"].pop("k8s.pod.uid"),
    "v1_schema_name": lambda r: r.update(schema="audit-shipper/v1"),
}


@pytest.mark.parametrize("full", [True, False], ids=["full_resource", "identity_only"])
@pytest.mark.parametrize("change", sorted(V2_FORBIDS))
def test_v2_schema_rejects_what_the_compact_format_forbids(change, full):
    values, _ = seal_entries(ChainHead.genesis(CTX.chain), _entries(1), dataclasses.replace(CTX_V2, full=full),
                             OBSERVED, None)
    record = json.loads(values[0])
    assert errors(record) == []
    V2_FORBIDS[change](record)
    assert errors(record), change


def test_v2_schema_tells_a_full_log_record_from_an_identity_only_one():
    values, _ = seal_entries(ChainHead.genesis(CTX.chain), _entries(2), CTX_V2, OBSERVED, None)
    full, identity_only = (json.loads(value) for value in values)
    assert "path" in full["source"] and "audit_shipper.metadata" in full["resource"]
    assert set(identity_only["source"]) == {"offset"} and tuple(identity_only["resource"]) == IDENTITY_KEYS
    identity_only["resource"]["k8s.pod.labels"] = {"app": "web"}     # more than the identity needs a path
    assert any(error.startswith("resource:") for error in errors(identity_only))
    close, _ = seal_control(ChainHead.genesis(CTX.chain), "close", "done", CTX_V2, OBSERVED)
    record = json.loads(close)
    assert errors(record) == [] and "path" in record["source"] and "attributes" not in record
    del record["source"]["path"]                                      # a control record is self-contained
    assert errors(record)


def test_schema_stays_open_where_enrichment_adds_fields(ctx):
    values, _ = seal_entries(ChainHead.genesis(ctx.chain), _entries(1), ctx, OBSERVED, None)
    record = json.loads(values[0])
    record["attributes"] = {"http.route": "/api/orders"}
    record["resource"]["k8s.statefulset.name"] = "db"
    assert errors(record) == []


def test_control_record_with_a_stream_or_a_log_record_with_a_gap_member_is_rejected(ctx):
    values, _ = seal_entries(ChainHead.genesis(ctx.chain), _entries(1), ctx, OBSERVED, None)
    log = json.loads(values[0])
    log["gap"] = {"reason": "x", "bytes": 1}
    assert errors(log)
    close, _ = seal_control(ChainHead.genesis(ctx.chain), "close", "done", ctx, OBSERVED)
    record = json.loads(close)
    record["stream"] = "stdout"
    assert errors(record)


def _entries(count: int) -> Entries:
    entries = Entries()
    for index in range(count):
        entries.add(index * 20, TS, b"stdout", f"line {index}".encode(), 0)
    return entries


def test_spec15_note_checkpoints_and_manifests_validate():
    from tests.unit.test_verify import spec_node

    node = spec_node()
    checkpoint = node.chains["uid-1/app"]
    checkpoint.logs(1)
    checkpoint.checkpoint(unsigned=True)            # an unsigned note is the text alone
    records = [assert_valid(value) for _key, value in node.emitted]
    types = {record.get("type") for record in records}
    assert {"checkpoint", "manifest", "gap", "close"} <= types


def test_schema_rejects_a_note_checkpoint_missing_its_identity_lines():
    from tests.unit.test_verify import spec_node

    record = next(json.loads(value) for _key, value in spec_node().emitted if b'"type":"checkpoint"' in value)
    record["body"] = record["body"].replace("\ncontainer app\n", "\n")
    assert any(error.startswith("body:") for error in errors(record))


def test_what_a_consumer_rebuilds_from_v2_records_is_the_v1_record():
    """The same entries, sealed in two calls (the second without the full resource, as the ingest asks for
    within a checkpoint interval): v2 records given the latest full resource and path of their chain, their
    event_id and {} attributes, are the v1 records; the seal is the same."""
    entries = Entries()
    entries.add(0, TS, b"stdout", b"plain line", 0)
    entries.add(11, b"", b"stderr", b"no runtime time", EntryFlag.BAD_HEADER)
    entries.add(30, TS, b"stdout", b"x" * 100, EntryFlag.TRUNCATED)

    def sealed(ctx: ChainContext) -> list[dict]:
        first, head = seal_entries(ChainHead.genesis(ctx.chain), entries, ctx, OBSERVED, None)
        second, head = seal_entries(head, entries, dataclasses.replace(ctx, full=False), OBSERVED, None)
        close, _ = seal_control(head, "close", "done", ctx, OBSERVED)
        return [json.loads(value) for value in first + second + [close]]

    v1, v2 = sealed(CTX), sealed(CTX_V2)
    assert [record["seal"] for record in v2] == [record["seal"] for record in v1]
    assert sum(1 for record in v2 if "path" not in record["source"]) == 5
    assert full_context(v2) == [{**record, "schema": "audit-shipper/v2"} for record in v1]


def ingest_over(tmp_path, node: SimNode, record_format: str, **seal):
    """The real caller of the sealing code over the node's files; drain() returns what one cycle sealed."""
    private, _public = generate_key_pair()
    (tmp_path / "key.pem").write_bytes(private)
    settings = Settings(node_name="node-a", kafka={"record_format": record_format}, enrich={"kubernetes": False},
                        sources={"roots": [str(node.pods_dir)], "symlink_roots": [str(node.containers_dir)],
                                 "discover_interval_s": 0.001},
                        wal={"dir": str(tmp_path / "wal")}, state={"dir": str(tmp_path)},
                        seal={"signing_key_file": str(tmp_path / "key.pem"), **seal})
    metrics = Metrics()
    ingest = Ingest(settings, Snapshot(), metrics, build_provider(settings, metrics))

    def drain() -> list[bytes]:
        values = []
        while (collected := ingest.collect(1 << 20)) is not None:
            values.extend(value for run in collected[0].runs for value in run.values)
        return values
    return ingest, drain


@pytest.mark.parametrize("record_format", ["full", "compact"])
def test_every_record_the_ingest_writes_validates(tmp_path, record_format):
    """Through the real caller of the sealing code, over a node's files: log records, a gap (a file
    truncated under the reader), checkpoints, a close and manifests, all valid in the format's schema."""
    node = SimNode(tmp_path / "log", pods=3, containers_per_pod=1, rotate_every_bytes=None, seed=5)
    ingest, cycle = ingest_over(tmp_path, node, record_format, checkpoint_every_records=25)
    values: list[bytes] = []

    def drain() -> None:
        values.extend(cycle())

    node.write(60)
    drain()
    node.write(20)
    node.copytruncate(1)
    node.write(10)
    drain()
    node.delete_pod(0)
    drain()
    values.extend(value for run in ingest.final_checkpoints().runs for value in run.values)
    records = [assert_valid(value) for value in values]
    schema = "audit-shipper/v2" if record_format == "compact" else "audit-shipper/v1"
    assert {record["schema"] for record in records} == {schema}
    assert {record.get("type", "log") for record in records} == {"log", "gap", "checkpoint", "close", "manifest"}
    logs = [record for record in records if "type" not in record]
    assert len(logs) > 60                   # what was written after the last look before the truncation is lost
    if record_format == "compact":      # the full resource once per chain within a checkpoint interval
        assert sum(1 for record in logs if "path" in record["source"]) == 3


@pytest.mark.parametrize("interval_s, expected", [(3600, [True, False, False, True, False]),
                                                  (0.001, [True, True, True, True, True])])
def test_v2_log_records_carry_the_full_resource_again_when_it_changes_and_every_checkpoint_interval(
        tmp_path, interval_s, expected):
    """A chain's first batch carries the full resource and path; later batches only when they changed (a
    restarted container: new resource, new file) or a checkpoint interval passed since the last full one, so a
    consumer that starts reading anywhere has them within one interval."""
    node = SimNode(tmp_path / "log", pods=1, containers_per_pod=1, rotate_every_bytes=None, seed=5)
    _ingest, drain = ingest_over(tmp_path, node, "compact", checkpoint_every_s=interval_s)
    full = []
    for step in range(5):
        if step == 3:
            node.restart(0)
        time.sleep(0.01)
        node.write(4)
        logs = [json.loads(value) for value in drain() if b'"type":' not in value]
        assert len(logs) == 4
        full.append("path" in logs[0]["source"])
        assert not any("path" in record["source"] for record in logs[1:])
    assert full == expected
