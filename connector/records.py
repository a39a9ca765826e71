"""Observation JSON <-> rows of the fixed schema, losslessly. Pure: no I/O.

Typed columns hold what they can hold exactly; anything else (unknown fields, explicit nulls,
non-canonical timestamp spellings, property lists a map cannot represent) goes verbatim into the
`extra` JSON column, so the original object can be rebuilt from a row (the tests' oracle does).

This is the general path: `columnar` sends here only what its fast path cannot hold exactly.
Nothing an observation contains may raise out of here: what does not fit is `Rejected`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import pyarrow as pa

from connector import wire
from connector.schema import SCHEMA
from connector.timeparse import parse_timestamp_ns, parse_z

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


_split_decoder = wire.raw_frame_decoder
_observation_decoder = wire.observation_decoder
_UNDECODABLE = wire.UNDECODABLE
_Observation = wire.Observation
_Field = wire.Field


@dataclass(frozen=True, slots=True)
class FrameMeta:
    """What the connector knew about a frame when it arrived."""

    seq: int
    received_at_us: int
    subscription: str
    subscription_id: str | None
    origin: str
    # A huge frame is converted in parts: where this part's observations start in the frame.
    first_index: int = 0


@dataclass(frozen=True, slots=True)
class Rejected:
    """An observation (or frame) that does not fit the schema, with the verbatim JSON text."""

    seq: int
    received_at_us: int
    subscription: str | None
    reason: str
    payload: bytes
    index: int | None = None


_Pairs = tuple[list[str], list[bytes]]  # keys, JSON-text values


class _MapBuilder:
    """A map column as flat keys/values plus row offsets: far cheaper than Python pairs."""

    __slots__ = ("keys", "offsets", "values")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.values: list[bytes] = []
        self.offsets: list[int | None] = []

    def add(self, keys: list[str], values: list[bytes]) -> None:
        self.offsets.append(len(self.keys))
        self.keys += keys
        self.values += values

    def null(self) -> None:
        self.offsets.append(None)

    def add_or_null(self, pairs: _Pairs | None) -> None:
        if pairs is None:
            self.null()
        else:
            self.add(*pairs)

    def build(self) -> pa.Array:
        offsets = pa.array([*self.offsets, len(self.keys)], type=pa.int32())
        return pa.MapArray.from_arrays(
            offsets, pa.array(self.keys, pa.string()), pa.array(self.values, pa.string())
        )


_ABSENT = object()


class Columns:
    """Column builders filled observation by observation; one Arrow table per cut."""

    def __init__(self) -> None:
        self.rejected: list[Rejected] = []
        self._source: list[str] = []
        self._collection: list[str] = []
        self._spec: list[str] = []
        self._track: list[str] = []
        self._ts: list[int] = []
        self._lon: list[float] = []
        self._lat: list[float] = []
        self._elev: list[float | None] = []
        self._name: list[str | None] = []
        self._static = _MapBuilder()
        self._live = _MapBuilder()
        self._style: list[bytes | None] = []
        self._extra: list[bytes | None] = []
        self._runs: list[tuple[FrameMeta, int]] = []  # frame metadata, rows it added

    @property
    def rows(self) -> int:
        return len(self._ts)

    def add_frame(self, meta: FrameMeta, raw: bytes) -> None:
        try:
            observations = _split_decoder.decode(raw).observations
        except _UNDECODABLE:
            self.rejected.append(
                Rejected(meta.seq, meta.received_at_us, meta.subscription, "bad data frame", raw)
            )
            return
        self.add_observations(meta, enumerate(observations))

    def add_observations(
        self, meta: FrameMeta, items: Iterable[tuple[int, msgspec.Raw | bytes]]
    ) -> None:
        """Append these observations of one frame (index in the frame, verbatim JSON)."""
        before = len(self._ts)
        for index, text in items:
            problem = self._add_text(text)
            if problem is not None:
                self.rejected.append(
                    Rejected(
                        meta.seq,
                        meta.received_at_us,
                        meta.subscription,
                        problem,
                        bytes(text),
                        index + meta.first_index,
                    )
                )
        self._runs.append((meta, len(self._ts) - before))

    def _add_text(self, text: msgspec.Raw | bytes) -> str | None:
        try:
            try:
                return self._add_typed(_observation_decoder.decode(text))
            except (msgspec.ValidationError, _NotExact):
                return self._add(msgspec.json.decode(text))
        except _UNDECODABLE as exc:
            # Invalid UTF-8, numbers beyond float64, nesting deeper than the decoder allows.
            return f"undecodable observation: {type(exc).__name__}"
        except Exception as exc:  # one observation must never fail its cut
            return f"observation cannot be converted: {type(exc).__name__}"

    def _add_typed(self, obs: _Observation) -> str | None:
        """Fast path for a documented-shape observation; raises _NotExact to defer to `_add`."""
        ts = obs.timestamp
        parsed = _timestamp(ts)
        if parsed is None:
            return "timestamp is missing or not ISO-8601 with a zone"
        us, canonical = parsed
        extra: dict[str, Any] | None = None if canonical else {"timestamp": ts}
        pos = obs.position
        lon, lat = _float(pos.longitude), _float(pos.latitude)
        if lon is None or lat is None:
            return "position is missing or has no numeric longitude/latitude"
        elevation: float | None = None
        if pos.elevation is not msgspec.UNSET:
            if type(pos.elevation) is not float:
                raise _NotExact  # an int elevation: the general path decides what is exact
            elevation = pos.elevation
        static = _typed_properties(obs.staticProperties)
        live = _typed_properties(obs.liveProperties)
        name = obs.name
        if name is None:  # explicit null, unlike an absent name
            extra = extra or {}
            extra["name"] = None
        style = None if isinstance(obs.style, msgspec.UnsetType) else bytes(obs.style)
        verbatim = [*(static[1] if static else ()), *(live[1] if live else ()), style or b""]
        try:  # verbatim JSON text is not checked by the decoder: it must be UTF-8 to land
            b"".join(verbatim).decode("utf-8")
        except UnicodeDecodeError:
            return "undecodable observation: text is not UTF-8"
        self._append(
            (obs.sourceSystemId, obs.collectionId, obs.observationSpecId, obs.trackId),
            (us, lon, lat, elevation),
            None if isinstance(name, msgspec.UnsetType) else name,
            static,
            live,
            style,
            extra,
        )
        return None

    def _add(self, obs: Any) -> str | None:
        # Everything that can reject is checked before the first append.
        if type(obs) is not dict:
            return "observation is not a JSON object"
        get = obs.get
        ids = (get("sourceSystemId"), get("collectionId"), get("observationSpecId"), get("trackId"))
        for (field_name, _), value in zip(_IDS, ids, strict=True):
            if type(value) is not str:
                return f"{field_name} is missing or not a string"
        ts = get("timestamp")
        parsed = _timestamp(ts) if type(ts) is str else None
        if parsed is None:
            return "timestamp is missing or not ISO-8601 with a zone"
        us, canonical = parsed
        pos = get("position")
        if type(pos) is not dict:
            return "position is missing or has no numeric longitude/latitude"
        lon, lat = _float(pos.get("longitude")), _float(pos.get("latitude"))
        if lon is None or lat is None:
            return "position is missing or has no numeric longitude/latitude"

        extra: dict[str, Any] = {}
        if len(obs) > len(_KNOWN) or not _KNOWN.issuperset(obs):
            extra = {k: v for k, v in obs.items() if k not in _KNOWN}
        if not canonical:
            extra["timestamp"] = ts  # keep the exact spelling (and any sub-microsecond digits)
        elevation = _float(pos.get("elevation"))
        if len(pos) != 2 + ("elevation" in pos) or ("elevation" in pos and elevation is None):
            extra["position"] = pos
        name = get("name")
        if (name is not None and type(name) is not str) or (name is None and "name" in obs):
            extra["name"] = name
            name = None
        style = get("style", _ABSENT)
        static = _properties(get("staticProperties", _ABSENT), "staticProperties", extra)
        live = _properties(get("liveProperties", _ABSENT), "liveProperties", extra)
        self._append(
            ids,  # type: ignore[arg-type]  # each checked to be a str above
            (us, lon, lat, elevation),
            name,
            static,
            live,
            None if style is _ABSENT else _json(style),
            extra,
        )
        return None

    def _append(
        self,
        ids: tuple[str, str, str, str],
        point: tuple[int, float, float, float | None],
        name: str | None,
        static: _Pairs | None,
        live: _Pairs | None,
        style: bytes | None,
        extra: dict[str, Any] | None,
    ) -> None:
        """The one place a row enters the builders (both paths validate before calling)."""
        # The steps that can raise come first, so a failing row leaves no partial append.
        extra_text = _json(extra) if extra else None
        keys = (*(static[0] if static else ()), *(live[0] if live else ()))
        # A lone surrogate (from a \\ud800 escape) is no UTF-8: UnicodeEncodeError, rejected.
        "".join((*ids, name or "", *keys)).encode("utf-8")
        self._source.append(ids[0])
        self._collection.append(ids[1])
        self._spec.append(ids[2])
        self._track.append(ids[3])
        self._ts.append(point[0])
        self._lon.append(point[1])
        self._lat.append(point[2])
        self._elev.append(point[3])
        self._name.append(name)
        self._static.add_or_null(static)
        self._live.add_or_null(live)
        self._style.append(style)
        self._extra.append(extra_text)

    def to_table(self) -> pa.Table:
        meta_columns: dict[str, list[Any]] = {
            "subscription": [],
            "subscription_id": [],
            "origin": [],
            "received_at": [],
            "seq": [],
        }
        for meta, count in self._runs:
            meta_columns["subscription"] += [meta.subscription] * count
            meta_columns["subscription_id"] += [meta.subscription_id] * count
            meta_columns["origin"] += [meta.origin] * count
            meta_columns["received_at"] += [meta.received_at_us] * count
            meta_columns["seq"] += [meta.seq] * count
        values: dict[str, Any] = {
            "source_system_id": self._source,
            "collection_id": self._collection,
            "observation_spec_id": self._spec,
            "track_id": self._track,
            "timestamp": self._ts,
            "longitude": self._lon,
            "latitude": self._lat,
            "elevation": self._elev,
            "name": self._name,
            "static_properties": self._static.build(),
            "live_properties": self._live.build(),
            "style": self._style,
            "extra": self._extra,
            **meta_columns,
        }
        arrays = [
            v if isinstance(v, pa.Array) else pa.array(v, type=f.type)
            for f, v in ((f, values[f.name]) for f in SCHEMA)
        ]
        return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _float(value: object) -> float | None:
    """A JSON number as the float64 that holds it exactly, else None (huge or inexact ints)."""
    if type(value) is float:
        return value
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        result = float(value)
    except OverflowError:
        return None
    return result if result == value else None


class _NotExact(Exception):
    """The fast path cannot represent this observation exactly; use the general path."""


def _typed_properties(fields: list[_Field] | msgspec.UnsetType) -> _Pairs | None:
    if isinstance(fields, msgspec.UnsetType):
        return None
    keys = [f.propertyType for f in fields]
    if len(set(keys)) != len(keys):
        raise _NotExact  # a repeated propertyType: the map cannot hold the list exactly
    return keys, [bytes(f.value) for f in fields]


def _properties(fields: Any, key: str, extra: dict[str, Any]) -> _Pairs | None:
    if fields is _ABSENT:
        return None
    if type(fields) is list:
        try:
            keys = [f["propertyType"] for f in fields]
            values = [_json(f["value"]) for f in fields]
            exact = (
                all(type(k) is str for k in keys)
                and all(len(f) == 2 for f in fields)
                and len(set(keys)) == len(keys)
            )
        except (KeyError, TypeError):
            exact = False
        if exact:
            return keys, values
    # Not representable as a map exactly: best-effort map, original kept verbatim in `extra`.
    extra[key] = fields
    if not isinstance(fields, list):
        return None
    keys, values, seen = [], [], set()
    for f in fields:
        if isinstance(f, dict) and isinstance(f.get("propertyType"), str):
            key = f["propertyType"]
            if key not in seen:
                seen.add(key)
                keys.append(key)
                values.append(_json(f.get("value")))
    return keys, values


def _timestamp(text: str) -> tuple[int, bool] | None:
    """(microseconds, canonical spelling) or None; the fast 'Z' path first."""
    parsed = parse_z(text)
    if parsed is not None:
        return parsed[0] // 1000, parsed[1]
    ns = parse_timestamp_ns(text)
    return None if ns is None else (ns // 1000, False)
