"""Palantir multipass's OAuth2 token endpoint (client credentials), and what a token's expiry
means on the other endpoints.

`POST /multipass/api/oauth2/token` with a form body `grant_type=client_credentials&client_id=
...&client_secret=...[&scope=...]` answers `{access_token, token_type, expires_in, scope}`.
Enabled by `SimulatorOptions.client_id`; the static `token` keeps working beside it.

An issued token is accepted by the websocket handshake and REST until it expires (then 401).
A socket opened with it is closed by the server when it expires, with close code 1008 (policy
violation) and reason "token expired": Gotham documents no behaviour for this, and 1008 is
RFC 6455's code for "the endpoint's policy no longer lets this connection go on".
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from connector.simulator.connection import Connection
from connector.simulator.options import SimulatorOptions

TOKEN_PATH = "/multipass/api/oauth2/token"  # noqa: S105 - a URL path, not a secret
EXPIRED_CLOSE_CODE = 1008
EXPIRED_REASON = "token expired"
_FORM = "application/x-www-form-urlencoded"


@dataclass
class Issued:
    token: str
    expires: float  # time.monotonic()
    lifetime: float
    scope: str


def _oauth_error(status: int, error: str) -> web.Response:
    # RFC 6749 5.2's error shape; the description never repeats what the client sent.
    return web.json_response({"error": error, "error_description": error}, status=status)


def _same(given: object, expected: str | None) -> bool:
    return (
        isinstance(given, str)
        and expected is not None
        and hmac.compare_digest(given.encode(), expected.encode())
    )


class TokenIssuer:
    def __init__(self, options: SimulatorOptions) -> None:
        self.options = options  # read at each request: a test may change the lifetime
        self.issued: list[Issued] = []
        self.requests = 0
        self.refused = 0  # wrong client id or secret, or a malformed request
        self.unavailable = 0  # answered 503 on purpose (options.token_failures)
        self.expired_closes = 0
        self._live: dict[str, Issued] = {}

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.unavailable < self.options.token_failures:
            self.unavailable += 1
            return _oauth_error(503, "temporarily_unavailable")
        if request.content_type != _FORM:
            self.refused += 1
            return _oauth_error(400, "invalid_request")
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            self.refused += 1
            return _oauth_error(400, "unsupported_grant_type")
        opts = self.options
        if not (
            _same(form.get("client_id"), opts.client_id)
            and _same(form.get("client_secret"), opts.client_secret)
        ):
            self.refused += 1
            return _oauth_error(401, "invalid_client")
        scope = form.get("scope", "")
        lifetime = opts.token_expires_in
        issued = Issued(
            "sim-at-" + secrets.token_urlsafe(24),
            time.monotonic() + lifetime,
            lifetime,
            scope if isinstance(scope, str) else "",
        )
        self.issued.append(issued)
        self._live[issued.token] = issued
        self._forget_expired()
        return web.json_response(
            {
                "access_token": issued.token,
                "token_type": "bearer",
                "expires_in": int(lifetime) if float(lifetime).is_integer() else lifetime,
                "scope": issued.scope,
            }
        )

    def valid(self, token: str) -> Issued | None:
        issued = self._live.get(token)
        return issued if issued is not None and time.monotonic() < issued.expires else None

    def protocol(self, offered: Iterable[str], static_token: str) -> str | None:
        """The subprotocol to select: the static token's or a live issued token's; None: 401."""
        offered = list(offered)
        for protocol in offered:
            if _same(protocol, f"Bearer-{static_token}"):
                return protocol
        for protocol in offered:
            if protocol.startswith("Bearer-") and self.valid(protocol[len("Bearer-") :]):
                return protocol
        return None

    def accepts(self, authorization: str) -> bool:
        """REST: `Authorization: Bearer <a live issued token>`."""
        prefix = "Bearer "
        return (
            authorization.startswith(prefix)
            and self.valid(authorization[len(prefix) :]) is not None
        )

    def close_on_expiry(self, conn: Connection, protocol: str) -> asyncio.Task[None] | None:
        """Close `conn` when the token it was opened with expires; cancel the task when the
        connection ends first. None for the static token (it never expires)."""
        issued = self._live.get(protocol[len("Bearer-") :])
        if issued is None:
            return None

        async def close() -> None:
            await asyncio.sleep(max(0.0, issued.expires - time.monotonic()))
            self.expired_closes += 1
            # Shielded: the connection ending cancels this task, and must not cut the close.
            await asyncio.shield(conn.drop("clean", EXPIRED_CLOSE_CODE, EXPIRED_REASON))

        return asyncio.get_running_loop().create_task(close())

    def revoke_all(self) -> None:
        """Every issued token is refused from now on (as if expired early): what a client's
        401-then-renew path is tested with."""
        self._live.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "issued": len(self.issued),
            "refused": self.refused,
            "unavailable": self.unavailable,
            "expired_closes": self.expired_closes,
            "scopes": sorted({i.scope for i in self.issued}),
        }

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for token in [t for t, i in self._live.items() if i.expires <= now]:
            del self._live[token]


async def cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
