"""Observation JSON <-> rows of the fixed schema, losslessly. Pure: no I/O.

Typed columns hold what they can hold exactly; anything else (unknown fields, explicit nulls,
non-canonical timestamp spellings, property lists a map cannot represent) goes verbatim into the
`extra` JSON column, so `row_to_observation` rebuilds the original object.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import pyarrow as pa

from connector.schema import SCHEMA
from connector.timeparse import format_us, parse_timestamp_ns

_KNOWN = {
    "sourceSystemId",
    "collectionId",
    "observationSpecId",
    "trackId",
    "position",
    "timestamp",
    "name",
    "staticProperties",
    "liveProperties",
    "style",
}
_IDS = (
    ("sourceSystemId", "source_system_id"),
    ("collectionId", "collection_id"),
    ("observationSpecId", "observation_spec_id"),
    ("trackId", "track_id"),
)
_json = msgspec.json.encode
_frame_decoder = msgspec.json.Decoder()


class _DataFrame(msgspec.Struct):
    observations: list[msgspec.Raw]


@dataclass(frozen=True, slots=True)
class FrameMeta:
    """What the connector knew about a frame when it arrived."""

    seq: int
    received_at_us: int
    subscription: str
    subscription_id: str | None
    origin: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """An observation (or frame) that does not fit the schema, with the verbatim JSON text."""

    seq: int
    received_at_us: int
    subscription: str | None
    reason: str
    payload: bytes
    index: int | None = None


@dataclass
class Columns:
    """Column lists being filled; turned into one Arrow table per cut."""

    data: dict[str, list[Any]] = field(default_factory=lambda: {f.name: [] for f in SCHEMA})
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.data["seq"])

    def add_frame(self, meta: FrameMeta, raw: bytes) -> None:
        try:
            frame = _frame_decoder.decode(raw)
            observations = frame["observations"]
            if not isinstance(observations, list):
                raise TypeError
        except (msgspec.DecodeError, KeyError, TypeError):
            self.rejected.append(
                Rejected(meta.seq, meta.received_at_us, meta.subscription, "bad data frame", raw)
            )
            return
        bad: list[tuple[int, str]] = []
        for index, obs in enumerate(observations):
            problem = self.add_observation(meta, obs)
            if problem is not None:
                bad.append((index, problem))
        if bad:
            # Only now pay for a second decode, to keep the rejected observations byte-exact.
            verbatim = msgspec.json.decode(raw, type=_DataFrame).observations
            for index, reason in bad:
                self.rejected.append(
                    Rejected(
                        meta.seq,
                        meta.received_at_us,
                        meta.subscription,
                        reason,
                        bytes(verbatim[index]),
                        index,
                    )
                )

    def add_observation(self, meta: FrameMeta, obs: Any) -> str | None:
        """Append one observation; returns why it does not fit, or None."""
        row, problem = observation_to_row(obs)
        if row is None:
            return problem
        d = self.data
        for key, value in row.items():
            d[key].append(value)
        d["subscription"].append(meta.subscription)
        d["subscription_id"].append(meta.subscription_id)
        d["origin"].append(meta.origin)
        d["received_at"].append(meta.received_at_us)
        d["seq"].append(meta.seq)
        return None

    def to_table(self) -> pa.Table:
        return pa.Table.from_arrays(
            [pa.array(self.data[f.name], type=f.type) for f in SCHEMA], schema=SCHEMA
        )


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _float(value: object) -> float | None:
    """A JSON number as the float64 that holds it exactly, else None (huge or inexact ints)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if result == value else None


def observation_to_row(obs: Any) -> tuple[dict[str, Any] | None, str]:
    """One observation dict -> row values for the typed columns (timestamps as int us)."""
    if not isinstance(obs, dict):
        return None, "observation is not a JSON object"
    row: dict[str, Any] = {}
    for wire, column in _IDS:
        value = obs.get(wire)
        if not isinstance(value, str):
            return None, f"{wire} is missing or not a string"
        row[column] = value
    ts = obs.get("timestamp")
    ns = parse_timestamp_ns(ts) if isinstance(ts, str) else None
    if ns is None:
        return None, "timestamp is missing or not ISO-8601 with a zone"
    pos = obs.get("position")
    lon = _float(pos.get("longitude")) if isinstance(pos, dict) else None
    lat = _float(pos.get("latitude")) if isinstance(pos, dict) else None
    if not isinstance(pos, dict) or lon is None or lat is None:
        return None, "position is missing or has no numeric longitude/latitude"
    extra: dict[str, Any] = {k: v for k, v in obs.items() if k not in _KNOWN}
    us = ns // 1000
    row["timestamp"] = us
    if format_us(us) != ts:
        extra["timestamp"] = ts
    row["longitude"] = lon
    row["latitude"] = lat
    row["elevation"] = _float(pos.get("elevation"))
    if len(pos) != 2 + ("elevation" in pos) or ("elevation" in pos and row["elevation"] is None):
        extra["position"] = pos
    name = obs.get("name")
    row["name"] = name if isinstance(name, str) else None
    if "name" in obs and not isinstance(name, str):
        extra["name"] = name
    for wire, column in (
        ("staticProperties", "static_properties"),
        ("liveProperties", "live_properties"),
    ):
        row[column] = _properties(obs, wire, extra)
    row["style"] = _json(obs["style"]).decode() if "style" in obs else None
    row["extra"] = _json(extra).decode() if extra else None
    return row, ""


def _properties(
    obs: dict[str, Any], wire: str, extra: dict[str, Any]
) -> list[tuple[str, str]] | None:
    if wire not in obs:
        return None
    fields = obs[wire]
    if not isinstance(fields, list):
        extra[wire] = fields
        return None
    entries: list[tuple[str, str]] = []
    seen: set[str] = set()
    exact = True
    for f in fields:
        if not isinstance(f, dict) or not isinstance(f.get("propertyType"), str):
            exact = False
            continue
        key = f["propertyType"]
        if key in seen or len(f) != 2 or "value" not in f:
            exact = False
        if key not in seen:
            seen.add(key)
            entries.append((key, _json(f.get("value")).decode()))
    if not exact:
        extra[wire] = fields
    return entries


def row_to_observation(row: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the original observation from a row (as read back from Parquet/DuckDB).

    `timestamp` may be a datetime or int microseconds; maps may be lists of pairs or dicts.
    """
    extra: dict[str, Any] = msgspec.json.decode(row["extra"]) if row.get("extra") else {}
    obs: dict[str, Any] = {wire: row[column] for wire, column in _IDS}
    ts = row["timestamp"]
    obs["timestamp"] = format_us(ts if isinstance(ts, int) else _datetime_us(ts))
    position: dict[str, Any] = {"longitude": row["longitude"], "latitude": row["latitude"]}
    if row.get("elevation") is not None:
        position["elevation"] = row["elevation"]
    obs["position"] = position
    if row.get("name") is not None:
        obs["name"] = row["name"]
    for wire, column in (
        ("staticProperties", "static_properties"),
        ("liveProperties", "live_properties"),
    ):
        entries = row.get(column)
        if entries is not None:
            pairs = entries.items() if isinstance(entries, dict) else entries
            obs[wire] = [{"propertyType": k, "value": msgspec.json.decode(v)} for k, v in pairs]
    if row.get("style") is not None:
        obs["style"] = msgspec.json.decode(row["style"])
    obs.update(extra)
    return obs


def _datetime_us(value: datetime) -> int:
    delta = value.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def build(frames: Iterable[tuple[FrameMeta, bytes]]) -> Columns:
    columns = Columns()
    for meta, raw in frames:
        columns.add_frame(meta, raw)
    return columns
