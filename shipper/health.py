"""`/metrics`, `/healthz` and `/readyz` on one small HTTP server (asyncio streams, no framework).

- `/healthz`: the process is alive and the ingest loop went round recently.
- `/readyz`: the pipeline runs and can take lines: Kafka acknowledged a send recently, or the WAL
  still has room (an outage the WAL absorbs is not a reason to be taken out of service).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Callable

from .metrics import Metrics

log = logging.getLogger("shipper.health")

STALL_AFTER_S = 60.0


class HealthServer:
    def __init__(self, metrics: Metrics, host: str, port: int, *, alive: Callable[[], bool],
                 ready: Callable[[], bool]) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._alive = alive
        self._ready = ready
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics and health on %s:%d", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
            if parts[:1] != ["GET"]:
                status, body, kind = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path == "/metrics":
                status, body, kind = "200 OK", self.metrics.exposition(), "text/plain; version=0.0.4"
            elif path == "/healthz":
                ok = self._alive()
                status, body, kind = ("200 OK", b"ok\n", "text/plain") if ok else \
                    ("503 Service Unavailable", b"stalled\n", "text/plain")
            elif path == "/readyz":
                ok = self._ready()
                status, body, kind = ("200 OK", b"ready\n", "text/plain") if ok else \
                    ("503 Service Unavailable", b"not ready\n", "text/plain")
            else:
                status, body, kind = "404 Not Found", b"not found\n", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()


def free_loopback_port() -> int:
    """A port free on 127.0.0.1 now (for a worker's metrics, which only the supervisor reads)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pipeline_checks(pipeline) -> tuple[Callable[[], bool], Callable[[], bool]]:
    """(alive, ready) predicates over a running Pipeline."""

    def alive() -> bool:
        status = pipeline.status
        return not status.running or time.monotonic() - status.last_tick < STALL_AFTER_S

    def ready() -> bool:
        status = pipeline.status
        if not status.running or status.draining:
            return False
        sender, wal = pipeline.sender, pipeline.wal
        if sender is None or wal is None:
            return False
        kafka_recent = sender.last_success and time.monotonic() - sender.last_success < 30
        return bool(kafka_recent or (wal.has_room(pipeline.settings.wal.commit_bytes * 2) and not status.wal_error))

    return alive, ready
