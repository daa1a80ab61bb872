"""`shipper demo`: a simulated node writing pod logs with kubelet-style rotation, the real pipeline,
an embedded Kafka-compatible broker (Tansu), then an account of what arrived and `shipper verify`."""
from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from pathlib import Path

from ..config import load_settings
from ..logs import setup_logging
from ..pipeline import Pipeline
from ..seal import generate_key_pair
from .embedded import EmbeddedTansu
from .reconcile import read_topic, reconcile
from .simnode import SimNode

TOPIC = "logs"


def _say(text: str = "") -> None:
    print(text, flush=True)


async def run_demo(*, seconds: float = 10.0, pods: int = 6, rate: int = 5000, keep: str | None = None) -> int:
    workdir = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="audit-shipper-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    setup_logging("WARNING")
    logging.getLogger("shipper").setLevel(logging.WARNING)
    broker = EmbeddedTansu(log_dir=str(workdir))
    try:
        return await _demo(workdir, broker, seconds, pods, rate)
    finally:
        broker.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


async def _demo(workdir: Path, broker: EmbeddedTansu, seconds: float, pods: int, rate: int) -> int:
    _say("audit-shipper demo")
    _say(f"  work directory     {workdir}")
    broker.start()
    await broker.wait_ready()
    await broker.create_topic(TOPIC, partitions=3)
    _say(f"  broker             Tansu (embedded) on {broker.bootstrap}, topic '{TOPIC}' with 3 partitions "
         f"(acks=all; Tansu has no idempotent producer)")

    keys = workdir / "keys"
    keys.mkdir(mode=0o700)
    private, public = generate_key_pair()
    (keys / "signing-key.pem").write_bytes(private)
    (keys / "signing-key.pem").chmod(0o600)
    (keys / "signing-key.pub.pem").write_bytes(public)

    node = SimNode(workdir / "log", pods=pods, containers_per_pod=1, rotate_every_bytes=512 * 1024, keep_rotated=3,
                   gzip_rotated=True, seed=2026)
    settings = load_settings(
        None, node_name="demo-node",
        sources={"roots": [str(node.pods_dir)], "symlink_roots": [str(node.containers_dir)],
                 "discover_interval_s": 0.5, "poll_interval_s": 0.05},
        wal={"dir": str(workdir / "state" / "wal"), "max_bytes": 64 << 20, "segment_bytes": 8 << 20},
        state={"dir": str(workdir / "state")},
        # Tansu has no idempotent producer; acks=all still holds and replays stay recognisable.
        kafka={"bootstrap_servers": broker.bootstrap, "topic": TOPIC, "idempotence": "off"},
        enrich={"kubernetes": False},
        seal={"signing_key_file": str(keys / "signing-key.pem"), "checkpoint_every_s": 2.0},
        metrics={"enabled": False})
    _say(f"  simulated node     {pods} pods writing CRI logs at ~{rate} lines/s for {seconds:.0f}s, "
         f"rotating every 512 KiB (rename + gzip, like the kubelet)")

    pipeline = Pipeline(settings)
    stopping = asyncio.Event()
    started = time.monotonic()
    run = asyncio.create_task(pipeline.run(stopping))
    written = await node.run_async(rate, seconds)
    node.flush()
    # Half of the pods end: the kubelet removes their log directories; the shipper drains what it holds
    # open and closes their chains, so verify can prove those chains complete.
    deleted = pods // 2
    for _ in range(deleted):
        node.delete_pod(0)
    _say(f"  written            {written} entries in {node.rotations} rotations; {deleted} pods deleted; "
         "waiting for the shipper to catch up")

    expected = node.ledger.total()
    deadline = time.monotonic() + 120
    shipped = pipeline.metrics.records_shipped
    sealed = pipeline.metrics.entries
    closed = pipeline.metrics.chains_closed
    while time.monotonic() < deadline and not run.done():
        if sealed._value.get() >= expected and closed._value.get() >= deleted and pipeline.sender is not None \
                and pipeline.sender.drained:
            break
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - started
    stopping.set()
    await run
    _say(f"  shipped            {int(shipped._value.get())} records (log entries plus chain control records)")

    values = await read_topic(broker.bootstrap, TOPIC, idle_s=2.0)
    account = reconcile({chain: node.ledger.bodies(chain) for chain in node.ledger.chains()}, values)
    totals = account.summary()
    _say()
    _say("Delivery")
    _say(f"  lines written      {totals['written']}")
    _say(f"  records received   {totals['received']} log entries + {sum(totals['control_records'].values())} "
         f"control records {dict(sorted(totals['control_records'].items()))}")
    _say(f"  missing            {totals['missing']}")
    _say(f"  duplicates         {totals['duplicates_exact']} exact, {totals['duplicates_conflicting']} conflicting")
    _say(f"  gaps declared      {totals['gaps']} ({totals['gap_bytes']} bytes lost at source)")
    _say(f"  throughput         {totals['received'] / elapsed:,.0f} entries/s over {elapsed:.1f}s (paced by the writer)")

    _say()
    _say("shipper verify")
    verdict_ok = await _verify(broker.bootstrap, keys / "signing-key.pub.pem")
    _say()
    _say("shipper prove (one record, checked offline against its signed checkpoint)")
    proof_ok = await _prove(broker.bootstrap, keys / "signing-key.pub.pem", values, workdir / "proof.json")
    ok = totals["missing"] == 0 and totals["duplicates_conflicting"] == 0 and verdict_ok and proof_ok
    _say()
    _say("RESULT: " + ("every line written is in Kafka, sealed and verified" if ok else "FAILED (see above)"))
    return 0 if ok else 1


async def _prove(bootstrap: str, public_key: Path, values: list[bytes], out: Path) -> bool:
    """What an auditor hands a third party: one record, its audit path and the signed checkpoint."""
    import json

    from ..verify import load_public_keys
    from ..verify.inputs import prove_from_topic
    from ..verify.proof import check_proof

    keys = load_public_keys([str(public_key)])
    records = [json.loads(value) for value in values]
    logs = [record for record in records if "type" not in record]
    seal = logs[len(logs) // 2]["seal"]
    event_id = f"{seal['chain']}:{seal['seq']}"
    proof = await prove_from_topic(bootstrap, TOPIC, event_id, public_keys=keys, idle_timeout_s=2.0)
    out.write_text(json.dumps(proof, indent=1))
    ok, reason = check_proof(json.loads(out.read_text()), keys)
    _say(f"  {event_id}: audit path of {len(proof['audit_path'])} hashes in a tree of {proof['tree_size']} "
         f"records; offline check: {'OK' if ok else 'FAILED'} ({reason})")
    return ok


async def _verify(bootstrap: str, public_key: Path) -> bool:
    from ..verify import load_public_keys, verify_topic

    report = await verify_topic(bootstrap, TOPIC, public_keys=load_public_keys([str(public_key)]), idle_timeout_s=2.0)
    for line in report.human().splitlines():
        _say("  " + line)
    return report.ok
