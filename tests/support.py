"""Helpers shared by integration and fault tests: run `shipper run` as a real process, write its
configuration and signing keys, wait for conditions, scrape its metrics, account for what reached the
topic, and run `shipper verify` over it."""
from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterable

import yaml

from shipper.demo.reconcile import Reconciliation, read_topic, reconcile
from shipper.seal import generate_key_pair
from tests.harness.ports import free_port


def full_context(records: Iterable[dict]) -> list[dict]:
    """Records as a consumer that wants every member on every record rebuilds them (records.py): a v2 log
    record without `source.path` takes the resource and `source.path` of the latest log record of its
    chain that has them, and every v2 record its event_id from the seal and `attributes` ({} when absent).
    v1 records pass unchanged. The records of a chain must come in their topic order."""
    latest: dict[str, tuple[dict, str]] = {}
    out = []
    for record in records:
        if record.get("schema") == "audit-shipper/v2":
            seal = record["seal"]
            record = {"schema": record["schema"], "event_id": f"{seal['chain']}:{seal['seq']}"} | record
            record.setdefault("attributes", {})
            if "type" not in record:
                if "path" in record["source"]:
                    latest[seal["chain"]] = (record["resource"], record["source"]["path"])
                elif seal["chain"] in latest:
                    record["resource"], path = latest[seal["chain"]]
                    record["source"] = {"path": path, "offset": record["source"]["offset"]}
        out.append(record)
    return out


def new_topic(broker, partitions: int = 3, prefix: str = "logs") -> str:
    """A topic of its own for one test, created on a harness broker."""
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    asyncio.run(broker.create_topic(topic, partitions))
    return topic


def write_config(path: Path, *, bootstrap: str, node_root: Path, state_dir: Path, topic: str = "logs",
                 metrics_port: int | None = None, **sections) -> Path:
    """A YAML config for a test shipper; `sections` deep-merge over the defaults here."""
    config = {
        "node_name": "test-node",
        "sources": {"roots": [str(node_root / "pods")], "symlink_roots": [str(node_root / "containers")],
                    "discover_interval_s": 0.2, "poll_interval_s": 0.05},
        "wal": {"dir": str(state_dir / "wal"), "max_bytes": 64 << 20, "segment_bytes": 4 << 20},
        "state": {"dir": str(state_dir)},
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "request_timeout_ms": 5000,
                  "retry_backoff_ms": 100, "retry_backoff_max_ms": 1000},
        "enrich": {"kubernetes": False},
        "seal": {"checkpoint_every_s": 2},
        "metrics": {"enabled": True, "host": "127.0.0.1", "port": metrics_port or free_port()},
        "shutdown_grace_s": 20,
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    path.write_text(yaml.safe_dump(config))
    return path


class ShipperProcess:
    """`shipper run` in its own process, for tests that kill it."""

    def __init__(self, config: Path, log_path: Path, env: dict | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.env = env or {}
        self.process: subprocess.Popen | None = None
        self.metrics_port = yaml.safe_load(config.read_text())["metrics"]["port"]

    def start(self, cpus: set[int] | None = None) -> ShipperProcess:
        """Start `shipper run`; `cpus`: the cores it may run on (the bench keeps the broker off them)."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("SHIPPER_")} | self.env
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "shipper.cli", "run", "--config", str(self.config)],
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                            preexec_fn=pin)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def sigkill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def sigterm(self, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.alive():
            self.sigkill()

    def metrics(self) -> dict[str, float]:
        return scrape(self.metrics_port)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def shipper_for(tmp_path: Path, bootstrap: str, topic: str, node, **sections) -> ShipperProcess:
    """`shipper run` (not started) shipping the logs of `node` (a SimNode) to `topic`, its config,
    state and log under `tmp_path`; `sections` deep-merge over write_config's defaults."""
    config = write_config(tmp_path / "config.yaml", bootstrap=bootstrap, node_root=node.root,
                          state_dir=tmp_path / "state", topic=topic, **sections)
    return ShipperProcess(config, tmp_path / "shipper.log")


def signing_keys(tmp_path: Path) -> tuple[Path, Path]:
    """A new Ed25519 key pair under tmp_path/keys: (private key file, private to its owner; public key file)."""
    private, public = generate_key_pair()
    (tmp_path / "keys").mkdir(mode=0o700)
    private_path, public_path = tmp_path / "keys" / "signing.pem", tmp_path / "keys" / "signing.pub.pem"
    private_path.write_bytes(private)
    private_path.chmod(0o600)
    public_path.write_bytes(public)
    return private_path, public_path


def signed_shipper(tmp_path: Path, bootstrap: str, topic: str, node, **sections) -> tuple[ShipperProcess, Path]:
    """shipper_for with a new signing key and a signed checkpoint every second; and the public key
    that verifies them."""
    private_key, public_key = signing_keys(tmp_path)
    seal = {"signing_key_file": str(private_key), "checkpoint_every_s": 1}
    return shipper_for(tmp_path, bootstrap, topic, node, seal=seal, **sections), public_key


def run_verify(bootstrap: str, topic: str, public_key: Path) -> tuple[int, dict]:
    """`shipper verify --json` over the whole topic: its exit status and its report."""
    done = subprocess.run([sys.executable, "-m", "shipper.cli", "verify", "--bootstrap-servers", bootstrap,
                           "--topic", topic, "--public-key", str(public_key), "--json", "--idle-timeout", "2"],
                          capture_output=True, text=True, timeout=120)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"verify printed no JSON: {done.stdout[-2000:]} {done.stderr[-2000:]}") from None
    return done.returncode, report


def scrape(port: int, path: str = "/metrics") -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # noqa: BLE001 - e.g. the metrics port not open yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" ({last_error})" if last_error else ""))


def shipped(process: ShipperProcess) -> float:
    return process.metrics().get("audit_shipper_records_shipped_total", 0.0)


def settle(bootstrap: str, topic: str, node, timeout: float = 120, idle_s: float = 2.0) -> Reconciliation:
    """Read the topic until every entry the node wrote is there (or the timeout); returns the account."""
    deadline = time.monotonic() + timeout
    while True:
        result = asyncio.run(account(bootstrap, topic, node, idle_s=idle_s))
        if result.total("missing") == 0 or time.monotonic() > deadline:
            return result
        time.sleep(1)


def all_arrived(broker, topic: str, node) -> bool:
    """Whether every entry the node wrote is in the topic, read over the broker's plaintext listener."""
    return asyncio.run(account(broker.bootstrap, topic, node, idle_s=1.0)).total("missing") == 0


async def account(bootstrap: str, topic: str, node, idle_s: float = 3.0) -> Reconciliation:
    values = await read_topic(bootstrap, topic, idle_s=idle_s)
    return reconcile({chain: node.ledger.bodies(chain) for chain in node.ledger.chains()}, values)
