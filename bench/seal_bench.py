"""CPU cost per line of the sealing hot path (not part of the tests): `python bench/seal_bench.py`.

Workload: 2,000-entry batches of CRI entries with bodies shaped like bench/run.py's (about 170 bytes:
70 % JSON with trace/span/request ids and a level, 30 % text), sealed with the default body stage
(redaction, correlation ids) onto one chain, as the ingest does: `records.seal_entries_packed`, which
includes extending the chain's Merkle tree. Prints this thread's CPU microseconds per line, minimum
and median of the repetitions (the minimum is the figure least inflated by other load).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enrich_bench import workload  # noqa: E402

from shipper.config import EnrichConfig  # noqa: E402
from shipper.enrich import make_body_processor  # noqa: E402
from shipper.parse import Entries  # noqa: E402
from shipper.records import ChainContext, seal_entries_packed  # noqa: E402
from shipper.seal import ChainHead  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    bodies = [body.encode() for body in workload(args.batch, secret_ratio=0.003)]
    process = make_body_processor(EnrichConfig())
    ctx = ChainContext("0c9d1f3e-7a5b-4c1d-9e8f-112233445566/app",
                       '{"k8s.namespace.name":"shop","k8s.pod.name":"web-7d9f","k8s.container.name":"app"}',
                       "/var/log/pods/shop_web-7d9f_0c9d/app/0.log")
    stamp = b"2026-11-28T18:00:00.123456789Z"
    per_line = []
    for _ in range(args.repeat):
        head = ChainHead.genesis(ctx.chain)
        batches = []
        for _b in range(args.batches):
            entries = Entries()
            for i, body in enumerate(bodies):
                entries.add(i * 210, stamp, b"stdout", body, 0)
            batches.append(entries)
        start = time.thread_time()
        for entries in batches:
            _blob, _lengths, head = seal_entries_packed(head, entries, ctx, "2026-11-28T18:00:00.2Z", process)
        per_line.append((time.thread_time() - start) / (args.batch * args.batches) * 1e6)
    print(f"seal_entries_packed: min {min(per_line):.3f} us/line, median {statistics.median(per_line):.3f} us/line "
          f"({args.batch * args.batches} lines x {args.repeat})")


if __name__ == "__main__":
    main()
