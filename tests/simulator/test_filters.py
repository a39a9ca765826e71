"""`matches` as tests use it to prove nothing was lost."""

from __future__ import annotations

from connector.simulator import matches, validate_query
from connector.simulator.filters import json_equal

OBS = {
    "position": {"longitude": -77.2, "latitude": 38.9},
    "timestamp": "2024-06-24T17:00:00.123456789Z",
    "staticProperties": [{"propertyType": "crew", "value": 12}],
    "liveProperties": [{"propertyType": "flag", "value": True}],
}
SQUARE = [
    {"longitude": -77.3, "latitude": 38.8},
    {"longitude": -77.1, "latitude": 38.8},
    {"longitude": -77.1, "latitude": 39.0},
    {"longitude": -77.3, "latitude": 39.0},
    {"longitude": -77.3, "latitude": 38.8},
]


def test_json_equality_is_exact_except_int_float() -> None:
    assert json_equal(12, 12.0) and not json_equal(12, "12") and not json_equal(True, 1)


def test_matches_each_clause() -> None:
    assert matches({}, OBS) and matches({"location": SQUARE}, OBS)
    moved = OBS | {"position": {"longitude": -77.0, "latitude": 38.9}}
    assert not matches({"location": SQUARE}, moved)
    assert matches({"time": {"start": "2024-06-24T17:00:00.123456789Z"}}, OBS)
    assert not matches({"time": {"start": "2024-06-24T17:00:00.12345679Z"}}, OBS)
    assert matches({"time": {"end": "2024-06-24T19:00:01+02:00"}}, OBS)
    assert matches({"property": {"property": "crew", "values": ["x", 12.0]}}, OBS)
    assert not matches({"property": {"property": "crew", "values": ["12"]}}, OBS)
    assert not matches({"property": {"property": "flag", "values": [1]}}, OBS)
    assert validate_query({"location": SQUARE, "time": {"start": "2024-01-01T00:00:00Z"}}) == []
