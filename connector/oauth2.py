"""Where the session and backfill get their bearer token: a static one (`token_env`,
`token_file`) or OAuth2 client credentials against Palantir multipass (`[source.oauth2]`).

OAuth2: the access token is cached and renewed ahead of its expiry by a background task (see
`credentials.refresh_after`), so a reconnect or a REST call never waits for the token endpoint
in the normal case. A 401 with a token makes the caller ask `refused()`, which fetches a fresh
one (once for all callers that held the same token) so the call is retried once before it
counts as refused. Token endpoint trouble (5xx, 429, timeouts) is retried with backoff; a
refusal of the client (400/401/403) is an AuthError naming the client id, never the secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from connector.backoff import Backoff
from connector.config import SourceConfig
from connector.credentials import Grant, OAuth2Config, UnusableToken, form_body, read_grant
from connector.errors import AuthError, ConfigError, ConnectorError, Transient
from connector.metrics import Metrics
from connector.secret import RedactFilter, Secret, TokenSource

# Imported where used: a token endpoint is optional, and aiohttp costs the receiving process
# ~0.3 CPU-s and 12 MiB at start.
if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

RETRY_SECONDS = 60.0  # one fetch's retries; the caller (reconnect loop, backfill) tries again
REQUEST_SECONDS = 30.0
SCRUBBED_TOKENS = 8  # older access tokens are long expired: no need to keep scrubbing them
_HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
# Only an OAuth2 error code (RFC 6749 5.2) is repeated from an answer: a description or any
# other field could echo the request back, secret included.
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")


class Tokens(Protocol):
    async def get(self) -> Secret:
        """The token to use now."""

    async def refused(self, token: Secret) -> bool:
        """The server answered 401 to `token`: True when a fresh one is ready (retry once)."""

    def superseded(self, token: Secret) -> bool:
        """Whether `token` has expired or been replaced (a socket opened with it will close)."""

    async def run(self) -> None:
        """Upkeep in the background until cancelled."""

    async def close(self) -> None: ...


class TokenUnavailable(Transient):
    """The token endpoint could not be reached or answered 5xx/429: worth asking again."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def tokens_for(source: SourceConfig, metrics: Metrics | None = None) -> Tokens:
    if isinstance(source.token, OAuth2Config):
        return OAuth2Tokens(source, source.token, metrics)
    return StaticTokens(source.token)


class StaticTokens:
    """token_env / token_file: read on every use, so a rotated token needs no restart."""

    def __init__(self, source: TokenSource) -> None:
        self._source = source

    async def get(self) -> Secret:
        return self._source.load()

    async def refused(self, token: Secret) -> bool:
        return False  # nothing to renew: the reconnect loop's auth window applies

    def superseded(self, token: Secret) -> bool:
        return False

    async def run(self) -> None:
        return

    async def close(self) -> None:
        return


@dataclass(frozen=True)
class _Cached:
    token: Secret
    due: float  # time.monotonic() when the next one is fetched
    expires: float


