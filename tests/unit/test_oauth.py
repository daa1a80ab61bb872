"""OAUTHBEARER token sources (shipper/kafka/oauth.py) and their configuration, without a broker: a
token file that is rotated, and a token endpoint (FakeTokenEndpoint, a real HTTP server on 127.0.0.1)
that issues, fails and refuses. The broker's side is tests/integration/test_oauth.py."""
from __future__ import annotations

import asyncio
import logging
import time
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shipper.config import ConfigError, KafkaConfig, load_settings
from shipper.kafka import KafkaSetupError, OAuthTokenError, kafka_client_options, producer_options
from shipper.kafka.oauth import AccessToken, EndpointTokenSource, FileTokenSource, jwt_claims
from shipper.metrics import Metrics
from tests.harness.oauth import FakeTokenEndpoint, unsecured_jwt

SECRET = "endpoint-secret-42"


pytestmark = pytest.mark.usefixtures("no_shipper_env")


def errors(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("audit_shipper_kafka_send_errors_total", {"reason": reason}) or 0.0


def fast_backoff():
    while True:
        yield 0.05


def endpoint_source(endpoint: FakeTokenEndpoint, tmp_path, metrics=None, **kwargs) -> EndpointTokenSource:
    secret = tmp_path / "client-secret"
    secret.write_text(kwargs.pop("secret", SECRET) + "\n")
    return EndpointTokenSource(endpoint.url, kwargs.pop("client_id", endpoint.client_id), str(secret),
                               backoff=fast_backoff, metrics=metrics, timeout_s=2.0, **kwargs)


# -- configuration ---------------------------------------------------------------------------------------
def oauth_kafka(**oauth) -> dict:
    return {"security_protocol": "SASL_SSL", "sasl": {"mechanism": "OAUTHBEARER", "oauth": oauth}}


@pytest.mark.parametrize("oauth,message", [
    ({}, "needs one of kafka.sasl.oauth.token_file and kafka.sasl.oauth.token_endpoint_url"),
    ({"token_file": "/t", "token_endpoint_url": "https://idp.example/token"}, "needs one of"),
    ({"token_endpoint_url": "https://idp.example/token"}, "needs kafka.sasl.oauth.client_id"),
    ({"token_endpoint_url": "http://idp.example/token", "client_id": "c", "client_secret_file": "/s"},
     "kafka.sasl.oauth.token_endpoint_url"),
    ({"token_file": "/t", "extensions": {"auth": "x"}}, "kafka.sasl.oauth.extensions"),
    ({"token_file": "/t", "extensions": {"logicalCluster": "lkc\x01"}}, "printable ASCII"),
])
def test_oauthbearer_configuration_errors_name_the_option(oauth, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(kafka=oauth_kafka(**oauth))


def test_oauthbearer_needs_no_username_or_password_and_takes_loopback_http():
    settings = load_settings(kafka=oauth_kafka(token_endpoint_url="http://127.0.0.1:8080/token", client_id="c",
                                               client_secret_file="/s", extensions={"logicalCluster": "lkc-1"}))
    assert settings.kafka.sasl.mechanism.value == "OAUTHBEARER"
    assert settings.kafka.sasl.username is None


def test_unreadable_token_or_client_secret_file_fails_at_start_naming_the_option(tmp_path):
    with pytest.raises(KafkaSetupError, match="kafka.sasl.oauth.token_file"):
        producer_options(KafkaConfig(**oauth_kafka(token_file=str(tmp_path / "none"))), idempotent=False)
    with pytest.raises(KafkaSetupError, match="kafka.sasl.oauth.client_secret_file"):
        producer_options(KafkaConfig(**oauth_kafka(token_endpoint_url="https://idp.example/token", client_id="c",
                                                   client_secret_file=str(tmp_path / "none"))), idempotent=False)


def test_producer_options_carry_the_token_source_and_no_password(tmp_path):
    token = tmp_path / "token"
    token.write_text(unsecured_jwt())
    options = producer_options(KafkaConfig(**oauth_kafka(token_file=str(token), extensions={"identityPoolId": "p"})),
                               idempotent=True)
    assert options["sasl_mechanism"] == "OAUTHBEARER"
    assert isinstance(options["sasl_oauth_token_provider"], FileTokenSource)
    assert options["sasl_oauth_token_provider"].extensions() == {"identityPoolId": "p"}
    assert "sasl_plain_password" not in options


def test_client_options_for_the_command_line(tmp_path):
    token = tmp_path / "token"
    token.write_text(unsecured_jwt())
    options = kafka_client_options(tls=True, sasl_mechanism="OAUTHBEARER", sasl_oauth_token_file=str(token))
    assert options["security_protocol"] == "SASL_SSL"
    assert isinstance(options["sasl_oauth_token_provider"], FileTokenSource)
    with pytest.raises(KafkaSetupError, match="--sasl-oauth-token-file"):
        kafka_client_options(tls=True, sasl_mechanism="OAUTHBEARER")
    with pytest.raises(KafkaSetupError, match="--sasl-oauth-client-id"):
        kafka_client_options(tls=True, sasl_mechanism="OAUTHBEARER", sasl_oauth_token_endpoint_url="https://x/t")


# -- tokens ----------------------------------------------------------------------------------------------
def test_a_token_is_judged_by_expires_in_or_else_its_exp_claim_and_renewed_at_80_percent():
    now = 1_000_000.0
    jwt = unsecured_jwt("node-1", lifetime_s=100, issued_at=now)
    assert jwt_claims(jwt)["sub"] == "node-1"
    by_claim = AccessToken.of(jwt, now)
    assert by_claim.expires_at == pytest.approx(now + 100)
    assert by_claim.refresh_in(now) == pytest.approx(80)
    by_response = AccessToken.of(jwt, now, expires_in=10)
    assert by_response.expires_at == pytest.approx(now + 10) and by_response.refresh_in(now) == pytest.approx(8)
    assert not by_response.expired(now + 9.9) and by_response.expired(now + 10)
    opaque = AccessToken.of("opaque-token-value", now)
    assert opaque.expires_at is None and not opaque.expired(now + 10**6)
    assert opaque.refresh_in(now) == pytest.approx(300)


def test_a_token_is_described_by_its_claims_never_by_its_value():
    jwt = unsecured_jwt("node-1", lifetime_s=-5, scope="kafka")
    text = AccessToken.of(jwt, time.time()).describe()
    assert "node-1" in text and "kafka" in text and "expired" in text
    assert jwt not in text and jwt.split(".")[1] not in text


async def test_the_token_file_is_re_read_when_it_changes_and_an_expired_one_is_an_error(tmp_path, caplog):
    path = tmp_path / "token"
    first = unsecured_jwt("first", lifetime_s=60)
    path.write_text(first + "\n")
    metrics = Metrics()
    source = FileTokenSource(str(path), metrics=metrics)
    assert await source.token() == first
    second = unsecured_jwt("second", lifetime_s=60)
    path.write_text(second)
    assert await source.token() == second
    expired = unsecured_jwt("third", lifetime_s=-1)
    path.write_text(expired)
    with caplog.at_level(logging.ERROR, logger="shipper.kafka"):
        with pytest.raises(OAuthTokenError, match="kafka.sasl.oauth.token_file .* no longer be used"):
            await source.token()
    assert errors(metrics, "OAuthTokenError") == 1
    assert expired not in caplog.text and "third" in caplog.text
    path.unlink()
    with pytest.raises(OAuthTokenError, match="No such file"):
        await source.token()


async def test_a_refused_token_is_logged_by_its_claims_and_counted(tmp_path, caplog):
    path = tmp_path / "token"
    token = unsecured_jwt("node-1", scope="other")
    path.write_text(token)
    metrics = Metrics()
    source = FileTokenSource(str(path), metrics=metrics)
    await source.token()
    with caplog.at_level(logging.INFO, logger="shipper.kafka"):
        source.refused(b'{"status":"insufficient_scope", "scope":"[kafka]"}')
        source.refused(b'{"status":"insufficient_scope", "scope":"[kafka]"}')
        source.accepted()
    assert errors(metrics, "SaslAuthenticationFailed") == 2
    assert caplog.text.count("kafka refused the OAuth token") == 1      # the same problem is not repeated
    assert "insufficient_scope" in caplog.text and "'other'" in caplog.text and token not in caplog.text
    assert "kafka accepted the OAuth token" in caplog.text


# -- the token endpoint ----------------------------------------------------------------------------------
@pytest.mark.parametrize("client_auth", ["basic", "post"])
async def test_the_endpoint_grants_client_credentials_with_the_scope(tmp_path, client_auth):
    with FakeTokenEndpoint(lifetime_s=60) as endpoint:
        source = endpoint_source(endpoint, tmp_path, scope="kafka", client_auth=client_auth)
        try:
            token = await source.token()
            assert await source.token() == token              # held, not fetched per connection
        finally:
            await source.close()
    [grant] = endpoint.grants
    assert grant.token == token and grant.form["grant_type"] == "client_credentials"
    assert grant.form["scope"] == "kafka" and (grant.client_id, grant.client_secret) == ("shipper-node", SECRET)
    assert ("client_secret" in grant.form) == (client_auth == "post")


async def test_the_token_is_renewed_before_it_expires(tmp_path):
    with FakeTokenEndpoint(lifetime_s=1.5) as endpoint:
        source = endpoint_source(endpoint, tmp_path)
        try:
            seen = []
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                token = await source.token()
                assert not AccessToken.of(token, time.time()).expired()
                seen.append(token)
                await asyncio.sleep(0.1)
        finally:
            await source.close()
    grants = endpoint.issued()
    assert len(set(seen)) >= 3 and len(grants) >= 3
    for earlier, later in zip(grants, grants[1:]):
        assert later.at < jwt_claims(earlier.token)["exp"], "a token was renewed only after it expired"


async def test_an_endpoint_outage_is_retried_with_backoff_while_the_current_token_lasts(tmp_path):
    with FakeTokenEndpoint(lifetime_s=3.0) as endpoint:
        metrics = Metrics()
        source = endpoint_source(endpoint, tmp_path, metrics=metrics)
        try:
            first = renewed = await source.token()
            endpoint.fail_next = 3            # the renewal at 2.4 s fails three times, then succeeds
            while renewed == first:           # and no connection meanwhile goes without a token
                await asyncio.sleep(0.05)
                renewed = await source.token()
            renewed_at = time.time()
        finally:
            await source.close()
    assert renewed_at < jwt_claims(first)["exp"]
    assert [grant.status for grant in endpoint.grants] == [200, 503, 503, 503, 200]
    assert errors(metrics, "OAuthTokenError") == 3


async def test_wrong_client_credentials_are_a_clear_error_that_never_shows_the_secret(tmp_path, caplog):
    with FakeTokenEndpoint() as endpoint:
        metrics = Metrics()
        source = endpoint_source(endpoint, tmp_path, metrics=metrics, secret="not-the-secret")
        try:
            with caplog.at_level(logging.ERROR, logger="shipper.kafka"):
                with pytest.raises(OAuthTokenError, match="HTTP 401: invalid_client"):
                    await source.token()
        finally:
            await source.close()
    assert "kafka.sasl.oauth.token_endpoint_url" in caplog.text and endpoint.url in caplog.text
    assert "not-the-secret" not in caplog.text
    assert errors(metrics, "OAuthTokenError") >= 1


async def test_a_refused_token_is_replaced_by_a_new_one(tmp_path):
    with FakeTokenEndpoint(lifetime_s=60) as endpoint:
        source = endpoint_source(endpoint, tmp_path)
        try:
            first = await source.token()
            source.refused(b'{"status":"invalid_token"}')
            deadline = time.monotonic() + 5
            while True:
                try:
                    second = await source.token()
                    break
                except OAuthTokenError:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
        finally:
            await source.close()
    assert second != first and len(endpoint.issued()) == 2


async def test_a_redirect_is_refused_so_the_credentials_stay_where_they_were_sent(tmp_path):
    hits = []

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            hits.append((self.path, self.headers.get("Authorization")))
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    source = EndpointTokenSource(f"http://127.0.0.1:{server.server_address[1]}/token", "c", str(secret),
                                 backoff=fast_backoff, timeout_s=2.0)
    try:
        with pytest.raises(OAuthTokenError, match="HTTP 307"):
            await source.token()
    finally:
        await source.close()
        server.shutdown()
        server.server_close()
    assert {path for path, _ in hits} == {"/token"}
