"""Query validation and the per-observation matching used to filter backfilled data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from connector.query import (
    CLOCKWISE_NOTE,
    counter_clockwise,
    matches,
    point_in_polygon,
    signed_area,
    validate_query,
)

CASES = Path(__file__).resolve().parents[1] / "cases"
SQUARE = [
    {"longitude": 0.0, "latitude": 0.0},
    {"longitude": 10.0, "latitude": 0.0},
    {"longitude": 10.0, "latitude": 10.0},
    {"longitude": 0.0, "latitude": 10.0},
    {"longitude": 0.0, "latitude": 0.0},
]


def obs(lon: float = 5.0, lat: float = 5.0, ts: str = "2024-06-24T17:00:00Z", **kw: Any) -> Any:
    return {"position": {"longitude": lon, "latitude": lat}, "timestamp": ts, **kw}


def test_empty_query_is_valid_and_matches_everything() -> None:
    assert validate_query({}) == []
    assert matches({}, obs())
    assert matches({}, {})


def test_golden_polygons() -> None:
    path = CASES / "subscribe_polygon.json"
    seed = CASES / "subscribe_seed_polygon.json"
    if not (path.is_file() and seed.is_file()):
        pytest.skip("golden frames not present yet")
    assert validate_query(json.loads(path.read_text())["query"]) == []
    # Palantir's websocket example is clockwise: valid, and sent reversed.
    seed_query = json.loads(seed.read_text())["query"]
    assert validate_query(seed_query) == []
    assert counter_clockwise(seed_query)[1] == [CLOCKWISE_NOTE]


@pytest.mark.parametrize(
    ("query", "problems"),
    [
        ([], ["query must be a table/object"]),
        ({"where": 1}, ["unknown key 'where' (expected time, location, property)"]),
        ({"location": {}}, ["location must be a list of {longitude, latitude} points"]),
        (
            {"location": [{"longitude": "1", "latitude": 0}, {"longitude": True, "latitude": 0}]},
            [
                "location[0] must have numeric longitude and latitude",
                "location[1] must have numeric longitude and latitude",
            ],
        ),
        (
            {"location": [{"longitude": float("nan"), "latitude": 0}]},
            ["location[0] must have numeric longitude and latitude"],
        ),
        (
            {"location": [{"longitude": -180.5, "latitude": -90.5}]},
            [
                "location[0].longitude -180.5 is outside [-180, 180]",
                "location[0].latitude -90.5 is outside [-90, 90]",
            ],
        ),
        (
            {"location": SQUARE[:3] + SQUARE[:1]},
            [],  # a triangle: 4 points with the closing one is enough
        ),
        (
            {"location": SQUARE[:4]},
            ["location polygon is not closed (first point must equal last point)"],
        ),
        ({"location": list(reversed(SQUARE))}, []),  # clockwise: reversed, not refused
        (
            {"location": list(reversed(SQUARE))[:4]},
            ["location polygon is not closed (first point must equal last point)"],
        ),
        (
            {"location": [SQUARE[0], SQUARE[1], SQUARE[1], SQUARE[0]]},
            ["location polygon has zero area"],
        ),
        (
            {"location": [SQUARE[0], SQUARE[1], SQUARE[2], SQUARE[1], SQUARE[0]]},
            ["location polygon has zero area"],  # there and back: no inside
        ),
        ({"time": {}}, ["time must be a table with start and/or end"]),
        ({"time": {"start": "2024-01-01T00:00:00Z", "until": 1}}, ["time has unknown key 'until'"]),
        ({"time": {"end": 5}}, ["time.end 5 is not an ISO-8601 UTC timestamp (…Z)"]),
        ({"time": {"start": "2024-01-01T00:00:00Z", "end": "2024-01-01T00:00:00Z"}}, []),
        (
            {"time": {"start": "2024-01-01T00:00:00.000001Z", "end": "2024-01-01T00:00:00Z"}},
            ["time.start is after time.end"],
        ),
        ({"property": {"property": "crew", "values": [12, "12"]}}, []),
        ({"property": "crew"}, ["property must be a table with property and values"]),
        (
            {"property": {"property": "", "values": 12, "x": 1}},
            [
                "property has unknown key 'x'",
                "property.property must be a non-empty string",
                "property.values must be a non-empty list",
            ],
        ),
    ],
)
def test_validate(query: Any, problems: list[str]) -> None:
    assert validate_query(query) == problems


def test_signed_area_orientation() -> None:
    coords = [(p["longitude"], p["latitude"]) for p in SQUARE]
    assert signed_area(coords) == 100.0
    assert signed_area(list(reversed(coords))) == -100.0


def area(query: dict[str, Any]) -> float:
    return signed_area([(p["longitude"], p["latitude"]) for p in query["location"]])


# The seed page's clockwise example, a clockwise concave "U", and a clockwise triangle.
CLOCKWISE = [
    json.loads((CASES / "subscribe_seed_polygon.json").read_text())["query"]["location"],
    [
        {"longitude": x, "latitude": y}
        for x, y in [(0, 0), (0, 3), (1, 3), (1, 1), (2, 1), (2, 3), (3, 3), (3, 0), (0, 0)]
    ],
    [SQUARE[0], SQUARE[2], SQUARE[1], SQUARE[0]],
]


@pytest.mark.parametrize("ring", CLOCKWISE)
def test_clockwise_ring_is_reversed_to_the_same_area(ring: list[dict[str, float]]) -> None:
    query = {"location": ring, "time": {"start": "2024-01-01T00:00:00Z"}}
    assert area(query) < 0
    sent, notes = counter_clockwise(query)
    assert notes == [CLOCKWISE_NOTE]
    assert area(sent) == pytest.approx(-area(query), rel=1e-12)
    assert sent["location"] == ring[::-1]  # the same points, closed at the same one
    assert sent["time"] == query["time"]  # the rest of the query is untouched
    assert validate_query(sent) == []
    assert counter_clockwise(sent) == (sent, [])  # idempotent
    assert query["location"] == ring  # pure: the caller's query is not changed


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"location": SQUARE},
        {"location": CLOCKWISE[0][::-1]},
        {"time": {"end": "2024-01-01T00:00:00Z"}},
    ],
)
def test_counter_clockwise_leaves_what_needs_no_reversal(query: dict[str, Any]) -> None:
    assert counter_clockwise(query) == (query, [])


def test_reversal_keeps_what_matches() -> None:
    clockwise = {"location": CLOCKWISE[1]}
    sent = counter_clockwise(clockwise)[0]
    for lon, lat in [(0.5, 2.5), (2.5, 2.5), (1.5, 2.5), (1.5, 0.5), (4, 1)]:
        assert matches(sent, obs(lon, lat)) is matches(clockwise, obs(lon, lat))


@pytest.mark.parametrize(
    ("lon", "lat", "inside"),
    [
        (5, 5, True),
        (0.001, 9.999, True),
        (-0.001, 5, False),
        (10.001, 5, False),
        (5, 10.5, False),
        (5, -1, False),
        (50, 50, False),
    ],
)
def test_polygon_inside_outside(lon: float, lat: float, inside: bool) -> None:
    assert matches({"location": SQUARE}, obs(lon, lat)) is inside
    coords = [(p["longitude"], p["latitude"]) for p in SQUARE]
    assert point_in_polygon(lon, lat, coords) is inside


def test_concave_polygon_notch_is_outside() -> None:
    # A "U": the notch between the arms is outside although inside the bounding box.
    u = [(0, 0), (3, 0), (3, 3), (2, 3), (2, 1), (1, 1), (1, 3), (0, 3), (0, 0)]
    location = [{"longitude": x, "latitude": y} for x, y in u]
    assert validate_query({"location": location}) == []
    assert matches({"location": location}, obs(0.5, 2.5))
    assert matches({"location": location}, obs(2.5, 2.5))
    assert not matches({"location": location}, obs(1.5, 2.5))


def test_location_needs_a_numeric_position() -> None:
    assert not matches({"location": SQUARE}, {"timestamp": "2024-06-24T17:00:00Z"})
    assert not matches({"location": SQUARE}, {"position": {"longitude": "5", "latitude": 5}})


def test_time_bounds_are_inclusive_and_compare_instants() -> None:
    q = {"time": {"start": "2024-06-24T17:00:00Z", "end": "2024-06-24T18:00:00Z"}}
    assert matches(q, obs(ts="2024-06-24T17:00:00Z"))
    assert matches(q, obs(ts="2024-06-24T18:00:00.000000Z"))
    assert matches(q, obs(ts="2024-06-24T19:30:00+01:30"))  # 18:00Z
    assert not matches(q, obs(ts="2024-06-24T18:00:00.000001Z"))
    assert not matches(q, obs(ts="2024-06-24T16:59:59.999999Z"))
    assert not matches(q, obs(ts="not a time"))
    assert not matches(q, {"position": {"longitude": 1, "latitude": 1}})
    assert matches({"time": {"start": "2024-01-01T00:00:00Z"}}, obs(ts="2999-01-01T00:00:00Z"))
    assert not matches({"time": {"end": "2024-01-01T00:00:00Z"}}, obs(ts="2024-01-02T00:00:00Z"))


def prop(field: str, value: Any, where: str = "liveProperties") -> Any:
    return obs(**{where: [{"propertyType": field, "value": value}]})


@pytest.mark.parametrize(
    ("wanted", "value", "hit"),
    [
        ([12], 12, True),
        ([12], 12.0, True),  # JSON numbers: 12 and 12.0 are the same number
        ([12], "12", False),  # Long/Decimal travel as strings: "12" is not 12
        (["12"], 12, False),
        (["12"], "12", True),
        ([1], True, False),  # true is not 1
        ([True], 1, False),
        ([True], True, True),
        (["a", "b", 3], "b", True),
        (["a", "b", 3], "c", False),
        ([None], None, True),
    ],
)
def test_property_any_of_with_json_equality(wanted: list[Any], value: Any, hit: bool) -> None:
    q = {"property": {"property": "crew", "values": wanted}}
    assert matches(q, prop("crew", value)) is hit
    assert matches(q, prop("crew", value, "staticProperties")) is hit


def test_property_must_be_the_named_one() -> None:
    q = {"property": {"property": "crew", "values": [12]}}
    assert not matches(q, prop("passengers", 12))
    assert not matches(q, obs())
    both = obs(
        staticProperties=[{"propertyType": "crew", "value": "x"}],
        liveProperties=["junk", {"propertyType": "crew", "value": 12}],
    )
    assert matches(q, both)


def test_all_parts_must_match() -> None:
    q = {
        "location": SQUARE,
        "time": {"start": "2024-06-24T00:00:00Z"},
        "property": {"property": "crew", "values": [12]},
    }
    good = obs(5, 5, liveProperties=[{"propertyType": "crew", "value": 12}])
    assert matches(q, good)
    assert not matches(q, {**good, "position": {"longitude": 50, "latitude": 5}})
    assert not matches(q, {**good, "timestamp": "2023-06-24T00:00:00Z"})
    assert not matches(q, {**good, "liveProperties": []})
