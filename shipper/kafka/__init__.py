"""The Kafka stage: WAL frames out, finished frames back (see sender.py).

client.py: TLS/SASL options, the producer and its life, the partition counts it learned; oauth.py:
OAUTHBEARER token sources; wire.py: record batches and partitioning (the only aiokafka internals);
prebuild.py: a sealed batch's Kafka batches, built on the ingest side for the WAL; sender.py: the
Sender. This face only re-exports.
"""
from .client import (
    KafkaSetupError,
    KafkaSink,
    PartitionCounts,
    backoff_delays,
    kafka_client_options,
    oauth_token_source,
    producer_options,
    read_secret_file,
    ssl_context_for,
    wait_event,
)
from .oauth import OAuthTokenError
from .prebuild import Prebuilder
from .sender import FinishedFrames, GapWriter, Sender
from .wire import Span, kafka_records_py, partition_of

__all__ = [
    "FinishedFrames", "GapWriter", "KafkaSetupError", "KafkaSink", "OAuthTokenError", "PartitionCounts", "Prebuilder",
    "Sender", "Span", "backoff_delays", "kafka_client_options", "kafka_records_py", "oauth_token_source",
    "partition_of", "producer_options", "read_secret_file", "ssl_context_for", "wait_event",
]