class OAuth2Tokens:
    def __init__(
        self,
        source: SourceConfig,
        oauth: OAuth2Config,
        metrics: Metrics | None = None,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self._source = source
        self._oauth = oauth
        self._url = oauth.url(source.rest_base)
        self._metrics = metrics or Metrics()
        self._retry_seconds = retry_seconds
        self._current: _Cached | None = None
        self._lock = asyncio.Lock()  # one fetch at a time; waiters take its result
        self._have = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._scrubbed: deque[str] = deque()

    async def get(self) -> Secret:
        current, now = self._current, time.monotonic()
        # Past due while the background task renews it (perhaps retrying an outage): the
        # token in hand is still good until it expires, so nobody waits for the endpoint.
        if (
            current is not None
            and now < current.expires
            and (now < current.due or self._lock.locked())
        ):
            return current.token
        try:
            return await self._renew(current.token if current else None)
        except TokenUnavailable:
            if current is not None and time.monotonic() < current.expires:
                return current.token
            raise

    async def refused(self, token: Secret) -> bool:
        await self._renew(token)
        return True

    def superseded(self, token: Secret) -> bool:
        current = self._current
        return current is None or current.token != token or time.monotonic() >= current.expires

    async def run(self) -> None:
        """Renew the token when due, ahead of anyone needing it. Never raises: trouble is
        logged and retried, and a caller that needs a token meets it itself."""
        backoff = Backoff(1.0, 60.0)
        while True:
            await self._have.wait()
            current = self._current
            assert current is not None
            wait = current.due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue  # someone may have renewed meanwhile (a 401): look again
            try:
                await self._renew(current.token)
                backoff.reset()
            except ConnectorError as exc:
                log.warning("could not renew the access token (%s); trying again", exc)
                await asyncio.sleep(backoff.next())

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _renew(self, stale: Secret | None) -> Secret:
        async with self._lock:
            current = self._current
            if current is not None and current.token != stale:
                return current.token  # renewed while this caller waited for the lock
            started = time.monotonic()  # the server's clock started no later than this
            grant = await self._fetch()
            self._keep(grant, started)
            return grant.token

    def _keep(self, grant: Grant, started: float) -> None:
        self._current = _Cached(
            grant.token, started + grant.refresh_after, started + grant.expires_in
        )
        self._have.set()
        self._metrics.token_refreshes.inc()
        self._scrubbed.append(grant.token.reveal())
        if len(self._scrubbed) > SCRUBBED_TOKENS:
            RedactFilter.forget(self._scrubbed.popleft())
        log.info(
            "access token for client id %r fetched: valid %gs, renewed after %gs",
            self._oauth.client_id,
            grant.expires_in,
            grant.refresh_after,
        )

    async def _fetch(self) -> Grant:
        retrying = AsyncRetrying(
            stop=stop_after_delay(self._retry_seconds),
            wait=_RetryAfter(),
            retry=retry_if_exception_type(TokenUnavailable),
            before_sleep=_log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._request()
        raise AssertionError("unreachable")

    async def _request(self) -> Grant:
        import aiohttp

        body = form_body(self._oauth, self._oauth.load_secret())
        timeout = aiohttp.ClientTimeout(total=REQUEST_SECONDS)
        try:
            async with self._session().post(
                self._url,
                data=body.reveal().encode(),
                headers=_HEADERS,
                timeout=timeout,
                allow_redirects=False,  # a redirect must not carry the secret elsewhere
            ) as resp:
                status, retry_after = resp.status, _retry_after(resp.headers.get("Retry-After"))
                payload = await resp.read()
        # `from None`: a chained library exception could carry the request.
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TokenUnavailable(
                f"cannot reach the token endpoint {self._url}: {type(exc).__name__}"
            ) from None
        return self._answer(status, payload, retry_after)

    def _answer(self, status: int, payload: bytes, retry_after: float | None) -> Grant:
        if status == 429 or status >= 500:
            raise TokenUnavailable(
                f"HTTP {status} from the token endpoint {self._url}", retry_after
            )
        if status in (400, 401, 403):
            raise AuthError(
                f"the token endpoint refused client id {self._oauth.client_id!r} "
                f"(HTTP {status}{_error_code(payload)}) at {self._url}"
            )
        if not 200 <= status < 300:
            raise ConfigError.single(
                "source.oauth2.token_url",
                f"HTTP {status} from {self._url}: is this the OAuth2 token endpoint?",
            )
        try:
            return read_grant(json.loads(payload))
        except UnusableToken as exc:
            raise AuthError(f"the token endpoint at {self._url}: {exc}") from None
        except ValueError as exc:
            raise TokenUnavailable(f"unusable answer from the token endpoint: {exc}") from None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            import aiohttp

            ssl_context: ssl.SSLContext | bool = False
            if self._url.startswith("https:"):
                ca = self._source.ca_file
                ssl_context = ssl.create_default_context(cafile=str(ca) if ca else None)
            # trust_env=False: no proxy from the environment sees the secret.
            connector = aiohttp.TCPConnector(ssl=ssl_context)
            self._http = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._http


def _error_code(payload: bytes) -> str:
    try:
        body: Any = json.loads(payload)
    except ValueError:
        return ""
    code = body.get("error") if isinstance(body, dict) else None
    return f": {code}" if isinstance(code, str) and _ERROR_CODE.match(code) else ""


def _retry_after(value: str | None) -> float | None:
    try:
        return min(float(value or ""), RETRY_SECONDS)
    except ValueError:
        return None


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning("%s; asking again in %.1fs", exc, wait)


class _RetryAfter(wait_random_exponential):
    """Exponential backoff with jitter, never shorter than the server's Retry-After."""

    def __init__(self) -> None:
        super().__init__(multiplier=0.5, max=15.0)

    def __call__(self, retry_state: RetryCallState) -> float:
        base: float = super().__call__(retry_state)
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, TokenUnavailable) and exc.retry_after is not None:
            return max(base, exc.retry_after)
        return base
