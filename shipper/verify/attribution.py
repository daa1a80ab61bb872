"""Attribution: whether every record of a container chain names, in its resource, the pod its signed
checkpoints attest (namespace, pod, pod uid, container, node).

Until a chain's first trusted checkpoint the attested identity is unknown, so its records wait in
buckets by the identity they carry (at most MAX_IDENTITIES_BUFFERED distinct ones, the rarest evicted
and only counted); when the checkpoint comes, every bucket of another identity is misattributed. After
it, a record with another identity is misattributed at once. Pure: the verifier reports what it returns.
"""
from __future__ import annotations

from typing import Any

from ..seal import identity_values
from .report import ISSUES_KEPT_PER_CHAIN, _where

#: Distinct identities remembered per chain for its records before its first trusted checkpoint.
MAX_IDENTITIES_BUFFERED = 16
IDENTITY_FIELDS = ("namespace", "pod", "pod-uid", "container", "node")
NO_IDENTITY = ("", "", "", "", "")


def resource_identity(resource: object) -> tuple:
    """The identity as the hot path reads it from a record's resource (absent fields are "")."""
    if type(resource) is not dict:
        return NO_IDENTITY
    get = resource.get
    return (get("k8s.namespace.name", ""), get("k8s.pod.name", ""), get("k8s.pod.uid", ""),
            get("k8s.container.name", ""), get("k8s.node.name", ""))


class Attribution:
    """The attested identity of one chain (a tuple in IDENTITY_FIELDS' order), and before it is known the
    records seen, by distinct identity: identity -> [count, [(seq, where), ...], identity as feed reads it]."""

    __slots__ = ("identity", "attested_by", "buckets", "recent", "overflow")

    def __init__(self) -> None:
        self.identity: tuple | None = None
        self.attested_by: tuple | None = None            # (checkpoint seq, where) that attested it
        self.buckets: dict[tuple, list] | None = {}
        self.recent: list | None = None                  # the bucket feed adds to without a call
        self.overflow = 0

    def observe(self, seq: int, seen: tuple, resource: object, where: tuple) -> tuple | None:
        """A record whose identity (`seen`, as feed read it) is not (yet) known to be the attested one:
        the identity it carries when that is misattributed now, else None (it is the attested one with
        a null for an empty value, or it waits in a bucket)."""
        identity = identity_values(resource)
        if identity == self.identity:
            return None
        if self.identity is not None:
            return identity
        buckets = self.buckets
        if buckets is None:
            return None
        bucket = buckets.get(identity)
        if bucket is None:
            if len(buckets) >= MAX_IDENTITIES_BUFFERED:
                # Evict the rarest: the chain's true identity, carried by most records, stays.
                rarest = min(buckets, key=lambda kept: buckets[kept][0])
                self.overflow += buckets.pop(rarest)[0]
                self.recent = None
            bucket = buckets[identity] = [0, [], None]
        bucket[0] += 1
        if len(bucket[1]) < ISSUES_KEPT_PER_CHAIN:
            bucket[1].append((seq, where))
        if identity == seen:
            # the next records most likely carry it too: feed counts them without a call
            bucket[2] = seen
            self.recent = bucket
        return None

    def attest(self, identity: tuple, seq: int, where: tuple) -> tuple[list[tuple[int, tuple, tuple]], int] | None:
        """A trusted checkpoint at seq attests `identity`. None when it is another one than an earlier
        checkpoint attested (IDENTITY_MISMATCH: see mismatch_detail); else the misattributed records
        that waited, as ([(seq, identity they carry, where), ...] kept, count not kept)."""
        if self.identity is not None:
            return None if identity != self.identity else ([], 0)
        self.identity, self.attested_by = identity, (seq, where)
        buckets, self.buckets, self.recent = self.buckets or {}, None, None
        examples: list[tuple[int, tuple, tuple]] = []
        uncounted = 0
        for seen, (count, kept, _) in buckets.items():
            if seen == identity:
                continue
            examples += [(example_seq, seen, example_where) for example_seq, example_where in kept]
            uncounted += count - len(kept)
        return examples, uncounted

    def release(self) -> None:
        self.buckets = self.recent = None

    def misattributed_detail(self, identity: tuple) -> str:
        attested = self.identity
        differ = ", ".join(f"{name} {value!r}" for name, value, expected in zip(IDENTITY_FIELDS, identity, attested)
                           if value != expected)
        wanted = ", ".join(f"{name} {expected!r}" for name, value, expected in zip(IDENTITY_FIELDS, identity, attested)
                           if value != expected)
        checkpoint_seq, checkpoint_where = self.attested_by
        return (f"its resource names {differ}; the chain's checkpoint at seq {checkpoint_seq} "
                f"({_where(*checkpoint_where)}) attests {wanted}")

    def mismatch_detail(self, identity: tuple) -> str:
        first_seq, first_where = self.attested_by
        return ("the checkpoint attests " + _fields(identity) + f"; the checkpoint at seq {first_seq} "
                f"({_where(*first_where)}) attests " + _fields(self.identity))

    def overflow_detail(self) -> str:
        return (f"the chain's records before its first checkpoint carry more than {MAX_IDENTITIES_BUFFERED} distinct "
                f"identities, so all but one are not the attested one; {self.overflow} of them, of the rarest "
                "identities, were not kept and could not be judged one by one")

    def as_dict(self) -> dict[str, str] | None:
        return dict(zip(IDENTITY_FIELDS, self.identity)) if self.identity is not None else None


def _fields(identity: tuple) -> str:
    return ", ".join(f"{name} {value!r}" for name, value in zip(IDENTITY_FIELDS, identity))


def attested_identity(attested: Any) -> tuple:
    """The identity tuple of a checkpoint note's parsed identity."""
    return (attested.namespace, attested.pod, attested.pod_uid, attested.container, attested.node)
