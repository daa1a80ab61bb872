"""The Kafka client: options for TLS and SASL, the producer and its life (start with backoff, restart
when a Secret rotates or a refused batch spoils the idempotent sequence), and the small helpers the
stage's retry loops share.

Options come from the configuration (`producer_options`) or from plain arguments
(`kafka_client_options`, what `shipper verify` has from its command line); both build the TLS context,
read the password file and set up OAUTHBEARER's token source (oauth.py) the same way.
"""
from __future__ import annotations

import asyncio
import logging
import random
import ssl
import threading
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, UnsupportedVersionError

from ..config import KafkaConfig, SaslMechanism, SecurityProtocol
from ..metrics import Metrics
from .oauth import EndpointTokenSource, FileTokenSource, TokenSource
from .wire import _CODECS, end_refused_oauthbearer_exchanges

log = logging.getLogger("shipper.kafka")


class KafkaSetupError(Exception):
    """The Kafka client cannot be configured (e.g. an unreadable CA or password file)."""


def read_secret_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise KafkaSetupError(f"{what} file {path}: {exc.strerror}") from None


def _tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None, check_hostname: bool,
                 what: str) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = check_hostname
        if cert_file:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise KafkaSetupError(f"{what}: cannot load certificates: {exc}") from None
    return context


def ssl_context_for(config: KafkaConfig) -> ssl.SSLContext | None:
    if config.security_protocol not in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL):
        return None
    tls = config.tls
    return _tls_context(tls.ca_file, tls.cert_file, tls.key_file, tls.check_hostname, "kafka.tls")


def _token_source(*, token_file: str | None, endpoint_url: str | None, client_id: str | None,
                  client_secret_file: str | None, scope: str | None, client_auth: str, ca_file: str | None,
                  timeout_s: float, extensions: dict[str, str], backoff_ms: tuple[int, int], metrics: Metrics | None,
                  names: dict[str, str]) -> TokenSource:
    """The token source, once its files proved readable (a setup error otherwise, naming the option)."""
    end_refused_oauthbearer_exchanges()
    if token_file:
        read_secret_file(token_file, names["token_file"])
        return FileTokenSource(token_file, what=names["token_file"], extensions=extensions, metrics=metrics)
    assert endpoint_url and client_id and client_secret_file
    read_secret_file(client_secret_file, names["client_secret_file"])
    context = _tls_context(ca_file, None, None, True, names["ca_file"]) if ca_file else None
    first_ms, max_ms = backoff_ms
    return EndpointTokenSource(endpoint_url, client_id, client_secret_file, scope=scope, client_auth=client_auth,
                               ssl_context=context, timeout_s=timeout_s, backoff=lambda: backoff_delays(first_ms, max_ms),
                               what=names["token_endpoint_url"], secret_what=names["client_secret_file"],
                               extensions=extensions, metrics=metrics)


def oauth_token_source(config: KafkaConfig, metrics: Metrics | None = None) -> TokenSource:
    oauth = config.sasl.oauth
    return _token_source(token_file=oauth.token_file, endpoint_url=oauth.token_endpoint_url,
                         client_id=oauth.client_id, client_secret_file=oauth.client_secret_file, scope=oauth.scope,
                         client_auth=oauth.client_auth, ca_file=oauth.ca_file, timeout_s=oauth.timeout_s,
                         extensions=oauth.extensions, backoff_ms=(config.retry_backoff_ms, config.retry_backoff_max_ms),
                         metrics=metrics, names={name: f"kafka.sasl.oauth.{name}" for name in (
                             "token_file", "token_endpoint_url", "client_secret_file", "ca_file")})


