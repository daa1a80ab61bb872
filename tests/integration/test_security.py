"""Secure transport and safe state, against the real Kafka broker's TLS, mTLS and SASL_SSL listeners.

A misconfiguration must fail loudly and lose nothing: the data waits in the WAL until it is fixed.
"""
from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shipper.demo.simnode import SimNode
from tests.harness.certs import TlsMaterial, expired_server_identity, unrelated_ca, wrong_host_server_identity
from tests.harness.kafka import KafkaBroker
from tests.support import account, all_arrived, new_topic, shipped, shipper_for, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

PASSWORDS = ("scram512-secret", "scram256-secret", "plain-secret", "wrong-password-123")



def password_file(tmp_path: Path, password: str) -> Path:
    path = tmp_path / "secrets" / "kafka-password"
    path.parent.mkdir(exist_ok=True, mode=0o700)
    path.write_text(password + "\n")
    return path


@pytest.fixture
def node(tmp_path) -> SimNode:
    return SimNode(tmp_path / "log", pods=2, containers_per_pod=1, rotate_every_bytes=None, seed=31)


def test_records_arrive_over_tls_verified_against_the_ca(tmp_path, secure_kafka_broker, node):
    broker = secure_kafka_broker
    topic = new_topic(broker, 1, "secure")
    shipper = shipper_for(tmp_path, broker.bootstrap_ssl, topic, node,
                          kafka={"security_protocol": "SSL", "tls": {"ca_file": str(broker.ca_file)}}).start()
    try:
        node.write(500)
        wait_until(lambda: all_arrived(broker, topic, node), 60, "records over TLS")
    finally:
        shipper.stop()


def test_records_arrive_over_mutual_tls_with_a_client_certificate(tmp_path, secure_kafka_broker, node):
    broker = secure_kafka_broker
    topic = new_topic(broker, 1, "secure")
    shipper = shipper_for(tmp_path, broker.bootstrap_mtls, topic, node,
                          kafka={"security_protocol": "SSL", "tls": {"ca_file": str(broker.ca_file),
                                                                      "cert_file": str(broker.client_cert_file),
                                                                      "key_file": str(broker.client_key_file)}}).start()
    try:
        node.write(500)
        wait_until(lambda: all_arrived(broker, topic, node), 60, "records over mTLS")
    finally:
        shipper.stop()


def test_missing_client_certificate_fails_clearly_and_data_waits_in_the_wal(tmp_path, secure_kafka_broker, node):
    broker = secure_kafka_broker
    topic = new_topic(broker, 1, "secure")
    shipper = shipper_for(tmp_path, broker.bootstrap_mtls, topic, node,
                          kafka={"security_protocol": "SSL", "tls": {"ca_file": str(broker.ca_file)}}).start()
    try:
        node.write(300)
        wait_until(lambda: shipper.metrics().get("audit_shipper_wal_bytes", 0) > 0, 30, "data in the WAL")
        time.sleep(4)
        assert shipped(shipper) == 0
        assert "kafka not reachable yet" in shipper.log_text() or "failed" in shipper.log_text()
    finally:
        shipper.stop()
    fixed = shipper_for(tmp_path, broker.bootstrap_mtls, topic, node,
                        kafka={"security_protocol": "SSL", "tls": {"ca_file": str(broker.ca_file),
                                                                    "cert_file": str(broker.client_cert_file),
                                                                    "key_file": str(broker.client_key_file)}}).start()
    try:
        wait_until(lambda: all_arrived(broker, topic, node), 60, "records once the certificate is configured")
    finally:
        fixed.stop()


def test_wrong_ca_fails_clearly_and_data_waits_in_the_wal_until_fixed(tmp_path, secure_kafka_broker, node):
    broker = secure_kafka_broker
    topic = new_topic(broker, 1, "secure")
    other_ca = unrelated_ca(tmp_path / "other-ca")
    shipper = shipper_for(tmp_path, broker.bootstrap_ssl, topic, node,
                          kafka={"security_protocol": "SSL", "tls": {"ca_file": str(other_ca.cert_file)}}).start()
    try:
        node.write(300)
        wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in shipper.log_text(), 30, "a certificate error in the log")
        assert shipped(shipper) == 0
        assert shipper.metrics().get("audit_shipper_wal_bytes", 0) > 0
    finally:
        shipper.stop()
    fixed = shipper_for(tmp_path, broker.bootstrap_ssl, topic, node,
                        kafka={"security_protocol": "SSL", "tls": {"ca_file": str(broker.ca_file)}}).start()
    try:
        wait_until(lambda: all_arrived(broker, topic, node), 60, "records after the CA is fixed")
    finally:
        fixed.stop()


def test_wrong_password_fails_clearly_and_a_rotated_password_file_is_picked_up_without_restart(
        tmp_path, secure_kafka_broker, node):
    broker = secure_kafka_broker
    topic = new_topic(broker, 1, "secure")
    secret = password_file(tmp_path, "wrong-password-123")
    shipper = shipper_for(tmp_path, broker.bootstrap_sasl_ssl, topic, node,
                          kafka={"security_protocol": "SASL_SSL", "tls": {"ca_file": str(broker.ca_file)},
                                 "sasl": {"mechanism": "SCRAM-SHA-512", "username": "shipper-scram512",
                                          "password_file": str(secret)}}).start()
    try:
        node.write(300)
        wait_until(lambda: "kafka not reachable yet" in shipper.log_text(), 30, "an authentication failure")
        assert shipped(shipper) == 0
        pid = shipper.pid
        secret.write_text("scram512-secret\n")                      # Kubernetes updates the Secret in place
        wait_until(lambda: all_arrived(broker, topic, node), 90, "records after the password file changed")
        assert shipper.pid == pid and shipper.alive()
    finally:
        shipper.stop()
    assert_no_secrets(tmp_path)


