"""OAUTHBEARER tokens for the Kafka client (aiokafka's `AbstractTokenProvider`): from a file that
something else renews (a projected token, a rotated Secret), or from an OAuth 2 token endpoint with the
client_credentials grant.

aiokafka asks for a token at every new connection, often several times a second while a broker is
unreachable, so a source answers from what it holds: a file is only re-read when it changed, and the
endpoint is asked by one refresher task, at 80% of a token's lifetime and with backoff after a failure,
so that a token endpoint outage shorter than the last fifth of a lifetime goes unnoticed. A token nobody
can use (expired, unreadable, refused by the broker) is an `OAuthTokenError`, which aiokafka takes as a
failed connection and retries; it is logged naming the option, and counted in
`kafka_send_errors_total` (reason `OAuthTokenError`, or `SaslAuthenticationFailed` when the broker
refused the token). Tokens and secrets are never logged: a token is described by its claims.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from aiokafka.abc import AbstractTokenProvider
from aiokafka.errors import KafkaError

log = logging.getLogger("shipper.kafka")

REFRESH_AT = 0.8                # of a token's lifetime
UNKNOWN_LIFETIME_REFRESH_S = 300.0
MIN_REFRESH_S = 1.0
_LOG_REPEAT_S = 30.0            # the same problem is logged again at most this often
_MAX_RESPONSE_BYTES = 1 << 20


class OAuthTokenError(KafkaError):
    """No token that the broker could accept. A KafkaError, so that aiokafka counts it as a failed
    connection attempt (and retries) instead of letting it escape its connection code."""


def jwt_claims(token: str) -> dict | None:
    """The claims of a JWT (not checked: the broker judges the signature), or None for an opaque token."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str
    received_at: float          # wall clock, seconds
    expires_at: float | None    # wall clock; None when neither the endpoint nor the token says
    subject: str | None = None
    scope: str | None = None

    @classmethod
    def of(cls, value: str, received_at: float, expires_in: float | None = None) -> AccessToken:
        claims = jwt_claims(value) or {}
        exp = claims.get("exp")
        expires_at = received_at + expires_in if expires_in is not None else (
            float(exp) if isinstance(exp, (int, float)) else None)
        scope = claims.get("scope", claims.get("scp"))
        return cls(value, received_at, expires_at, subject=_text(claims.get("sub")),
                   scope=" ".join(map(str, scope)) if isinstance(scope, list) else _text(scope))

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at

    def refresh_in(self, now: float | None = None) -> float:
        """Seconds until this token should be replaced."""
        now = time.time() if now is None else now
        if self.expires_at is None:
            return max(MIN_REFRESH_S, self.received_at + UNKNOWN_LIFETIME_REFRESH_S - now)
        due = self.received_at + REFRESH_AT * (self.expires_at - self.received_at)
        return max(MIN_REFRESH_S, due - now)

    def describe(self, now: float | None = None) -> str:
        """What a log line may say about the token: its subject, scope and expiry, never the token."""
        now = time.time() if now is None else now
        parts = [f"subject {self.subject!r}"] if self.subject else []
        if self.scope:
            parts.append(f"scope {self.scope!r}")
        if self.expires_at is None:
            parts.append("expiry unknown")
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires_at))
            left = self.expires_at - now
            parts.append(f"expires {stamp} (in {left:.0f}s)" if left > 0 else f"expired {stamp} ({-left:.0f}s ago)")
        return ", ".join(parts)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