def kafka_client_options(*, tls: bool = False, ca_file: str | None = None, cert_file: str | None = None,
                         key_file: str | None = None, check_hostname: bool = True, sasl_mechanism: str | None = None,
                         sasl_username: str | None = None, sasl_password_file: str | None = None,
                         sasl_oauth_token_file: str | None = None, sasl_oauth_token_endpoint_url: str | None = None,
                         sasl_oauth_client_id: str | None = None, sasl_oauth_client_secret_file: str | None = None,
                         sasl_oauth_scope: str | None = None) -> dict[str, Any]:
    """aiokafka client options for TLS and SASL, from the command line's terms (a CA or client
    certificate implies TLS). Raises KafkaSetupError, its message fit for the command line."""
    use_tls = tls or bool(ca_file or cert_file)
    options: dict[str, Any] = {}
    if use_tls:
        options["ssl_context"] = _tls_context(ca_file, cert_file, key_file, check_hostname, "TLS")
    if sasl_mechanism == "OAUTHBEARER":
        endpoint = sasl_oauth_token_endpoint_url
        if bool(sasl_oauth_token_file) == bool(endpoint) or endpoint and not (
                sasl_oauth_client_id and sasl_oauth_client_secret_file):
            raise KafkaSetupError("--sasl-mechanism OAUTHBEARER needs --sasl-oauth-token-file, or "
                                  "--sasl-oauth-token-endpoint-url with --sasl-oauth-client-id and "
                                  "--sasl-oauth-client-secret-file")
        source = _token_source(token_file=sasl_oauth_token_file, endpoint_url=endpoint, client_id=sasl_oauth_client_id,
                               client_secret_file=sasl_oauth_client_secret_file, scope=sasl_oauth_scope,
                               client_auth="basic", ca_file=None, timeout_s=10.0, extensions={}, backoff_ms=(200, 10_000),
                               metrics=None, names={"token_file": "OAuth token", "token_endpoint_url": "token endpoint",
                                                    "client_secret_file": "OAuth client secret", "ca_file": "TLS"})
        options.update(sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=source)
        options["security_protocol"] = "SASL_SSL" if use_tls else "SASL_PLAINTEXT"
    elif sasl_mechanism:
        if not sasl_username or not sasl_password_file:
            raise KafkaSetupError("--sasl-mechanism needs --sasl-username and --sasl-password-file")
        options.update(sasl_mechanism=sasl_mechanism, sasl_plain_username=sasl_username,
                       sasl_plain_password=read_secret_file(sasl_password_file, "SASL password"))
        options["security_protocol"] = "SASL_SSL" if use_tls else "SASL_PLAINTEXT"
    elif use_tls:
        options["security_protocol"] = "SSL"
    return options


def producer_options(config: KafkaConfig, *, idempotent: bool, token_source: TokenSource | None = None) -> dict:
    """The producer's options; with OAUTHBEARER, `token_source` (the sink's, which outlives producers), or
    a new one."""
    options = dict(
        bootstrap_servers=config.bootstrap_servers,
        client_id=config.client_id,
        acks="all",
        enable_idempotence=idempotent,
        compression_type=None if config.compression.value == "none" else config.compression.value,
        max_batch_size=config.batch_bytes,
        max_request_size=config.max_request_bytes,
        linger_ms=config.linger_ms,
        request_timeout_ms=config.request_timeout_ms,
        retry_backoff_ms=config.retry_backoff_ms,
        security_protocol=config.security_protocol.value,
        ssl_context=ssl_context_for(config),
    )
    if _uses_sasl(config) and config.sasl.mechanism is SaslMechanism.OAUTHBEARER:
        options.update(sasl_mechanism="OAUTHBEARER",
                       sasl_oauth_token_provider=token_source or oauth_token_source(config))
    elif _uses_sasl(config):
        options.update(sasl_mechanism=config.sasl.mechanism.value, sasl_plain_username=config.sasl.username,
                       sasl_plain_password=read_secret_file(config.sasl.password_file, "kafka.sasl.password_file"))
    return options


def _uses_sasl(config: KafkaConfig) -> bool:
    return config.security_protocol in (SecurityProtocol.SASL_SSL, SecurityProtocol.SASL_PLAINTEXT)


def backoff_delays(first_ms: int, max_ms: int):
    delay = first_ms / 1000
    while True:
        yield delay * (0.8 + 0.4 * random.random())
        delay = min(delay * 2, max_ms / 1000)


