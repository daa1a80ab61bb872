"""Real Kafka-protocol brokers for the tests, each a child process on loopback ports chosen at run time.

`BrokerProcess` is the shape both brokers share (start, stop, kill, pause, resume, restart, readiness by a
real metadata request, topic helpers); `KafkaBroker` runs Apache Kafka 4.1.1 in KRaft combined mode from the
jars that scripts/fetch-kafka caches (fetched on first use). `TansuBroker` lives in tansu.py.

Lifecycle methods are synchronous so session fixtures and plain code can use them; a test that keeps a
client running on its event loop while a broker restarts uses the `*_async` twins, which do the blocking
parts in a worker thread. Every wait is bounded and a broker that fails to come up raises
`BrokerStartError` with the tail of its log.
"""
from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import os
import shutil
import signal
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code

from .certs import TlsMaterial, make_tls_material
from .oauth import KAFKA_SCOPE, StaticTokenProvider
from .ports import accepts_connections, free_ports, wait_until_bindable

KAFKA_VERSION = "4.1.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
FETCH_SCRIPT = REPO_ROOT / "scripts" / "fetch-kafka"

PLAINTEXT, SSL, MTLS, SASL_SSL, SASL_OAUTH = "plaintext", "ssl", "mtls", "sasl_ssl", "sasl_oauth"


class BrokerStartError(RuntimeError):
    """A broker did not come up (or its tools are missing); the message carries its log's tail."""


@dataclass(frozen=True, slots=True)
class SaslUser:
    mechanism: str  # "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"
    username: str
    password: str


DEFAULT_SASL_USERS = (
    SaslUser("SCRAM-SHA-512", "shipper-scram512", "scram512-secret"),
    SaslUser("SCRAM-SHA-256", "shipper-scram256", "scram256-secret"),
    SaslUser("PLAIN", "shipper-plain", "plain-secret"),
)


