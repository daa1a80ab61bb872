"""Kafka-ready WAL frames: a sealed batch's records encoded and compressed once, on the ingest side.

`Prebuilder.prebuild(batch)` runs on the ingest's worker thread, after sealing and before the frame is
encoded: for every topic whose partition count the sender already knows (`PartitionCounts`, which it
fills from metadata), each run goes to the partition its chain's key maps to (murmur2, as the sender
would map it), and each partition's runs, in order, become complete Kafka v2 record batches: the same
records the sender builds (wire.kafka_records: key, `schema` and `event_id` headers), cut at
`kafka.batch_bytes`, compressed with `kafka.compression` (libsnappy releases the GIL). The WAL then
holds the compressed batches (batch.py, format 3) and the sender forwards them without encoding or
compressing anything (sender.py); only their header is written again at the send.

What cannot be built stays as record values, the way the sender takes them from a format-2 frame:
the runs of a topic whose partition count is not known yet (start-up, a new topic), and a record longer
than `kafka.max_request_bytes` allows, which the sender refuses into a gap record (its `before` keeps it
between the batches of its chain around it).
"""
from __future__ import annotations

import time
from collections.abc import Callable

from ..batch import Batch, BatchRun, KafkaBatch, Run, Sealed
from ..config import KafkaConfig
from ..metrics import Metrics, timed
from .client import PartitionCounts
from .wire import _BATCH_HEADER, _CODECS, _RECORD_OVERHEAD, _kafka_records, build_batch, partition_of


class Prebuilder:
    """Builds the Kafka batches of sealed batches (one call at a time: the ingest's worker thread)."""

    def __init__(self, config: KafkaConfig, partitions: PartitionCounts, metrics: Metrics) -> None:
        self.partitions = partitions
        self.codec = _CODECS[config.compression.value]
        self.budget = config.batch_bytes - _BATCH_HEADER
        self.limit = config.max_request_bytes - _RECORD_OVERHEAD
        self._encode_cpu = metrics.stage_cpu.labels("kafka_encode")
        self._compress_cpu = metrics.stage_cpu.labels("compress")

    def prebuild(self, batch: Batch) -> Batch:
        """The same batch with the runs of known topics as Kafka batches (batch.kafka); the others stay
        runs of values (batch.runs)."""
        values: list[Run] = []
        by_partition: dict[tuple[str, int, int], list[Run]] = {}
        for run in batch.runs:
            if not len(run.values):
                continue
            count = self.partitions.get(run.topic)
            if count is None:
                values.append(run)
                continue
            partition = partition_of(run.chain.encode(), count)
            by_partition.setdefault((run.topic, partition, count), []).append(run)
        if not by_partition:
            return batch
        kafka: list[KafkaBatch] = []
        for (topic, partition, count), runs in by_partition.items():
            self._build(topic, partition, count, runs, kafka, values)
        return Batch(values, batch.sources, batch.chains, batch.read_time, kafka)

    def _build(self, topic: str, partition: int, partitions: int, runs: list[Run], kafka: list[KafkaBatch],
               values: list[Run]) -> None:
        """The runs of one partition as Kafka batches appended to `kafka`, in order; a record too large
        for a request goes to `values`, before the batch that follows it."""
        # (chain, key, first_seq, values, start, stop): one span per sealed blob, as the sender takes them
        spans: list[list] = []
        for run in runs:
            key = run.chain.encode()
            if type(run.values) is Sealed:
                for index, packed in run.values.packed_parts():
                    spans.append([run.chain, key, run.first_seq + index, (packed.payload, packed.ends), 0, len(packed)])
            else:
                spans.append([run.chain, key, run.first_seq, list(run.values), 0, len(run.values)])
        position = 0
        encode_cpu = self._encode_cpu
        while True:
            while position < len(spans) and spans[position][4] == spans[position][5]:
                position += 1
            if position == len(spans):
                return
            records, taken, value_bytes = timed(encode_cpu, _kafka_records,
                                                [(key, seq, vals, start, stop)
                                                 for _chain, key, seq, vals, start, stop in spans[position:]],
                                                self.budget, self.limit, _BATCH_HEADER)
            count = sum(taken)
            if not count:
                # The next record is longer than a request may be: the sender refuses it (a gap record).
                span = spans[position]
                chain, _key, seq, vals, start, _stop = span
                value = vals[start] if type(vals) is list else bytes(vals[0][vals[1][start]:vals[1][start + 1]])
                values.append(Run(chain, topic, seq, [value], len(kafka)))
                span[2] += 1
                span[4] += 1
                continue
            batch_runs: list[BatchRun] = []
            for offset, number in enumerate(taken):
                if not number:
                    continue
                span = spans[position + offset]
                chain, first = span[0], span[2]
                last = batch_runs[-1] if batch_runs else None
                if last is not None and last.chain == chain and last.first_seq + last.count == first:
                    batch_runs[-1] = BatchRun(chain, last.first_seq, last.count + number)
                else:
                    batch_runs.append(BatchRun(chain, first, number))
                span[2] += number         # span: the seq of values[start] moves with start
                span[4] += number
            data, codec = build_batch(self.codec, records, count, int(time.time() * 1000), self._compress)
            kafka.append(KafkaBatch(topic, partition, partitions, codec, count, value_bytes, data, tuple(batch_runs)))

    def _compress(self, compress_now: Callable[[], None]) -> None:
        timed(self._compress_cpu, compress_now)
