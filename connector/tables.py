"""Reading TOML tables into typed values: every problem recorded with its key, nothing raised;
and back, for `validate --show`. Pure; `connector.config` builds the sections with it."""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from connector.secret import Secret

if TYPE_CHECKING:
    from connector.config import Config

ENV_PREFIX = "GOTHAM_CONNECTOR__"
REDACTED = "***"
# Storage options are handed to fsspec verbatim and carry its credentials under names like
# key, secret, token, password, account_key, sas_token or connection_string.
_SECRET_OPTION = re.compile(r"key|secret|token|passw|credential|sas|connection_string", re.I)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\Z")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class Reader:
    """Pulls typed values out of one TOML table, recording problems instead of raising."""

    def __init__(self, table: Mapping[str, Any], prefix: str, problems: list[tuple[str, str]]):
        self.table, self.prefix, self.problems = table, prefix, problems
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, message: str) -> None:
        self.problems.append((self.key(name), message))

    def get(self, name: str, kind: str, default: Any, *, required: bool = False) -> Any:
        self.seen.add(name)
        if name not in self.table:
            if required:
                self.fail(name, "is required")
            return default
        value = self.table[name]
        ok, converted = _convert(kind, value)
        if not ok:
            self.fail(name, f"expected {kind}, got {_describe(value)}")
            return default
        return converted

    def unknown(self, allowed: set[str] | None = None) -> None:
        for name in self.table:
            if name not in (allowed if allowed is not None else self.seen):
                self.fail(name, "unknown key")


def _describe(value: object) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def _convert(kind: str, value: Any) -> tuple[bool, Any]:
    if kind == "string":
        return isinstance(value, str) and value != "", value
    if kind == "bool":
        return isinstance(value, bool), value
    if kind == "positive integer":
        return isinstance(value, int) and not isinstance(value, bool) and value > 0, value
    if kind == "positive number":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        return ok, float(value) if ok else value
    if kind == "non-negative number":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
        return ok, float(value) if ok else value
    if kind == "duration (seconds or '90s', '15m', '6h', '1d')":
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return True, float(value)
        m = _DURATION.match(value.strip()) if isinstance(value, str) else None
        if m and float(m.group(1)) > 0:
            return True, float(m.group(1)) * _UNITS[m.group(2)]
        return False, value
    if kind == "port (0-65535)":  # 0: any free port (the bound one is logged)
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535
        return ok, value
    if kind == "table":
        return isinstance(value, dict), value
    if kind == "list of strings":
        ok = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
        return ok, tuple(value) if ok else value
    raise AssertionError(kind)


def loopback(host: str | None) -> bool:
    """Whether `host` is this machine: cleartext to it leaves no wire to be read from."""
    if host in ("localhost", "::1"):
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if len(path) < 2:
            continue
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = value


def show_toml(cfg: Config) -> str:
    """The effective configuration (file + environment + defaults) as TOML that loads back into
    an equal Config; secret values are shown as "***" (and so do not load back as they were)."""
    import tomli_w  # only `validate --show` writes TOML: no other process needs to load it

    return tomli_w.dumps(effective_tables(cfg))


def effective_tables(cfg: Config) -> dict[str, Any]:
    tables: dict[str, Any] = _plain(cfg)
    source, sink = tables["source"], tables["sink"]
    # The config says where the token lives (a variable's name or a file), never the token.
    token = source.pop("token")
    if "client_id" in token:  # [source.oauth2]: names of where the client secret lives
        source["oauth2"] = token
    elif "file" in token:
        source["token_file"] = token["file"]
    else:
        source["token_env"] = token["env"]
    for table, key in ((source, "url"), (source, "rest_url"), (sink, "url")):
        if key in table:
            table[key] = _redact_url(table[key])
    sink["storage_options"] = _redact_options(sink["storage_options"])
    return tables


def _plain(value: Any) -> Any:
    """Typed config values as TOML values: dataclasses as tables, paths as strings, None left
    out (every optional key's default is its absence)."""
    if isinstance(value, Secret):
        return REDACTED
    if is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in fields(value)
            # Fields left out of equality (a subscription's notes) are derived, not configured.
            if f.compare and getattr(value, f.name) is not None
        }
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    redacted: dict[str, Any] = {}
    for key, value in options.items():
        if _SECRET_OPTION.search(key):
            redacted[key] = REDACTED
        elif isinstance(value, Mapping):
            redacted[key] = _redact_options(value)  # e.g. client_kwargs
        elif isinstance(value, str):
            redacted[key] = _redact_url(value)  # e.g. endpoint_url
        else:
            redacted[key] = value
    return redacted


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL (fsspec would not take it as one either)
        return url
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:{REDACTED}@{host}").geturl()
