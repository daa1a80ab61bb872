"""`shipper verify --workers N`: the partitions of the topics dealt across N processes on this machine.

A chain lives in one partition, so each worker judges the chains of its partitions alone; what crosses
partitions (a node manifest's heads of chains in other partitions, saved heads) goes through this
process, as split.py describes:

    this process                         worker i (own process, own Kafka connection, own Verifier)
    end offsets, partitions dealt ---->  reads its partitions to those end offsets
                                 <----   ("read", chains held, claims on chains it read no record of)
    claims routed to their holders ---->  applies them, finishes
                                 <----   ("report", its report part, its latest heads)
    merged report (+ the chains no worker holds, judged here)

Workers report progress on the same pipe. Each process builds its own TLS/SASL context from the
command line's terms and loads the public keys itself: nothing that holds a secret or a socket is
pickled. A worker that fails or dies ends the verify (exit 2), the others are stopped.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Callable

from .chain import RelayedClaim
from .inputs import (Reading, VerifyError, _started_consumer, _stop, _topic_list, kafka_client_options, keep_heads,
                     latest_of, load_public_keys, load_trusted_heads, offset_range, read_partitions, topic_partitions)
from .report import Report, merge_reports, report_from_part, report_part
from .split import balance, route_claims
from .verifier import Verifier

#: How often a worker tells its progress (seconds).
PROGRESS_EVERY_S = 0.25


@dataclass(frozen=True)
class WorkerTask:
    """What one worker reads and how it judges: all picklable (paths and names, never keys or sockets)."""

    bootstrap: str
    client_terms: dict[str, Any]
    public_keys: list[str]
    verifier_options: dict[str, Any]
    partitions: list[tuple[str, int, int, int]]          # topic, partition, first offset, end offset
    idle_timeout_s: float
    timeout_s: float | None


@dataclass
class _Worker:
    index: int
    process: Any
    conn: Connection
    done: int = 0
    held: list[str] = field(default_factory=list)
    relayed: list[RelayedClaim] = field(default_factory=list)
    stopped: str = ""
    part: Report | None = None
    heads: list[dict] = field(default_factory=list)


def verify_topic_parallel(bootstrap: str, topic: str | list[str], workers: int, *, public_keys: list[str],
                          client_terms: dict[str, Any], idle_timeout_s: float = 5.0, timeout_s: float | None = None,
                          now: float | None = None, trusted_heads: str | Path | None = None,
                          save_heads_to: str | Path | None = None,
                          progress: Callable[[int, int], None] | None = None, **verifier_options) -> Report:
    """Verify the topic(s) with `workers` processes (see the module docstring); the report is the one
    verify_topic gives, with meta.workers. `public_keys` are the --public-key entries (paths)."""
    topics = _topic_list(topic)
    if not topics:
        raise VerifyError("no topic given")
    started = time.monotonic()
    now = time.time() if now is None else now
    keys = load_public_keys(public_keys)
    ends_by_partition = asyncio.run(_end_offsets(bootstrap, topics, kafka_client_options(**client_terms)))
    sizes = {partition: end - begin for partition, (begin, end) in ends_by_partition.items()}
    dealt = balance(sizes, max(1, workers))
    options = dict(verifier_options, now=now)
    tasks = [WorkerTask(bootstrap, client_terms, list(public_keys), options,
                        [(name, number, *ends_by_partition[(name, number)]) for name, number in part],
                        idle_timeout_s, timeout_s) for part in dealt]
    # The chains no worker holds (a manifest names them, none of their records is in the topic) and the
    # saved heads are judged here.
    absent = Verifier(keys, **options)
    if trusted_heads is not None:
        load_trusted_heads(absent, trusted_heads)
    total = sum(sizes.values())
    running = _start(tasks)
    try:
        _until_all(running, "read", progress, total)
        relayed = [claim for worker in running for claim in worker.relayed] + absent.relay_claims()
        routed, unheld = route_claims([set(worker.held) for worker in running], relayed)
        for worker, claims in zip(running, routed):
            worker.conn.send([claim.to_dict() for claim in claims])
        absent.apply_claims(unheld)
        _until_all(running, "report", progress, total)
    finally:
        _stop_all(running)
    stopped = next((worker.stopped for worker in running if worker.stopped != "end_offsets"), "end_offsets")
    reading = Reading(stopped, {}, {_Partition(*key): end for key, (_, end) in ends_by_partition.items()}, {})
    report = merge_reports([absent.finish()] + [worker.part for worker in running], {})
    records = report.totals["records_read"]
    report.meta.update(reading.meta(topics, records, time.monotonic() - started, idle_timeout_s))
    report.meta["workers"] = len(running)
    heads = latest_of(absent.latest_heads(), *(worker.heads for worker in running))
    return keep_heads(report, heads, now, trusted_heads, save_heads_to)


@dataclass(frozen=True, order=True)
class _Partition:
    topic: str
    partition: int


async def _end_offsets(bootstrap: str, topics: list[str], client_options: dict) -> dict[tuple[str, int], tuple[int, int]]:
    consumer = await _started_consumer(bootstrap, "shipper-verify", client_options)
    try:
        assigned = await topic_partitions(consumer, topics)
        begins, ends = await offset_range(consumer, assigned)
    finally:
        await _stop(consumer)
    return {(tp.topic, tp.partition): (begins[tp], ends[tp]) for tp in assigned}


def _start(tasks: list[WorkerTask]) -> list[_Worker]:
    # spawn, not fork: the parent has run an event loop and holds sockets a child must not inherit
    context = multiprocessing.get_context("spawn")
    running = []
    for index, task in enumerate(tasks):
        parent_end, child_end = context.Pipe()
        process = context.Process(target=worker_main, args=(child_end, task), name=f"shipper-verify-{index}",
                                  daemon=True)
        process.start()
        child_end.close()
        running.append(_Worker(index, process, parent_end))
    return running


def _until_all(running: list[_Worker], step: str, progress: Callable[[int, int], None] | None, total: int) -> None:
    """Handle what the workers send until each has sent `step`; VerifyError when one fails or dies."""
    waiting = {worker.conn: worker for worker in running}
    while waiting:
        for conn in wait(list(waiting), timeout=1.0):
            worker = waiting[conn]
            try:
                message = conn.recv()
            except (EOFError, OSError):
                worker.process.join(5)
                raise VerifyError(f"verify worker {worker.index} ended unexpectedly "
                                  f"(exit code {worker.process.exitcode})") from None
            kind = message[0]
            if kind == "error":
                raise VerifyError(message[1])
            if kind == "progress":
                worker.done = message[1]
                if progress is not None:
                    progress(sum(each.done for each in running), total)
            elif kind == "read":
                _, worker.held, relayed, worker.stopped, worker.done = message
                worker.relayed = [RelayedClaim.from_dict(claim) for claim in relayed]
            elif kind == "report":
                worker.part, worker.heads = report_from_part(message[1]), message[2]
            if kind == step:
                del waiting[conn]


def _stop_all(running: list[_Worker]) -> None:
    for worker in running:
        worker.process.join(timeout=5 if worker.part is not None else 0)
        if worker.process.is_alive():
            worker.process.terminate()
            worker.process.join(5)
        worker.conn.close()


def worker_main(conn: Connection, task: WorkerTask) -> None:
    """A worker process: read, hand over the claims, take the routed ones, report."""
    try:
        asyncio.run(_work(conn, task))
    except VerifyError as exc:
        conn.send(("error", str(exc)))
    except KeyboardInterrupt:
        pass
    except Exception as exc:    # reported to the parent, which ends the verify with it
        conn.send(("error", f"verify worker: {type(exc).__name__}: {exc}"))
    finally:
        conn.close()


async def _work(conn: Connection, task: WorkerTask) -> None:
    from aiokafka import TopicPartition

    verifier = Verifier(load_public_keys(task.public_keys), **task.verifier_options)
    consumer = await _started_consumer(task.bootstrap, "shipper-verify", kafka_client_options(**task.client_terms))
    last = [0.0]

    def tell(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            conn.send(("progress", done))

    try:
        assigned = [TopicPartition(name, number) for name, number, _, _ in task.partitions]
        begins = {tp: begin for tp, (_, _, begin, _) in zip(assigned, task.partitions)}
        ends = {tp: end for tp, (_, _, _, end) in zip(assigned, task.partitions)}
        reading = await read_partitions(verifier, consumer, assigned, idle_timeout_s=task.idle_timeout_s,
                                        timeout_s=task.timeout_s, begins=begins, ends=ends, wait_for_claims=False,
                                        progress=tell)
    finally:
        await _stop(consumer)
    relayed = [claim.to_dict() for claim in verifier.relay_claims()]
    conn.send(("read", sorted(verifier.chains), relayed, reading.stopped, verifier.records))
    verifier.apply_claims(RelayedClaim.from_dict(claim) for claim in conn.recv())
    conn.send(("report", report_part(verifier.finish()), verifier.latest_heads()))
