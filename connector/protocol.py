"""The Gotham websocket protocol, sans I/O: frames in, typed events out; no sockets, no clock.

Replies to `subscribe` carry no request id, so they are matched to requests by order.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import msgspec


class _Envelope(msgspec.Struct):
    type: str
    id: str | None = None
    errors: list[Any] | None = None
    # Raw keeps each observation undecoded: routing needs only the count.
    observations: list[msgspec.Raw] | None = None


_DECODER = msgspec.json.Decoder(_Envelope)


class _Kind(msgspec.Struct):
    type: str


def _kind(raw: bytes) -> str | None:
    try:
        return msgspec.json.decode(raw, type=_Kind).type
    except (msgspec.DecodeError, ValueError, RecursionError):  # ValidationError: a DecodeError
        return None


@dataclass(frozen=True, slots=True)
class Subscribed:
    name: str
    id: str
    token: int = 0  # the caller's token for the subscribe this answers


@dataclass(frozen=True, slots=True)
class SubscribeFailed:
    name: str
    errors: list[dict[str, Any]]
    token: int = 0


@dataclass(frozen=True, slots=True)
class Data:
    name: str
    id: str
    count: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class Malformed:
    """A frame we cannot use: kept verbatim in the dead-letter area, never dropped silently."""

    reason: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class UnknownData:
    """Data for a subscription id this connection never had: kept aside, and recorded."""

    id: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class ServerError:
    """A `{"type": "error"}` frame: the server complaining about something we sent."""

    errors: list[dict[str, Any]]


Event = Subscribed | SubscribeFailed | Data | Malformed | UnknownData | ServerError


def encode(message: dict[str, Any]) -> str:
    return msgspec.json.encode(message).decode()


class Protocol:
    """State of one connection: pending subscribe requests and the id -> name mapping."""

    def __init__(self) -> None:
        self._pending: deque[tuple[str, int]] = deque()
        self._names: dict[str, str] = {}
        # Data can still arrive for an id after we unsubscribed it; it is ours, not unknown.
        self._retired: dict[str, str] = {}

    @property
    def ids(self) -> dict[str, str]:
        """Current name -> subscription id."""
        return {name: sid for sid, name in self._names.items()}

    @property
    def awaiting(self) -> int:
        """Subscribe requests still waiting for their reply."""
        return len(self._pending)

    def pending(self, name: str) -> bool:
        """Whether a subscribe for `name` still waits for its reply."""
        return any(pending == name for pending, _ in self._pending)

    def waits_for(self, name: str, token: int) -> bool:
        """Whether this subscribe (name, token) still waits for its reply."""
        return (name, token) in self._pending

    def subscribe(self, name: str, query: Any, token: int = 0) -> str:
        """The subscribe message; its reply will carry `name` and `token`."""
        self._pending.append((name, token))
        return encode({"type": "subscribe", "query": query})

    def unsubscribe_id(self, sid: str) -> str:
        """Unsubscribe a subscription id that was never adopted (a superseded reply)."""
        name = self._names.pop(sid, None)
        if name is not None:
            self._retired[sid] = name
        return encode({"type": "unsubscribe", "id": sid})

    def unsubscribe(self, name: str) -> str | None:
        for sid, known in list(self._names.items()):
            if known == name:
                del self._names[sid]
                self._retired[sid] = name
                return encode({"type": "unsubscribe", "id": sid})
        return None

    def receive(self, frame: bytes | str) -> Event:
        raw = frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame
        try:
            env = _DECODER.decode(raw)
        except msgspec.ValidationError as exc:
            if self._pending and _kind(raw) == "subscribed":
                # Still the reply to the oldest subscribe: consuming it keeps the order-based
                # correlation right (otherwise every later reply lands on the wrong name).
                detail = [{"name": "reason", "value": str(exc)}]
                name, token = self._pending.popleft()
                return SubscribeFailed(name, [{"error": "MalformedReply", "args": detail}], token)
            return Malformed(f"unexpected message shape: {exc}", raw)
        except (msgspec.DecodeError, ValueError, RecursionError) as exc:
            # ValueError: invalid UTF-8; RecursionError: nesting deeper than the decoder allows.
            return Malformed(f"not valid JSON: {type(exc).__name__}: {str(exc)[:200]}", raw)
        if env.type == "data":
            if env.id is None or env.observations is None:
                return Malformed("data message without id or observations", raw)
            known = self._names.get(env.id) or self._retired.get(env.id)
            if known is None:
                return UnknownData(env.id[:100], raw)
            return Data(known, env.id, len(env.observations), raw)
        if env.type == "subscribed":
            if not self._pending:
                return Malformed("subscribed reply without a pending subscribe", raw)
            name, token = self._pending.popleft()
            errors = [e for e in env.errors or [] if isinstance(e, dict)]
            if env.id is None or errors:
                return SubscribeFailed(name, errors or [{"error": "NoSubscriptionId"}], token)
            self._names[env.id] = name
            return Subscribed(name, env.id, token)
        if env.type == "error":
            return ServerError([e for e in env.errors or [] if isinstance(e, dict)])
        return Malformed(f"unknown message type {env.type[:40]!r}", raw)
