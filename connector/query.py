"""Gotham query JSON: offline validation (for `validate`), ring orientation (what is sent) and
matching (for backfill filtering).

Pure: no I/O. The simulator has its own independent copy of these rules on purpose.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

from connector.timeparse import parse_timestamp_us

_KEYS = {"time", "location", "property"}
CLOCKWISE_NOTE = (
    "location polygon is listed clockwise (as in Palantir's websocket example); it is sent "
    "reversed: counter-clockwise, same area"
)


def validate_query(query: object) -> list[str]:
    """Every problem with a query, as human sentences; empty when it is valid."""
    if not isinstance(query, dict):
        return ["query must be a table/object"]
    problems = [
        f"unknown key {k!r} (expected time, location, property)" for k in query if k not in _KEYS
    ]
    if "location" in query:
        problems += _validate_polygon(query["location"])
    if "time" in query:
        problems += _validate_time(query["time"])
    if "property" in query:
        problems += _validate_property(query["property"])
    return problems


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _validate_polygon(points: object) -> list[str]:
    if not isinstance(points, list):
        return ["location must be a list of {longitude, latitude} points"]
    problems: list[str] = []
    coords: list[tuple[float, float]] = []
    for i, p in enumerate(points):
        if (
            not isinstance(p, dict)
            or not _is_number(p.get("longitude"))
            or not _is_number(p.get("latitude"))
        ):
            problems.append(f"location[{i}] must have numeric longitude and latitude")
            continue
        lon, lat = float(p["longitude"]), float(p["latitude"])
        if not -180.0 <= lon <= 180.0:
            problems.append(f"location[{i}].longitude {lon} is outside [-180, 180]")
        if not -90.0 <= lat <= 90.0:
            problems.append(f"location[{i}].latitude {lat} is outside [-90, 90]")
        coords.append((lon, lat))
    if problems:
        return problems
    if len(coords) < 4:
        problems.append(
            f"location needs at least 4 points including the closing one, got {len(coords)}"
        )
    if coords and coords[0] != coords[-1]:
        problems.append("location polygon is not closed (first point must equal last point)")
    # Clockwise is not a problem: counter_clockwise() reverses the ring. No area is one.
    if len(coords) >= 4 and coords[0] == coords[-1] and signed_area(coords) == 0:
        problems.append("location polygon has zero area")
    return problems


def counter_clockwise(query: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A valid query with its location ring counter-clockwise, and a note when it was reversed.

    Gotham's search docs require counter-clockwise rings, while Palantir's own websocket example
    is clockwise. Reversing the points keeps the ring closed and its area, and flips the sign of
    the shoelace sum: what the user meant is sent in the form both readings of the docs accept.
    """
    location = query.get("location")
    if not isinstance(location, list) or signed_area(_coords(location)) >= 0:
        return dict(query), []
    return {**query, "location": list(reversed(location))}, [CLOCKWISE_NOTE]


def _coords(points: list[Any]) -> list[tuple[float, float]]:
    return [(float(p["longitude"]), float(p["latitude"])) for p in points]


def _validate_time(value: object) -> list[str]:
    if not isinstance(value, dict) or not value:
        return ["time must be a table with start and/or end"]
    problems = [f"time has unknown key {k!r}" for k in value if k not in ("start", "end")]
    bounds: dict[str, int] = {}
    for key in ("start", "end"):
        if key in value:
            raw = value[key]
            parsed = parse_timestamp_us(raw) if isinstance(raw, str) else None
            if parsed is None:
                problems.append(f"time.{key} {raw!r} is not an ISO-8601 UTC timestamp (…Z)")
            else:
                bounds[key] = parsed
    if "start" in bounds and "end" in bounds and bounds["start"] > bounds["end"]:
        problems.append("time.start is after time.end")
    return problems


def _validate_property(value: object) -> list[str]:
    if not isinstance(value, dict):
        return ["property must be a table with property and values"]
    problems = [f"property has unknown key {k!r}" for k in value if k not in ("property", "values")]
    name = value.get("property")
    if not isinstance(name, str) or not name:
        problems.append("property.property must be a non-empty string")
    values = value.get("values")
    if not isinstance(values, list) or not values:
        problems.append("property.values must be a non-empty list")
    return problems


def signed_area(coords: list[tuple[float, float]]) -> float:
    """Shoelace formula; positive means counter-clockwise."""
    return 0.5 * sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in itertools.pairwise(coords))


def point_in_polygon(lon: float, lat: float, coords: list[tuple[float, float]]) -> bool:
    inside = False
    for (x1, y1), (x2, y2) in itertools.pairwise(coords):
        if (y1 > lat) != (y2 > lat):
            x_cross = x1 + (lat - y1) * (x2 - x1) / (y2 - y1)
            if lon < x_cross:
                inside = not inside
    return inside


def matches(query: dict[str, Any], observation: dict[str, Any]) -> bool:
    """Whether one observation satisfies a (valid) query, with the stream's per-point semantics."""
    location = query.get("location")
    if location:
        pos = observation.get("position") or {}
        coords = _coords(location)
        lon, lat = pos.get("longitude"), pos.get("latitude")
        if not (isinstance(lon, int | float) and isinstance(lat, int | float)):
            return False
        if not point_in_polygon(float(lon), float(lat), coords):
            return False
    time = query.get("time")
    if time:
        ts = observation.get("timestamp")
        at = parse_timestamp_us(ts) if isinstance(ts, str) else None
        if at is None:
            return False
        start = parse_timestamp_us(time["start"]) if "start" in time else None
        end = parse_timestamp_us(time["end"]) if "end" in time else None
        if (start is not None and at < start) or (end is not None and at > end):
            return False
    prop = query.get("property")
    if prop:
        wanted = prop.get("values", [])
        fields = (observation.get("staticProperties") or []) + (
            observation.get("liveProperties") or []
        )
        return any(
            isinstance(f, dict)
            and f.get("propertyType") == prop.get("property")
            and _json_eq(f.get("value"), wanted)
            for f in fields
        )
    return True


def _json_eq(value: object, wanted: list[Any]) -> bool:
    # JSON equality: True is not 1 and "12" is not 12.
    return any(type(value) is type(w) and value == w for w in wanted) or (
        _is_number(value) and any(_is_number(w) and w == value for w in wanted)
    )
