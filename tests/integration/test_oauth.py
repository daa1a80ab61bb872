"""SASL OAUTHBEARER against the real Kafka broker's OAUTHBEARER listener (Kafka's unsecured JWT validator,
scope `kafka` required, sessions ending with their token: tests/harness/kafka.py), with the real shipper
process: a token file rotated while it runs, tokens from a token endpoint (FakeTokenEndpoint, a stand-in
identity provider on 127.0.0.1) that expire every few seconds, and bad tokens replaced by good ones.
Whatever happens to the token, nothing written is lost: it waits in the WAL.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from shipper.demo.simnode import SimNode
from shipper.kafka.oauth import jwt_claims
from shipper.kafka.wire import end_refused_oauthbearer_exchanges
from tests.harness.kafka import SASL_OAUTH, KafkaBroker
from tests.harness.oauth import FakeTokenEndpoint, StaticTokenProvider, unsecured_jwt
from tests.support import ShipperProcess, account, all_arrived, new_topic, shipped, shipper_for, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]


@pytest.fixture
def node(tmp_path) -> SimNode:
    return SimNode(tmp_path / "log", pods=2, containers_per_pod=1, rotate_every_bytes=None, seed=47)


def oauth_shipper(tmp_path: Path, broker: KafkaBroker, topic: str, node: SimNode, oauth: dict) -> ShipperProcess:
    return shipper_for(tmp_path, broker.bootstrap_sasl_oauth, topic, node,
                       kafka={"security_protocol": "SASL_SSL", "tls": {"ca_file": str(broker.ca_file)},
                              "sasl": {"mechanism": "OAUTHBEARER", "oauth": oauth}})


def token_file(tmp_path: Path, token: str) -> Path:
    """A mounted Secret's way of changing: a new file renamed over the old one."""
    path = tmp_path / "secrets" / "token"
    path.parent.mkdir(exist_ok=True, mode=0o700)
    staged = path.with_suffix(".new")
    staged.write_text(token + "\n")
    staged.replace(path)
    return path


def assert_nothing_lost(broker: KafkaBroker, topic: str, node: SimNode) -> None:
    result = asyncio.run(account(broker.bootstrap, topic, node, idle_s=1.0))
    assert result.total("missing") == 0 and result.total("unexpected") == 0


def errors(shipper: ShipperProcess, reason: str) -> float:
    return shipper.metrics().get(f'audit_shipper_kafka_send_errors_total{{reason="{reason}"}}', 0.0)


def validated_subjects(broker: KafkaBroker) -> set[str]:
    """The principals the broker's unsecured validator accepted tokens for (it logs each one)."""
    marker = "Successfully validated token with principal "
    return {line.split(marker, 1)[1].split(":", 1)[0] for line in broker.server_log.read_text().splitlines()
            if marker in line}