class TokenSource(AbstractTokenProvider):
    """What both sources share: SASL extensions, reporting problems once (and again at most every 30 s),
    and hearing from the connection code whether the broker took the token (see wire.py)."""

    def __init__(self, what: str, *, extensions: Mapping[str, str] | None = None, metrics=None) -> None:
        self.what = what
        self._extensions = dict(extensions or {})
        self.metrics = metrics
        self.last_problem: str | None = None
        self._logged: tuple[str, float] | None = None
        self._last_sent: AccessToken | None = None
        self.refusals = 0

    def extensions(self) -> dict[str, str]:
        return dict(self._extensions)

    async def close(self) -> None:
        """Stops what the source runs (nothing, unless it fetches tokens)."""

    def refused(self, challenge: bytes) -> None:
        """The broker refused the token last handed out; `challenge` is its RFC 7628 error (JSON)."""
        self.refusals += 1
        try:
            status = json.loads(challenge)
            detail = ", ".join(f"{key} {value}" for key, value in status.items()) if isinstance(status, dict) else ""
        except ValueError:
            detail = ""
        token = self._last_sent
        self.problem(f"kafka refused the OAuth token from {self.what}"
                     f" ({detail or challenge[:200].decode(errors='replace')}); token: "
                     f"{token.describe() if token else 'none'}", reason="SaslAuthenticationFailed")

    def accepted(self) -> None:
        if self.last_problem is not None:
            token = self._last_sent
            log.info("kafka accepted the OAuth token from %s (%s)", self.what, token.describe() if token else "")
        self.last_problem = None
        self._logged = None
        self.refusals = 0

    def problem(self, message: str, *, reason: str = "OAuthTokenError") -> OAuthTokenError:
        """Counts and logs a problem (the same one at most every 30 s); returns it as the error to raise."""
        if self.metrics is not None:
            self.metrics.send_errors.labels(reason=reason).inc()
        self.last_problem = message
        now = time.monotonic()
        if self._logged is None or self._logged[0] != message or now - self._logged[1] >= _LOG_REPEAT_S:
            self._logged = (message, now)
            log.error("%s", message)
        return OAuthTokenError(message)

    def _hand_out(self, token: AccessToken) -> str:
        self._last_sent = token
        return token.value


class FileTokenSource(TokenSource):
    """A token in a file that something else renews: re-read whenever the file changed (Kubernetes
    swaps a projected or Secret volume's files at once, so a changed inode or mtime is a new token)."""

    def __init__(self, path: str, *, what: str = "kafka.sasl.oauth.token_file",
                 extensions: Mapping[str, str] | None = None, metrics=None) -> None:
        super().__init__(f"{what} {path}", extensions=extensions, metrics=metrics)
        self.path = path
        self._stat: tuple[int, int, int, int] | None = None
        self._token: AccessToken | None = None

    async def token(self) -> str:
        token = self._load()
        if token.expired():
            raise self.problem(f"{self.what} holds a token that can no longer be used ({token.describe()}); "
                               "waiting for the file to be renewed")
        return self._hand_out(token)

    def _load(self) -> AccessToken:
        try:
            info = os.stat(self.path)
            key = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
            if key == self._stat and self._token is not None:
                return self._token
            with open(self.path, encoding="utf-8") as file:
                text = file.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise self.problem(f"{self.what}: {getattr(exc, 'strerror', None) or exc}") from None
        if not text:
            raise self.problem(f"{self.what} is empty")
        token = AccessToken.of(text, time.time())
        if self._token is not None and token.value != self._token.value:
            log.info("%s changed: using the new token (%s)", self.what, token.describe())
        self._stat, self._token = key, token
        return token


