"""From files to sealed batches: owns the tailers, their parsers and the chain heads.

`Ingest.collect()` is the one blocking call the pipeline makes (from a worker thread): it finds new
files, reads what they grew by, parses, enriches, seals, and returns one `Batch` — the records and
where every source and chain stands after them. Nothing here touches the WAL or Kafka; the caller
commits the batch and only then is any of it acknowledged as read.

Loss (bytes rotated away unread, truncation, a record Kafka refused) becomes a gap record in the
chain of the file it happened to. A chain is closed (a `close` record, then a checkpoint) when its
files are gone for good and its directory too: when its last file is dropped, or later, when the
directory of a chain left without files goes (a source restored at start whose directory went while
the shipper was down is opened for that: its loss is declared, then its chain closes). A closed chain
is forgotten once state.db has pruned it (`forget`); its name stays as a tombstone, and a file of a
closed or pruned chain that shows up again is refused, counted and logged, never read into a new
chain under the old name.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .batch import Batch, Run, Sealed
from .config import RecordFormat, Settings, SourceMode
from .discover import DiscoveredFile, discover, discover_flat, parse_layout_path
from .metrics import Metrics, timed
from .model import ChainCheckpoint, ContainerRef, LossEvent, SourceCheckpoint
from .parse import Entries, EntryFlag, StreamParser
from .records import ChainContext, SealStats, seal_control, seal_entries_packed
from .seal import (TYPE_CHECKPOINT, TYPE_CLOSE, TYPE_GAP, TYPE_MANIFEST, ChainHead, Identity, Signer,
                   checkpoint_note_text, gap_body, manifest_note_text, sign_statement)
from .state import Snapshot
from .tail import Tailer
from .tail.watch import DirWatcher

log = logging.getLogger("shipper.ingest")


def rfc3339_now(now_ns: int | None = None) -> str:
    now_ns = time.time_ns() if now_ns is None else now_ns
    seconds, nanos = divmod(now_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


@dataclass(slots=True)
class _Source:
    key: str
    ref: ContainerRef
    tailer: Tailer
    parser: StreamParser | None         # chosen at the first read, when the pod's annotations can be known
    first_seen: float
    position: SourceCheckpoint | None = None
    finished: bool = False
    busy: bool = True                   # poll it next time even without an event in its directory
    directory: str = ""                 # where its files are, the directory whose events concern it


@dataclass(slots=True)
class _Chain:
    head: ChainHead
    ref: ContainerRef
    topic: str
    closed: bool = False
    topic_fixed: bool = False           # set at its first read in this process; never changes after
    since_checkpoint: int = 0
    last_checkpoint: float = field(default_factory=time.monotonic)
    sources: int = 0
    directory: str = ""                 # of its last file: when it goes, so does the stream
    context_sent: tuple[str, str] | None = None     # v2: (resource, path) of its last full log record
    context_sent_at: float = 0.0


@dataclass(slots=True)
class _ExternalGap:
    chain: str
    loss: LossEvent
    missing_seq: int
    missing_hash: str
    done: Callable[[], None]


class SigningKey:
    """The checkpoint signing key, re-read when its file changes (Kubernetes rotates Secrets)."""

    def __init__(self, path: str | None, key_id: str | None) -> None:
        self.path = path
        self.key_id = key_id
        self._mtime: float | None = None
        self.signer: Signer | None = None
        if path:
            self.reload(force=True)

    def reload(self, force: bool = False) -> None:
        if not self.path:
            return
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError as exc:
            if force:
                raise ValueError(f"seal.signing_key_file {self.path}: {exc.strerror}") from None
            return
        if not force and mtime == self._mtime:
            return
        try:
            self.signer = Signer.from_pem(Path(self.path).read_bytes(), self.key_id)
        except (OSError, ValueError) as exc:
            if force:
                raise ValueError(f"seal.signing_key_file {self.path}: {exc}") from None
            log.error("signing key file changed but cannot be loaded; keeping the previous key")
            return
        self._mtime = mtime


class Ingest:
    def __init__(self, settings: Settings, snapshot: Snapshot, metrics: Metrics, provider,
                 signing_key: SigningKey | None = None, shard=None) -> None:
        self.settings = settings
        self.sources_config = settings.sources
        self.metrics = metrics
        self._read_cpu, self._parse_cpu, self._seal_cpu = (metrics.stage_cpu.labels(stage)
                                                          for stage in ("read", "parse", "seal"))
        self.node = settings.node_name
        self.provider = provider        # enrich.build_provider: metadata, exclusion, the body stage
        self.signing_key = signing_key or SigningKey(settings.seal.signing_key_file, settings.seal.key_id)
        self._sources: dict[str, _Source] = {}
        self._chains: dict[str, _Chain] = {}
        self._restored_sources = {key: value for key, value in snapshot.sources.items() if value is not None}
        self._restored_chains = dict(snapshot.chains)
        self._last_discovery = float("-inf")      # monotonic time can be smaller than any interval
        self.watcher = DirWatcher(settings.sources.watch.value)
        if self.watcher.unavailable:
            log.warning("inotify unavailable (%s): polling every %.2fs", self.watcher.unavailable,
                        settings.sources.poll_interval_s)
        metrics.watch_inotify.set(1 if self.watcher.enabled else 0)
        self._last_full_poll = float("-inf")
        self._tombstones = snapshot.tombstones.copy()
        self._forgotten: deque[list[str]] = deque()      # chains state.db pruned, from the event loop
        self._refused: set[tuple[str, str]] = set()      # files of closed chains (path, state), logged once
        self._restored_swept = False
        self._rejected_seen: set[str] = set()
        self._external_gaps: deque[_ExternalGap] = deque()
        self._stats = SealStats()
        # `workers: N`: this process reads the files of its shard's chains (workers.Shard) and writes the
        # manifests of those as a node of its own
        self.shard = shard
        self._manifest_node = self.node if shard is None else f"{self.node}/{shard.manifest_node}"
        self._manifest_chain = f"node/{self._manifest_node}"
        self._manifest_dirty: set[str] = set()
        self._last_manifest = time.monotonic()
        self._topic_template = settings.kafka.topic
        self._compact = settings.kafka.record_format is RecordFormat.compact
        self._source_globs = (settings.sources.include, settings.sources.exclude)
        # One read turns into about 3-4x its size in records: keep a batch near commit_bytes.
        self.read_size = max(4096, min(settings.sources.read_size, settings.wal.commit_bytes // 4))

    # -- chains ----------------------------------------------------------------------------------
    def _chain(self, ref: ContainerRef) -> _Chain:
        name = ref.chain
        chain = self._chains.get(name)
        if chain is None:
            head, closed = self._restored_head(name)
            chain = self._chains[name] = _Chain(head, ref, self._template_topic(ref), closed)
        return chain

    def forget(self, names: list[str]) -> None:
        """Chains state.db has pruned (closed, acknowledged, quiet for state.prune_after_s): dropped from
        memory at the next cycle. Called from the event loop, while a cycle may run."""
        self._forgotten.append(names)

    def _forget_pruned(self) -> None:
        while self._forgotten:
            gone = set()
            for name in self._forgotten.popleft():
                chain = self._chains.get(name)
                if chain is not None and not chain.closed:
                    continue            # state.db prunes closed chains only; an open one is never forgotten
                self._chains.pop(name, None)
                self._restored_chains.pop(name, None)
                self._manifest_dirty.discard(name)
                gone.add(name)
            if not gone:
                continue
            self._tombstones.add(gone)
            for key in [key for key, saved in self._restored_sources.items() if saved.chain in gone]:
                del self._restored_sources[key]

    def _restored_head(self, name: str) -> tuple[ChainHead, bool]:
        restored = self._restored_chains.get(name)
        if restored is None:
            return ChainHead.genesis(name), False
        return ChainHead(name, restored.seq, restored.hash, restored.tree), restored.closed

    def _topic_for(self, ref: ContainerRef) -> str:
        chosen = self.provider.topic(ref)       # the pod's annotation, when allowed
        return self._template_topic(ref) if chosen is None else chosen

    def _template_topic(self, ref: ContainerRef) -> str:
        template = self._topic_template
        if "{" not in template:
            return template
        return template.format(namespace=ref.namespace, pod=ref.pod, container=ref.container)

    # -- discovery -------------------------------------------------------------------------------
    def _discover(self) -> None:
        config = self.sources_config
        if config.mode is SourceMode.sidecar:
            result = discover_flat(config.sidecar_dir, self._sidecar_template(), config.include, config.exclude)
        else:
            result = discover(config.roots, config.symlink_roots, config.include, config.exclude)
        if (config.include, config.exclude) != self._source_globs:
            self._source_globs = (config.include, config.exclude)
            self._close_unselected(result)
        for rejected in result.rejected:
            if rejected.path not in self._rejected_seen:
                self._rejected_seen.add(rejected.path)
                self.metrics.discovery_rejected.labels(reason=_reason_label(rejected.reason)).inc()
                log.warning("not reading %s: %s", rejected.path, rejected.reason)
        shard = self.shard
        for found in result.files:
            if found.path not in self._sources and len(self._sources) < config.max_open_files and (
                    shard is None or shard.owns(found.ref.chain)):
                self._add_source(found)
        if not self._restored_swept:
            self._restored_swept = True
            self._open_restored_without_directory()
        self.metrics.files_tracked.set(len(self._sources))
        self._sync_watches(result.dirs)
        self.metrics.chains.set(sum(1 for chain in self._chains.values() if not chain.closed))

    def _sync_watches(self, scanned: list[str]) -> None:
        """Watch every directory discovery listed (new pods and containers show up there) and each
        tailed file's own (a docker json-file log lives outside the pods tree)."""
        watcher = self.watcher
        if not watcher.enabled:
            return
        watcher.sync(set(scanned) | {source.directory for source in self._sources.values()})
        reasons = list(watcher.unwatched.values())
        for reason in ("limit", "error"):
            self.metrics.watch_unwatched_dirs.labels(reason=reason).set(reasons.count(reason))
        self.metrics.watched_dirs.set(len(watcher.watched))

    def _open_restored_without_directory(self) -> None:
        """Sources restored at start whose directory is gone (the pod was deleted while the shipper was
        down) are never discovered again: opened anyway, the tailer declares what it cannot read and
        finishes, and their chain closes, instead of their rows and chain staying in state.db for good."""
        config = self.sources_config
        if config.mode is SourceMode.sidecar:
            return
        for key, saved in list(self._restored_sources.items()):
            if key in self._sources or len(self._sources) >= config.max_open_files \
                    or os.path.isdir(os.path.dirname(key)):
                continue
            restored = self._restored_chains.get(saved.chain)
            if restored is not None and restored.closed:
                continue
            for root in config.roots:
                ref = parse_layout_path(key, root)
                if isinstance(ref, ContainerRef) and ref.chain == saved.chain:
                    self._add_source(DiscoveredFile(key, ref))
                    break

    def reconfigure(self, settings: Settings) -> None:
        """A reloaded configuration (reload.py changes only what may change while running): new source
        globs apply at the next discovery, moved up to the next cycle."""
        self.settings = settings
        self.sources_config = settings.sources
        self._last_discovery = 0.0

    def _close_unselected(self, result) -> None:
        """The source globs changed: files being read that no longer match are closed, their chains
        stay open. Their positions are kept, so a later match resumes there, as a restart would; a file
        missing from the discovery because it is gone is left to drain."""
        selected = {found.path for found in result.files}
        for key in [key for key in self._sources if key not in selected and os.path.exists(key)]:
            source = self._sources.pop(key)
            source.tailer.close()
            self._chains[source.ref.chain].sources -= 1
            if source.position is not None:
                self._restored_sources[key] = source.position
            log.info("not reading %s any more: it does not match sources.include/exclude", key)

    def _sidecar_template(self) -> ContainerRef:
        env = os.environ
        return ContainerRef(namespace=env.get("POD_NAMESPACE", "default"), pod=env.get("POD_NAME", self.node),
                            pod_uid=env.get("POD_UID", self.node), container="app", restart_count=0)

    def _add_source(self, found: DiscoveredFile) -> None:
        name = found.ref.chain
        if name not in self._chains and name not in self._restored_chains and name in self._tombstones:
            self._refuse(found.path, name, "pruned")
            return
        chain = self._chain(found.ref)
        if chain.closed:
            self._refuse(found.path, name, "closed")
            return
        saved = self._restored_sources.pop(found.path, None)
        position = saved.position if saved is not None else None
        tailer = Tailer(found.path, found.ref, position, read_size=self.read_size)
        self._sources[found.path] = _Source(found.path, found.ref, tailer, None, time.monotonic(), saved,
                                            directory=os.path.dirname(found.path))
        chain.sources += 1
        chain.directory = os.path.dirname(found.path)

    def _refuse(self, path: str, chain: str, state: str) -> None:
        """A file of a chain that has ended: its directory came back (a stale copy, or a static pod
        whose manifest was put back: same pod UID). Reading it into the ended chain would break what its
        close record says, and a new chain under the same name would fork it: it is not read."""
        if (path, state) in self._refused:
            return
        if len(self._refused) >= 4096:
            self._refused.clear()           # logged again then, rather than remembered without bound
        self._refused.add((path, state))
        self.metrics.closed_chain_files.labels(state=state).inc()
        log.warning("not reading %s: its chain %s is closed%s (its log directory was removed before)", path, chain,
                    " and pruned from state.db" if state == "pruned" else "")

    def _new_parser(self, source: _Source) -> StreamParser:
        config = self.sources_config
        fmt = config.sidecar_format if config.mode is SourceMode.sidecar else None
        multiline_start = self.provider.multiline_start(source.ref)     # the pod's annotation: "" is off
        if multiline_start is None:
            multiline_start = config.multiline_start_pattern
        parser = StreamParser(fmt=fmt if fmt != "raw" or config.mode is SourceMode.sidecar else None,
                              max_entry_bytes=config.max_entry_bytes, multiline_start=multiline_start or None,
                              multiline_max_lines=config.multiline_max_lines)
        if source.position is not None:       # nothing read yet: still the position restored at start
            parser.reset(source.position.offset)
        return parser

    # -- the cycle -------------------------------------------------------------------------------
    def add_external_gap(self, chain: str, loss: LossEvent, missing_seq: int, missing_hash: str,
                         done: Callable[[], None]) -> None:
        """A record Kafka refused: its chain gets a gap record in the next batch; `done` runs once
        that batch is durable (the caller wires it to the ack of the refused record)."""
        self._external_gaps.append(_ExternalGap(chain, loss, missing_seq, missing_hash, done))
        self.watcher.wake()

    def collect(self, max_record_bytes: int) -> tuple[Batch, list[Callable[[], None]]] | None:
        """Read, parse, seal; returns the batch and callbacks to run once it is durable, or None."""
        self._forget_pruned()
        now = time.monotonic()
        config = self.sources_config
        watcher = self.watcher
        changes = watcher.take() if watcher.enabled else None
        if changes is None:
            rediscover = now - self._last_discovery >= config.discover_interval_s
        else:
            if changes.overflow:
                self.metrics.watch_overflows.inc()
            # A directory that cannot be watched, or is not there yet (a root), announces nothing.
            rescan_s = config.discover_interval_s if watcher.unwatched or watcher.missing else config.watch_rescan_s
            rediscover = changes.structure or now - self._last_discovery >= rescan_s
        discovered = rediscover
        if rediscover:
            self._last_discovery = now
            self._discover()
        # With events, only sources whose directory changed, or that were busy, are polled; all of
        # them every watch_fallback_s, for an event that never came.
        poll_all = changes is None or changes.overflow or now - self._last_full_poll >= config.watch_fallback_s
        if poll_all:
            self._last_full_poll = now
        changed = changes.dirs if changes is not None else set()
        unwatched = watcher.unwatched
        observed = rfc3339_now()
        batch = Batch(read_time=time.time())
        runs: dict[str, Run] = {}
        callbacks: list[Callable[[], None]] = []
        emitted = 0
        while self._external_gaps:
            gap = self._external_gaps.popleft()
            chain = self._chains.get(gap.chain)
            if chain is None:
                gap.done()
                continue
            body = gap_body(gap.loss.reason.value, gap.loss.bytes_lost, gap.loss.path, gap.loss.offset,
                            gap.loss.detail, gap.missing_seq, gap.missing_hash)
            emitted += self._control(chain, TYPE_GAP, body, gap.loss.path, observed, runs, _gap_members(gap.loss))
            self.metrics.gap_records.labels(reason=gap.loss.reason.value).inc()
            callbacks.append(gap.done)
        if discovered:
            emitted += self._close_orphaned(observed, runs)
        finished: list[str] = []
        for key in sorted(self._sources, key=_source_order(self._sources)):
            source = self._sources[key]
            if not (poll_all or source.busy or source.directory in changed or source.directory in unwatched):
                continue
            if emitted >= max_record_bytes:
                source.busy = True              # its turn comes in the next batch
                continue
            emitted += self._read_source(source, observed, now, runs, batch)
            if source.finished:
                finished.append(key)
        for key in finished:
            emitted += self._drop_source(key, observed, runs, batch)
        emitted += self._checkpoints(observed, runs, force=False)
        if not runs:
            return None
        self._close_batch(batch, runs)
        self.metrics.entries.inc(self._stats.processed)
        if self._stats.invalid_utf8:
            self.metrics.parse_errors.labels(kind="invalid_utf8").inc(self._stats.invalid_utf8)
        self._stats = SealStats()
        return batch, callbacks

    def _read_source(self, source: _Source, observed: str, now: float, runs: dict[str, Run], batch: Batch) -> int:
        ref = source.ref
        provider = self.provider
        if provider.should_wait(ref, source.first_seen):
            source.busy = True
            return 0
        if source.parser is None:
            source.parser = self._new_parser(source)
        polled = timed(self._read_cpu, source.tailer.poll)
        source.busy = bool(polled.chunks or polled.losses) or not source.tailer.idle
        excluded = provider.exclusion(ref)
        if excluded is not None:
            self._drop_excluded(source, polled, batch, excluded)
            return 0
        chain = self._chain(ref)
        if not chain.topic_fixed:
            chain.topic, chain.topic_fixed = self._topic_for(ref), True
        emitted = 0
        for loss in polled.losses:
            emitted += self._record_loss(chain, loss, observed, runs)
        if polled.chunks:
            parser = source.parser
            process_body = provider.body_processor(ref)
            resource = provider.resource_json(ref)
            for chunk in polled.chunks:
                entries = Entries()
                if chunk.offset != parser.expected_offset and parser.holds_data:
                    # Truncated under us: what the parser holds was read and is shipped as it is.
                    parser.feed(b"", parser.expected_offset, end_of_file=True, out=entries)
                if chunk.offset != parser.expected_offset:
                    parser.reset(chunk.offset)
                lines_before = parser.lines
                timed(self._parse_cpu, parser.feed, chunk.data, chunk.offset, chunk.end_of_file, out=entries)
                fmt = parser.format or "cri"
                self.metrics.bytes_read.labels(format=fmt).inc(len(chunk.data))
                self.metrics.lines_read.labels(format=fmt).inc(parser.lines - lines_before)
                if len(entries):
                    self._count_degradations(entries)
                    full = not self._compact or self._full_context(chain, resource, chunk.path, now)
                    context = ChainContext(chain.head.chain, resource, chunk.path, self._compact, full)
                    emitted += self._seal(chain, entries, context, observed, process_body, runs)
                if chunk.end_of_file:
                    self.metrics.rotations.labels(kind="drained").inc()
                    position = source.tailer.position_of(chunk.file_id, chunk.offset + len(chunk.data))
                else:
                    position = source.tailer.position_of(chunk.file_id, parser.safe_offset)
                source.position = SourceCheckpoint(position.file_id, position.path, position.offset, ref.chain)
            batch.sources[source.key] = source.position
        if polled.finished:
            source.finished = True
        return emitted

    def _full_context(self, chain: _Chain, resource: str, path: str, now: float) -> bool:
        """v2 records: whether this batch's first record carries the full resource and source.path (the
        others carry the pod's identity and offset). It does when they changed since the chain's last full
        log record, for the chain's first batch in this process, and at least every checkpoint interval, so
        a consumer that starts anywhere has them within one (the rule a call per batch would give leaves
        most records full on a live node: a batch holds what a pod wrote since the last poll, about one line
        at ten lines a second)."""
        sent = chain.context_sent
        if sent is not None and sent[0] == resource and sent[1] == path \
                and now - chain.context_sent_at < self.settings.seal.checkpoint_every_s:
            return False
        chain.context_sent = (resource, path)
        chain.context_sent_at = now
        return True

    def _drop_excluded(self, source: _Source, polled, batch: Batch, reason: str) -> None:
        """An excluded pod's lines are read and counted, never shipped; its position moves on so a
        later un-exclusion does not ship the past (the provider logs each exclusion once)."""
        parser = source.parser
        excluded = 0
        for chunk in polled.chunks:
            if chunk.offset != parser.expected_offset:
                parser.reset(chunk.offset)
            excluded += len(parser.feed(chunk.data, chunk.offset, chunk.end_of_file))
            end = chunk.offset + len(chunk.data) if chunk.end_of_file else parser.safe_offset
            position = source.tailer.position_of(chunk.file_id, end)
            source.position = SourceCheckpoint(position.file_id, position.path, position.offset, source.ref.chain)
        if polled.chunks:
            batch.sources[source.key] = source.position
        if excluded:
            self.metrics.excluded.labels(reason=reason).inc(excluded)
        if polled.finished:
            source.finished = True

    def _count_degradations(self, entries: Entries) -> None:
        flags_seen = 0
        for flags in entries.flags:
            flags_seen |= flags
        if not flags_seen & (EntryFlag.BAD_HEADER | EntryFlag.BAD_JSON | EntryFlag.TRUNCATED):
            return
        for flag, kind in ((EntryFlag.BAD_HEADER, "cri_header"), (EntryFlag.BAD_JSON, "docker_json"),
                           (EntryFlag.TRUNCATED, "truncated")):
            count = sum(1 for flags in entries.flags if flags & flag)
            if count:
                self.metrics.parse_errors.labels(kind=kind).inc(count)

    def _seal(self, chain: _Chain, entries: Entries, context: ChainContext, observed: str, process_body,
              runs: dict[str, Run]) -> int:
        run = self._run(chain, runs)          # before sealing: the run starts at the head's next seq
        blob, lengths, chain.head = timed(self._seal_cpu, seal_entries_packed, chain.head, entries, context, observed,
                                          process_body, self._stats)
        run.values.add_packed(blob, lengths)
        chain.since_checkpoint += len(lengths)
        self._manifest_dirty.add(chain.head.chain)
        return len(blob)

    def _run(self, chain: _Chain, runs: dict[str, Run]) -> Run:
        run = runs.get(chain.head.chain)
        if run is None:
            run = runs[chain.head.chain] = Run(chain.head.chain, chain.topic, chain.head.seq + 1, Sealed())
        return run

    def _control(self, chain: _Chain, type_: str, body: str, path: str, observed: str, runs: dict[str, Run],
                 extra_members: str = "") -> int:
        run = self._run(chain, runs)
        context = ChainContext(chain.head.chain, self.provider.resource_json(chain.ref), path, self._compact)
        value, chain.head = seal_control(chain.head, type_, body, context, observed, extra_members)
        run.values.append(value)
        self._manifest_dirty.add(chain.head.chain)
        return len(value)

    def _record_loss(self, chain: _Chain, loss: LossEvent, observed: str, runs: dict[str, Run]) -> int:
        self.metrics.loss_events.labels(reason=loss.reason.value).inc()
        if loss.bytes_lost > 0:
            self.metrics.lost_bytes.labels(reason=loss.reason.value).inc(loss.bytes_lost)
        self.metrics.gap_records.labels(reason=loss.reason.value).inc()
        log.warning("loss at source in chain %s: %s, %s bytes (%s)", chain.head.chain, loss.reason.value,
                    loss.bytes_lost, loss.detail or loss.path)
        body = gap_body(loss.reason.value, loss.bytes_lost, loss.path, loss.offset, loss.detail)
        chain.since_checkpoint += 1
        return self._control(chain, TYPE_GAP, body, loss.path, observed, runs, _gap_members(loss))

    def _drop_source(self, key: str, observed: str, runs: dict[str, Run], batch: Batch) -> int:
        source = self._sources.pop(key)
        source.tailer.close()
        batch.sources[key] = None
        chain = self._chains[source.ref.chain]
        chain.sources -= 1
        emitted = 0
        if chain.sources == 0 and not os.path.isdir(os.path.dirname(key)):
            # The container's directory is gone and all its files are drained: the stream ended.
            emitted += self._close(chain, key, observed, runs)
        self.metrics.files_tracked.set(len(self._sources))
        return emitted

    def _close_orphaned(self, observed: str, runs: dict[str, Run]) -> int:
        """Chains whose last file was dropped while their directory stayed (the runtime removed a dead
        container's log, say), when the directory goes later: their stream has ended too."""
        emitted = 0
        for chain in self._chains.values():
            if chain.sources == 0 and not chain.closed and chain.directory and not os.path.isdir(chain.directory):
                emitted += self._close(chain, chain.directory, observed, runs)
        return emitted

    def _close(self, chain: _Chain, path: str, observed: str, runs: dict[str, Run]) -> int:
        emitted = self._control(chain, TYPE_CLOSE, "stream ended: files removed and drained", path, observed, runs)
        chain.closed = True
        self.metrics.chains_closed.inc()
        return emitted + self._checkpoint(chain, observed, runs)

    # -- checkpoints -----------------------------------------------------------------------------
    def _checkpoints(self, observed: str, runs: dict[str, Run], force: bool) -> int:
        seal_config = self.settings.seal
        now = time.monotonic()
        emitted = 0
        self.signing_key.reload()
        for chain in self._chains.values():
            if chain.since_checkpoint == 0 or chain.closed:
                continue
            if force or chain.since_checkpoint >= seal_config.checkpoint_every_records \
                    or now - chain.last_checkpoint >= seal_config.checkpoint_every_s:
                emitted += self._checkpoint(chain, observed, runs)
        since_manifest = now - self._last_manifest
        # A heartbeat manifest even when nothing changed, so that verify can tell a node that stopped
        # writing (or whose manifests were cut off the topic) from a quiet one.
        if (self._manifest_dirty and (force or since_manifest >= seal_config.checkpoint_every_s)) \
                or since_manifest >= seal_config.manifest_every_s:
            emitted += self._manifest(observed, runs)
        return emitted

    def _signed(self, text: str) -> str:
        signer = self.signing_key.signer
        return sign_statement(text, [signer] if signer else [])

    def _checkpoint(self, chain: _Chain, observed: str, runs: dict[str, Run]) -> int:
        """The chain's head and tree, attributed to the pod it belongs to, in a signed note."""
        head = chain.head
        ref = chain.ref
        identity = Identity(ref.namespace, ref.pod, ref.pod_uid, ref.container, self.node)
        body = self._signed(checkpoint_note_text(head.chain, head.tree, head, observed, identity))
        self.metrics.checkpoints.labels(signed=str(self.signing_key.signer is not None).lower()).inc()
        chain.since_checkpoint = 0
        chain.last_checkpoint = time.monotonic()
        return self._control(chain, TYPE_CHECKPOINT, body, "", observed, runs)

    def _manifest(self, observed: str, runs: dict[str, Run]) -> int:
        """The node chain's checkpoint, listing the head of every open chain and of every chain that
        moved since the last manifest (so a close is listed once)."""
        names = {name for name, chain in self._chains.items() if not chain.closed} | self._manifest_dirty
        names.discard(self._manifest_chain)
        heads = [(name, self._chains[name].head.seq, self._chains[name].head.hash)
                 for name in sorted(names) if name in self._chains]
        self._manifest_dirty.clear()
        self._last_manifest = time.monotonic()
        chain = self._chains.get(self._manifest_chain)
        if chain is None:
            ref = ContainerRef(namespace="", pod=self.node, pod_uid="node", container=self.node, restart_count=0)
            chain = self._chain_named(self._manifest_chain, ref)
        head = chain.head
        body = self._signed(manifest_note_text(self._manifest_node, head.tree, head, observed, heads))
        emitted = self._control(chain, TYPE_MANIFEST, body, "", observed, runs)
        self._manifest_dirty.discard(self._manifest_chain)
        return emitted

    def _chain_named(self, name: str, ref: ContainerRef) -> _Chain:
        head, _closed = self._restored_head(name)
        topic = self._topic_template if "{" not in self._topic_template else \
            self._topic_template.format(namespace="audit-shipper", pod=self.node, container="manifest")
        chain = self._chains[name] = _Chain(head, ref, topic)
        return chain

    async def wait_for_change(self, stopping, poll_s: float) -> None:
        """Between collects that found nothing: until something changed on disk, or `poll_s` while a
        source needs polling anyway, or until the next fallback poll."""
        watcher = self.watcher
        if not watcher.enabled or self._external_gaps or watcher.unwatched or any(
                source.busy for source in self._sources.values()):
            timeout = poll_s
        else:
            timeout = max(self._last_full_poll + self.sources_config.watch_fallback_s - time.monotonic(), 0.0)
        await watcher.wait(stopping, timeout)

    def watch_rotations(self) -> None:
        """While reading is paused (backpressure): let every tailer notice rotations and hold the
        rotated files open, so the kubelet cannot delete them unread meanwhile."""
        for source in list(self._sources.values()):
            source.tailer.watch()

    def final_checkpoints(self) -> Batch | None:
        """On shutdown: attest every chain's head, so a clean stop leaves no unattested tail."""
        observed = rfc3339_now()
        runs: dict[str, Run] = {}
        self._checkpoints(observed, runs, force=True)
        if not runs:
            return None
        batch = Batch(read_time=time.time())
        self._close_batch(batch, runs)
        return batch

    def _close_batch(self, batch: Batch, runs: dict[str, Run]) -> None:
        """The runs go in, with the head every touched chain reaches (the checkpoint of the commit)."""
        batch.runs = list(runs.values())
        for name in runs:
            chain = self._chains[name]
            head = chain.head
            batch.chains[name] = ChainCheckpoint(head.seq, head.hash, chain.closed, head.tree)

    def close(self) -> None:
        for source in self._sources.values():
            source.tailer.close()
        self.watcher.close()


def _gap_members(loss: LossEvent) -> str:
    return ',"gap":' + json.dumps({"reason": loss.reason.value, "bytes": loss.bytes_lost}, separators=(",", ":"))


def _reason_label(reason: str) -> str:
    lowered = reason.lower()
    if "symlink" in lowered or "outside" in lowered or "escape" in lowered:
        return "symlink_escape"
    if "not" in lowered and "layout" in lowered or "is not" in lowered:
        return "layout"
    return "other"


def _source_order(sources: dict[str, _Source]):
    def key(name: str):
        ref = sources[name].ref
        return (ref.chain, ref.restart_count, name)
    return key