def assert_no_tokens_or_secrets_in(log_text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in log_text, "a token or secret leaked into the shipper's log"


class RecordingTokenProvider(StaticTokenProvider):
    """Hands out one token, whatever it holds, and records what the connection code tells it."""

    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.heard: list[bytes | None] = []

    def refused(self, challenge: bytes) -> None:
        self.heard.append(challenge)

    def accepted(self) -> None:
        self.heard.append(None)


async def test_the_broker_refusing_a_token_is_an_authentication_failure_the_source_hears_of(secure_kafka_broker):
    """aiokafka 0.14 alone takes a refused token for success (see wire.py); with the fix, the broker's
    refusal fails the connection, and the token's source hears the broker's reason."""
    broker = secure_kafka_broker
    end_refused_oauthbearer_exchanges()
    for token, status in ((unsecured_jwt(lifetime_s=-30), b"invalid_token"),
                          (unsecured_jwt(scope="not-kafka"), b"insufficient_scope"), (unsecured_jwt(), None)):
        provider = RecordingTokenProvider(token)
        producer = AIOKafkaProducer(**broker.client_options(SASL_OAUTH) | {"sasl_oauth_token_provider": provider},
                                    request_timeout_ms=5000)
        try:
            if status is None:
                await asyncio.wait_for(producer.start(), 30)
                assert provider.heard and set(provider.heard) == {None}
            else:
                with pytest.raises(KafkaConnectionError):
                    await asyncio.wait_for(producer.start(), 30)
                assert provider.heard and all(status in heard for heard in provider.heard)
        finally:
            await producer.stop()


def test_a_token_file_rotated_while_running_loses_nothing(tmp_path, secure_kafka_broker, node):
    broker = secure_kafka_broker
    topic = new_topic(broker, 2, "oauth-file")
    first = unsecured_jwt("rotation-first", lifetime_s=20)
    path = token_file(tmp_path, first)
    shipper = oauth_shipper(tmp_path, broker, topic, node, {"token_file": str(path)}).start()
    try:
        node.write(300)
        wait_until(lambda: all_arrived(broker, topic, node), 60, "records with the first token")
        second = unsecured_jwt("rotation-second", lifetime_s=600)
        token_file(tmp_path, second)                           # rotated before the first one expires
        node.write(200)
        # The broker ends the first token's sessions when it expires: the shipper must come back with the
        # second one, read from the file.
        expiry = jwt_claims(first)["exp"]
        while time.time() < expiry + 2:
            node.write(20)
            time.sleep(0.5)
        node.write(200)
        wait_until(lambda: all_arrived(broker, topic, node), 90, "records after the first token expired")
        assert "rotation-second" in validated_subjects(broker)
        assert "kafka.sasl.oauth.token_file" in shipper.log_text() and "changed: using the new token" in shipper.log_text()
        assert shipper.alive()
    finally:
        shipper.stop()
    assert_nothing_lost(broker, topic, node)
    assert_no_tokens_or_secrets_in(shipper.log_text(), first, second)


def test_tokens_from_the_endpoint_are_renewed_before_they_expire_and_nothing_is_lost(
        tmp_path, secure_kafka_broker, node):
    broker = secure_kafka_broker
    topic = new_topic(broker, 2, "oauth-endpoint")
    secret = tmp_path / "secrets" / "client-secret"
    secret.parent.mkdir(mode=0o700)
    with FakeTokenEndpoint(client_id="node-7", lifetime_s=4.0) as endpoint:
        secret.write_text(endpoint.client_secret + "\n")
        shipper = oauth_shipper(tmp_path, broker, topic, node, {
            "token_endpoint_url": endpoint.url, "client_id": "node-7", "client_secret_file": str(secret),
            "scope": "kafka"}).start()
        try:
            node.write(200)
            wait_until(lambda: shipped(shipper) >= 1, 60, "the first records")
            deadline = time.monotonic() + 16                   # four token lifetimes of steady writing
            while time.monotonic() < deadline:
                node.write(25)
                time.sleep(0.5)
            wait_until(lambda: all_arrived(broker, topic, node), 90, "every record")
            grants = endpoint.issued()
            assert errors(shipper, "OAuthTokenError") == 0 and errors(shipper, "SaslAuthenticationFailed") == 0
        finally:
            shipper.stop()
    assert len(grants) >= 4
    for earlier, later in zip(grants, grants[1:]):
        assert later.at < jwt_claims(earlier.token)["exp"], "a token was renewed only after it had expired"
    assert all(grant.form == {"grant_type": "client_credentials", "scope": "kafka"} for grant in endpoint.grants)
    assert_nothing_lost(broker, topic, node)
    assert_no_tokens_or_secrets_in(shipper.log_text(), endpoint.client_secret, *(g.token for g in grants))


def test_an_expired_then_a_wrong_token_fail_clearly_and_a_good_one_delivers_everything(
        tmp_path, secure_kafka_broker, node):
    broker = secure_kafka_broker
    topic = new_topic(broker, 1, "oauth-bad")
    expired = unsecured_jwt("bad-expired", lifetime_s=-60)
    path = token_file(tmp_path, expired)
    shipper = oauth_shipper(tmp_path, broker, topic, node, {"token_file": str(path)}).start()
    try:
        node.write(200)
        wait_until(lambda: errors(shipper, "OAuthTokenError") > 0, 60, "the expired token counted")
        assert "kafka.sasl.oauth.token_file" in shipper.log_text() and "no longer be used" in shipper.log_text()
        pid = shipper.pid
        wrong = unsecured_jwt("bad-scope", lifetime_s=600, scope="not-kafka")   # the broker must say no
        token_file(tmp_path, wrong)
        wait_until(lambda: errors(shipper, "SaslAuthenticationFailed") > 0, 60, "the refused token counted")
        wait_until(lambda: "kafka refused the OAuth token" in shipper.log_text(), 10, "the refusal in the log")
        assert "insufficient_scope" in shipper.log_text() and "'not-kafka'" in shipper.log_text()
        assert shipped(shipper) == 0 and shipper.metrics().get("audit_shipper_wal_bytes", 0) > 0
        good = unsecured_jwt("good", lifetime_s=600)
        token_file(tmp_path, good)
        node.write(100)
        wait_until(lambda: all_arrived(broker, topic, node), 90, "every record once the token is good")
        assert shipper.pid == pid and shipper.alive()
        assert "kafka accepted the OAuth token" in shipper.log_text()
    finally:
        shipper.stop()
    assert_nothing_lost(broker, topic, node)
    assert_no_tokens_or_secrets_in(shipper.log_text(), expired, wrong, good)


def test_verify_reads_over_oauthbearer_with_a_token_file_and_never_prints_it(tmp_path, secure_kafka_broker, node,
                                                                               capsys):
    from shipper.verify import cli_main

    broker = secure_kafka_broker
    topic = new_topic(broker, 1, "oauth-verify")
    good = unsecured_jwt("verifier", lifetime_s=600)
    path = token_file(tmp_path, good)
    shipper = oauth_shipper(tmp_path, broker, topic, node, {"token_file": str(path)}).start()
    try:
        node.write(100)
        wait_until(lambda: all_arrived(broker, topic, node), 60, "records to verify")
        assert shipper.sigterm() == 0
    finally:
        shipper.stop()
    args = ["--bootstrap-servers", broker.bootstrap_sasl_oauth, "--topic", topic, "--tls-ca-file", str(broker.ca_file),
            "--sasl-mechanism", "OAUTHBEARER", "--sasl-oauth-token-file", str(path), "--idle-timeout", "3", "--json"]
    # What verify concludes about the records is its own concern (tests/integration/test_verify_kafka.py);
    # here: it read the whole topic over OAUTHBEARER (1: violations found, so it did read).
    status = cli_main(args)
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert status in (0, 1) and report["meta"]["stopped"] == "end_offsets"
    assert report["totals"]["records_read"] == sum(report["meta"]["end_offsets"].values()) >= 100
    expired = unsecured_jwt("verifier", lifetime_s=-5)
    token_file(tmp_path, expired)
    assert cli_main(args) == 2              # no usable token: the run could not verify anything
    captured = capsys.readouterr()
    assert "shipper verify:" in captured.err
    for token in (good, expired):
        assert token not in captured.out + captured.err