class BrokerProcess:
    """One broker child process and the directory it owns. Subclasses say how to prepare and run it."""

    kind = "broker"
    #: True when a partition's end offset is the offset after its last record (Kafka). Tansu 0.6 reports the
    #: base offset of the last batch plus one instead, so reading to the end offset would stop short there.
    exact_end_offsets = False
    ready_timeout = 90.0  # generous: a loaded 2-core machine has taken 25 s where an idle one takes 6

    def __init__(self, workdir: Path, listener_names: Iterable[str]) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        names = list(listener_names)
        self.ports: dict[str, int] = dict(zip(names, free_ports(len(names))))
        self.console_log = self.workdir / "console.log"
        self.process: subprocess.Popen | None = None
        self.paused = False
        self.started_count = 0
        self.last_ready_seconds: float | None = None
        self._started_at = 0.0

    # -- what subclasses provide -------------------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Runs before every start (first start and restarts alike)."""

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def log_files(self) -> list[Path]:
        return [self.console_log]

    @property
    def client_listeners(self) -> list[str]:
        """Listeners clients connect to; readiness probes each one."""
        return [PLAINTEXT]

    def client_options(self, listener: str = PLAINTEXT, mechanism: str | None = None) -> dict:
        """Keyword arguments for any aiokafka client to reach this broker through `listener`."""
        if listener != PLAINTEXT:
            raise ValueError(f"{self.kind} has no {listener} listener")
        return {"bootstrap_servers": self.bootstrap}

    def _probe_options(self, listener: str) -> dict:
        """Client options for the readiness probe: those of `listener`, except that the probe does not judge
        the server's certificate. Readiness means the broker serves; negative tests start brokers with
        expired or wrong-host certificates on purpose, and their clients are the ones that must refuse."""
        options = self.client_options(listener)
        context = options.get("ssl_context")
        if context is not None:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return options

    # -- addresses ---------------------------------------------------------------------------------------
    def bootstrap_for(self, listener: str) -> str:
        return f"127.0.0.1:{self.ports[listener]}"

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_for(PLAINTEXT)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> BrokerProcess:
        """Spawns the broker and returns at once; `wait_ready` tells when it serves."""
        if self.running:
            raise RuntimeError(f"{self.kind} already running (pid {self.pid})")
        for name, port in self.ports.items():
            if not wait_until_bindable(port, timeout=10):
                raise BrokerStartError(f"{self.kind}: port {port} ({name}) is held by another process")
        self._prepare()
        with open(self.console_log, "ab") as console:
            console.write(f"\n===== {self.kind} start #{self.started_count + 1} at {time.ctime()} =====\n".encode())
            console.flush()
            # A session of its own: a Ctrl-C aimed at pytest must not reach the broker before its fixture
            # stops it, and signals the tests send go to exactly this process.
            self.process = subprocess.Popen(self._command(), cwd=self.workdir, stdout=console,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self._environment(), start_new_session=True)
        _children.add(self.process)
        self.paused = False
        self.started_count += 1
        self._started_at = time.monotonic()
        return self

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (a clean shutdown) and wait; SIGKILL if it has not exited within `timeout`."""
        if not self.running:
            return self.process.returncode if self.process else None
        self._signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        self.paused = False
        self._signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int | None:
        """SIGKILL: the crash case. Returns once the process is gone."""
        if not self.running:
            return self.process.returncode if self.process else None
        self._signal(signal.SIGKILL)
        self.paused = False
        return self.process.wait(30)

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its sockets but answers nothing, like a hung or partitioned host."""
        self._require_running("pause")
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._require_running("resume")
        self._signal(signal.SIGCONT)
        self.paused = False

    def restart(self, timeout: float | None = None) -> BrokerProcess:
        """Stops the broker if it runs (cleanly), starts it again on the same ports and directory, and waits
        until it serves. After `kill()` this is the restart after a crash."""
        self.stop()
        self.start()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float | None = None) -> float:
        """Blocks until every client listener answers a metadata request; returns the seconds since start."""
        return _run_blocking(lambda: self.wait_ready_async(timeout))

    async def wait_ready_async(self, timeout: float | None = None) -> float:
        timeout = timeout or self.ready_timeout
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        pending = list(self.client_listeners)
        while pending:
            if not self.running:
                code = self.process.returncode if self.process else None
                raise BrokerStartError(self.failure_report(f"{self.kind} exited with status {code} before it was ready"))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerStartError(self.failure_report(
                    f"{self.kind} not ready on {', '.join(pending)} after {timeout:.0f}s (last error: {last_error!r})"))
            options = self._probe_options(pending[0])
            try:
                # A plain connect first: aiokafka logs every refused connection, which would bury the log.
                if not accepts_connections(int(options["bootstrap_servers"].rsplit(":", 1)[1])):
                    raise ConnectionRefusedError(f"nothing accepts on {options['bootstrap_servers']} yet")
                await asyncio.wait_for(_probe_metadata(options), min(remaining, 10.0))
                pending.pop(0)
                continue
            except Exception as exc:  # noqa: BLE001 - any failure (timeouts included) means "not yet"
                last_error = exc
            await asyncio.sleep(0.2)
        self.last_ready_seconds = time.monotonic() - self._started_at
        return self.last_ready_seconds

    async def restart_async(self, timeout: float | None = None) -> BrokerProcess:
        await asyncio.to_thread(self.stop)
        self.start()
        await self.wait_ready_async(timeout)
        return self

    async def stop_async(self, timeout: float = 30.0) -> int | None:
        return await asyncio.to_thread(self.stop, timeout)

    def __enter__(self) -> BrokerProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    async def __aenter__(self) -> BrokerProcess:
        self.start()
        try:
            await self.wait_ready_async()
        except BaseException:
            self.kill()
            raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop_async()

    # -- diagnostics -------------------------------------------------------------------------------------
    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in self.log_files:
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- last {len(text)} lines of {path} ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no log written)"

    def failure_report(self, headline: str) -> str:
        return f"{headline}\nlogs: {', '.join(map(str, self.log_files))}\n{self.log_tail()}"

    # -- topic helpers -----------------------------------------------------------------------------------
    async def create_topic(self, name: str, partitions: int = 1, config: Mapping[str, str] | None = None,
                           timeout: float = 15.0) -> None:
        await create_topic(self.client_options(), name, partitions, config=config, timeout=timeout)

    async def consume_all(self, topic: str, timeout: float = 15.0, *, listener: str = PLAINTEXT,
                          idle: float = 1.0) -> list[ConsumerRecord]:
        return await consume_all(self.client_options(listener), topic, timeout=timeout,
                                 idle=None if self.exact_end_offsets else idle)

    def _signal(self, signum: int) -> None:
        try:
            self.process.send_signal(signum)
        except ProcessLookupError:
            pass

    def _require_running(self, what: str) -> None:
        if not self.running:
            raise RuntimeError(f"cannot {what} {self.kind}: not running")

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.bootstrap} {state} {self.workdir}>"


