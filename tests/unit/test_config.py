"""The settings model is the one source of every option: validation, docs and `shipper config`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shipper.config import ConfigError, iter_options, load_settings, reference_markdown

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("no_shipper_env")


def test_defaults_are_valid_and_production_minded():
    settings = load_settings()
    assert settings.kafka.topic == "logs"
    assert settings.sources.max_entry_bytes == 1 << 20
    assert settings.wal.fsync.value == "batch"
    assert settings.sources.discover_interval_s == 1.0


def test_invalid_values_name_the_option_and_what_is_wrong(monkeypatch):
    monkeypatch.setenv("SHIPPER_KAFKA__COMPRESSION", "brotli")
    monkeypatch.setenv("SHIPPER_WAL__MAX_BYTES", "10")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "kafka.compression" in message and "brotli" in message
    assert "wal.max_bytes" in message


def test_sasl_without_tls_is_refused_unless_allowed(tmp_path):
    password = tmp_path / "pw"
    password.write_text("secret")
    sasl = {"username": "u", "password_file": str(password)}
    with pytest.raises(ConfigError, match="SASL_PLAINTEXT"):
        load_settings(kafka={"security_protocol": "SASL_PLAINTEXT", "sasl": sasl})
    load_settings(kafka={"security_protocol": "SASL_PLAINTEXT", "sasl": sasl, "allow_sasl_without_tls": True})


def test_yaml_file_and_environment_combine_with_environment_winning(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text("kafka:\n  topic: audit\n  compression: zstd\nwal:\n  dir: /tmp/x\n")
    monkeypatch.setenv("SHIPPER_KAFKA__COMPRESSION", "gzip")
    settings = load_settings(str(config))
    assert (settings.kafka.topic, settings.kafka.compression.value, settings.wal.dir) == ("audit", "gzip", "/tmp/x")


def test_unknown_option_in_the_file_is_an_error(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("kafka:\n  topik: audit\n")
    with pytest.raises(ConfigError, match="kafka.topik"):
        load_settings(str(config))


def test_configuration_reference_in_docs_matches_the_model():
    assert (REPO / "docs" / "configuration.md").read_text() == reference_markdown(), \
        "docs/configuration.md is stale: run `shipper config --reference > docs/configuration.md`"


def test_every_option_has_a_description():
    missing = [name for name, _t, _d, description in iter_options() if not description]
    assert missing == []


def test_shipper_config_prints_the_effective_configuration(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"kafka:\n  sasl:\n    password_file: {tmp_path}/pw\n")
    result = subprocess.run([sys.executable, "-m", "shipper.cli", "config", "--config", str(config)],
                            capture_output=True, text=True, check=True)
    printed = json.loads(result.stdout)
    assert printed["kafka"]["sasl"]["password_file"] == f"{tmp_path}/pw"


def test_shipper_run_with_a_bad_option_exits_2_with_a_clear_message(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("kafka:\n  bootstrap_servers: not-a-host-port\n")
    result = subprocess.run([sys.executable, "-m", "shipper.cli", "run", "--config", str(config)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "kafka.bootstrap_servers" in result.stderr and "host:port" in result.stderr
