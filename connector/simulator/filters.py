"""Query validation and matching: the server's own reading of Gotham's filter language.

Matching semantics, chosen to be strict so a client that gets them wrong is caught:
- location: point-in-polygon (ray casting) on `position`; points exactly on an edge may go
  either way, so tests should not rely on them.
- time: start <= timestamp <= end, compared at nanosecond precision.
- property: some static or live property with that `propertyType` has a value equal, as JSON, to
  one of `values`: "12" never equals 12 and true never equals 1, but 12 equals 12.0 because JSON
  has a single number type.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

Error = dict[str, Any]

_KEYS = ("time", "location", "property")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TS = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})\Z"
)


def parse_ns(text: str) -> int | None:
    """Nanoseconds since the epoch for an ISO-8601 timestamp with a zone, else None."""
    m = _TS.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        dt = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None
    zone = m.group(8)
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        dt -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    delta = dt - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + int(
        (m.group(7) or "").ljust(9, "0")
    )


def _error(name: str, reason: str) -> Error:
    return {"error": "InvalidQuery", "args": [{"name": name, "value": reason}]}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def signed_area(coords: list[tuple[float, float]]) -> float:
    return 0.5 * sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in itertools.pairwise(coords))


def validate_query(query: object) -> list[Error]:
    """Every problem with a query as Gotham-style error items; empty when valid."""
    if not isinstance(query, dict):
        return [_error("query", "query must be a JSON object")]
    errors = [_error(f"query.{k}", "unknown query key") for k in query if k not in _KEYS]
    if "location" in query:
        errors += _validate_location(query["location"])
    if "time" in query:
        errors += _validate_time(query["time"])
    if "property" in query:
        errors += _validate_property(query["property"])
    return errors


def _validate_location(points: object) -> list[Error]:
    if not isinstance(points, list):
        return [_error("query.location", "location must be a list of points")]
    coords: list[tuple[float, float]] = []
    for i, p in enumerate(points):
        name = f"query.location[{i}]"
        if not isinstance(p, dict) or not all(
            _is_number(p.get(k)) for k in ("longitude", "latitude")
        ):
            return [_error(name, "point needs numeric longitude and latitude")]
        lon, lat = float(p["longitude"]), float(p["latitude"])
        if not -180.0 <= lon <= 180.0:
            return [_error(name, f"longitude {lon} outside [-180, 180]")]
        if not -90.0 <= lat <= 90.0:
            return [_error(name, f"latitude {lat} outside [-90, 90]")]
        coords.append((lon, lat))
    if len(coords) < 4:
        return [_error("query.location", f"polygon needs at least 4 points, got {len(coords)}")]
    if coords[0] != coords[-1]:
        return [_error("query.location", "polygon is not closed (first point != last point)")]
    if signed_area(coords) <= 0:
        return [_error("query.location", "polygon must be counter-clockwise")]
    return []


def _validate_time(value: object) -> list[Error]:
    if not isinstance(value, dict) or not value:
        return [_error("query.time", "time must be an object with start and/or end")]
    errors = [
        _error(f"query.time.{k}", "unknown time key") for k in value if k not in ("start", "end")
    ]
    bounds: dict[str, int] = {}
    for key in ("start", "end"):
        if key in value:
            raw = value[key]
            parsed = parse_ns(raw) if isinstance(raw, str) else None
            if parsed is None:
                errors.append(_error(f"query.time.{key}", f"not an ISO-8601 timestamp: {raw!r}"))
            else:
                bounds[key] = parsed
    if "start" in bounds and "end" in bounds and bounds["start"] > bounds["end"]:
        errors.append(_error("query.time", "start is after end"))
    return errors


def _validate_property(value: object) -> list[Error]:
    if not isinstance(value, dict):
        return [_error("query.property", "property must be an object")]
    errors = [
        _error(f"query.property.{k}", "unknown property key")
        for k in value
        if k not in ("property", "values")
    ]
    name = value.get("property")
    if not isinstance(name, str) or not name:
        errors.append(_error("query.property.property", "must be a non-empty string"))
    values = value.get("values")
    if not isinstance(values, list) or not values:
        errors.append(_error("query.property.values", "must be a non-empty list"))
    return errors


def json_equal(a: object, b: object) -> bool:
    if _is_number(a) and _is_number(b):
        return a == b
    return type(a) is type(b) and a == b


@dataclass(frozen=True)
class CompiledQuery:
    """A validated query prepared for matching many observations quickly."""

    polygon: tuple[tuple[float, float], ...] | None
    bbox: tuple[float, float, float, float] | None
    start_ns: int | None
    end_ns: int | None
    prop: str | None
    values: tuple[Any, ...]
    everything: bool

    @classmethod
    def of(cls, query: dict[str, Any]) -> CompiledQuery:
        polygon = bbox = None
        if "location" in query:
            polygon = tuple(
                (float(p["longitude"]), float(p["latitude"])) for p in query["location"]
            )
            lons, lats = [c[0] for c in polygon], [c[1] for c in polygon]
            bbox = (min(lons), min(lats), max(lons), max(lats))
        time = query.get("time") or {}
        prop = query.get("property")
        return cls(
            polygon=polygon,
            bbox=bbox,
            start_ns=parse_ns(time["start"]) if "start" in time else None,
            end_ns=parse_ns(time["end"]) if "end" in time else None,
            prop=prop["property"] if prop else None,
            values=tuple(prop["values"]) if prop else (),
            everything=not query,
        )

    def matches(self, obs: dict[str, Any], ts_ns: int | None = None) -> bool:
        if self.everything:
            return True
        if self.polygon is not None and not self._in_polygon(obs.get("position")):
            return False
        if self.start_ns is not None or self.end_ns is not None:
            if ts_ns is None:
                ts = obs.get("timestamp")
                ts_ns = parse_ns(ts) if isinstance(ts, str) else None
            if ts_ns is None:
                return False
            if (self.start_ns is not None and ts_ns < self.start_ns) or (
                self.end_ns is not None and ts_ns > self.end_ns
            ):
                return False
        if self.prop is not None:
            fields = (obs.get("staticProperties") or []) + (obs.get("liveProperties") or [])
            return any(
                isinstance(f, dict)
                and f.get("propertyType") == self.prop
                and any(json_equal(f.get("value"), v) for v in self.values)
                for f in fields
            )
        return True

    def _in_polygon(self, position: object) -> bool:
        if not isinstance(position, dict):
            return False
        lon, lat = position.get("longitude"), position.get("latitude")
        if not (_is_number(lon) and _is_number(lat)):
            return False
        x, y = float(lon), float(lat)  # type: ignore[arg-type]
        assert self.bbox is not None and self.polygon is not None
        if not (self.bbox[0] <= x <= self.bbox[2] and self.bbox[1] <= y <= self.bbox[3]):
            return False
        inside = False
        for (x1, y1), (x2, y2) in itertools.pairwise(self.polygon):
            if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
                inside = not inside
        return inside


def matches(query: dict[str, Any], observation: dict[str, Any]) -> bool:
    """Whether one observation satisfies a valid query, exactly as the server decides it."""
    return CompiledQuery.of(query).matches(observation)
