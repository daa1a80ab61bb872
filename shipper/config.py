"""Every option of the shipper, declared once: type, default, description.

Sources, strongest first: constructor arguments, environment (`SHIPPER_` prefix, nested with `__`,
e.g. `SHIPPER_KAFKA__BOOTSTRAP_SERVERS`), the YAML file named by `SHIPPER_CONFIG_FILE` (or
`--config`), defaults. The configuration reference in docs/configuration.md, the Helm chart's values
and the settings model are checked against each other by tests.
"""
from __future__ import annotations

import os
import re
from enum import Enum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

MiB = 1 << 20


class ConfigError(Exception):
    """The configuration cannot be used; the message names the option and what is wrong."""


def Reloadable(default: Any, **kwargs: Any) -> Any:
    """An option a running shipper takes in on SIGHUP or a change of its file (shipper/reload.py); every
    other option needs a restart."""
    return Field(default, json_schema_extra={"reloadable": True}, **kwargs)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceMode(str, Enum):
    node = "node"
    sidecar = "sidecar"


class WatchMode(str, Enum):
    auto = "auto"
    inotify = "inotify"
    poll = "poll"


class SourcesConfig(_Section):
    mode: SourceMode = Field(SourceMode.node, description="`node`: the kubelet layout under `roots` (DaemonSet). "
                             "`sidecar`: every `*.log` file in `sidecar_dir`, identity from the Downward API.")
    roots: list[str] = Field(["/var/log/pods"], description="Directories holding `<ns>_<pod>_<uid>/<container>/<n>.log`. "
                             "Symlinks are followed only when their target stays inside one of these.")
    symlink_roots: list[str] = Field(["/var/log/containers"], description="Directories of `*.log` symlinks into `roots`.")
    include: list[str] = Reloadable([], description="Glob patterns over the path; when set, only matching files are "
                                    "read.")
    exclude: list[str] = Reloadable([], description="Glob patterns over the path that are never read (wins over "
                                    "include).")
    sidecar_dir: str = Field("/var/log/app", description="Sidecar mode: directory of the application's log files.")
    sidecar_format: Literal["cri", "docker", "raw"] = Field("raw", description="Sidecar mode: line format of the files.")
    watch: WatchMode = Field(WatchMode.auto, description="How new data and new files are noticed. `inotify`: "
                             "kernel events on the log directories (fails to start without them); `poll`: every "
                             "file checked every `poll_interval_s`, the roots rescanned every `discover_interval_s` "
                             "(for NFS or overlay mounts where no event fires); `auto`: inotify when the kernel "
                             "grants it, else poll. A directory that cannot be watched (watch limit) is polled.")
    discover_interval_s: float = Field(1.0, gt=0, le=60, description="How often new log files are looked for "
                                       "(polling; with inotify, on events and every `watch_rescan_s`).")
    poll_interval_s: float = Field(0.1, gt=0, le=10, description="How often idle files are checked for new data "
                                   "(polling; with inotify only files in the middle of a rotation, or in a "
                                   "directory that cannot be watched).")
    watch_fallback_s: float = Field(2.0, gt=0, le=60, description="With inotify: every file is checked this often "
                                    "even without an event, so a missed event delays a line at most this long.")
    watch_rescan_s: float = Field(30.0, gt=0, le=3600, description="With inotify: the roots are rescanned this "
                                  "often even without an event in them.")
    read_size: int = Field(512 * 1024, ge=4096, le=64 * MiB, description="Bytes read from one file per read call (a "
                           "read becomes about five times its size in records, held until acknowledged).")
    max_entry_bytes: int = Field(1 * MiB, ge=1024, le=64 * MiB, description="Longest entry (partial lines joined); "
                                 "longer entries are cut, marked truncated, the rest continues as the next entry.")
    multiline_start_pattern: str | None = Field(None, description="Regex matching the first line of a multi-line "
                                                "entry (e.g. `^\\\\S` for stack traces); off when unset. Per pod: "
                                                "annotation `audit-shipper.io/multiline-start`.")
    multiline_max_lines: int = Field(500, ge=2, description="Most lines grouped into one multi-line entry.")
    max_open_files: int = Field(4096, ge=16, description="Most files tailed at once; more are queued and counted.")

    @field_validator("multiline_start_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value.encode())        # as the parser compiles it: over bytes
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class FsyncMode(str, Enum):
    batch = "batch"
    interval = "interval"


class WalConfig(_Section):
    dir: str = Field("/var/lib/audit-shipper/wal", description="Directory of WAL segments (created 0700).")
    max_bytes: int = Field(256 * MiB, ge=1 * MiB, description="WAL size limit on disk; when reached, reading pauses "
                           "(backpressure) until Kafka acknowledges records.")
    segment_bytes: int = Field(64 * MiB, ge=64 * 1024, le=1024 * MiB, description="Size at which a segment is closed.")
    fsync: FsyncMode = Field(FsyncMode.batch, description="`batch`: fsync every commit (group commit). "
                             "`interval`: fsync at most every `fsync_interval_ms`.")
    fsync_interval_ms: int = Field(50, ge=1, le=10_000, description="Group-commit window for `fsync: interval`.")
    commit_bytes: int = Field(4 * MiB, ge=64 * 1024, description="A commit is written once this many bytes are waiting.")

    @model_validator(mode="after")
    def _segment_fits(self) -> WalConfig:
        if self.segment_bytes * 2 > self.max_bytes:
            raise ValueError(f"wal.segment_bytes ({self.segment_bytes}) must be at most half of wal.max_bytes "
                             f"({self.max_bytes}): a segment is freed only once wholly acknowledged")
        if self.commit_bytes * 4 > self.max_bytes:
            raise ValueError(f"wal.commit_bytes ({self.commit_bytes}) must be at most a quarter of wal.max_bytes "
                             f"({self.max_bytes})")
        return self


class StateConfig(_Section):
    dir: str = Field("/var/lib/audit-shipper", description="Directory of `state.db` (source positions, chain heads).")
    prune_after_s: float = Field(3600, gt=0, description="A closed chain (its pod's log directory removed, the close "
                                 "record acknowledged by Kafka) is deleted from `state.db` and from memory this long "
                                 "after, leaving a tombstone (a file of it that comes back is refused and counted in "
                                 "`audit_shipper_closed_chain_files_total`). The hour is far beyond the seconds in "
                                 "which a close can still be followed by a record of the chain or race with its "
                                 "directory, and keeps a node that starts a pod a second at a few thousand rows.")


class SecurityProtocol(str, Enum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(str, Enum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"
    OAUTHBEARER = "OAUTHBEARER"


class TlsConfig(_Section):
    ca_file: str | None = Field(None, description="CA bundle the broker certificate is verified against "
                                "(system CAs when unset).")
    cert_file: str | None = Field(None, description="Client certificate for mTLS (PEM).")
    key_file: str | None = Field(None, description="Client private key for mTLS (PEM; a mounted Secret).")
    check_hostname: bool = Field(True, description="Verify the broker's host name against its certificate.")


_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
_SASL_EXTENSION_KEY = re.compile(r"[A-Za-z]+")
_SASL_EXTENSION_VALUE = re.compile(r"[\x21-\x7E \t\r\n]*")      # RFC 7628 §3.1: VCHAR, space and white space


class OAuthConfig(_Section):
    token_file: str | None = Field(None, description="OAUTHBEARER: file holding the access token (a JWT), e.g. a "
                                   "projected service-account token or a Secret that something else renews; "
                                   "re-read when it changes. Instead of `token_endpoint_url`.")
    token_endpoint_url: str | None = Field(None, description="OAUTHBEARER: the identity provider's OAuth 2 token "
                                           "endpoint (`https://`; `http://` only to a loopback address). The shipper "
                                           "gets tokens with the client_credentials grant and renews each at 80% of "
                                           "its lifetime. Instead of `token_file`.")
    client_id: str | None = Field(None, description="OAUTHBEARER: client id at the token endpoint.")
    client_secret_file: str | None = Field(None, description="OAUTHBEARER: file holding the client secret (a "
                                           "mounted Secret; read at every token request).")
    scope: str | None = Field(None, description="OAUTHBEARER: scope to request, e.g. "
                              "`https://<namespace>.servicebus.windows.net/.default` for Azure Event Hubs.")
    client_auth: Literal["basic", "post"] = Field("basic", description="How the client authenticates to the token "
                                                  "endpoint: `basic` (HTTP Basic) or `post` (in the form).")
    ca_file: str | None = Field(None, description="CA bundle the token endpoint's certificate is verified against "
                                "(system CAs when unset).")
    timeout_s: float = Field(10.0, gt=0, le=120, description="Token request timeout.")
    extensions: dict[str, str] = Field({}, description="SASL extensions sent with the token, e.g. Confluent "
                                       "Cloud's `logicalCluster` and `identityPoolId`.")

    @field_validator("token_endpoint_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if not parts.hostname or parts.scheme not in ("https", "http") or (
                    parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS):
                raise ValueError(f"{value!r}: the client secret goes there, so https:// (http:// only to a "
                                 "loopback address)")
        return value

    @field_validator("extensions")
    @classmethod
    def _extension_syntax(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if not _SASL_EXTENSION_KEY.fullmatch(key) or key == "auth":
                raise ValueError(f"extension name {key!r}: letters only, and not 'auth'")
            if not _SASL_EXTENSION_VALUE.fullmatch(text):
                raise ValueError(f"extension {key!r}: printable ASCII only")
        return value


class SaslConfig(_Section):
    mechanism: SaslMechanism = Field(SaslMechanism.SCRAM_SHA_512, description="SASL mechanism.")
    username: str | None = Field(None, description="SASL user name (PLAIN, SCRAM).")
    password_file: str | None = Field(None, description="File holding the SASL password (PLAIN, SCRAM; a mounted "
                                      "Secret; re-read when it changes).")
    oauth: OAuthConfig = OAuthConfig()


class Compression(str, Enum):
    none = "none"
    gzip = "gzip"
    snappy = "snappy"
    lz4 = "lz4"
    zstd = "zstd"


class RecordFormat(str, Enum):
    compact = "compact"
    full = "full"


class KafkaConfig(_Section):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated `host:port` list.")
    topic: str = Field("logs", description="Topic, or a template with `{namespace}`, `{pod}`, `{container}`, "
                       "e.g. `logs.{namespace}`. Per pod: annotation `audit-shipper.io/topic` (see "
                       "`enrich.topic_annotation_allow`).")
    client_id: str = Field("audit-shipper", description="Kafka client id.")
    security_protocol: SecurityProtocol = Field(SecurityProtocol.PLAINTEXT, description="Transport security.")
    tls: TlsConfig = TlsConfig()
    sasl: SaslConfig = SaslConfig()
    allow_sasl_without_tls: bool = Field(False, description="Permit SASL_PLAINTEXT (password over clear text).")
    compression: Compression = Field(Compression.snappy, description="Batch compression codec (`snappy`: fastest; "
                                     "`zstd`: about twice the ratio at four times the CPU; aiokafka runs lz4 at level 9, slow).")
    record_format: RecordFormat = Field(RecordFormat.compact, description="`compact`: `audit-shipper/v2` records: "
                                        "no `event_id` member (the `event_id` header keeps it), no empty "
                                        "`attributes`, and most log records carry only the pod's identity and "
                                        "`source.offset`: the full resource and `source.path` come on a chain's "
                                        "first record, when they change and at least every "
                                        "`seal.checkpoint_every_s` (a consumer takes them from the chain's latest "
                                        "log record that has them). `full`: `audit-shipper/v1`, every member on "
                                        "every record. The chains, and what `shipper verify` finds, are the same.")
    idempotence: Literal["auto", "on", "off"] = Field("auto", description="`auto`: on when the broker supports it "
                                                      "(falls back with a warning).")
    batch_bytes: int = Field(1 * MiB, ge=16 * 1024, le=64 * MiB, description="Most bytes in one per-partition batch.")
    max_request_bytes: int = Field(2 * MiB, ge=64 * 1024, description="Largest record the client sends; larger ones "
                                   "become gap records.")
    linger_ms: int = Field(5, ge=0, le=10_000, description="Wait for more records before sending a small batch.")
    request_timeout_ms: int = Field(30_000, ge=1000, description="Broker response timeout; the WAL resends after it.")
    retry_backoff_ms: int = Field(200, ge=10, description="First delay before resending a failed batch.")
    retry_backoff_max_ms: int = Field(10_000, ge=100, description="Longest delay between resends (retries never stop).")
    max_in_flight_bytes: int = Field(2 * MiB, ge=256 * 1024, description=(
        "WAL bytes being sent and not yet acknowledged (bounds memory). WAL frames hold compressed Kafka "
        "batches (about 250 bytes a line with snappy), so the default keeps about 8,000 lines in flight; "
        "raise it for a broker far away (throughput is at most this over the round trip to the broker)."))

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_ports(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _coherent_security(self) -> KafkaConfig:
        sasl = self.security_protocol in (SecurityProtocol.SASL_SSL, SecurityProtocol.SASL_PLAINTEXT)
        if self.security_protocol is SecurityProtocol.SASL_PLAINTEXT and not self.allow_sasl_without_tls:
            raise ValueError("kafka.security_protocol SASL_PLAINTEXT sends the password or token in clear text; "
                             "use SASL_SSL or set kafka.allow_sasl_without_tls: true")
        if sasl and self.sasl.mechanism is SaslMechanism.OAUTHBEARER:
            oauth = self.sasl.oauth
            if bool(oauth.token_file) == bool(oauth.token_endpoint_url):
                raise ValueError("kafka.sasl.mechanism OAUTHBEARER needs one of kafka.sasl.oauth.token_file and "
                                 "kafka.sasl.oauth.token_endpoint_url")
            if oauth.token_endpoint_url and not (oauth.client_id and oauth.client_secret_file):
                raise ValueError("kafka.sasl.oauth.token_endpoint_url needs kafka.sasl.oauth.client_id and "
                                 "kafka.sasl.oauth.client_secret_file")
        elif sasl and not (self.sasl.username and self.sasl.password_file):
            raise ValueError("kafka.sasl.username and kafka.sasl.password_file are required with SASL")
        if bool(self.tls.cert_file) != bool(self.tls.key_file):
            raise ValueError("kafka.tls.cert_file and kafka.tls.key_file go together (mTLS)")
        return self


class RedactionRule(_Section):
    name: str = Field(description="Rule name, reported in the record and in metrics.")
    pattern: str = Field(description="Regular expression over the body.")
    replacement: str = Field("[REDACTED]", description="Replacement text (may use groups).")
    luhn: bool = Field(False, description="Only replace digit runs that pass the Luhn check (card numbers).")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class EnrichConfig(_Section):
    kubernetes: bool = Field(True, description="Watch the API server for pod and namespace metadata.")
    kubeconfig: str | None = Field(None, description="Kubeconfig file (in-cluster ServiceAccount when unset).")
    service_name_labels: list[str] = Reloadable(["app.kubernetes.io/name", "app"], description="Pod labels tried "
                                                "in order for `service.name`.")
    label_include: list[str] = Reloadable(["*"], description="Pod/namespace label keys copied (globs).")
    label_exclude: list[str] = Reloadable([], description="Label keys never copied (globs; wins).")
    annotation_include: list[str] = Reloadable([], description="Pod annotation keys copied (globs).")
    namespace_selector: str = Reloadable("", description="Label selector over namespace labels (`kubectl -l` "
                                         "syntax: `key=value,key!=value,key in (a,b),key notin (a,b),key,!key`); the "
                                         "logs of pods in namespaces that do not match are read and dropped "
                                         "(counted). Empty: every namespace. `kubernetes.io/metadata.name` selects "
                                         "by name.")
    topic_annotation_allow: list[str] = Reloadable([], description="Topics (globs) a pod may choose with the "
                                                   "annotation `audit-shipper.io/topic`; others are refused (logged, "
                                                   "counted) and `kafka.topic` applies. Empty: the annotation is "
                                                   "refused. List only topics that exist: sending waits for a missing "
                                                   "one.")
    deleted_pod_grace_s: float = Field(300, ge=0, description="How long a deleted pod's metadata stays cached.")
    unknown_pod_wait_ms: int = Field(2000, ge=0, le=60_000, description="How long lines of a pod not yet seen "
                                     "wait for its metadata before shipping with path-derived metadata.")
    watch_timeout_s: int = Field(300, ge=10, description="Server-side timeout of one watch call.")
    correlation_fields: list[str] = Reloadable(["trace_id", "traceId", "span_id", "spanId", "request_id",
                                                "requestId", "correlation_id", "correlationId", "x-request-id"],
                                               description="JSON body fields (and key=value keys) read as "
                                               "correlation ids.")
    parse_json_bodies: bool = Reloadable(False, description="Copy top-level JSON body fields into attributes "
                                         "(per pod: annotation `audit-shipper.io/parse-json`).")
    default_redactions: bool = Reloadable(True, description="Apply the built-in rules (bearer tokens, AWS keys, "
                                          "passwords in URLs, card numbers).")
    redactions: list[RedactionRule] = Reloadable([], description="Additional redaction rules, applied before the "
                                                 "seal.")

    @field_validator("namespace_selector")
    @classmethod
    def _parses(cls, value: str) -> str:
        from .enrich.selector import SelectorSyntaxError, parse_selector   # enrich imports this module

        try:
            parse_selector(value)
        except SelectorSyntaxError as exc:
            raise ValueError(str(exc)) from None
        return value


class SealConfig(_Section):
    checkpoint_every_records: int = Field(10_000, ge=1, description="Sign a chain checkpoint every N records.")
    checkpoint_every_s: float = Field(30, gt=0, description="... or every T seconds, whichever comes first.")
    signing_key_file: str | None = Field(None, description="Ed25519 private key (PEM, a mounted Secret); "
                                         "checkpoints are unsigned when unset.")
    key_id: str | None = Field(None, pattern=r"^[^\s+]+$",
                               description="Key name in checkpoint and manifest notes (no spaces, no `+`; default: "
                                           "derived from the public key).")
    manifest_every_s: float = Field(60, gt=0, description="A node manifest (the signed heads of all its open chains) "
                                    "at least this often, even when nothing changed: lets verify tell a node that "
                                    "went silent from a quiet one.")


class MetricsConfig(_Section):
    host: str = Field("0.0.0.0", description="Address of `/metrics`, `/healthz`, `/readyz`.")
    port: int = Field(2020, ge=0, le=65535, description="Port of the metrics and health server (0: any free port).")
    enabled: bool = Field(True, description="Serve metrics and health.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SHIPPER_", env_nested_delimiter="__", extra="forbid", frozen=True)

    node_name: str = Field(default_factory=lambda: os.environ.get("NODE_NAME", os.uname().nodename),
                           description="This node's name (`NODE_NAME` from the Downward API).")
    sources: SourcesConfig = SourcesConfig()
    wal: WalConfig = WalConfig()
    state: StateConfig = StateConfig()
    kafka: KafkaConfig = KafkaConfig()
    enrich: EnrichConfig = EnrichConfig()
    seal: SealConfig = SealConfig()
    metrics: MetricsConfig = MetricsConfig()
    workers: int | Literal["auto"] = Field(1, description="Processes reading this node's log files, each a whole "
                                           "pipeline with its own WAL, for a node one core cannot keep up with: a "
                                           "container's files always go to the same one. `auto`: the container's "
                                           "CPU limit. Changing it moves the chains at the next start, after the "
                                           "old WALs are sent (see docs/design.md, Workers).")
    shutdown_grace_s: float = Field(30, gt=0, description="On SIGTERM: longest wait for Kafka acks before exit. "
                                    "A second SIGTERM or SIGINT exits at once with status 128 + signal (the WAL "
                                    "fsynced; the rest is sent on the next start).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Reloadable("INFO", description="Self-log level (JSON "
                                                                         "on stderr).")
    config_poll_interval_s: float = Field(5, ge=0, le=3600, description="How often the configuration file is checked "
                                          "for a change to reload (0: only on SIGHUP). See \"Reloading\" below.")

    @field_validator("workers")
    @classmethod
    def _workers_in_range(cls, value: int | str) -> int | str:
        if value != "auto" and not 1 <= value <= 64:
            raise ValueError("workers is 1 to 64, or auto")
        return value

    @model_validator(mode="after")
    def _one_worker_in_sidecar_mode(self) -> Settings:
        if self.workers != 1 and self.sources.mode is SourceMode.sidecar:
            raise ValueError("workers: a sidecar reads one pod's files: keep it at 1")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _YamlFileSource(settings_cls)


class _YamlFileSource(PydanticBaseSettingsSource):
    """The YAML file named by SHIPPER_CONFIG_FILE (set by `--config` too)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("SHIPPER_CONFIG_FILE")
        if not path:
            return {}
        return read_yaml_config(path)


def read_yaml_config(path: str) -> dict[str, Any]:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of options")
    return data


def load_settings(config_file: str | None = None, **overrides: Any) -> Settings:
    """Build the settings, turning validation failures into one ConfigError naming every bad option."""
    if config_file:
        os.environ["SHIPPER_CONFIG_FILE"] = config_file
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for error in exc.errors():
        option = ".".join(str(part) for part in error["loc"]) or "(settings)"
        message = error["msg"].removeprefix("Value error, ")
        given = error.get("input")
        shown = "" if isinstance(given, dict) or given is None else f" (got {given!r})"
        lines.append(f"  {option}: {message}{shown}")
    return "\n".join(lines)


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, safe to print: no option holds a secret value.

    Passwords and keys are never options; they are read from the files the options name."""
    return settings.model_dump(mode="json")


def iter_options(model: type[BaseModel] = Settings, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted name, type, default, description) of every leaf option, in declaration order."""
    rows: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        dotted = f"{prefix}{name}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation is not RedactionRule:
            rows.extend(iter_options(annotation, dotted + "."))
            continue
        default = "(node name)" if name == "node_name" and not prefix else _render_default(field.default)
        rows.append((dotted, _render_type(annotation), default, field.description or ""))
    return rows


def reloadable_options(model: type[BaseModel] = Settings, prefix: str = "") -> frozenset[str]:
    """Dotted names of the options declared with `Reloadable` (what a reload may change)."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation is not RedactionRule:
            names |= reloadable_options(annotation, f"{prefix}{name}.")
        elif isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("reloadable"):
            names.add(f"{prefix}{name}")
    return frozenset(names)


def _render_type(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " \\| ".join(f"`{member.value}`" for member in annotation)
    return str(annotation).replace("typing.", "").replace("shipper.config.", "") if text.startswith(("list", "typing")) \
        or "|" in str(annotation) or "Literal" in str(annotation) else text


def _render_default(value: Any) -> str:
    if isinstance(value, Enum):
        return f"`{value.value}`"
    if value is None:
        return "unset"
    if value == "":
        return '`""`'
    return f"`{value!r}`" if not isinstance(value, str) else f"`{value}`"


def reference_markdown() -> str:
    """The configuration reference (docs/configuration.md), generated from the model."""
    out = ["# Configuration reference", "",
           "Generated from `shipper/config.py` by `shipper config --reference`; a test keeps it in step.", "",
           "Every option can be set in the YAML file named by `SHIPPER_CONFIG_FILE` (or `--config`), or by an "
           "environment variable: `SHIPPER_` + the dotted name upper-cased with `.` replaced by `__` "
           "(e.g. `SHIPPER_KAFKA__BOOTSTRAP_SERVERS`). Lists in the environment are JSON "
           "(`SHIPPER_SOURCES__ROOTS='[\"/var/log/pods\"]'`).", "",
           "| option | type | default | description |", "|---|---|---|---|"]
    reloadable = reloadable_options()
    for name, kind, default, description in iter_options():
        if name in reloadable:
            description += " *Reloadable.*"
        out.append(f"| `{name}` | {kind.replace('|', chr(92) + '|') if chr(92) not in kind else kind} | "
                   f"{default} | {description.replace('|', chr(92) + '|')} |")
    from .enrich.pod_control import REFERENCE as ANNOTATIONS        # both import this module
    from .reload import REFERENCE as RELOADING

    out += ["", *RELOADING, "", *ANNOTATIONS]
    return "\n".join(out) + "\n"

