"""One error root with exit codes; the Transient/Terminal split drives every retry decision."""

from __future__ import annotations


class ConnectorError(Exception):
    """Root of every error the connector raises on purpose; `exit_code` is what the CLI returns."""

    exit_code = 1


class Transient(ConnectorError):
    """Worth retrying: the same call may succeed later (throttling, timeouts, 5xx)."""


class Terminal(ConnectorError):
    """Retrying cannot help (permission denied, bucket missing): stop and keep the data."""


class Crashed(ConnectorError):
    """An internal stage died unexpectedly (a bug); what was read is safe in the spool."""


class ConfigError(ConnectorError):
    """One or more configuration problems, each naming its key."""

    exit_code = 2

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {msg}" for key, msg in problems))

    @classmethod
    def single(cls, key: str, message: str) -> ConfigError:
        return cls([(key, message)])


class QueryError(ConnectorError):
    """The server refused a subscription: carries the server's error names and args verbatim."""

    exit_code = 2

    def __init__(self, subscription: str, errors: list[dict[str, object]]) -> None:
        self.subscription = subscription
        self.errors = errors
        super().__init__(f"subscription {subscription!r} refused by the server: {describe(errors)}")


class AuthError(ConnectorError):
    """The server refused the token. Never carries the token itself."""

    exit_code = 3


class SinkError(Terminal):
    """The sink refused a write for good; unflushed rows stay in the spool for the next start."""

    exit_code = 4


class TransientSinkError(Transient):
    """A write that may succeed on retry."""


def is_transient(exc: BaseException) -> bool:
    """The one retry predicate: only errors marked Transient are retried. Anything else that
    nobody classified is a bug and must surface (the data stays safe in the spool)."""
    return isinstance(exc, Transient)


def describe(errors: list[dict[str, object]]) -> str:
    """Render the server's `errors` list as `Name(arg=value, ...)` items for logs and stderr."""
    parts = []
    for err in errors:
        name = str(err.get("error", "UnknownError"))
        raw_args = err.get("args")
        args = raw_args if isinstance(raw_args, list) else []
        rendered = ", ".join(
            f"{a.get('name')}={a.get('value')}" for a in args if isinstance(a, dict)
        )
        parts.append(f"{name}({rendered})")
    return "; ".join(parts) or "no error detail"