class PartitionCounts:
    """The partition count of each topic, as the sender last learned it from metadata; read by the ingest's
    worker thread (kafka/prebuild.py), which builds Kafka batches only for the topics it finds here."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, topic: str) -> int | None:
        with self._lock:
            return self._counts.get(topic)

    def set(self, topic: str, count: int) -> None:
        with self._lock:
            self._counts[topic] = count

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


class KafkaSink:
    """The producer, created and re-created as the broker and configuration allow."""

    def __init__(self, config: KafkaConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.producer: AIOKafkaProducer | None = None
        self.idempotent = config.idempotence != "off"
        self.codec = _CODECS[config.compression.value]
        self.partition_counts = PartitionCounts()
        self._secret_mtime: float | None = None
        # One token source for every producer of this sink: its token and its refresher outlive restarts.
        self.token_source: TokenSource | None = (
            oauth_token_source(config, metrics)
            if _uses_sasl(config) and config.sasl.mechanism is SaslMechanism.OAUTHBEARER else None)

    async def start(self, stopping: asyncio.Event) -> bool:
        """Connect, retrying forever with backoff; False when stopping was requested first."""
        delays = backoff_delays(self.config.retry_backoff_ms, self.config.retry_backoff_max_ms)
        while not stopping.is_set():
            producer = AIOKafkaProducer(**producer_options(self.config, idempotent=self.idempotent,
                                                           token_source=self.token_source))
            try:
                await producer.start()
            except (UnsupportedVersionError, KafkaError) as exc:
                await _quietly_stop(producer)
                if self._idempotence_unsupported(exc):
                    continue
                self.metrics.send_errors.labels(reason=type(exc).__name__).inc()
                # aiokafka's error says only that no broker could be reached; the token source knows why.
                oauth = self.token_source.last_problem if self.token_source is not None else None
                log.warning("kafka not reachable yet: %s%s", _describe(exc), f" ({oauth})" if oauth else "")
                await wait_event(stopping, next(delays))
                continue
            self.producer = producer
            self._remember_secret_mtime()
            log.info("kafka producer started", extra={"bootstrap": self.config.bootstrap_servers,
                                                       "idempotent": self.idempotent})
            return True
        return False

    def _idempotence_unsupported(self, exc: Exception) -> bool:
        if not self.idempotent or self.config.idempotence != "auto" or isinstance(exc, KafkaConnectionError):
            return False
        # Brokers without InitProducerId support (Tansu) answer with an error at start: fall back to
        # acks=all without idempotence; duplicates stay exact and recognisable by event_id.
        log.warning("broker refused the idempotent producer (%s); continuing with acks=all without idempotence",
                    _describe(exc))
        self.idempotent = False
        return True

    def _remember_secret_mtime(self) -> None:
        path = self.config.sasl.password_file
        if path:
            try:
                self._secret_mtime = Path(path).stat().st_mtime
            except OSError:
                self._secret_mtime = None

    def secret_changed(self) -> bool:
        path = self.config.sasl.password_file
        if not path:
            return False
        try:
            return Path(path).stat().st_mtime != self._secret_mtime
        except OSError:
            return False

    async def restart(self, stopping: asyncio.Event) -> bool:
        if self.producer is not None:
            await _quietly_stop(self.producer)
            self.producer = None
        self.partition_counts.clear()
        return await self.start(stopping)

    async def partitions(self, topic: str) -> int:
        count = self.partition_counts.get(topic)
        if count is None:
            if self.producer is None:
                # restarting (a refused batch starts a new idempotent producer): the caller retries
                raise KafkaConnectionError("the Kafka producer is restarting")
            count = len(await self.producer.partitions_for(topic))
            self.partition_counts.set(topic, count)
        return count

    async def stop(self) -> None:
        if self.producer is not None:
            await _quietly_stop(self.producer)
            self.producer = None
        if self.token_source is not None:
            await self.token_source.close()


async def _quietly_stop(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout=5)
    except Exception:  # noqa: BLE001 - a producer that cannot stop cleanly is dropped either way
        pass


async def wait_event(event: asyncio.Event, seconds: float) -> None:
    """Wait for `event`, at most `seconds`."""
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text
