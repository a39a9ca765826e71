"""The token: redacted in every repr, read lazily so that a rotated secret is picked up."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from connector.errors import ConfigError

# RFC 6455 subprotocol values are HTTP tokens: visible ASCII minus separators.
_SEPARATORS = set('()<>@,;:\\"/[]?={} \t')


class Secret:
    """A string that never prints itself: str(), repr() and f-strings all show a placeholder."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class TokenSource:
    """Where the token lives. `load()` is called on every (re)connect: rotation needs no restart."""

    env: str | None = "GOTHAM_TOKEN"
    file: Path | None = None

    def load(self) -> Secret:
        if self.file is not None:
            key = "source.token_file"
            try:
                value = self.file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError.single(key, f"cannot read {self.file}: {exc.strerror}") from None
        else:
            key = "source.token_env"
            value = os.environ.get(self.env or "", "").strip()
            if not value:
                raise ConfigError.single(key, f"environment variable {self.env} is not set")
        if not value:
            raise ConfigError.single(key, "the token is empty")
        if not subprotocol_safe(value):
            # Printing the offending character would leak part of the token.
            raise ConfigError.single(
                key,
                "the token contains characters that cannot travel in the websocket "
                "subprotocol header (only visible ASCII without separators is allowed)",
            )
        RedactFilter.register(value)
        return Secret(value)


def subprotocol_safe(value: str) -> bool:
    """Whether `Bearer-<value>` can travel in the Sec-WebSocket-Protocol header."""
    return bool(value) and not any(
        ord(c) < 0x21 or ord(c) > 0x7E or c in _SEPARATORS for c in value
    )


class RedactFilter(logging.Filter):
    """Last line of defence: any log record that somehow contains a known token is scrubbed."""

    _tokens: set[str] = set()

    @classmethod
    def register(cls, token: str) -> None:
        cls._tokens.add(token)

    @classmethod
    def forget(cls, token: str) -> None:
        """Stop scrubbing a token long expired (a connector fetches one every hour, for years)."""
        cls._tokens.discard(token)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._tokens:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            # A bad %-format must neither raise into the caller (filters are not guarded by
            # logging) nor reach logging's error report, which prints the raw args unscrubbed.
            message = f"{record.msg} {record.args!r}"
            record.msg, record.args = message, None
        scrubbed = scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


def scrub(text: str) -> str:
    """Replace every token this process has loaded with ***."""
    for token in RedactFilter._tokens:
        text = text.replace(token, "***")
    return text
