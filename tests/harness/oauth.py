"""OAuth for the tests: unsecured JWTs that Kafka's built-in unsecured validator accepts, and
`FakeTokenEndpoint`, a stand-in identity provider (an OAuth 2 token endpoint on 127.0.0.1 that grants
client_credentials), so that the shipper's own token client is what gets tested, against the real broker.

An unsecured JWT (RFC 7519 §6) is `base64url(header).base64url(claims).` with the header
`{"alg":"none"}` and an empty signature; Kafka checks its `exp` (and `iat`), takes the principal from
`sub` and the scope from `scope`.
"""
from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiokafka.abc import AbstractTokenProvider

#: The scope the harness broker's OAUTHBEARER listener requires (`unsecuredValidatorRequiredScope`).
KAFKA_SCOPE = "kafka"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsecured_jwt(subject: str = "shipper", *, lifetime_s: float = 3600, scope: str = KAFKA_SCOPE,
                  issued_at: float | None = None) -> str:
    """A token for `subject`, valid from `issued_at` (now) for `lifetime_s` (negative: already expired)."""
    iat = time.time() if issued_at is None else issued_at
    header = _b64url(json.dumps({"alg": "none"}).encode())
    claims = _b64url(json.dumps({"sub": subject, "iat": iat, "exp": iat + lifetime_s, "scope": scope}).encode())
    return f"{header}.{claims}."


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class StaticTokenProvider(AbstractTokenProvider):
    """The harness's own clients (readiness probe, consumers): one long-lived token."""

    def __init__(self, token: str | None = None) -> None:
        self._token = token or unsecured_jwt("harness")

    async def token(self) -> str:
        return self._token


@dataclass
class Grant:
    """One request the endpoint answered: when, with which client credentials, and what it issued."""
    at: float
    client_id: str
    client_secret: str
    form: dict[str, str]
    status: int
    token: str | None = None


@dataclass
class FakeTokenEndpoint:
    """A token endpoint (RFC 6749 §4.4) in a thread: `POST /token` with `grant_type=client_credentials`,
    client credentials by HTTP Basic (or in the form), answers `{"access_token", "token_type",
    "expires_in"}` with an unsecured JWT of `lifetime_s`. `fail_next` makes the next requests answer 503;
    `issue_scope` sets the scope the tokens carry (a wrong one: the broker refuses them). Every request is
    recorded in `grants`."""

    client_id: str = "shipper-node"
    client_secret: str = "endpoint-secret-42"
    lifetime_s: float = 4.0
    issue_scope: str = KAFKA_SCOPE
    fail_next: int = 0
    grants: list[Grant] = field(default_factory=list)

    def __post_init__(self) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                status, body = endpoint._answer(self.path, self.headers.get("Authorization", ""),
                                                self.headers.get("Content-Type", ""), form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def _answer(self, path: str, authorization: str, content_type: str, form: dict[str, str]) -> tuple[int, dict]:
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        if authorization.startswith("Basic "):
            decoded = base64.b64decode(authorization[6:]).decode()
            user, _, password = decoded.partition(":")
            client_id, client_secret = urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)
        grant = Grant(time.time(), client_id, client_secret, form, 200)
        with self._lock:
            self.grants.append(grant)
            if path != "/token" or not content_type.startswith("application/x-www-form-urlencoded"):
                grant.status = 400
                return 400, {"error": "invalid_request"}
            if self.fail_next > 0:
                self.fail_next -= 1
                grant.status = 503
                return 503, {"error": "temporarily_unavailable"}
            if form.get("grant_type") != "client_credentials":
                grant.status = 400
                return 400, {"error": "unsupported_grant_type"}
            if (client_id, client_secret) != (self.client_id, self.client_secret):
                grant.status = 401
                return 401, {"error": "invalid_client"}
            grant.token = unsecured_jwt(client_id, lifetime_s=self.lifetime_s, scope=self.issue_scope)
            return 200, {"access_token": grant.token, "token_type": "Bearer", "expires_in": self.lifetime_s}

    def issued(self) -> list[Grant]:
        with self._lock:
            return [grant for grant in self.grants if grant.token]

    def start(self) -> FakeTokenEndpoint:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-token-endpoint", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeTokenEndpoint:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
