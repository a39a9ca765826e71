"""The compiled scanner (`connector._native` via `connector.native`): what it keeps, what it
leaves to the general path and why, and that what it keeps is exactly what the JSON says.

`test_columnar.py` holds the whole conversion to the general path's output (the differential
test); here each routing decision is pinned on its own, with Python's `json` as the oracle.
"""

from __future__ import annotations

import json
import math
import struct
from datetime import datetime
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector import native
from connector.records import FrameMeta
from connector.schema import SCHEMA


def _obs(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sourceSystemId": "src",
        "collectionId": "col",
        "observationSpecId": "spec",
        "trackId": "track-1",
        "position": {"longitude": -77.05, "latitude": 38.9, "elevation": 12.5},
        "timestamp": "2024-06-24T17:00:00.123456Z",
        "name": "VESSEL",
        "staticProperties": [{"propertyType": "mmsi", "value": "366001"}],
        "liveProperties": [{"propertyType": "speed", "value": 12.5}],
        "style": {"color": "red"},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def _frame(*observations: Any) -> bytes:
    return json.dumps(
        {"type": "data", "id": "sub-1", "observations": list(observations)}, ensure_ascii=False
    ).encode()


def test_a_documented_frame_is_kept_whole_with_its_values() -> None:
    observations = [_obs(trackId=f"t{i}", name=None if i == 1 else f"n{i}") for i in range(3)]
    observations[2] = _obs(trackId="t2", name=_DROP, style=_DROP, liveProperties=_DROP)
    scanned = native.scan([_frame(*observations)])
    assert (scanned.rows, scanned.counts, scanned.odd) == (3, [3], [])
    columns = {name: array.to_pylist() for name, array in scanned.columns.items()}
    assert columns["track_id"] == ["t0", "t1", "t2"]
    assert columns["name"] == ["n0", None, None]
    assert columns["extra"] == [None, '{"name":null}', None]  # explicit null, not absent
    assert columns["longitude"] == [o["position"]["longitude"] for o in observations]
    assert columns["elevation"] == [12.5, 12.5, 12.5]
    assert columns["live_properties"] == [[("speed", "12.5")], [("speed", "12.5")], None]
    assert columns["static_properties"][0] == [("mmsi", '"366001"')]  # the JSON text
    assert columns["style"] == ['{"color": "red"}', '{"color": "red"}', None]


def test_the_table_has_the_schema_and_the_frame_columns() -> None:
    frames = [_frame(_obs(), _obs(trackId="b")), _frame(_obs(trackId="c"))]
    metas = [
        (FrameMeta(7, 1_000_000, "east", "sub-1", "stream"), frames[0]),
        (FrameMeta(8, 2_000_000, "west", None, "backfill"), frames[1]),
    ]
    table = native.table(native.scan(frames), metas)
    assert table is not None
    assert table.schema.equals(SCHEMA, check_metadata=True)
    assert table["seq"].to_pylist() == [7, 7, 8]
    assert table["subscription"].to_pylist() == ["east", "east", "west"]
    assert table["subscription_id"].to_pylist() == ["sub-1", "sub-1", None]
    assert table["timestamp"][0].value == 1719248400123456


def test_escapes_in_text_are_decoded_as_json_decodes_them() -> None:
    raw = (
        b'{"observations":[{"sourceSystemId":"caf\\u00e9 \\ud83d\\ude00","collectionId":"a\\tb",'
        b'"observationSpecId":"q\\"\\\\\\/","trackId":"nul\\u0000","position":{"longitude":1.5,'
        b'"latitude":2.5},"timestamp":"2024-06-24T17:00:00Z","liveProperties":'
        b'[{"propertyType":"k\\u00e9y","value":"v\\u00e9"}]}]}'
    )
    expected = json.loads(raw)["observations"][0]
    scanned = native.scan([raw])
    assert scanned.counts == [1]
    got = {name: array.to_pylist()[0] for name, array in scanned.columns.items()}
    assert got["source_system_id"] == expected["sourceSystemId"]
    assert got["collection_id"] == expected["collectionId"]
    assert got["observation_spec_id"] == expected["observationSpecId"]
    assert got["track_id"] == expected["trackId"]
    # The key is decoded; the value is kept as its verbatim JSON text, escapes and all.
    assert got["live_properties"] == [("k\u00e9y", '"v\\u00e9"')]


LEFT_TO_THE_GENERAL_PATH = {
    "integer coordinate": _obs(position={"longitude": -77, "latitude": 38.9}),
    "integer elevation": _obs(position={"longitude": -77.5, "latitude": 38.9, "elevation": 0}),
    "unknown field": _obs(speed=3),
    "unknown position field": _obs(position={"longitude": 1.5, "latitude": 1.5, "x": 1}),
    "unknown property field": _obs(liveProperties=[{"propertyType": "a", "value": 1, "u": 2}]),
    "missing timestamp": _obs(timestamp=_DROP),
    "missing latitude": _obs(position={"longitude": 1.5}),
    "missing value": _obs(liveProperties=[{"propertyType": "a"}]),
    "explicit null id": _obs(trackId=None),
    "explicit null list": _obs(liveProperties=None),
    "id not a string": _obs(trackId=5),
    "name not a string": _obs(name=5),
    "zone other than Z": _obs(timestamp="2024-06-24T17:00:00+01:00"),
    "no such day": _obs(timestamp="2023-02-29T00:00:00Z"),
    "no such century leap day": _obs(timestamp="1900-02-29T00:00:00Z"),
    "hour 24": _obs(timestamp="2024-06-24T24:00:00Z"),
    "year 0": _obs(timestamp="0000-06-24T10:00:00Z"),
    "ten fraction digits": _obs(timestamp="2024-06-24T17:00:00.1234567891Z"),
    "repeated propertyType": _obs(
        staticProperties=[{"propertyType": "a", "value": 1}, {"propertyType": "a", "value": 2}]
    ),
    "65 properties": _obs(
        liveProperties=[{"propertyType": f"p{i}", "value": i} for i in range(65)]
    ),
    "not an object": [1, 2],
    "empty object": {},
}


@pytest.mark.parametrize("case", list(LEFT_TO_THE_GENERAL_PATH))
def test_what_it_cannot_hold_exactly_is_left_out_with_its_span(case: str) -> None:
    odd = LEFT_TO_THE_GENERAL_PATH[case]
    raw = _frame(_obs(trackId="before"), odd, _obs(trackId="after"))
    scanned = native.scan([raw])
    assert scanned.counts == [2]
    assert scanned.columns["track_id"].to_pylist() == ["before", "after"]
    [(frame, index, start, end)] = scanned.odd
    assert (frame, index) == (0, 1)
    assert json.loads(raw[start:end]) == json.loads(json.dumps(odd))


@pytest.mark.parametrize("spelling", [b"1e400", b"-1e400", b"1" * 600 + b".5"])
def test_a_coordinate_beyond_float64_or_spelled_very_long_is_left_out(spelling: bytes) -> None:
    raw = _frame(_obs()).replace(b"-77.05", spelling)
    assert native.scan([raw]).counts == [0]


def test_a_key_spelled_with_an_escape_is_left_out() -> None:
    raw = _frame(_obs()).replace(b'"trackId"', b'"track\\u0049d"')
    assert json.loads(raw)["observations"][0]["trackId"] == "track-1"
    scanned = native.scan([raw])
    assert (scanned.counts, len(scanned.odd)) == ([0], 1)


def test_leap_days_that_exist_are_kept() -> None:
    stamps = ["2024-02-29T00:00:00Z", "2000-02-29T23:59:59.5Z", "0001-01-01T00:00:00Z"]
    scanned = native.scan([_frame(*(_obs(timestamp=s) for s in stamps))])
    assert scanned.counts == [3]
    assert scanned.columns["timestamp"].to_pylist() == [_utc(s) for s in stamps]


def _utc(stamp: str) -> datetime:
    """The oracle: the standard library's reading, digits past the sixth dropped."""
    head, _, fraction = stamp.removesuffix("Z").partition(".")
    micros = int(fraction[:6].ljust(6, "0")) if fraction else 0
    return datetime.fromisoformat(head + "+00:00").replace(microsecond=micros)


# (spelling, kept in `extra`): kept when format_us would spell the instant differently.
STAMPS = [
    ("2024-06-24T17:00:00Z", False),
    ("2024-06-24T17:00:00.5Z", False),
    ("2024-06-24T17:00:00.123456Z", False),
    ("2024-06-24T17:00:00.120Z", True),
    ("2024-06-24T17:00:00.0Z", True),
    ("2024-06-24T17:00:00.1234567Z", True),
    ("2024-06-24T17:00:00.999999999Z", True),
    ("1969-12-31T23:59:59.999999Z", False),
    ("1900-03-01T00:00:00.000001Z", False),
    ("0001-01-01T00:00:00Z", False),
    ("9999-12-31T23:59:59.999999Z", False),
    ("2100-02-28T12:34:56.7Z", False),
]


def test_timestamps_are_read_as_the_standard_library_reads_them() -> None:
    stamps = [s for s, _ in STAMPS]
    scanned = native.scan([_frame(*(_obs(timestamp=s) for s in stamps))])
    assert scanned.counts == [len(stamps)]
    assert scanned.columns["timestamp"].to_pylist() == [_utc(s) for s in stamps]
    assert scanned.columns["extra"].to_pylist() == [
        json.dumps({"timestamp": s}, separators=(",", ":")) if kept else None for s, kept in STAMPS
    ]


def test_extra_holds_a_kept_spelling_then_an_explicit_null_name() -> None:
    stamp = "2024-06-24T17:00:00.120Z"
    scanned = native.scan([_frame(_obs(timestamp=stamp, name=None))])
    [text] = scanned.columns["extra"].to_pylist()
    assert list(json.loads(text).items()) == [("timestamp", stamp), ("name", None)]


def test_a_timestamp_spelled_with_escapes_is_read_decoded() -> None:
    raw = _frame(_obs(), _obs(trackId="b", timestamp="2024-06-24T17:00:00.120Z"))
    raw = raw.replace(b'"2024-06-24T17', b'"\\u0032024-06-24T17').replace(b'0Z"', b'0\\u005a"')
    decoded = [o["timestamp"] for o in json.loads(raw)["observations"]]
    scanned = native.scan([raw])
    assert scanned.counts == [2]
    assert scanned.columns["timestamp"].to_pylist() == [_utc(s) for s in decoded]
    kept = json.dumps({"timestamp": decoded[1]}, separators=(",", ":"))
    assert scanned.columns["extra"].to_pylist() == [None, kept]  # the decoded spelling


def test_an_escaped_character_a_timestamp_cannot_hold_leaves_the_observation_out() -> None:
    raw = _frame(_obs()).replace(b'.123456Z"', b'.123456Z\\u00e9"')
    scanned = native.scan([raw])
    assert (scanned.counts, len(scanned.odd)) == ([0], 1)


def test_canonical_timestamps_keep_no_text() -> None:
    stamps = [s for s, kept in STAMPS if not kept]
    scanned = native.scan([_frame(*(_obs(timestamp=s) for s in stamps))])
    assert scanned.counts == [len(stamps)]
    assert scanned.columns["extra"].null_count == len(stamps)


FRAMES_LEFT_WHOLE = {
    "not JSON": b"not json",
    "truncated": _frame(_obs())[:-3],
    "trailing bytes": _frame(_obs()) + b"x",
    "no observations": b'{"type":"data","id":"s"}',
    "observations not an array": b'{"observations":{}}',
    "observations twice": b'{"observations":[],"observations":[]}',
    "escaped envelope key": b'{"observ\\u0061tions":[]}',
    "a lone surrogate anywhere": _frame(_obs(), _obs(speed="S")).replace(b'"S"', b'"\\ud800"'),
    "invalid JSON inside an odd observation": _frame(_obs()).replace(
        b'"name"', b'"x":[1,,],"name"'
    ),
    "control character in a string": _frame(_obs()).replace(b"VESSEL", b"VES\nSEL"),
    "nesting deeper than the scanner follows": _frame(_obs()).replace(
        b'"red"', b"[" * 1100 + b"1" + b"]" * 1100
    ),
    "not an object": b"[]",
}


@pytest.mark.parametrize("case", list(FRAMES_LEFT_WHOLE))
def test_what_is_not_valid_or_usual_json_leaves_the_frame_whole(case: str) -> None:
    good = _frame(_obs(trackId="kept"))
    scanned = native.scan([good, FRAMES_LEFT_WHOLE[case], good])
    assert scanned.counts == [1, -1, 1]
    assert scanned.odd == []
    assert scanned.columns["track_id"].to_pylist() == ["kept", "kept"]


def test_invalid_utf8_in_kept_text_leaves_only_that_observation_out() -> None:
    raw = _frame(_obs(trackId="a"), _obs(trackId="b", name="XX"), _obs(trackId="c"))
    raw = raw.replace(b'"XX"', b'"\xff\xfe"')
    scanned = native.scan([raw])
    assert scanned.counts == [2]
    assert [(f, i) for f, i, _, _ in scanned.odd] == [(0, 1)]


def test_invalid_utf8_in_the_envelope_is_not_the_observations_concern() -> None:
    raw = _frame(_obs()).replace(b'"sub-1"', b'"\xff"')
    assert native.scan([raw]).counts == [1]


def _bits(value: float) -> bytes:
    return struct.pack("<d", value)


SPELLINGS = st.sampled_from(["{!r}", "{:.6f}", "{:.15f}", "{:.17g}", "{:.3e}", "{:.20f}"])


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False), SPELLINGS)
def test_coordinates_are_the_correctly_rounded_double(value: float, spelling: str) -> None:
    text = spelling.format(value)
    if "." not in text and "e" not in text.lower():
        text += ".0"
    raw = _frame(_obs()).replace(b"-77.05", text.encode())
    scanned = native.scan([raw])
    if scanned.counts == [0]:  # beyond what it holds: an out-of-range or very long spelling
        assert math.isinf(float(text)) or len(text) >= 512
        return
    assert _bits(scanned.columns["longitude"][0].as_py()) == _bits(float(text))


def test_an_empty_batch_and_empty_frames() -> None:
    assert native.scan([]).rows == 0
    scanned = native.scan([b'{"observations":[]}', b'{"observations":[ ]} \n'])
    assert (scanned.rows, scanned.counts) == (0, [0, 0])
    assert scanned.columns["track_id"].type == pa.string()
