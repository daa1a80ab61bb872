"""Loopback ports for the brokers the tests start: chosen free at run time, never fixed, because other
programs on the machine may hold the usual ones."""
from __future__ import annotations

import contextlib
import socket
import time


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1. All are held open until every one is chosen, so the
    kernel cannot hand the same port out twice (a broker needs several, all different)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """One free port on 127.0.0.1 (a shipper's metrics port, say)."""
    return free_ports(1)[0]


def accepts_connections(port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=timeout):
        return True
    return False


def wait_until_bindable(port: int, timeout: float) -> bool:
    """True once a fresh listener could bind `port` again (a restarted broker reuses its ports; the
    process that held them may take a moment to be gone). False when `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
        time.sleep(0.05)