class KafkaBroker(BrokerProcess):
    """Apache Kafka, one node as broker and controller (KRaft, static quorum), data in `workdir/data`.

    Plaintext only by default. With `tls`, it also listens with TLS (`bootstrap_ssl`: server certificate
    only; `bootstrap_mtls`: a client certificate is required), and with `sasl_users` too, SASL over TLS
    (`bootstrap_sasl_ssl`; PLAIN and SCRAM users; SCRAM credentials are written at format time). With
    `oauth` and `tls`, SASL OAUTHBEARER over TLS (`bootstrap_sasl_oauth`), validated by Kafka's built-in
    *unsecured* JWT validator (tokens with `alg: none`, see oauth.py), which requires the scope `kafka`
    and, as managed services do, ends a session when its token expires (`connections.max.reauth.ms`).
    `config` overrides or adds broker properties. `fast_start` runs the JVM with the C1 compiler only: about
    a third less CPU to start (measured 6.0 -> 3.9 CPU-s), but slower under sustained load, so a benchmark
    passes False.
    """

    kind = "kafka"
    exact_end_offsets = True

    def __init__(self, workdir: Path, *, tls: TlsMaterial | None = None, sasl_users: Iterable[SaslUser] = (),
                 oauth: bool = False, config: Mapping[str, str] | None = None, heap: str = "512m",
                 fast_start: bool = True) -> None:
        self.tls = tls
        self.sasl_users = {user.mechanism: user for user in sasl_users}
        if (self.sasl_users or oauth) and tls is None:
            raise ValueError("SASL needs TLS material: the SASL listeners are SASL_SSL")
        self.oauth = oauth
        listeners = [PLAINTEXT, "controller"]
        if tls is not None:
            listeners += [SSL, MTLS]
        if self.sasl_users:
            listeners.append(SASL_SSL)
        if oauth:
            listeners.append(SASL_OAUTH)
        super().__init__(workdir, listeners)
        self.data_dir = self.workdir / "data"
        self.server_log = self.workdir / "server.log"
        self.properties_file = self.workdir / "server.properties"
        self.log4j_file = self.workdir / "log4j2.properties"
        self.extra_config = dict(config or {})
        self.heap = heap
        self.fast_start = fast_start

    @classmethod
    def secure(cls, workdir: Path, **kwargs) -> KafkaBroker:
        """Plaintext, TLS, mutual TLS, SASL_SSL and OAUTHBEARER listeners, with fresh certificates and the
        default users."""
        workdir = Path(workdir)
        return cls(workdir, tls=make_tls_material(workdir / "tls"), sasl_users=DEFAULT_SASL_USERS, oauth=True,
                   **kwargs)

    @property
    def bootstrap_ssl(self) -> str:
        return self.bootstrap_for(SSL)

    @property
    def bootstrap_mtls(self) -> str:
        return self.bootstrap_for(MTLS)

    @property
    def bootstrap_sasl_ssl(self) -> str:
        return self.bootstrap_for(SASL_SSL)

    @property
    def bootstrap_sasl_oauth(self) -> str:
        return self.bootstrap_for(SASL_OAUTH)

    @property
    def ca_file(self) -> Path:
        return self._tls().ca_file

    @property
    def client_cert_file(self) -> Path:
        return self._tls().client.cert_file

    @property
    def client_key_file(self) -> Path:
        return self._tls().client.key_file

    @property
    def log_files(self) -> list[Path]:
        return [self.server_log, self.console_log]

    @property
    def client_listeners(self) -> list[str]:
        return [name for name in self.ports if name != "controller"]

    def client_options(self, listener: str = PLAINTEXT, mechanism: str | None = None) -> dict:
        if listener == PLAINTEXT:
            return {"bootstrap_servers": self.bootstrap}
        if listener not in self.ports:
            raise ValueError(f"this kafka broker has no {listener} listener")
        context = ssl.create_default_context(cafile=str(self.ca_file))
        options = {"bootstrap_servers": self.bootstrap_for(listener), "ssl_context": context}
        if listener == MTLS:
            context.load_cert_chain(self.client_cert_file, self.client_key_file)
        if listener in (SSL, MTLS):
            return options | {"security_protocol": "SSL"}
        if listener == SASL_OAUTH:
            return options | {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER",
                              "sasl_oauth_token_provider": StaticTokenProvider()}
        user = self.sasl_users[mechanism or "SCRAM-SHA-512"]
        return options | {"security_protocol": "SASL_SSL", "sasl_mechanism": user.mechanism,
                          "sasl_plain_username": user.username, "sasl_plain_password": user.password}

    # -- running -----------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        self.properties_file.write_text(_render_properties(self._properties()))
        self.log4j_file.write_text(_LOG4J2.format(log=self.server_log))
        if not (self.data_dir / "meta.properties").exists():
            self._format()

    def _java(self, heap: str, fast_start: bool) -> list[str]:
        java_home = os.environ.get("JAVA_HOME")
        java = shutil.which("java", path=os.path.join(java_home, "bin") if java_home else None)
        if java is None:
            raise BrokerStartError("kafka: no java found (Java >= 17 needed; scripts/bootstrap installs it)")
        options = [f"-Xmx{heap}", "-XX:+UseSerialGC", "-XX:-UsePerfData", "-Djava.awt.headless=true",
                   f"-Dlog4j2.configurationFile={self.log4j_file}"]
        if fast_start:
            options.append("-XX:TieredStopAtLevel=1")
        return [java, *options, "-cp", f"{ensure_kafka_jars()}/*"]

    def _command(self) -> list[str]:
        return self._java(self.heap, self.fast_start) + ["kafka.Kafka", str(self.properties_file)]

    def _format(self) -> None:
        command = self._java("256m", fast_start=True) + [
            "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(self.properties_file)]
        for user in self.sasl_users.values():
            if user.mechanism.startswith("SCRAM-"):
                command += ["--add-scram", f"{user.mechanism}=[name={user.username},password={user.password}]"]
        result = subprocess.run(command, cwd=self.workdir, stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=120)
        (self.workdir / "format.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise BrokerStartError(f"kafka storage format failed ({result.returncode}):\n"
                                   f"{result.stdout}{result.stderr}")

    def _properties(self) -> dict[str, str]:
        protocol_of = {PLAINTEXT: "PLAINTEXT", "controller": "PLAINTEXT", SSL: "SSL", MTLS: "SSL",
                       SASL_SSL: "SASL_SSL", SASL_OAUTH: "SASL_SSL"}
        listeners = ",".join(f"{name.upper()}://127.0.0.1:{port}" for name, port in self.ports.items())
        advertised = ",".join(f"{name.upper()}://127.0.0.1:{port}" for name, port in self.ports.items()
                              if name != "controller")
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.ports['controller']}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listeners": listeners,
            "advertised.listeners": advertised,
            "listener.security.protocol.map": ",".join(f"{name.upper()}:{protocol_of[name]}" for name in self.ports),
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After a SIGKILL the restarted node waits out its former incarnation's session before it may
            # register again (DuplicateBrokerRegistrationException): 9 s by default, 4 s here.
            "broker.session.timeout.ms": "4000",
            "broker.heartbeat.interval.ms": "1000",
            # Two cores: the default thread pools only add contention.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
        }
        if self.tls is not None:
            properties |= {
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(self.tls.server.keystore_file),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(self.tls.ca_file),
                "ssl.client.auth": "none",
                "listener.name.mtls.ssl.client.auth": "required",
            }
        if self.sasl_users:
            plain_users = "".join(f' user_{u.username}="{u.password}"' for u in self.sasl_users.values()
                                  if u.mechanism == "PLAIN")
            properties["listener.name.sasl_ssl.sasl.enabled.mechanisms"] = ",".join(self.sasl_users)
            for mechanism in self.sasl_users:
                module = ("org.apache.kafka.common.security.plain.PlainLoginModule required" + plain_users
                          if mechanism == "PLAIN" else "org.apache.kafka.common.security.scram.ScramLoginModule required")
                properties[f"listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config"] = module + ";"
        if self.oauth:
            prefix = "listener.name.sasl_oauth."
            properties |= {
                prefix + "sasl.enabled.mechanisms": "OAUTHBEARER",
                # The login part only matters for a broker that is itself a client on this listener; the
                # validator options are read from the same JAAS entry.
                prefix + "oauthbearer.sasl.jaas.config":
                    "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required"
                    f' unsecuredLoginStringClaim_sub="broker" unsecuredValidatorRequiredScope="{KAFKA_SCOPE}"'
                    ' unsecuredValidatorAllowableClockSkewMs="0";',
                # Kafka 4.1 picks this handler itself for OAUTHBEARER when none is named (SaslChannelBuilder);
                # named here so that the test broker's validator is plain to see.
                prefix + "oauthbearer.sasl.server.callback.handler.class":
                    "org.apache.kafka.common.security.oauthbearer.internals.unsecured."
                    "OAuthBearerUnsecuredValidatorCallbackHandler",
                # A session lives as long as its token (at most this): a request on an expired session
                # closes the connection, so a client must come back with a fresh token (KIP-368).
                prefix + "oauthbearer.connections.max.reauth.ms": "600000",
            }
        return properties | self.extra_config

    def _tls(self) -> TlsMaterial:
        if self.tls is None:
            raise ValueError("this kafka broker has no TLS listeners")
        return self.tls


