"""schema/audit-shipper-v1.json describes what records.py really emits: every kind of record built by the
sealing code validates, and the schema rejects what the design forbids."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from shipper.enrich.provider import path_resource
from shipper.model import ContainerRef
from shipper.parse import EntryFlag, Entries
from shipper.records import ChainContext, seal_control, seal_entries
from shipper.seal import ChainHead, checkpoint_body, gap_body, statement_text
from tests.unit.test_verify import OBSERVED, SIGNER, TS, standard_node

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schema" / "audit-shipper-v1.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=FormatChecker())
GAP_BODY = Draft202012Validator({**SCHEMA["$defs"]["gap_body"], "$defs": SCHEMA["$defs"]})

REF = ContainerRef(namespace="shop", pod="web-1", pod_uid="0b7c4a52-8d1e-4b8e-9a55-2f0e1c3d4e5f", container="app",
                   restart_count=2)
CTX = ChainContext(REF.chain, path_resource(REF, "node-a"), "/var/log/pods/shop_web-1_0b7c/app/2.log")


def errors(record: dict) -> list[str]:
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in VALIDATOR.iter_errors(record)]


def assert_valid(value: bytes) -> dict:
    record = json.loads(value)
    assert errors(record) == [], record
    return record


def test_schema_is_a_valid_draft_2020_12_schema():
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_log_records_with_every_parse_flag_and_extracted_fields_validate():
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

    values, _ = seal_entries(ChainHead.genesis(CTX.chain), entries, CTX, OBSERVED, extract)
    records = [assert_valid(value) for value in values]
    assert records[2]["attributes"]["log.invalid_utf8"] is True
    assert records[1]["attributes"]["log.parse_error"] == "cri_header"
    assert records[0]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_control_records_of_every_type_validate():
    head = ChainHead.genesis(CTX.chain)
    values, head = seal_entries(head, _entries(3), CTX, OBSERVED, None)
    gap_at_source, head = seal_control(head, "gap", gap_body("rotated_unread", 4096, CTX.path, 10, "rotated"), CTX,
                                       OBSERVED, ',"gap":{"reason":"rotated_unread","bytes":4096}')
    refused = json.loads(values[1])
    gap_refused, head = seal_control(head, "gap", gap_body("kafka_refused", 300, CTX.path, 0, "", 2,
                                                           refused["seal"]["hash"]), CTX, OBSERVED)
    statement = statement_text(CTX.chain, head.seq, head.hash, OBSERVED, "node-a")
    signed, head = seal_control(head, "checkpoint", checkpoint_body(statement, [SIGNER.sign(statement)]), CTX,
                                OBSERVED)
    close, head = seal_control(head, "close", "stream ended: files removed and drained", CTX, OBSERVED)
    statement = statement_text(CTX.chain, head.seq, head.hash, OBSERVED, "node-a")
    unsigned, head = seal_control(head, "checkpoint", checkpoint_body(statement, []), CTX, OBSERVED)
    for value in (gap_at_source, gap_refused, signed, close, unsigned):
        record = assert_valid(value)
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


def test_schema_stays_open_where_enrichment_adds_fields():
    values, _ = seal_entries(ChainHead.genesis(CTX.chain), _entries(1), CTX, OBSERVED, None)
    record = json.loads(values[0])
    record["attributes"]["http.route"] = "/api/orders"
    record["resource"]["k8s.statefulset.name"] = "db"
    assert errors(record) == []


def test_control_record_with_a_stream_or_a_log_record_with_a_gap_member_is_rejected():
    values, _ = seal_entries(ChainHead.genesis(CTX.chain), _entries(1), CTX, OBSERVED, None)
    log = json.loads(values[0])
    log["gap"] = {"reason": "x", "bytes": 1}
    assert errors(log)
    close, _ = seal_control(ChainHead.genesis(CTX.chain), "close", "done", CTX, OBSERVED)
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
