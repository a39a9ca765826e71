"""Typed, frozen configuration loaded from TOML by one function that reports every problem at once.

Relative paths are relative to the working directory, like `sink.url` is for fsspec.

Every key is a public contract. Each problem names its key (`sink.compression: expected one of
...`). Values may also come from the environment: `GOTHAM_CONNECTOR__SECTION__KEY=value`
overrides `[section] key` (values parsed as TOML when they parse, else taken as strings).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from connector.credentials import OAuth2Config, read_oauth2
from connector.errors import ConfigError
from connector.icebergspec import IcebergConfig, read_iceberg
from connector.query import counter_clockwise, validate_query
from connector.secret import TokenSource
from connector.tables import Reader, env_overrides, loopback

DEFAULT_PATH = "/api/ws/gotham/v1/observations/{observation_spec_id}"
COMPRESSIONS = ("zstd", "snappy", "gzip", "none")
_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")


@dataclass(frozen=True)
class SourceConfig:
    url: str
    observation_spec_id: str
    path: str = DEFAULT_PATH
    token: TokenSource | OAuth2Config = field(default_factory=TokenSource)  # [source.oauth2]
    ca_file: Path | None = None
    rest_url: str | None = None
    # Measured (0.1.0 benchmark): ~1% CPU next to decoding, ~10x less bandwidth.
    permessage_deflate: bool = True
    max_message_bytes: int = 256 * 1024 * 1024
    open_timeout: float = 10.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    reconnect_min_seconds: float = 0.5
    reconnect_max_seconds: float = 30.0
    auth_retry_seconds: float = 300.0
    # ws:// or http:// to a host other than loopback sends the token in cleartext.
    allow_insecure: bool = False

    @property
    def ws_url(self) -> str:
        return (
            self.url.rstrip("/")
            + self.path.format(observation_spec_id=self.observation_spec_id)
            + "?preview=true"
        )

    @property
    def rest_base(self) -> str:
        if self.rest_url:
            return self.rest_url.rstrip("/")
        parts = urlsplit(self.url)
        scheme = {"ws": "http", "wss": "https"}[parts.scheme]
        return f"{scheme}://{parts.netloc}"


@dataclass(frozen=True)
class Subscription:
    name: str
    query: Mapping[str, Any]  # as sent: a clockwise ring in the file is already reversed here
    # What the loader changed, for `validate` to print and the session to log. Not part of
    # equality: two subscriptions sending the same query are the same subscription.
    notes: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class BatchConfig:
    max_rows: int = 50_000
    max_bytes: int = 64 * 1024 * 1024
    max_seconds: float = 60.0


@dataclass(frozen=True)
class SinkConfig:
    url: str = "./landing"
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    compression: str = "zstd"
    compression_level: int | None = None
    # Rows are sorted by (track, time), and every file holds every track: with 10,000-row
    # groups a one-track query reads one group in five of a default 50,000-row file (measured:
    # 5x fewer bytes than 25,000 for +4% file size); smaller groups also bound the sorted copy
    # and the writer's buffers (16 MiB less converter peak than 100,000).
    row_group_rows: int = 10_000
    max_attempts: int = 6


@dataclass(frozen=True)
class StateConfig:
    dir: Path = Path("./state")
    writer_id: str | None = None
    fsync_seconds: float = 1.0
    max_spool_bytes: int = 8 * 1024**3
    segment_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class BackfillConfig:
    enabled: bool = True
    max_window: float = 24 * 3600.0
    page_size: int = 100
    overlap_seconds: float = 5.0
    # "all": page every track in the window and filter locally (complete: the REST query selects
    # tracks by their latest point, so a track that left the polygon would be missed).
    # "subscription": send the subscription's query (less traffic, may miss such tracks).
    tracks: str = "all"


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"
    format: str = "text"
    heartbeat_seconds: float = 60.0  # a one-line stats log; 0 = off


@dataclass(frozen=True)
class MetricsConfig:
    # Opt-in: no port opened unasked, and two connectors on one host never fight over 9108.
    enabled: bool = False
    # The endpoints have no authentication: every interface (0.0.0.0) is an explicit choice.
    host: str = "127.0.0.1"
    port: int = 9108


@dataclass(frozen=True)
class Config:
    source: SourceConfig
    subscriptions: tuple[Subscription, ...]
    batch: BatchConfig = field(default_factory=BatchConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    state: StateConfig = field(default_factory=StateConfig)
    backfill: BackfillConfig = field(default_factory=BackfillConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    iceberg: IcebergConfig = field(default_factory=IcebergConfig)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, check and type a config file. Raises ConfigError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError.single("config", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError.single("config", f"{path} is not valid TOML: {exc}") from None
    env_overrides(data, os.environ if environ is None else environ)
    return parse_config(data)


def parse_config(data: Mapping[str, Any]) -> Config:
    problems: list[tuple[str, str]] = []
    sections = (
        *("source", "subscriptions", "batch", "sink", "state", "backfill", "log", "metrics"),
        "iceberg",
    )
    for name in data:
        if name not in sections:
            problems.append((name, f"unknown section (expected one of {', '.join(sections)})"))

    def table(name: str) -> Mapping[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            problems.append((name, "expected a table"))
            return {}
        return value

    source = _source(table("source"), problems)
    subscriptions = _subscriptions(data.get("subscriptions"), problems)
    batch = _section(
        table("batch"),
        "batch",
        problems,
        BatchConfig,
        {
            "max_rows": "positive integer",
            "max_bytes": "positive integer",
            "max_seconds": "positive number",
        },
    )
    sink = _sink(table("sink"), problems)
    state = _state(table("state"), problems)
    backfill = _section(
        table("backfill"),
        "backfill",
        problems,
        BackfillConfig,
        {
            "enabled": "bool",
            "max_window": "duration (seconds or '90s', '15m', '6h', '1d')",
            "page_size": "positive integer",
            "overlap_seconds": "non-negative number",
            "tracks": "string",
        },
    )
    if backfill.tracks not in ("all", "subscription"):
        problems.append(("backfill.tracks", "expected one of all, subscription"))
    if backfill.page_size > 100:
        problems.append(("backfill.page_size", "the API serves at most 100 per page"))
    log = _log(table("log"), problems)
    kinds = {"enabled": "bool", "host": "string", "port": "port (0-65535)"}
    metrics = _section(table("metrics"), "metrics", problems, MetricsConfig, kinds)
    iceberg = read_iceberg(table("iceberg"), problems)
    if problems or source is None:
        raise ConfigError(problems)
    return Config(source, subscriptions, batch, sink, state, backfill, log, metrics, iceberg)


def _log(tbl: Mapping[str, Any], problems: list[tuple[str, str]]) -> LogConfig:
    kinds = {"level": "string", "format": "string", "heartbeat_seconds": "non-negative number"}
    log: LogConfig = _section(tbl, "log", problems, LogConfig, kinds)
    if log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        problems.append(("log.level", "expected one of DEBUG, INFO, WARNING, ERROR"))
    if log.format not in ("text", "json"):
        problems.append(("log.format", "expected one of text, json"))
    return log


def _section(
    tbl: Mapping[str, Any],
    prefix: str,
    problems: list[tuple[str, str]],
    cls: Callable[..., Any],
    kinds: dict[str, str],
) -> Any:
    r = Reader(tbl, prefix, problems)
    defaults = cls()
    values = {k: r.get(k, kind, getattr(defaults, k)) for k, kind in kinds.items()}
    r.unknown()
    return cls(**values)


def _source(tbl: Mapping[str, Any], problems: list[tuple[str, str]]) -> SourceConfig | None:
    r = Reader(tbl, "source", problems)
    url = r.get("url", "string", None, required=True)
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            r.fail("url", f"expected ws://host[:port] or wss://host[:port], got {url!r}")
            url = None
        elif parts.path not in ("", "/") or parts.query:
            r.fail("url", "give scheme://host[:port] only; the path goes in source.path")
    spec = r.get("observation_spec_id", "string", None, required=True)
    path = r.get("path", "string", DEFAULT_PATH)
    if not path.startswith("/"):
        r.fail("path", "must start with /")
    elif "{observation_spec_id}" not in path:
        r.fail("path", "must contain {observation_spec_id}")
    token = _token(r)
    ca_file = r.get("ca_file", "string", None)
    if ca_file is not None and not _resolve(ca_file).is_file():
        r.fail("ca_file", f"no such file: {ca_file}")
    rest_url = r.get("rest_url", "string", None)
    if rest_url is not None and urlsplit(rest_url).scheme not in ("http", "https"):
        r.fail("rest_url", "expected http(s)://host[:port]")
    d = SourceConfig("ws://x", "x")
    numbers = {
        k: r.get(k, "positive number", getattr(d, k))
        for k in (
            "open_timeout",
            "ping_interval",
            "ping_timeout",
            "reconnect_min_seconds",
            "reconnect_max_seconds",
            "auth_retry_seconds",
        )
    }
    if numbers["reconnect_min_seconds"] > numbers["reconnect_max_seconds"]:
        r.fail("reconnect_max_seconds", "must be at least source.reconnect_min_seconds")
    insecure = r.get("allow_insecure", "bool", False)
    _cleartext(r, url, rest_url, insecure)
    oauth2 = read_oauth2(r, insecure)  # when present, replaces token_env/token_file
    deflate = r.get("permessage_deflate", "bool", d.permessage_deflate)
    max_message = r.get("max_message_bytes", "positive integer", d.max_message_bytes)
    r.unknown()
    if url is None or spec is None:
        return None
    return SourceConfig(
        url=url,
        observation_spec_id=spec,
        path=path,
        token=oauth2 or token,
        ca_file=_resolve(ca_file) if ca_file else None,
        rest_url=rest_url,
        permessage_deflate=deflate,
        max_message_bytes=max_message,
        allow_insecure=insecure,
        **numbers,
    )


def _cleartext(r: Reader, url: str | None, rest_url: str | None, insecure: bool) -> None:
    for key, value, plain in (("url", url, "ws"), ("rest_url", rest_url, "http")):
        parts = urlsplit(value) if isinstance(value, str) else None
        if parts and parts.scheme == plain and not insecure and not loopback(parts.hostname):
            r.fail(
                key,
                f"{plain}:// would send the token in cleartext to {parts.hostname}; use "
                f"{plain}s:// or set source.allow_insecure = true",
            )


def _token(r: Reader) -> TokenSource:
    token_env = r.get("token_env", "string", None)
    token_file = r.get("token_file", "string", None)
    if token_env and token_file:
        r.fail("token_file", "give token_env or token_file, not both")
    if token_file:
        return TokenSource(env=None, file=_resolve(token_file))
    return TokenSource(env=token_env or "GOTHAM_TOKEN")


def _subscriptions(value: object, problems: list[tuple[str, str]]) -> tuple[Subscription, ...]:
    if value is None:
        problems.append(("subscriptions", "at least one [[subscriptions]] entry is required"))
        return ()
    if not isinstance(value, list) or not value:
        problems.append(("subscriptions", "expected a non-empty array of tables [[subscriptions]]"))
        return ()
    result: list[Subscription] = []
    names: set[str] = set()
    for i, entry in enumerate(value):
        prefix = f"subscriptions[{i}]"
        if not isinstance(entry, dict):
            problems.append((prefix, "expected a table"))
            continue
        r = Reader(entry, prefix, problems)
        name = r.get("name", "string", None, required=True)
        if name is not None:
            r.prefix = f"subscriptions[{i}] ({name})"
            if not _NAME.match(name):
                r.fail("name", f"{name!r} must match [A-Za-z0-9_-]+")
            elif name in names:
                r.fail("name", f"{name!r} is used twice")
            names.add(name)
        query = r.get("query", "table", None, required=True)
        invalid = validate_query(query) if query is not None else []
        for problem in invalid:
            r.fail("query", problem)
        r.unknown()
        if name is not None and query is not None and not invalid:
            # Here, once: the subscribe message and backfill's REST queries both read sub.query.
            sent, notes = counter_clockwise(query)
            result.append(Subscription(name, sent, tuple(notes)))
    return tuple(result)


def _sink(tbl: Mapping[str, Any], problems: list[tuple[str, str]]) -> SinkConfig:
    r = Reader(tbl, "sink", problems)
    d = SinkConfig()
    url = r.get("url", "string", d.url)
    options = r.get("storage_options", "table", {})
    compression = r.get("compression", "string", d.compression)
    if compression not in COMPRESSIONS:
        r.fail("compression", f"expected one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    level = r.get("compression_level", "positive integer", None)
    rows = r.get("row_group_rows", "positive integer", d.row_group_rows)
    attempts = r.get("max_attempts", "positive integer", d.max_attempts)
    r.unknown()
    return SinkConfig(url, options, compression, level, rows, attempts)


def _state(tbl: Mapping[str, Any], problems: list[tuple[str, str]]) -> StateConfig:
    r = Reader(tbl, "state", problems)
    d = StateConfig()
    directory = r.get("dir", "string", str(d.dir))
    writer_id = r.get("writer_id", "string", None)
    if writer_id is not None and not _NAME.match(writer_id):
        r.fail("writer_id", f"{writer_id!r} must match [A-Za-z0-9_-]+")
    fsync = r.get("fsync_seconds", "non-negative number", d.fsync_seconds)
    spool = r.get("max_spool_bytes", "positive integer", d.max_spool_bytes)
    segment = r.get("segment_bytes", "positive integer", d.segment_bytes)
    if isinstance(spool, int) and isinstance(segment, int) and spool < 2 * segment:
        # A segment is released only when wholly committed: with less than two segments of
        # room the spool could never make room again and would drop every frame.
        r.fail("max_spool_bytes", f"{spool} must be at least twice segment_bytes ({segment})")
    r.unknown()
    return StateConfig(_resolve(directory), writer_id, fsync, spool, segment)


def _resolve(value: str) -> Path:
    """Relative paths stay relative: to the working directory, as fsspec treats sink.url."""
    return Path(value).expanduser()
