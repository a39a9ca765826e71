"""Injected misbehaviour: the control actions and the state they leave behind."""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass
from typing import Any

from connector.simulator.options import DROP_MODES

# Actions that only change state; the rest act on live connections.
ACTIONS = (
    "drop",
    "refuse",
    "malformed",
    "unknown_type",
    "unknown_subscription",
    "large",
    "delay_subscribed",
    "reject_subscribe",
    "rest_status",
    "pause",
    "resume",
    "set_token",
    "send_frames",
)
REST_STATUSES = (401, 429, 503)


def check_action(action: object) -> dict[str, Any]:
    """The action if it is well formed, else ValueError saying what is wrong."""
    if not isinstance(action, dict) or action.get("action") not in ACTIONS:
        raise ValueError(f"action must be an object with 'action' one of {ACTIONS}")
    name = action["action"]
    if name == "drop" and action.get("mode", "clean") not in DROP_MODES:
        raise ValueError(f"drop mode must be one of {DROP_MODES}")
    if name in ("refuse", "delay_subscribed"):
        _number(action, "seconds")
    if name == "large":
        _number(action, "bytes")
    if name == "reject_subscribe":
        _number(action, "count")
        if not isinstance(action.get("error", "SubscriptionRejected"), str):
            raise ValueError("error must be a string")
    if name == "set_token" and not (isinstance(action.get("token"), str) and action["token"]):
        raise ValueError("token must be a non-empty string")
    if name == "send_frames":
        injected_frames(action)
    if name == "rest_status":
        _number(action, "count", default=1)
        if action.get("status") not in REST_STATUSES:
            raise ValueError(f"status must be one of {REST_STATUSES}")
    return action


def injected_frames(action: dict[str, Any]) -> list[bytes]:
    """The raw bytes of a `send_frames` action: `frames` is a list of base64 strings, sent
    as they are (invalid UTF-8 too) in text frames, or binary ones with `"binary": true`."""
    frames = action.get("frames")
    if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
        raise ValueError("frames must be a list of base64 strings")
    if not isinstance(action.get("binary", False), bool):
        raise ValueError("binary must be a boolean")
    try:
        return [base64.b64decode(f, validate=True) for f in frames]
    except binascii.Error as exc:
        raise ValueError(f"frames must be a list of base64 strings: {exc}") from None


def _number(action: dict[str, Any], key: str, default: float | None = None) -> float:
    value = action.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{key} must be a non-negative number")
    return float(value)


@dataclass
class FaultState:
    refuse_until: float = 0.0
    subscribe_delay: float = 0.0
    reject_count: int = 0
    reject_error: str = "SubscriptionRejected"
    rest_status: int = 0
    rest_count: int = 0
    paused: bool = False

    def refusing(self) -> bool:
        return time.monotonic() < self.refuse_until

    def take_reject(self) -> str | None:
        if self.reject_count <= 0:
            return None
        self.reject_count -= 1
        return self.reject_error

    def take_rest_status(self) -> int | None:
        if self.rest_count <= 0:
            return None
        self.rest_count -= 1
        return self.rest_status

    def apply(self, action: dict[str, Any]) -> None:
        """Record the state-changing part of a checked action."""
        name = action["action"]
        if name == "refuse":
            self.refuse_until = time.monotonic() + float(action["seconds"])
        elif name == "delay_subscribed":
            self.subscribe_delay = float(action["seconds"])
        elif name == "reject_subscribe":
            self.reject_count = int(action["count"])
            self.reject_error = str(action.get("error", "SubscriptionRejected"))
        elif name == "rest_status":
            self.rest_status = int(action["status"])
            self.rest_count = int(action.get("count", 1))
        elif name == "pause":
            self.paused = True
        elif name == "resume":
            self.paused = False
