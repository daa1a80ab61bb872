"""The same input gives the same chains, release after release: a fixed workload (the simulated node with
seed 7, partial lines joined, JSON and plain bodies, secrets the default rules redact, invalid
UTF-8, an entry cut at the size limit) read through the real ingest stage gives these chain heads (seq and hash). The hash of a
head covers every record's seq, time, stream, body and type before it, so a change to parsing, joining,
redaction or sealing that changes one record fails here; a faster hot path, another WAL frame format
or a smaller record on the wire must not.

Checkpoints and manifests are time-driven (their notes carry the clock), so they are held off here: the
chains hold log records (and gap records of the cut entry) only. If an intended change of the evidence
makes this fail, say so in the commit and replace GOLDEN with what the test prints."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from shipper.config import load_settings
from shipper.demo.simnode import SimNode
from tests.statedriver import DrivenState, FakeClock
from tests.support import write_config

GOLDEN = {
    "2e63dd80-d87b-afc2-b11a-140c57145abb/app": [567, "9805ded2cce44a6402f9aec64863c40b34e73956c1cd001c110448b3fbc5e3d0", ""],
    "2e63dd80-d87b-afc2-b11a-140c57145abb/sidecar": [591, "bb10509dd9f528fd2da9797992392a1062c1e19f331c5cdd04499613d234d310", ""],
    "bf98de1f-ee48-65d3-9918-09d4f4aa58be/app": [633, "5b275546059737dc2b4a1a2f4a6b0e021ff8526f989702c681760b50eb390a2a", ""],
    "bf98de1f-ee48-65d3-9918-09d4f4aa58be/sidecar": [548, "5e012b908b3183848815617c8e3cd5db176941f2f1f4c6d194e47b34aca34a1b", ""],
    "ca886be9-237f-3d87-2d31-b3e7ff3b795b/app": [591, "e304a2c79f7107473b1b1612c8b1f062c1bff4dcdab8805831e52b560c2f12a5", ""],
    "ca886be9-237f-3d87-2d31-b3e7ff3b795b/sidecar": [577, "66b342a44d8a7653e745ceba11e7d7f763d592f91a6b390b54325930d8b21306", ""],
}

SECRET_LINES = [
    b'2026-11-28T18:00:01.000000001Z stdout F {"level":"info","msg":"login","password":"hunter2","request_id":"r-1"}\n',
    b"2026-11-28T18:00:01.000000002Z stderr F card 4111 1111 1111 1111 declined, trace_id=4bf92f3577b34da6a3ce929d0e0e4736\n",
    b"2026-11-28T18:00:01.000000003Z stdout F bytes \xff\xfe not utf-8 at all\n",
    b"2026-11-28T18:00:01.000000004Z stdout P first half of a long one, \n",
    b"2026-11-28T18:00:01.000000005Z stdout F second half\n",
    b"2026-11-28T18:00:01.000000006Z stdout F " + b"x" * 5000 + b"\n",
    b"2026-11-28T18:00:01.000000007Z stdout F AKIAIOSFODNN7EXAMPLE and postgres://admin:s3cret@db:5432/app\n",
]


def read_workload() -> dict[str, list[dict]]:
    """Every record of the container chains, by chain, as the ingest sealed them."""
    root = Path(tempfile.gettempdir()) / f"audit-shipper-golden-{os.getuid()}"     # a fixed path: gap bodies name it
    shutil.rmtree(root, ignore_errors=True)
    try:
        node = SimNode(root / "log", pods=3, containers_per_pod=2, rotate_every_bytes=None, seed=7, partial_ratio=0.05)
        node.write(3000)
        node.flush()
        special = node.containers[0].log_path
        with open(special, "ab") as out:
            out.writelines(SECRET_LINES)
        node.write(500)
        node.flush()
        config = write_config(root / "config.yaml", bootstrap="127.0.0.1:1", node_root=node.root,
                              state_dir=root / "state", sources={"max_entry_bytes": 4096},
                              seal={"checkpoint_every_records": 1_000_000, "checkpoint_every_s": 1e9,
                                    "manifest_every_s": 1e9})
        driven = DrivenState(load_settings(str(config)), FakeClock(1_800_000_000.0), FakeClock(0.0))
        records: dict[str, list[dict]] = {}
        for batch in driven.cycle():
            for run in batch.runs:
                if not run.chain.startswith("node/"):
                    records.setdefault(run.chain, []).extend(json.loads(value) for value in run.values)
        return records
    finally:
        shutil.rmtree(root, ignore_errors=True)


def chain_heads() -> dict[str, list]:
    heads = {}
    for chain, records in read_workload().items():
        last = records[-1]
        heads[chain] = [last["seal"]["seq"], last["seal"]["hash"], last.get("type", "")]
    return {chain: heads[chain] for chain in sorted(heads)}


def test_the_fixed_workload_gives_the_golden_chain_heads():
    heads = chain_heads()
    print(json.dumps(heads, indent=1))
    assert heads == GOLDEN


def test_the_special_lines_are_in_the_workload_redacted_and_flagged():
    """The golden heads cover the special lines only if they were read: here, that they were, redacted,
    joined and flagged as the design says."""
    records = [record for chain in read_workload().values() for record in chain]
    bodies = [(record["body"], record) for record in records]
    login = next(record for body, record in bodies if '"msg":"login"' in body)
    assert login["attributes"]["request_id"] == "r-1" and login["severity_text"] == "INFO"
    assert any("\ufffd" in body and record["attributes"].get("log.invalid_utf8") for body, record in bodies)
    assert any(body.startswith("first half of a long one, second half") for body, _ in bodies)
    assert any(record.get("attributes", {}).get("log.truncated") for record in records)
    assert not any("s3cret" in body or "4111 1111" in body or "AKIAIOSFODNN7EXAMPLE" in body for body, _ in bodies)
    assert sum("[REDACTED]" in body for body, _ in bodies) == 2
