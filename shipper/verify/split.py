"""A verify split into parts, each reading other partitions (`--workers` processes, `--group` members):
how the parts exchange what crosses partitions, and how their reports become one. Pure: parallel.py and
group.py carry the exchange over pipes or Kafka.

A chain lives in one partition (the shipper keys records by chain), so each part judges its chains
alone, except for what other chains' records say about them: a node manifest (in the node chain's
partition) attests the heads of the node's chains, which live in other partitions, and saved heads
(--trusted-heads) attest any chain. The exchange, in two steps:

1. Each part reads its partitions to their end, then hands over `relay_claims()`: what it learned of
   chains it read no record of (taken out of its verifier), with the names of the chains it holds.
2. `route_claims` gives each part the claims on the chains it holds; the claims on chains no part holds
   go to one part chosen by the caller, which takes those chains on (tail_removed or chain_absent).
   Each part then applies them (`apply_claims`), finishes, and the reports are merged (`merge_reports`).

A claim applied after every record is judged against the duplicate window (as a manifest read after the
chain's records is): a manifest head older than the window is checked for its seq only.
"""
from __future__ import annotations

from typing import Iterable

from .chain import RelayedClaim


def route_claims(held: list[set[str]], relayed: Iterable[RelayedClaim]) -> tuple[list[list[RelayedClaim]],
                                                                                    list[RelayedClaim]]:
    """(claims for each part, by the chains it holds; claims on chains no part holds)."""
    holders: dict[str, list[int]] = {}
    for index, names in enumerate(held):
        for name in names:
            holders.setdefault(name, []).append(index)
    routed: list[list[RelayedClaim]] = [[] for _ in held]
    unheld: list[RelayedClaim] = []
    for claim in relayed:
        owners = holders.get(claim.chain)
        if not owners:
            unheld.append(claim)
            continue
        for index in owners:
            routed[index].append(claim)
    return routed, unheld


def balance(sizes: dict[tuple[str, int], int], parts: int) -> list[list[tuple[str, int]]]:
    """Partitions (topic, number) -> records to read, dealt into `parts` lists of about equal records:
    the largest first, each to the lightest list so far. Deterministic."""
    loads = [0] * parts
    out: list[list[tuple[str, int]]] = [[] for _ in range(parts)]
    for partition, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        lightest = min(range(parts), key=lambda index: (loads[index], index))
        out[lightest].append(partition)
        loads[lightest] += size
    return [sorted(part) for part in out if part]
