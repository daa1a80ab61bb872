"""Records per second of `verify_file` (not part of the tests): `python bench/verify_bench.py`.

Builds a JSON-lines topic dump of --records records (--chains chains of one node, a signed checkpoint
every --checkpoint-every records of a chain, a node manifest after each round), in the legacy
statement format or the SPEC-15 note format, then verifies it --rounds times with the public key and
prints the best records/s, by this process's CPU time (the verifier is single-threaded; CPU time is
steadier than the wall clock on a shared machine) and by the wall clock.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from shipper import seal  # noqa: E402
from shipper.merkle import Frontier  # noqa: E402
from shipper.parse import Entries  # noqa: E402
from shipper.records import ChainContext, seal_control, seal_entries  # noqa: E402
from shipper.verify import verify_file  # noqa: E402

TIME = "2026-11-28T18:00:00.123456789Z"
NODE = "node-a"


def resource(uid: str) -> str:
    return json.dumps({"k8s.namespace.name": "shop", "k8s.pod.name": f"web-{uid}", "k8s.pod.uid": uid,
                       "k8s.container.name": "app", "k8s.container.restart_count": 0, "k8s.node.name": NODE,
                       "k8s.pod.labels": {"app": "web", "tier": "frontend"}, "k8s.deployment.name": "web"})


def build(path: Path, records: int, chains: int, every: int, fmt: str, signer: seal.Signer) -> int:
    names = [f"uid-{index:04d}/app" for index in range(chains)]
    heads = {name: seal.ChainHead.genesis(name) for name in names}
    trees = {name: Frontier() for name in names}
    contexts = {name: ChainContext(name, resource(name.split("/")[0]), f"/var/log/pods/{name}/0.log") for name in names}
    node_chain = "node/" + NODE
    heads[node_chain], trees[node_chain] = seal.ChainHead.genesis(node_chain), Frontier()
    contexts[node_chain] = ChainContext(node_chain, json.dumps({"k8s.node.name": NODE}), "")
    written = 0

    def emit(out, name: str, values: list[bytes]) -> None:
        nonlocal written
        trees[name] = trees[name].extend_packed(b"".join(bytes.fromhex(json.loads(v)["seal"]["hash"]) for v in values))
        for value in values:
            out.write(json.dumps({"topic": "logs", "partition": 0, "offset": written, "key": name,
                                  "value": value.decode()}) + "\n")
            written += 1

    def control(out, name: str, type_: str, body: str) -> None:
        value, heads[name] = seal_control(heads[name], type_, body, contexts[name], TIME)
        emit(out, name, [value])

    with open(path, "w") as out:
        while written < records:
            for name in names:
                entries = Entries()
                for index in range(every):
                    entries.add(index * 120, TIME.encode(), b"stdout",
                                f"GET /api/orders/{heads[name].seq + index} 200 in 12ms user=alice".encode(), 0)
                values, heads[name] = seal_entries(heads[name], entries, contexts[name], TIME, None)
                emit(out, name, values)
                head = heads[name]
                if fmt == "legacy":
                    statement = seal.statement_text(name, head.seq, head.hash, TIME, NODE)
                    body = seal.checkpoint_body(statement, [signer.sign(statement)])
                else:
                    identity = seal.Identity.of_resource(json.loads(contexts[name].resource_json))
                    text = seal.checkpoint_note_text(name, trees[name], head, TIME, identity)
                    body = seal.sign_statement(text, [signer])
                control(out, name, seal.TYPE_CHECKPOINT, body)
            listed = [(name, heads[name].seq, heads[name].hash) for name in names]
            if fmt == "legacy":
                statement = seal.manifest_statement(NODE, TIME, listed)
                body = seal.checkpoint_body(statement, [signer.sign(statement)])
            else:
                text = seal.manifest_note_text(NODE, trees[node_chain], heads[node_chain], TIME, listed)
                body = seal.sign_statement(text, [signer])
            control(out, node_chain, seal.TYPE_MANIFEST, body)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--chains", type=int, default=20)
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--format", choices=["legacy", "note"], default="note")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    key = Ed25519PrivateKey.generate()
    signer = seal.Signer(key)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "topic.jsonl"
        count = build(path, args.records, args.chains, args.checkpoint_every, args.format, signer)
        best_cpu = best_wall = 0.0
        for _ in range(args.rounds):
            started, started_cpu = time.perf_counter(), time.process_time()
            report = verify_file(path, public_keys={signer.key_id: key.public_key()})
            elapsed, elapsed_cpu = time.perf_counter() - started, time.process_time() - started_cpu
            assert report.ok, report.human()
            best_cpu, best_wall = max(best_cpu, count / elapsed_cpu), max(best_wall, count / elapsed)
        print(f"{args.format}: {count} records, {args.chains} chains: {best_cpu:,.0f} records/s of CPU time, "
              f"{best_wall:,.0f} by the wall clock (best of {args.rounds})")


if __name__ == "__main__":
    main()
