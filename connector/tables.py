"""Reading TOML tables into typed values: every problem recorded with its key, nothing raised.
Pure; `connector.config` builds the sections with it."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from typing import Any

ENV_PREFIX = "GOTHAM_CONNECTOR__"
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
    if kind == "table":
        return isinstance(value, dict), value
    raise AssertionError(kind)


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