def test_records_arrive_over_sasl_scram_sha_256(tmp_path, secure_kafka_broker, node):
    broker = secure_kafka_broker
    topic = new_topic(broker, 1, "secure")
    secret = password_file(tmp_path, "scram256-secret")
    shipper = shipper_for(tmp_path, broker.bootstrap_sasl_ssl, topic, node,
                          kafka={"security_protocol": "SASL_SSL", "tls": {"ca_file": str(broker.ca_file)},
                                 "sasl": {"mechanism": "SCRAM-SHA-256", "username": "shipper-scram256",
                                          "password_file": str(secret)}}).start()
    try:
        node.write(300)
        wait_until(lambda: all_arrived(broker, topic, node), 60, "records over SASL_SSL SCRAM-SHA-256")
        metrics_text = "\n".join(shipper.metrics())
    finally:
        shipper.stop()
    assert not any(password in metrics_text for password in PASSWORDS)
    assert_no_secrets(tmp_path)


@pytest.mark.parametrize("identity", ["expired", "wrong_host"])
def test_expired_or_wrong_host_server_certificate_is_refused(tmp_path, node, identity):
    from tests.harness.certs import make_tls_material

    material = make_tls_material(tmp_path / "tls")
    make = expired_server_identity if identity == "expired" else wrong_host_server_identity
    bad = TlsMaterial(ca=material.ca, server=make(material.ca, tmp_path / "tls"), client=material.client)
    with KafkaBroker(tmp_path / "kafka", tls=bad) as broker:
        topic = f"secure-{identity}"
        shipper = shipper_for(tmp_path, broker.bootstrap_ssl, topic, node,
                              kafka={"security_protocol": "SSL", "tls": {"ca_file": str(material.ca_file)}}).start()
        try:
            node.write(200)
            expected = "certificate has expired" if identity == "expired" else "mismatch"
            wait_until(lambda: expected in shipper.log_text(), 30, f"'{expected}' in the log")
            assert shipped(shipper) == 0
            assert shipper.metrics().get("audit_shipper_wal_bytes", 0) > 0
        finally:
            shipper.stop()


def assert_no_secrets(tmp_path: Path) -> None:
    for log in tmp_path.rglob("*.log"):
        if "log/pods" in str(log) or "kafka" in log.parts:
            continue
        text = log.read_text(errors="replace")
        for password in PASSWORDS:
            assert password not in text, f"{password!r} leaked into {log}"
        assert "PRIVATE KEY" not in text


def test_unreadable_ca_file_fails_at_start_naming_the_option(tmp_path, node):
    shipper = shipper_for(tmp_path, "127.0.0.1:9", "t", node,
                          kafka={"security_protocol": "SSL", "tls": {"ca_file": str(tmp_path / "missing-ca.pem")}})
    done = subprocess.run([sys.executable, "-m", "shipper.cli", "run", "--config", str(shipper.config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "kafka.tls" in done.stderr


def test_world_writable_or_foreign_state_directory_is_refused(tmp_path, node):
    shipper = shipper_for(tmp_path, "127.0.0.1:9", "t", node)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chmod(state, 0o777)
    done = subprocess.run([sys.executable, "-m", "shipper.cli", "run", "--config", str(shipper.config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "world-writable" in done.stderr
    os.chmod(state, 0o700)
    os.chown(state, 65534, 65534)
    done = subprocess.run([sys.executable, "-m", "shipper.cli", "run", "--config", str(shipper.config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "owned by uid 65534" in done.stderr


@pytest.mark.tansu
def test_wal_and_state_files_are_private(tmp_path, tansu_broker, node):
    topic = new_topic(tansu_broker, 1, "secure")
    shipper = shipper_for(tmp_path, tansu_broker.bootstrap, topic, node).start()
    try:
        node.write(200)
        wait_until(lambda: shipped(shipper) >= 200, 60, "records shipped")
        assert shipper.sigterm() == 0
    finally:
        shipper.stop()
    for path in [tmp_path / "state", *(tmp_path / "state").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"


@pytest.mark.tansu
def test_symlink_escaping_the_log_roots_is_never_read_and_is_reported(tmp_path, tansu_broker, node):
    topic = new_topic(tansu_broker, 1, "secure")
    secret = tmp_path / "etc-shadow"
    secret.write_text("root:$6$supersecrethash:19000:0:99999:7:::\n")
    link = node.containers_dir / f"evil_default_app-{'0' * 64}.log"
    link.symlink_to(secret)
    shipper = shipper_for(tmp_path, tansu_broker.bootstrap, topic, node).start()
    try:
        node.write(100)
        wait_until(lambda: shipped(shipper) >= 100, 60, "records shipped")
        rejected = {k: v for k, v in shipper.metrics().items() if k.startswith("audit_shipper_discovery_rejected_total")}
        assert rejected.get('audit_shipper_discovery_rejected_total{reason="symlink_escape"}') == 1, rejected
        assert str(link) in shipper.log_text()
    finally:
        shipper.stop()
    values = asyncio.run(account(tansu_broker.bootstrap, topic, node, idle_s=1.0))
    assert values.total("unexpected") == 0
    from shipper.demo.reconcile import read_topic
    assert not any(b"supersecrethash" in value for value in asyncio.run(read_topic(tansu_broker.bootstrap, topic,
                                                                                     idle_s=1.0)))
