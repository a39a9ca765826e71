"""The receiving process's HTTP endpoints (`/metrics`, `/healthz`, `/readyz`), opt-in with
`[metrics] enabled`.

Served by aiohttp on the connector's own event loop rather than by prometheus_client's server
thread: a thread would keep answering `/healthz` while the loop that reads the socket is stuck,
which is exactly what a liveness probe must catch. Rendering a scrape takes well under a
millisecond (a few dozen series), so the loop can afford it. A module of its own so that the
runner imports aiohttp (~0.3 CPU-s and 12 MiB at start) only when the endpoints are enabled.
"""

from __future__ import annotations

import errno
import logging
import socket

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from connector.errors import ConfigError
from connector.metrics import Metrics

log = logging.getLogger(__name__)


class HealthServer:
    """One aiohttp server: the registry's exposition, liveness and readiness."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.port = 0  # the bound port once started (the configured one may be 0: any free)
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        # handle_signals=False: SIGTERM belongs to the runner's graceful stop.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self, host: str, port: int) -> None:
        """Listen, or raise ConfigError naming the key at fault (exit 2, like any bad key)."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            bad_host = isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
            key = "metrics.host" if bad_host else "metrics.port"
            reason = exc.strerror or str(exc)
            raise ConfigError.single(key, f"cannot listen on {host}:{port}: {reason}") from None
        self.port = self._runner.addresses[0][1]
        log.info("metrics and health on http://%s:%d (/metrics /healthz /readyz)", host, self.port)

    async def close(self) -> None:
        await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(
            body=encode(self.metrics.registry), headers={"Content-Type": content_type}
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        # Answering at all is the check: this runs on the loop that reads the socket.
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        found = self.metrics.sources.not_ready()
        if found:
            return web.json_response({"status": "not ready", "reasons": found}, status=503)
        return web.json_response({"status": "ready"})