# A broker outliving the test process would hold its ports and CPU until someone notices: whatever a
# fixture did not stop (the run was interrupted, a test lost its broker object) dies with the process.
_children: set[subprocess.Popen] = set()


@atexit.register
def _kill_leftover_brokers() -> None:
    for process in list(_children):
        if process.poll() is None:
            process.kill()
            process.wait(10)


# -- jars ----------------------------------------------------------------------------------------------
_fetch_lock = threading.Lock()
_fetched: Path | None = None


def kafka_home() -> Path:
    cache = Path(os.environ.get("AUDIT_SHIPPER_CACHE") or Path.home() / ".cache" / "audit-shipper")
    return cache / f"kafka-{KAFKA_VERSION}"


def ensure_kafka_jars() -> Path:
    """The broker's libs directory, fetched by scripts/fetch-kafka when the cache lacks it (once per process;
    the script itself returns at once when the jars are there)."""
    global _fetched
    with _fetch_lock:
        if _fetched is None:
            result = subprocess.run([str(FETCH_SCRIPT)], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                    timeout=900)
            if result.returncode != 0:
                raise BrokerStartError(f"scripts/fetch-kafka failed ({result.returncode}):\n"
                                       f"{result.stdout}{result.stderr}")
            _fetched = kafka_home() / "libs"
        return _fetched


