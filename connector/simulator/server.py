"""The simulator: one aiohttp app serving the websocket, REST search and the control endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
import uuid
from types import TracebackType
from typing import Any

from aiohttp import web

from connector.simulator.connection import GOING_AWAY_CODE, Connection, Hooks, Subscription
from connector.simulator.faults import FaultState, check_action, injected_frames
from connector.simulator.generator import Generated, Generator
from connector.simulator.history import History, PageStore
from connector.simulator.oauth import TOKEN_PATH, TokenIssuer
from connector.simulator.oauth import cancel as cancel_expiry
from connector.simulator.options import SimulatorOptions
from connector.simulator.rest import RestApi, error_response

log = logging.getLogger(__name__)

WS_PATHS = (
    "/api/ws/gotham/v1/observations/{spec}",
    "/api/gotham/ws/v1/observations/{spec}",
)
HISTORY_PATH = "/api/gotham/v1/observations/history/{spec}/search"
LATEST_PATH = "/api/gotham/v1/observations/latest/{spec}/search"
_TICK_S = 0.05
# Beyond this many queued frames a consumer is too slow to keep; it is dropped with 1011.
_SLOW_CONSUMER_FRAMES = 10_000
# With rate 0 generation waits while any consumer has this many frames queued.
_UNTHROTTLED_BACKLOG = 64
_UNTHROTTLED_CHUNK = 1000


class Simulator:
    def __init__(self, options: SimulatorOptions | None = None) -> None:
        self.options = options or SimulatorOptions()
        self.faults = FaultState()
        self._generator = Generator(self.options)
        self._history = History(self.options.history_seconds, self.options.history_max)
        self._pages = PageStore()
        self._connections: dict[int, Connection] = {}
        self._subs: dict[str, Subscription] = {}
        self._ids = itertools.count(1)
        self._drop_rng = random.Random(self.options.seed + 1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._gen_task: asyncio.Task[None] | None = None
        self._port = 0
        self.generated = 0
        self.sent_total = 0
        self.messages_sent = 0
        self.rest_calls = 0
        self.injected_sent = 0  # frames of `send_frames` actions written to a socket
        self._rest: RestApi | None = None
        self.oauth = TokenIssuer(self.options)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        for path in WS_PATHS:
            app.router.add_get(path, self._ws_handler)
        rest = RestApi(
            token=self.options.token,
            specs=self.options.spec_ids,
            history=self._history,
            pages=self._pages,
            faults=self.faults,
            counted=self._count_rest,
            accepts=self.oauth.accepts,
        )
        if self.options.client_id is not None:
            app.router.add_post(TOKEN_PATH, self.oauth.handle)
        self._rest = rest
        app.router.add_post(HISTORY_PATH, rest.history_search)
        app.router.add_post(LATEST_PATH, rest.latest_search)
        app.router.add_post("/_sim/control", self._control_handler)
        app.router.add_get("/_sim/stats", self._stats_handler)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.host, self.options.port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self._port = server.sockets[0].getsockname()[1]
        self.faults.refuse_until = time.monotonic() + self.options.refuse_seconds
        self._gen_task = asyncio.create_task(self._generate_loop())

    async def stop(self) -> None:
        if self._gen_task is not None:
            self._gen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gen_task
            self._gen_task = None
        await asyncio.gather(
            *(
                c.drop("clean", GOING_AWAY_CODE, "simulator stopping")
                for c in self._connections.values()
            ),
            return_exceptions=True,
        )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def ws_url(self) -> str:
        return f"ws://{self._url_host}:{self._port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self._url_host}:{self._port}"

    @property
    def _url_host(self) -> str:
        host = self.options.host
        if host in ("", "0.0.0.0", "::"):
            return "127.0.0.1"
        return f"[{host}]" if ":" in host else host

    # --- observation of the simulator ------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        stats = {
            "generated": self.generated,
            "connections": len(self._connections),
            "subscriptions": {sid: sub.stats() for sid, sub in self._subs.items()},
            "sent_total": self.sent_total,
            "messages_sent": self.messages_sent,
            "rest_calls": self.rest_calls,
        }
        if self.options.client_id is not None:  # the token endpoint is served
            stats["oauth"] = self.oauth.stats()
        return stats

    def observations(self) -> list[dict[str, Any]]:
        return self._history.observations()

    # --- faults ----------------------------------------------------------------------------

    def inject(self, action: dict[str, Any]) -> None:
        """Apply a control action; must be called on the simulator's event loop."""
        action = check_action(action)
        self.faults.apply(action)
        name = action["action"]
        conns = list(self._connections.values())
        if name == "drop":
            for conn in conns:
                self._spawn(conn.drop(str(action.get("mode", "clean"))))
        elif name == "malformed":
            for conn in conns:
                conn.send_raw('{"type": "data", "id": oops')
        elif name == "unknown_type":
            for conn in conns:
                conn.send_raw(json.dumps({"type": "mystery", "payload": {"note": "unannounced"}}))
        elif name == "unknown_subscription":
            for conn in conns:
                conn.send_raw(self._orphan_data(conn.spec))
        elif name == "send_frames":
            binary, frames = bool(action.get("binary", False)), injected_frames(action)
            for conn in conns:
                for data in frames:
                    conn.send_bytes(data, binary, self._injected)
        elif name == "large":
            self._spawn(self._send_large(int(action["bytes"])))
        elif name == "set_token":
            # Secret rotation: new handshakes and REST calls need the new token from now on.
            self.options.token = str(action["token"])
            if self._rest is not None:
                self._rest.token = self.options.token

    def _orphan_data(self, spec: str) -> str:
        # A plausible observation that is not in history, so landing it is detectably wrong.
        obs = {
            "sourceSystemId": "ghost",
            "collectionId": "ghost",
            "observationSpecId": spec,
            "trackId": "orphan",
            "position": {"longitude": -77.0, "latitude": 38.9},
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "staticProperties": [],
            "liveProperties": [],
        }
        return json.dumps({"type": "data", "id": str(uuid.uuid4()), "observations": [obs]})

    async def _send_large(self, nbytes: int) -> None:
        for conn in list(self._connections.values()):
            for sub in conn.active_subs():
                collected: list[Generated] = []
                size = 0
                deadline = time.monotonic() + 10.0
                while size < nbytes and time.monotonic() < deadline:
                    made = self._generator.generate(_UNTHROTTLED_CHUNK, spec=sub.spec)
                    self._publish(made, exclude=sub)
                    for g in made:
                        if sub.compiled.matches(g.obs, g.ts_ns):
                            collected.append(g)
                            size += len(g.text.encode()) + 1
                    await asyncio.sleep(0)
                if collected:
                    conn.send_data(sub, collected)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- generation ------------------------------------------------------------------------

    async def _generate_loop(self) -> None:
        if self.options.rate == 0:
            await self._generate_unthrottled()
            return
        rate = self.options.rate
        budget = 0.0
        last = time.monotonic()
        while True:
            await asyncio.sleep(_TICK_S)
            now = time.monotonic()
            elapsed, last = now - last, now
            if self.faults.paused:
                continue
            # Tokens per elapsed time keep the long-run rate exact despite sleep jitter; the cap
            # stops a stalled loop from bursting more than a second's worth afterwards.
            budget = min(budget + rate * elapsed, rate + 1.0)
            if budget >= 1.0:
                made = self._generator.generate(int(budget))
                budget -= len(made)
                budget = min(budget, rate + 1.0)
                self._publish(made)

    async def _generate_unthrottled(self) -> None:
        while True:
            if self.faults.paused or any(
                c.backlog() > _UNTHROTTLED_BACKLOG for c in self._connections.values()
            ):
                await asyncio.sleep(0.002)
                continue
            made = self._generator.generate(_UNTHROTTLED_CHUNK)
            self._publish(made)
            await asyncio.sleep(0 if made else 0.001)

    def _publish(self, made: list[Generated], exclude: Subscription | None = None) -> None:
        if not made:
            return
        self._history.add(made)
        self.generated += len(made)
        batch = self.options.batch
        for conn in list(self._connections.values()):
            if conn.backlog() > _SLOW_CONSUMER_FRAMES and self.options.rate > 0:
                self._spawn(conn.drop("clean", reason="slow consumer"))
                continue
            for sub in conn.active_subs():
                if sub is exclude:
                    continue
                matched = [
                    g for g in made if g.spec == sub.spec and sub.compiled.matches(g.obs, g.ts_ns)
                ]
                for i in range(0, len(matched), batch):
                    conn.send_data(sub, matched[i : i + batch])

    # --- websocket -------------------------------------------------------------------------

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        if self.faults.refusing():
            return error_response(503, "SERVICE_UNAVAILABLE", "Default:ServiceUnavailable")
        if request.query.get("preview") != "true":
            return error_response(400, "INVALID_ARGUMENT", "ApiFeaturePreviewUsageOnly")
        offered = [
            p.strip()
            for header in request.headers.getall("Sec-WebSocket-Protocol", [])
            for p in header.split(",")
        ]
        # The static token's subprotocol, or that of an OAuth2 token that has not expired.
        expected = self.oauth.protocol(offered, self.options.token)
        if expected is None:
            return error_response(401, "UNAUTHORIZED", "MissingCredentials")
        spec = request.match_info["spec"]
        if spec not in self.options.spec_ids:
            return error_response(404, "NOT_FOUND", "ObservationSpecNotFound", {"spec": spec})
        ws = web.WebSocketResponse(
            protocols=(expected,), compress=self.options.compression, max_msg_size=16 * 2**20
        )
        transport = request.transport
        await ws.prepare(request)
        conn = Connection(
            id=next(self._ids),
            spec=spec,
            ws=ws,
            transport=transport,
            hooks=Hooks(
                subscribe_delay=lambda: self.faults.subscribe_delay,
                take_reject=self.faults.take_reject,
                register=self._register,
                data_sent=self._data_sent,
                should_drop=self._should_drop,
                drop_mode=self.options.drop_mode,
            ),
        )
        self._connections[conn.id] = conn
        expiry = self.oauth.close_on_expiry(conn, expected)
        try:
            await conn.serve()
        finally:
            del self._connections[conn.id]
            await cancel_expiry(expiry)
        return ws

    def _register(self, sub: Subscription) -> None:
        self._subs[sub.id] = sub

    def _data_sent(self, sub: Subscription, count: int) -> None:
        sub.sent += count
        self.sent_total += count
        self.messages_sent += 1

    def _should_drop(self, data_messages: int) -> bool:
        every = self.options.drop_every
        if every and data_messages >= every:
            return True
        chance = self.options.drop_random
        return bool(chance) and self._drop_rng.random() < chance

    def _injected(self) -> None:
        self.injected_sent += 1

    def _count_rest(self) -> None:
        self.rest_calls += 1

    # --- control ---------------------------------------------------------------------------

    async def _control_handler(self, request: web.Request) -> web.Response:
        try:
            self.inject(json.loads(await request.text()))
        except ValueError as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    async def _stats_handler(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())
