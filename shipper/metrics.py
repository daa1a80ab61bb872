"""Prometheus metrics of the shipper: declared here once, updated by the stages.

Names follow Prometheus conventions: `audit_shipper_` prefix, units in the name, `_total` for
counters. Stages update counters per batch, not per line. Each `Metrics` owns its registry, so
tests and several pipelines in one process never share counters.
"""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        p = "audit_shipper_"
        # tail / parse
        # where the CPU goes, per batch (thread CPU time, so time waiting is not counted)
        self.stage_cpu = Counter(p + "stage_cpu_seconds_total", "CPU seconds spent in each pipeline stage: read, "
                                 "parse, seal, frame_encode, wal_write, fsync, kafka_encode, compress",
                                 ["stage"], registry=r)
        self.lines_read = Counter(p + "lines_read_total", "Physical lines read from log files", ["format"], registry=r)
        self.bytes_read = Counter(p + "bytes_read_total", "Bytes read from log files", ["format"], registry=r)
        self.entries = Counter(p + "entries_total", "Log entries parsed (partial lines joined)", registry=r)
        self.parse_errors = Counter(p + "parse_errors_total", "Degraded entries by kind", ["kind"], registry=r)
        self.files_tracked = Gauge(p + "files_tracked", "Log files being tailed", registry=r)
        self.rotations = Counter(p + "rotations_total", "File rotations followed", ["kind"], registry=r)
        self.watch_inotify = Gauge(p + "watch_inotify", "1 when changes are noticed by inotify, 0 when polling",
                                   registry=r)
        self.watched_dirs = Gauge(p + "watched_directories", "Directories watched with inotify", registry=r)
        self.watch_unwatched_dirs = Gauge(p + "watch_fallback_directories", "Directories polled because they "
                                          "cannot be watched (limit: fs.inotify.max_user_watches)", ["reason"],
                                          registry=r)
        self.watch_overflows = Counter(p + "watch_overflows_total", "inotify queue overflows (each one: a full "
                                       "rescan and a poll of every file)", registry=r)
        self.discovery_rejected = Counter(p + "discovery_rejected_total", "Paths refused by discovery", ["reason"],
                                          registry=r)
        # loss and seal
        self.loss_events = Counter(p + "loss_events_total", "Data lost at source or refused by the broker",
                                   ["reason"], registry=r)
        self.lost_bytes = Counter(p + "lost_bytes_total", "Bytes known lost, by reason", ["reason"], registry=r)
        self.gap_records = Counter(p + "gap_records_total", "Gap records written into chains", ["reason"], registry=r)
        self.checkpoints = Counter(p + "checkpoints_total", "Chain checkpoints written", ["signed"], registry=r)
        self.chains = Gauge(p + "chains", "Open hash chains", registry=r)
        self.chains_closed = Counter(p + "chains_closed_total", "Chains ended by a close record (the pod's log "
                                     "directory removed and its files drained)", registry=r)
        self.closed_chain_files = Counter(p + "closed_chain_files_total", "Log files not read because their chain "
                                          "is closed (`closed`) or was closed and pruned from state.db (`pruned`): "
                                          "a pod's log directory that came back after it was removed; once per path",
                                          ["state"], registry=r)
        # state.db
        self.state_bytes = Gauge(p + "state_bytes", "Bytes of state.db and its -wal file on disk", registry=r)
        self.state_pruned = Counter(p + "state_pruned_total", "Rows pruned from state.db: `chains` closed, "
                                    "acknowledged and quiet for state.prune_after_s, and `sources` still naming them",
                                    ["kind"], registry=r)
        # WAL
        self.wal_bytes = Gauge(p + "wal_bytes", "Bytes in WAL segments on disk", registry=r)
        self.wal_limit_bytes = Gauge(p + "wal_limit_bytes", "Configured WAL size limit", registry=r)
        self.wal_segments = Gauge(p + "wal_segments", "WAL segment files on disk", registry=r)
        self.wal_commits = Counter(p + "wal_commits_total", "WAL group commits", registry=r)
        self.wal_written_bytes = Counter(p + "wal_written_bytes_total", "Bytes appended to the WAL (frames and "
                                         "their headers)", registry=r)
        self.wal_write_errors = Counter(p + "wal_write_errors_total", "Failed WAL writes (e.g. disk full)", ["errno"],
                                        registry=r)
        self.wal_unacked_records = Gauge(p + "wal_unacked_records", "Records in the WAL not yet acknowledged by Kafka",
                                         registry=r)
        self.backpressure = Gauge(p + "backpressure_active", "1 while reading is paused because the WAL is full",
                                  registry=r)
        self.backpressure_seconds = Counter(p + "backpressure_seconds_total", "Time reading was paused", registry=r)
        # Kafka
        self.records_shipped = Counter(p + "records_shipped_total", "Records acknowledged by Kafka", registry=r)
        self.bytes_shipped = Counter(p + "bytes_shipped_total", "Record value bytes acknowledged by Kafka", registry=r)
        self.send_errors = Counter(p + "kafka_send_errors_total", "Failed batch sends by reason", ["reason"], registry=r)
        self.retries = Counter(p + "kafka_retries_total", "Batches sent again after a failure", registry=r)
        self.kafka_batches = Counter(p + "kafka_batches_total", "Record batches acknowledged by Kafka, by where they "
                                     "were built: `ingest` (in the WAL frame, sent as they are), `sender` (from "
                                     "record values: a topic whose partition count was not known yet, a frame of "
                                     "the previous release, a refused batch split)", ["built"], registry=r)
        self.lag = Histogram(p + "end_to_end_lag_seconds", "Read of a line to its broker ack", buckets=LAG_BUCKETS,
                             registry=r)
        self.kafka_connected = Gauge(p + "kafka_connected", "1 when the last send to Kafka succeeded", registry=r)
        # metadata
        self.metadata_cache_pods = Gauge(p + "metadata_cache_pods", "Pods in the metadata cache", registry=r)
        self.metadata_misses = Counter(p + "metadata_misses_total", "Entries shipped with path-derived metadata",
                                       ["reason"], registry=r)
        self.watch_restarts = Counter(p + "metadata_watch_restarts_total", "Watch restarts", ["resource", "reason"],
                                      registry=r)
        self.api_errors = Counter(p + "metadata_api_errors_total", "Kubernetes API errors", ["resource"], registry=r)
        self.excluded = Counter(p + "excluded_entries_total", "Entries of excluded pods, by why (`annotation`, "
                                "`namespace_selector`)", ["reason"], registry=r)
        self.annotation_errors = Counter(p + "annotation_errors_total", "Pod annotations whose value cannot be used "
                                         "(once per pod and value; the configured default applies)", ["annotation"],
                                         registry=r)
        self.redactions = Counter(p + "redactions_total", "Redactions applied, by rule", ["rule"], registry=r)
        # configuration
        self.config_generation = Gauge(p + "config_generation", "Configuration reloads applied since start "
                                       "(SIGHUP or a change of the file)", registry=r)
        self.config_reload_failures = Counter(p + "config_reload_failures_total", "Reloads refused (the new "
                                              "configuration is not valid; the running one is kept)", registry=r)
        # liveness
        self.up = Gauge(p + "pipeline_running", "1 while the pipeline runs", registry=r)
        self.wal_reads = Counter(p + "wal_reads_total", "Times the sender read frames back from the WAL files "
                                 "(after a restart, or when sending fell behind; else frames go from memory)", registry=r)
        self.native = Gauge(p + "native_hot_path", "1 when parse, seal and the body stage run in shipper._native "
                            "(0: the pure-Python reference, several times the CPU)", registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def timed(counter, function, *args, **kwargs):
    """function(*args, **kwargs), its thread CPU time added to `counter` (a Counter child)."""
    begin = time.thread_time()
    try:
        return function(*args, **kwargs)
    finally:
        counter.inc(time.thread_time() - begin)