# -- client helpers --------------------------------------------------------------------------------------
async def create_topic(client_options: Mapping, name: str, partitions: int = 1, *,
                       config: Mapping[str, str] | None = None, timeout: float = 15.0) -> None:
    """Creates a topic and returns once every partition has a leader, so a producer can use it at once."""
    admin = AIOKafkaAdminClient(**client_options, request_timeout_ms=int(timeout * 1000))
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                                       topic_configs=dict(config or {}))])
        for topic_error in response.topic_errors:
            code = topic_error[1]
            if code:
                raise for_code(code)(f"create topic {topic_error[0]}: {topic_error[2:]}")
    finally:
        await admin.close()
    await _wait_for_leaders(client_options, name, partitions, timeout)


async def consume_all(client_options: Mapping, topic: str, *, timeout: float = 15.0,
                      idle: float | None = None) -> list[ConsumerRecord]:
    """Every record of `topic`, read from the beginning of each partition.

    `idle=None`: reads up to the end offsets taken at the start, and raises TimeoutError if they are not
    reached within `timeout` (Kafka). `idle=seconds`: reads until no record arrives for that long (for
    brokers whose end offsets cannot be trusted, e.g. Tansu); if records never stop within `timeout`, it
    returns what it has read.
    """
    consumer = AIOKafkaConsumer(**client_options, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100,
                                request_timeout_ms=max(5000, int(timeout * 1000)))
    deadline = time.monotonic() + timeout
    await consumer.start()
    try:
        partitions = None
        while not partitions:
            # consumer.topics() fetches the same metadata but hands back only the names.
            partitions = (await consumer._client.fetch_all_metadata()).partitions_for_topic(topic)
            if not partitions:
                if time.monotonic() >= deadline:
                    raise LookupError(f"topic {topic!r} not found")
                await asyncio.sleep(0.1)
        assigned = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        end_offsets = await consumer.end_offsets(assigned) if idle is None else None
        records: list[ConsumerRecord] = []
        last_record_at = time.monotonic()
        while True:
            now = time.monotonic()
            if end_offsets is not None:
                positions = {tp: await consumer.position(tp) for tp in assigned}
                if all(positions[tp] >= end_offsets[tp] for tp in assigned):
                    return records
                if now >= deadline:
                    raise TimeoutError(f"read {len(records)} records of {topic!r} in {timeout:.0f}s; at "
                                       f"{positions}, end offsets {end_offsets}")
            elif now - last_record_at >= idle or now >= deadline:
                return records
            batches = await consumer.getmany(timeout_ms=100)
            for batch in batches.values():
                records.extend(batch)
                last_record_at = time.monotonic()
    finally:
        await consumer.stop()