class EndpointTokenSource(TokenSource):
    """Tokens from an OAuth 2 token endpoint (RFC 6749 §4.4, client_credentials), fetched by one
    refresher task that this source owns: started by the first `token()` call, stopped by `close()`."""

    def __init__(self, url: str, client_id: str, client_secret_file: str, *, scope: str | None = None,
                 client_auth: str = "basic", ssl_context: ssl.SSLContext | None = None, timeout_s: float = 10.0,
                 backoff: Callable[[], Iterator[float]], what: str = "kafka.sasl.oauth.token_endpoint_url",
                 secret_what: str = "kafka.sasl.oauth.client_secret_file",
                 extensions: Mapping[str, str] | None = None, metrics=None) -> None:
        super().__init__(f"{what} {url}", extensions=extensions, metrics=metrics)
        self.url = url
        self.client_id = client_id
        self.client_secret_file = client_secret_file
        self.secret_what = secret_what
        self.scope = scope
        self.client_auth = client_auth
        self.timeout_s = timeout_s
        self._backoff = backoff
        self._opener = urllib.request.build_opener(_NoRedirects(), urllib.request.HTTPSHandler(context=ssl_context))
        self._current: AccessToken | None = None
        self._fetching = False
        self._retry_at: float | None = None        # monotonic: when the refresher asks again after a failure
        self._refresher: asyncio.Task | None = None
        self._changed: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self.fetches = 0

    async def token(self) -> str:
        if self._refresher is None or self._refresher.done():
            if self._refresher is not None and not self._refresher.cancelled() and self._refresher.exception():
                log.error("oauth token refresher failed; starting it again", exc_info=self._refresher.exception())
            self._changed, self._wake = asyncio.Event(), asyncio.Event()
            self._fetching = True
            self._refresher = asyncio.get_running_loop().create_task(self._keep_fresh(), name="oauth-token-refresh")
        deadline = time.monotonic() + self.timeout_s + 1
        while True:
            current = self._current
            if current is not None and not current.expired():
                return self._hand_out(current)
            if not self._fetching or time.monotonic() >= deadline:
                wait = f"; asking again in {max(0.0, self._retry_at - time.monotonic()):.1f}s" if self._retry_at else ""
                raise OAuthTokenError(f"no usable OAuth token from {self.what}: "
                                      f"{self.last_problem or 'the last one expired'}{wait}")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - time.monotonic()))

    def refused(self, challenge: bytes) -> None:
        super().refused(challenge)
        if self._last_sent is not None and self._last_sent is self._current:
            self._current = None            # never offered again; the refresher fetches another
        if self._wake is not None:
            self._wake.set()

    async def close(self) -> None:
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep_fresh(self) -> None:
        assert self._changed is not None and self._wake is not None
        delays: Iterator[float] | None = None
        while True:
            if self.refusals:
                # A token the broker refused is replaced, but not at the rate aiokafka reconnects.
                delays = delays or self._backoff()
                await self._pause(next(delays))
            self._fetching = True
            try:
                token = await asyncio.to_thread(self._fetch)
            except OAuthTokenError:
                self._fetching = False
                delays = delays or self._backoff()
                delay = next(delays)
                self._retry_at = time.monotonic() + delay
                self._changed.set()
                # Until it expires, the current token stays in use while the endpoint is retried.
                await asyncio.sleep(delay)
                continue
            self._fetching, self._retry_at = False, None
            if not self.refusals:
                delays = None
            self._current = token
            self._changed.set()
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), token.refresh_in())

    async def _pause(self, seconds: float) -> None:
        self._fetching = False
        self._retry_at = time.monotonic() + seconds
        self._changed.set()
        await asyncio.sleep(seconds)

    def _fetch(self) -> AccessToken:
        """One token request (blocking: runs in a worker thread)."""
        self.fetches += 1
        try:
            with open(self.client_secret_file, encoding="utf-8") as file:
                secret = file.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise self.problem(f"{self.secret_what} {self.client_secret_file}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
        if not secret:
            raise self.problem(f"{self.secret_what} {self.client_secret_file} is empty")
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        if self.client_auth == "basic":
            # RFC 6749 §2.3.1: each part form-encoded, then HTTP Basic.
            pair = f"{urllib.parse.quote_plus(self.client_id)}:{urllib.parse.quote_plus(secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form |= {"client_id": self.client_id, "client_secret": secret}
        request = urllib.request.Request(self.url, data=urllib.parse.urlencode(form).encode(), headers=headers,
                                         method="POST")
        started = time.time()
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                body = response.read(_MAX_RESPONSE_BYTES)
        except urllib.error.HTTPError as exc:
            raise self.problem(f"{self.what} answered HTTP {exc.code}{_oauth_error(exc)}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise self.problem(f"{self.what}: {reason}") from None
        try:
            answer = json.loads(body)
            value = answer["access_token"]
            token_type = answer.get("token_type", "Bearer")
            expires_in = answer.get("expires_in")
            if not isinstance(value, str) or not value or not isinstance(token_type, str):
                raise ValueError
            if isinstance(expires_in, str) and expires_in.strip().isdigit():
                expires_in = int(expires_in)
            if expires_in is not None and not isinstance(expires_in, (int, float)):
                raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError):
            raise self.problem(f"{self.what} answered without a usable access_token (not an RFC 6749 token "
                               "response)") from None
        if token_type.lower() != "bearer":
            raise self.problem(f"{self.what} issued a {token_type!r} token, not a Bearer token")
        token = AccessToken.of(value, started, float(expires_in) if expires_in is not None else None)
        log.debug("oauth token from %s (%s)", self.what, token.describe())
        return token


def _oauth_error(exc: urllib.error.HTTPError) -> str:
    """The RFC 6749 §5.2 error of a refused request, as far as it is safe to log (no echo of the body)."""
    try:
        answer = json.loads(exc.read(4096))
    except (ValueError, OSError):
        return ""
    if not isinstance(answer, dict) or not isinstance(answer.get("error"), str):
        return ""
    description = answer.get("error_description")
    return f": {answer['error'][:100]}" + (f" ({description[:200]})" if isinstance(description, str) else "")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the client's credentials elsewhere: a token endpoint that answers with
    one is an error."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: PLR0913 - urllib's signature
        return None
