"""Opens the websocket: URL, token as subprotocol, TLS, limits. Translates handshake failures."""

from __future__ import annotations

import ssl

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.typing import Subprotocol

from connector import __version__
from connector.config import SourceConfig
from connector.errors import AuthError, Transient
from connector.secret import Secret


class HandshakeFailed(Transient):
    """The server was reached but did not open the socket (5xx, 429, ...)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


async def open_stream(cfg: SourceConfig, token: Secret) -> ClientConnection:
    ssl_context = None
    if cfg.url.startswith("wss:"):
        ssl_context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    try:
        return await connect(
            cfg.ws_url,
            subprotocols=[Subprotocol(f"Bearer-{token.reveal()}")],
            compression="deflate" if cfg.permessage_deflate else None,
            max_size=cfg.max_message_bytes,
            open_timeout=cfg.open_timeout,
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout,
            close_timeout=5,
            proxy=None,
            ssl=ssl_context,
            user_agent_header=f"gotham-connector/{__version__}",
        )
    # `from None` everywhere: a chained handshake exception could carry our request headers.
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise AuthError(
                f"the server refused the token (HTTP {status}) at {cfg.ws_url}"
            ) from None
        raise HandshakeFailed(
            f"handshake refused with HTTP {status} at {cfg.ws_url}", status
        ) from None
    except InvalidURI as exc:
        raise HandshakeFailed(f"invalid websocket URL {cfg.ws_url}: {exc}") from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise HandshakeFailed(
            f"cannot connect to {cfg.ws_url}: {type(exc).__name__}: {exc}"
        ) from None