async def _probe_metadata(client_options: Mapping) -> None:
    client = AIOKafkaClient(**client_options, request_timeout_ms=3000)
    try:
        await client.bootstrap()
        if not client.cluster.brokers():
            raise ConnectionError("metadata names no broker yet")
    finally:
        await client.close()


async def _wait_for_leaders(client_options: Mapping, topic: str, partitions: int, timeout: float) -> None:
    client = AIOKafkaClient(**client_options, request_timeout_ms=int(timeout * 1000))
    deadline = time.monotonic() + timeout
    try:
        await client.bootstrap()
        while True:
            await client.force_metadata_update()
            leaders = [client.cluster.leader_for_partition(TopicPartition(topic, partition))
                       for partition in client.cluster.partitions_for_topic(topic) or ()]
            led = [leader for leader in leaders if leader is not None and leader >= 0]
            if len(led) >= partitions:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"topic {topic!r}: {len(led)} of {partitions} partitions have a leader "
                                   f"after {timeout:.0f}s")
            await asyncio.sleep(0.1)
    finally:
        await client.close()


def _run_blocking(make_coroutine):
    """Runs a coroutine to completion from synchronous code, also when the calling thread already runs an
    event loop (a sync call inside an async test): then on a worker thread with a loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coroutine())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make_coroutine())).result()


def _cluster_id() -> str:
    """A Kafka cluster id (base64url of 16 random bytes); generated here to spare a JVM start."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka rejects ids that would read as a command-line option
            return text


def _render_properties(properties: Mapping[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in properties.items())


_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
"""
