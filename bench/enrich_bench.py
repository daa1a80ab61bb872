"""Cost per line of the enrichment stage (not part of the tests): `python bench/enrich_bench.py`.

Workload: bodies shaped like those of the end-to-end benchmark (bench/run.py), about 170 bytes each:
70 % JSON with trace/span/request ids and a level, 30 % text with a level word and request_id=..., and
a few lines with secrets (bearer token, card number, URL password, AWS key). Prints CPU microseconds
per line (this thread's CPU time, so other load on the machine inflates it less than wall time would)
for: the whole body stage, correlation alone, the redaction prefilter alone, the resource look-up the
ingest stage makes per batch, and a call of an empty function as the floor every per-line call pays.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shipper.config import EnrichConfig, Settings  # noqa: E402
from shipper.enrich import make_body_processor  # noqa: E402
from shipper.enrich.correlation import Correlator  # noqa: E402
from shipper.enrich.provider import MetadataProvider  # noqa: E402
from shipper.enrich.redact import build_redactor  # noqa: E402
from shipper.enrich.watch import Relist  # noqa: E402
from shipper.metrics import Metrics  # noqa: E402
from shipper.model import ContainerRef  # noqa: E402

WORDS = ("request", "handled", "user", "order", "payment", "retry", "cache", "miss", "hit", "upstream",
         "timeout", "connection", "accepted", "queued", "flushed", "record", "batch", "commit", "token",
         "validated", "session", "opened", "closed", "latency", "ms", "status", "ok", "failed", "item")
LEVELS = ("info", "info", "info", "info", "debug", "warn", "error")
SECRETS = ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
           "card 4111 1111 1111 1111 charged", "dsn postgres://app:s3cr3t@db:5432/orders",
           "key AKIAIOSFODNN7EXAMPLE rotated")


def workload(lines: int, secret_ratio: float, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    bodies = []
    for n in range(lines):
        words = " ".join(rng.choices(WORDS, k=rng.randrange(4, 12)))
        request = f"req-{rng.getrandbits(32):08x}-app-{n}"
        if rng.random() < secret_ratio:
            words += " " + rng.choice(SECRETS)
        if rng.random() < 0.7:
            bodies.append(f'{{"level":"{rng.choice(LEVELS)}","msg":"{words}","trace_id":"{rng.getrandbits(128):032x}",'
                          f'"span_id":"{rng.getrandbits(64):016x}","request_id":"{request}","n":{n}}}')
        else:
            bodies.append(f"{rng.choice(LEVELS).upper()} {words} request_id={request} n={n} "
                          f"took={rng.randrange(1, 5000)}ms")
    return bodies


def per_line_us(function: Callable[[str], object], bodies: list[str], repeat: int) -> float:
    """Best of `repeat` passes, CPU microseconds per line."""
    best = float("inf")
    for _ in range(repeat):
        started = time.thread_time()
        for body in bodies:
            function(body)
        best = min(best, time.thread_time() - started)
    return best / len(bodies) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--secret-ratio", type=float, default=0.01)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    bodies = workload(args.lines, args.secret_ratio)
    json_bodies = [body for body in bodies if body.startswith("{")]
    text_bodies = [body for body in bodies if not body.startswith("{")]
    config = EnrichConfig()
    process = make_body_processor(config)
    extract = Correlator(config.correlation_fields).extract
    candidate = build_redactor(config.redactions, config.default_redactions).candidate

    settings = Settings(node_name="bench-node")
    provider = MetadataProvider(settings, Metrics())
    provider.apply(Relist("pods", [{"metadata": {"uid": "uid-1", "name": "api-1", "namespace": "shop",
                                                 "labels": {"app": "api"}},
                                    "spec": {"containers": [{"name": "app", "image": "app:1"}]}}]))
    ref = ContainerRef("shop", "api-1", "uid-1", "app", 0)
    provider.resource_json(ref)

    def per_batch(_body: str) -> object:
        provider.body_processor(ref)
        return provider.resource_json(ref)

    def nothing(_body: str) -> None:
        return None

    size = sum(len(body) for body in bodies) / len(bodies)
    changed = sum(1 for body in bodies if process(body) is not None and process(body)[0] is not body)
    print(f"{len(bodies):,} lines, {size:.0f} chars on average, {len(json_bodies) / len(bodies):.0%} JSON, "
          f"{changed} redacted ({changed / len(bodies):.1%})")
    rows = [
        ("floor: calling an empty function", nothing, bodies),
        ("body stage (redaction + correlation), all", process, bodies),
        ("  JSON lines", process, json_bodies),
        ("  text lines", process, text_bodies),
        ("correlation alone", extract, bodies),
        ("redaction prefilter alone", candidate, bodies),
        ("resource + processor look-up (per batch, not per line)", per_batch, bodies),
    ]
    for label, function, sample in rows:
        print(f"{label:58s} {per_line_us(function, sample, args.repeat):6.2f} us/line")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
