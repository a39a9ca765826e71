"""Observation JSON -> Columns -> Parquet -> DuckDB -> row_to_observation gives the original back.

Every stage is the real one: `connector.records`, `connector.parquet.encode`, a Parquet file on
disk, DuckDB's reader. The only normalisation the design accepts is numeric: an integer longitude,
latitude or elevation comes back as the equal float (1 -> 1.0), see `assert_same_json`.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.parquet import encode
from connector.records import Columns, FrameMeta
from connector.schema import SCHEMA
from tests.oracle import row_to_observation

CASES = Path(__file__).resolve().parents[1] / "cases"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KNOWN = {
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
DUCKDB = duckdb.connect()  # one in-memory database; each test reads its own file
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
TEXT = st.text(max_size=12)  # hypothesis text never holds surrogates: JSON text is UTF-8
SCALARS = st.none() | st.booleans() | INT64 | FLOATS | TEXT
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


# -- the pipeline under test ---------------------------------------------------------------------
def land_and_read(columns: Columns, directory: Path) -> list[dict[str, Any]]:
    """Encode the columns as a real Parquet file and read every row back with DuckDB."""
    path = directory / "part.parquet"
    path.write_bytes(encode(columns.to_table(), compression="zstd"))
    cursor = DUCKDB.execute(
        "select * from read_parquet(?, file_row_number = true) order by file_row_number",
        [str(path)],
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def meta(seq: int = 7, sub: str = "dc") -> FrameMeta:
    return FrameMeta(seq, 1_719_248_400_123_456, sub, "3255ebeb", "stream")


def frame(observations: list[Any]) -> bytes:
    return msgspec.json.encode({"type": "data", "id": "3255ebeb", "observations": observations})


def plain_position(obs: Any) -> bool:
    """Whether the position fits the typed columns alone (else it is kept verbatim in `extra`)."""
    pos = obs.get("position") if isinstance(obs, dict) else None
    if not isinstance(pos, dict) or set(pos) - {"longitude", "latitude", "elevation"}:
        return False
    elevation = pos.get("elevation", 0)
    return isinstance(elevation, int | float) and not isinstance(elevation, bool)


def assert_same_json(rebuilt: Any, original: Any, path: str = "$", *, floats: bool = True) -> None:
    """Equality that also checks JSON types (True is not 1, 12 is not 12.0, "12" is not 12).

    The one allowed difference: an integer coordinate of a plain position (one held by the
    typed columns alone) comes back as the equal float.
    """
    if path == "$":
        floats = plain_position(original)
    coordinate = path in ("$.position.longitude", "$.position.latitude", "$.position.elevation")
    if coordinate and floats and type(original) is int:
        assert type(rebuilt) is float and rebuilt == original, path
        return
    assert type(rebuilt) is type(original), f"{path}: {rebuilt!r} vs {original!r}"
    if isinstance(original, dict):
        assert set(rebuilt) == set(original), f"{path}: keys {set(rebuilt) ^ set(original)}"
        for key in original:
            assert_same_json(rebuilt[key], original[key], f"{path}.{key}", floats=floats)
    elif isinstance(original, list):
        assert len(rebuilt) == len(original), path
        for i, (a, b) in enumerate(zip(rebuilt, original, strict=True)):
            assert_same_json(a, b, f"{path}[{i}]", floats=floats)
    else:
        assert rebuilt == original, f"{path}: {rebuilt!r} vs {original!r}"


# -- generators --------------------------------------------------------------------------------
@st.composite
def timestamps(draw: st.DrawFn) -> tuple[str, int]:
    """An ISO-8601 timestamp with 0-9 fractional digits and a zone, and its instant in us
    (computed here with datetime arithmetic, independently of connector.timeparse)."""
    dt = draw(st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)))
    dt = dt.replace(microsecond=0)
    digits = draw(st.text(alphabet="0123456789", max_size=9))
    offset_minutes = draw(st.sampled_from([0, 0, 0, 60, -300, 330, 23 * 60 + 59, -(23 * 60)]))
    if offset_minutes == 0 and draw(st.booleans()):
        zone = draw(st.sampled_from(["Z", "Z", "z", "+00:00", "-0000"]))
    else:
        sign = "+" if offset_minutes >= 0 else "-"
        hours, minutes = divmod(abs(offset_minutes), 60)
        colon = draw(st.sampled_from([":", ":", ""]))
        zone = f"{sign}{hours:02d}{colon}{minutes:02d}"
    sep = draw(st.sampled_from(["T", "T", "T", " ", "t"]))
    text = (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}{sep}"
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
        + (f"{draw(st.sampled_from('.,'))}{digits}" if digits else "")
        + zone
    )
    aware = dt.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    us = (aware - EPOCH) // timedelta(microseconds=1) + int(digits.ljust(6, "0")[:6] or 0)
    return text, us


def coordinate(low: float, high: float) -> st.SearchStrategy[Any]:
    return st.floats(low, high) | st.integers(int(low), int(high))


@st.composite
def properties(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["list", "list", "list", "absent", "null", "other"]))
    if kind == "absent":
        return ABSENT
    if kind == "null":
        return None
    if kind == "other":
        return draw(st.dictionaries(TEXT, SCALARS, max_size=2) | TEXT)
    keys = st.sampled_from(["crew", "speed", "status", "東京", "lastFix"]) | TEXT
    values = (
        SCALARS
        | st.integers(-1000, 1000).map(str)  # "12" next to 12
        | st.just('{"type": "Point", "coordinates": [-76.9, 38.95]}')  # a GeoJSON string
        | JSON
    )
    entry = st.fixed_dictionaries({"propertyType": keys, "value": values})
    odd_entry = (
        st.fixed_dictionaries({"propertyType": keys, "value": values, "unit": TEXT})
        | st.fixed_dictionaries({"propertyType": keys})  # no value at all
        | st.fixed_dictionaries({"propertyType": INT64, "value": values})
        | JSON
    )
    return draw(st.lists(entry | odd_entry if draw(st.booleans()) else entry, max_size=5))


class _Absent:
    pass


ABSENT = _Absent()


@st.composite
def observations(draw: st.DrawFn) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "sourceSystemId": draw(TEXT),
        "collectionId": draw(TEXT),
        "observationSpecId": draw(st.sampled_from(["baz", "a/b", "x=y"]) | TEXT),
        "trackId": draw(TEXT),
    }
    position: dict[str, Any] = {
        "longitude": draw(coordinate(-180, 180)),
        "latitude": draw(coordinate(-90, 90)),
    }
    elevation = draw(st.sampled_from(["absent", "null", "number", "other"]))
    if elevation == "null":
        position["elevation"] = None
    elif elevation == "number":
        position["elevation"] = draw(FLOATS | st.integers(-(2**53), 2**53))
    elif elevation == "other":
        position["elevation"] = draw(st.booleans() | TEXT)
    position.update(draw(st.dictionaries(st.sampled_from(["accuracy", "crs"]), JSON, max_size=1)))
    obs["position"] = position
    obs["timestamp"] = draw(timestamps())[0]
    name = draw(st.sampled_from(["absent", "null", "text", "other"]))
    if name != "absent":
        obs["name"] = {"null": None, "text": draw(TEXT), "other": draw(JSON)}[name]
    for wire in ("staticProperties", "liveProperties"):
        value = draw(properties())
        if value is not ABSENT:
            obs[wire] = value
    style = draw(st.sampled_from(["absent", "null", "object", "other"]))
    if style != "absent":
        milsym = {"blueprintIconName": "airplane", "symbology": {"type": "milSym", "code": "S"}}
        obs["style"] = {"null": None, "object": milsym, "other": draw(JSON)}[style]
    unknown = st.text(min_size=1, max_size=8).filter(lambda k: k not in KNOWN)
    obs.update(draw(st.dictionaries(unknown, JSON, max_size=3)))
    order = draw(st.permutations(list(obs)))
    return {key: obs[key] for key in order}


# -- properties --------------------------------------------------------------------------------
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(observations(), min_size=1, max_size=12))
def test_observations_survive_parquet_and_duckdb_exactly(originals: list[dict[str, Any]]) -> None:
    columns = Columns()
    columns.add_frame(meta(), frame(originals))
    assert columns.rejected == []
    assert columns.rows == len(originals)
    with tempfile.TemporaryDirectory() as tmp:
        rows = land_and_read(columns, Path(tmp))
    assert len(rows) == len(originals)
    for row, original in zip(rows, originals, strict=True):
        assert_same_json(row_to_observation(row), original)


@settings(max_examples=60, deadline=None)
@given(st.lists(timestamps(), min_size=1, max_size=30))
def test_timestamp_column_holds_the_instant(stamps: list[tuple[str, int]]) -> None:
    """The typed column (what partitions and queries use) is the instant, truncated to us."""
    base = {
        "sourceSystemId": "s",
        "collectionId": "c",
        "observationSpecId": "baz",
        "trackId": "t",
        "position": {"longitude": 1.5, "latitude": 2.5},
    }
    originals = [{**base, "timestamp": text} for text, _ in stamps]
    columns = Columns()
    columns.add_frame(meta(), frame(originals))
    with tempfile.TemporaryDirectory() as tmp:
        rows = land_and_read(columns, Path(tmp))
    for row, original, (_, us) in zip(rows, originals, stamps, strict=True):
        assert row["timestamp"] == EPOCH + timedelta(microseconds=us)
        assert row_to_observation(row) == original


@settings(max_examples=30, deadline=None)
@given(st.lists(observations(), min_size=1, max_size=8))
def test_typed_columns_hold_what_analysts_query(originals: list[dict[str, Any]]) -> None:
    columns = Columns()
    columns.add_frame(meta(seq=42, sub="harbour"), frame(originals))
    with tempfile.TemporaryDirectory() as tmp:
        rows = land_and_read(columns, Path(tmp))
    assert [r["seq"] for r in rows] == [42] * len(originals)
    for row, obs in zip(rows, originals, strict=True):
        assert row["source_system_id"] == obs["sourceSystemId"]
        assert row["track_id"] == obs["trackId"]
        assert row["observation_spec_id"] == obs["observationSpecId"]
        assert row["longitude"] == obs["position"]["longitude"]
        assert row["latitude"] == obs["position"]["latitude"]
        elevation = obs["position"].get("elevation")
        number = isinstance(elevation, int | float) and not isinstance(elevation, bool)
        assert row["elevation"] == (elevation if number else None)
        assert row["name"] == (obs["name"] if isinstance(obs.get("name"), str) else None)
        assert row["subscription"] == "harbour"
        assert row["subscription_id"] == "3255ebeb"
        assert row["origin"] == "stream"
        assert row["received_at"] == EPOCH + timedelta(microseconds=1_719_248_400_123_456)
        live = obs.get("liveProperties")
        if isinstance(live, list):
            # First entry per propertyType, value as JSON text that keeps its JSON type.
            expected: dict[str, Any] = {}
            for f in live:
                if isinstance(f, dict) and isinstance(f.get("propertyType"), str):
                    expected.setdefault(f["propertyType"], f.get("value"))
            got = {k: json.loads(v) for k, v in row["live_properties"].items()}
            assert_same_json(got, expected)
        else:
            assert row["live_properties"] is None


# -- examples -------------------------------------------------------------------------------------
def golden(name: str) -> bytes:
    path = CASES / name
    if not path.is_file():
        pytest.skip(f"golden frame {name} not present yet")
    return path.read_bytes()


@pytest.mark.parametrize("name", ["data_rich.json", "data_seed_example.json"])
def test_golden_frames_round_trip(name: str, tmp_path: Path) -> None:
    raw = golden(name)
    originals = json.loads(raw)["observations"]
    columns = Columns()
    columns.add_frame(meta(), raw)
    assert columns.rejected == []
    rows = land_and_read(columns, tmp_path)
    assert len(rows) == len(originals)
    for row, original in zip(rows, originals, strict=True):
        assert_same_json(row_to_observation(row), original)


def test_rich_frame_keeps_12_and_quoted_12_distinct(tmp_path: Path) -> None:
    raw = golden("data_rich.json")
    columns = Columns()
    columns.add_frame(meta(), raw)
    rows = land_and_read(columns, tmp_path)
    crews = [r["static_properties"].get("crew") for r in rows]
    assert crews[:2] == ["12", '"12"']
    # Unknown top-level fields are kept in `extra`, queryable as JSON.
    # (and the 9-digit timestamp spelling, which the us column cannot hold)
    assert json.loads(rows[0]["extra"]) == {
        "confidence": 0.93,
        "timestamp": "2024-06-24T17:00:00.123456789Z",
    }
    assert json.loads(rows[1]["extra"])["sensorMeta"] == {"sensor": "radar-3", "quality": "high"}
    # 9 fractional digits: the column is truncated to us, the spelling kept in `extra`.
    assert rows[0]["timestamp"] == datetime(2024, 6, 24, 17, 0, 0, 123456, tzinfo=UTC)
    assert row_to_observation(rows[0])["timestamp"] == "2024-06-24T17:00:00.123456789Z"


def test_integer_coordinates_come_back_as_equal_floats(tmp_path: Path) -> None:
    original = {
        "sourceSystemId": "s",
        "collectionId": "c",
        "observationSpecId": "baz",
        "trackId": "t",
        "position": {"longitude": 1, "latitude": -2, "elevation": 0},
        "timestamp": "2024-06-24T17:00:00Z",
        "staticProperties": [],
        "liveProperties": [{"propertyType": "n", "value": 1}],
    }
    columns = Columns()
    columns.add_frame(meta(), frame([original]))
    rebuilt = row_to_observation(land_and_read(columns, tmp_path)[0])
    assert rebuilt == original
    assert [type(v) for v in rebuilt["position"].values()] == [float, float, float]
    # Property values are JSON text, so their integer-ness survives.
    assert type(rebuilt["liveProperties"][0]["value"]) is int


GOOD = {
    "sourceSystemId": "s",
    "collectionId": "c",
    "observationSpecId": "baz",
    "trackId": "t",
    "position": {"longitude": 1.5, "latitude": 2.5},
    "timestamp": "2024-06-24T17:00:00Z",
}


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (without("trackId"), "trackId"),
        ({**GOOD, "trackId": 5}, "trackId"),
        ({**GOOD, "timestamp": "2024-06-24 noon"}, "timestamp"),
        ({**GOOD, "timestamp": "2024-06-24T17:00:00"}, "timestamp"),  # no zone: not guessed
        ({**GOOD, "timestamp": "2024-02-30T17:00:00Z"}, "timestamp"),
        (without("position"), "position"),
        ({**GOOD, "position": {"longitude": 1.5}}, "position"),
        ({**GOOD, "position": {"longitude": "1.5", "latitude": 2.5}}, "position"),
        ({**GOOD, "position": {"longitude": True, "latitude": 2.5}}, "position"),
        # Not representable as float64: rejected (kept verbatim) instead of crashing or rounding.
        ({**GOOD, "position": {"longitude": 10**400, "latitude": 2.5}}, "position"),
        ({**GOOD, "position": {"longitude": 2**53 + 1, "latitude": 2.5}}, "position"),
        ([1, 2], "not a JSON object"),
        ("observation", "not a JSON object"),
        (None, "not a JSON object"),
    ],
)
def test_bad_observation_is_rejected_verbatim_and_the_rest_lands(
    bad: Any, reason: str, tmp_path: Path
) -> None:
    good_bytes = msgspec.json.encode(GOOD).decode()
    bad_text = json.dumps(bad, ensure_ascii=False, indent=1)  # odd spacing must survive too
    raw = f'{{"type":"data","id":"x","observations":[{good_bytes}, {bad_text} ,{good_bytes}]}}'
    columns = Columns()
    columns.add_frame(meta(seq=9), raw.encode())
    assert columns.rows == 2
    [rejected] = columns.rejected
    assert rejected.payload == bad_text.encode()
    assert rejected.index == 1
    assert rejected.seq == 9
    assert rejected.subscription == "dc"
    assert reason in rejected.reason
    rows = land_and_read(columns, tmp_path)
    assert [row_to_observation(r) for r in rows] == [GOOD, GOOD]


def test_elevation_beyond_float_is_kept_in_extra(tmp_path: Path) -> None:
    original = {**GOOD, "position": {"longitude": 1.5, "latitude": 2.5, "elevation": 10**400}}
    columns = Columns()
    columns.add_frame(meta(), frame([original]))
    [row] = land_and_read(columns, tmp_path)
    assert row["elevation"] is None
    assert row_to_observation(row) == original


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1,2]", b'{"type":"data"}', b'{"observations": 5}', b'"x"', b"{"],
)
def test_unusable_frame_is_rejected_whole(raw: bytes) -> None:
    columns = Columns()
    columns.add_frame(meta(seq=3), raw)
    columns.add_frame(meta(seq=4), frame([GOOD]))
    assert columns.rows == 1
    assert columns.to_table()["seq"].to_pylist() == [4]
    [rejected] = columns.rejected
    assert (rejected.payload, rejected.seq, rejected.index) == (raw, 3, None)


def test_empty_columns_make_an_empty_table_of_the_schema() -> None:
    table = Columns().to_table()
    assert table.num_rows == 0
    assert table.schema.equals(SCHEMA, check_metadata=True)
