"""Every recipe in docs/analysts.md, run as written (example values swapped for ones this data
holds) through `gotham-connector sql`, against the same answer computed in plain Python from the
Parquet and JSON files."""

from __future__ import annotations

import itertools
import json
import math
import shlex
import shutil
import statistics
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connector.cli import main
from connector.demo import DC_POLYGON
from tests.e2e.sql.conftest import (
    DC_TRACKS,
    Landed,
    identity,
    json_lines,
    parquet_rows,
    query,
    recipes,
    substitute,
    utc,
    write_config,
)

RECIPES = recipes()
EXAMPLE_HOUR = "TIMESTAMPTZ '2026-05-01 10:00:00'"
BOX = "longitude BETWEEN -77.20 AND -77.00 AND latitude BETWEEN 38.80 AND 38.95"
RING_BOX = "longitude BETWEEN -77.119 AND -76.909 AND latitude BETWEEN 38.791 AND 38.995"
RING = (
    "[[-77.119, 38.934], [-77.039, 38.791], [-76.909, 38.893], [-77.041, 38.995],\n"
    "         [-77.119, 38.934]]"
)
Ring = list[tuple[float, float]]
DOC_RING: Ring = [(-77.119, 38.934), (-77.039, 38.791), (-76.909, 38.893), (-77.041, 38.995)]


def test_the_document_has_every_recipe() -> None:
    assert set(RECIPES) == {
        "latest-position",
        "track-path",
        "bounding-box",
        "polygon",
        "hourly-average",
        "static-properties",
        "counts",
        "latency",
        "hour-complete",
    }
    assert set(recipes("sh")) == {"track-geojson"}


def number(text: str | None) -> float | None:
    value = None if text is None else json.loads(text)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def test_latest_position(landed: Landed) -> None:
    latest: dict[str, dict[str, Any]] = {}
    names: dict[str, tuple[datetime, str]] = {}
    for r in landed.rows:
        if r["track_id"] not in latest or r["timestamp"] > latest[r["track_id"]]["timestamp"]:
            latest[r["track_id"]] = r
        if r["name"] is not None and (
            r["track_id"] not in names or r["timestamp"] > names[r["track_id"]][0]
        ):
            names[r["track_id"]] = (r["timestamp"], r["name"])
    want = [
        {
            "track_id": t,
            "last_seen": r["timestamp"],
            "longitude": r["longitude"],
            "latitude": r["latitude"],
            "name": names.get(t, (None, None))[1],
        }
        for t, r in sorted(latest.items())
    ]
    assert query(landed.config, RECIPES["latest-position"]) == want
    assert len(want) == 40


def path_of(landed: Landed, track: str) -> list[dict[str, Any]]:
    """One track's distinct observations in time order."""
    unique = {identity(r): r for r in landed.rows if r["track_id"] == track}
    return sorted(unique.values(), key=lambda r: r["timestamp"])


def test_track_path_in_a_time_window(landed: Landed) -> None:
    track = max(DC_TRACKS, key=lambda t: len(path_of(landed, t)))
    path = path_of(landed, track)
    start, end = path[len(path) // 3]["timestamp"], path[2 * len(path) // 3]["timestamp"]
    sql = substitute(
        RECIPES["track-path"],
        {
            "'ship-0000'": f"'{track}'",
            "'2026-05-01 10:00:00'": f"'{start.isoformat()}'",
            "'2026-05-01 10:30:00'": f"'{end.isoformat()}'",
        },
    )
    want = [
        {
            "timestamp": r["timestamp"],
            "longitude": r["longitude"],
            "latitude": r["latitude"],
            "elevation": r["elevation"],
            "speed_knots": number(dict(r["live_properties"]).get("speed")),
        }
        for r in path
        if start <= r["timestamp"] <= end
    ]
    assert len(want) > 3 and query(landed.config, sql) == want


def points_where(landed: Landed, inside: Any) -> list[dict[str, Any]]:
    found = {
        (r["track_id"], r["timestamp"], r["longitude"], r["latitude"])
        for r in landed.rows
        if inside(r["longitude"], r["latitude"])
    }
    keys = ("track_id", "timestamp", "longitude", "latitude")
    return [dict(zip(keys, p, strict=True)) for p in sorted(found)]


def test_bounding_box(landed: Landed) -> None:
    as_written = query(landed.config, RECIPES["bounding-box"])
    assert as_written == points_where(
        landed, lambda x, y: -77.20 <= x <= -77.00 and 38.80 <= y <= 38.95
    )
    # A box around the middle of the data: some points in, some out.
    lons = sorted(r["longitude"] for r in landed.rows)
    lats = sorted(r["latitude"] for r in landed.rows)
    x0, x1 = lons[len(lons) // 5], lons[4 * len(lons) // 5]
    y0, y1 = lats[len(lats) // 5], lats[4 * len(lats) // 5]
    box = f"longitude BETWEEN {x0!r} AND {x1!r} AND latitude BETWEEN {y0!r} AND {y1!r}"
    got = query(landed.config, substitute(RECIPES["bounding-box"], {BOX: box}))
    want = points_where(landed, lambda x, y: x0 <= x <= x1 and y0 <= y <= y1)
    assert got == want and 0 < len(want) < len({identity(r) for r in landed.rows})


def winding_number(x: float, y: float, ring: Ring) -> int:
    """Independent of the SQL macro's ray casting: the winding number of the ring around a point."""
    total = 0
    for (x1, y1), (x2, y2) in itertools.pairwise([*ring, ring[0]]):
        cross = (x2 - x1) * (y - y1) - (x - x1) * (y2 - y1)
        if y1 <= y < y2 and cross > 0:
            total += 1
        elif y2 <= y < y1 and cross < 0:
            total -= 1
    return total


def polygon_sql(ring: Ring) -> dict[str, str]:
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    box = (
        f"longitude BETWEEN {min(xs)!r} AND {max(xs)!r} "
        f"AND latitude BETWEEN {min(ys)!r} AND {max(ys)!r}"
    )
    literal = "[" + ", ".join(f"[{x!r}, {y!r}]" for x, y in [*ring, ring[0]]) + "]"
    return {RING_BOX: box, RING: literal}


@pytest.mark.parametrize(
    "ring",
    [
        DOC_RING,
        # Half the simulator's region, cut on the diagonal: a bounding box alone would be wrong.
        [(-77.5, 38.5), (-76.5, 38.5), (-77.5, 39.3)],
        # Concave, open to the west: a ray to the east from the notch crosses two edges (an
        # even count: outside). Listed from the north-east corner, so the ring's closing edge
        # is the long eastern side.
        [
            (-76.6, 39.2),
            (-77.4, 39.2),
            (-77.4, 39.0),
            (-76.8, 39.0),
            (-76.8, 38.8),
            (-77.4, 38.8),
            (-77.4, 38.6),
            (-76.6, 38.6),
        ],
    ],
)
def test_polygon(landed: Landed, ring: Ring) -> None:
    sql = substitute(RECIPES["polygon"], polygon_sql(ring))
    got = query(landed.config, sql)
    want = points_where(landed, lambda x, y: winding_number(x, y, ring) != 0)
    assert got == want
    if ring is not DOC_RING:
        in_box = points_where(
            landed,
            lambda x, y: (
                min(p[0] for p in ring) <= x <= max(p[0] for p in ring)
                and min(p[1] for p in ring) <= y <= max(p[1] for p in ring)
            ),
        )
        assert 0 < len(want) < len(in_box)


def test_polygon_agrees_with_the_simulators_own_filter(landed: Landed) -> None:
    # Every row the simulator sent to the dc subscription lies inside its polygon.
    ring = [(p["longitude"], p["latitude"]) for p in DC_POLYGON[:-1]]
    found = {
        (r["track_id"], r["timestamp"])
        for r in query(landed.config, substitute(RECIPES["polygon"], polygon_sql(ring)))
    }
    dc = {(r["track_id"], r["timestamp"]) for r in landed.rows if r["subscription"] == "dc"}
    assert dc and dc <= found


def test_hourly_average_of_a_live_property(landed: Landed) -> None:
    groups: dict[tuple[str, datetime], list[float | None]] = defaultdict(list)
    for r in landed.rows:
        if r["subscription"] == "everything":
            hour = r["timestamp"].replace(minute=0, second=0, microsecond=0)
            groups[(r["track_id"], hour)].append(number(dict(r["live_properties"]).get("speed")))
    want = []
    for (track, hour), speeds in sorted(groups.items()):
        known = [s for s in speeds if s is not None]
        want.append((track, hour, len(speeds), statistics.fmean(known) if known else None))
    got = query(landed.config, RECIPES["hourly-average"])
    assert [(g["track_id"], g["hour_start"], g["observations"]) for g in got] == [
        w[:3] for w in want
    ]
    assert [g["avg_speed_knots"] for g in got] == pytest.approx([w[3] for w in want], rel=1e-12)
    assert len({w[1] for w in want}) > 1


def test_static_properties(landed: Landed) -> None:
    latest: dict[str, dict[str, Any]] = {}
    for r in landed.rows:
        if r["track_id"] not in latest or r["timestamp"] > latest[r["track_id"]]["timestamp"]:
            latest[r["track_id"]] = r
    want = []
    for track, r in sorted(latest.items()):
        props = dict(r["static_properties"])
        if "vesselType" in props:
            want.append(
                {
                    "track_id": track,
                    "mmsi": json.loads(props["mmsi"]),
                    "flag": json.loads(props["flag"]),
                    "vessel_type": json.loads(props["vesselType"]),
                    "crew_json": props["crew"],
                }
            )
    got = query(landed.config, RECIPES["static-properties"])
    assert got == want and {w["crew_json"] for w in want} == {"12", '"12"'}


def test_counts_per_subscription_and_origin(landed: Landed) -> None:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in landed.rows:
        groups[(r["subscription"], r["origin"])].append(r)
    want = [
        {
            "subscription": sub,
            "origin": origin,
            "observations": len(rows),
            "tracks": len({r["track_id"] for r in rows}),
            "first_observed": min(r["timestamp"] for r in rows),
            "last_observed": max(r["timestamp"] for r in rows),
        }
        for (sub, origin), rows in sorted(groups.items())
    ]
    assert query(landed.config, RECIPES["counts"]) == want
    assert {("everything", "stream"), ("everything", "backfill")} <= set(groups)


def test_latency_percentiles(landed: Landed) -> None:
    latencies: dict[str, list[float]] = defaultdict(list)
    for r in landed.rows:
        if r["origin"] == "stream":
            delta = r["received_at"] - r["timestamp"]
            latencies[r["subscription"]].append(delta / timedelta(microseconds=1) / 1000.0)
    got = query(landed.config, RECIPES["latency"])
    assert [g["subscription"] for g in got] == sorted(latencies)
    for g in got:
        values = latencies[g["subscription"]]
        # method="inclusive" is linear interpolation between order statistics: quantile_cont.
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        assert g["observations"] == len(values)
        assert [g["p50_ms"], g["p90_ms"], g["p99_ms"], g["max_ms"]] == pytest.approx(
            [cuts[49], cuts[89], cuts[98], max(values)], rel=1e-9
        )


def hour_status(
    ledger: list[dict[str, Any]], rows: list[dict[str, Any]], h0: datetime
) -> list[dict[str, Any]]:
    """The recipe's rule, in Python."""
    h1 = h0 + timedelta(hours=1)
    out = []
    for sub in sorted({e["subscription"] for e in ledger if e["event"] == "stream_started"}):
        mine = [e for e in ledger if e["subscription"] == sub]
        since = min(utc(e["recorded_at"]) for e in mine if e["event"] == "stream_started")
        seen = [utc(e["recorded_at"]) for e in mine] + [
            r["received_at"] for r in rows if r["subscription"] == sub
        ]

        def healed(gap: dict[str, Any], mine: list[dict[str, Any]] = mine) -> bool:
            outcomes = {
                e["outcome"]
                for e in mine
                if e["event"] == "backfill"
                and (e["gap_start"], e["gap_end"]) == (gap["gap_start"], gap["gap_end"])
            }
            return "ok" in outcomes and not outcomes & {"refused", "unrecoverable"}

        unhealed = sum(
            1
            for e in mine
            if e["event"] == "gap"
            and utc(e["gap_start"]) < h1
            and utc(e["gap_end"]) > h0
            and not healed(e)
        )
        alive = max(seen)
        out.append(
            {
                "subscription": sub,
                "hour_start": h0,
                "streaming_since": since,
                "alive_until": alive,
                "unhealed_gaps": unhealed,
                "complete": since <= h0 and alive >= h1 and unhealed == 0,
            }
        )
    return out


def hours_of(rows: list[dict[str, Any]]) -> list[datetime]:
    hours = {r["timestamp"].replace(minute=0, second=0, microsecond=0) for r in rows}
    return sorted(hours | {max(hours) + timedelta(hours=1)})


def check_hours(config: Path, landing: Path) -> list[dict[str, Any]]:
    ledger, rows = json_lines(landing / "_ledger"), parquet_rows(landing)
    results = []
    for h0 in hours_of(rows):
        sql = substitute(
            RECIPES["hour-complete"], {EXAMPLE_HOUR: f"TIMESTAMPTZ '{h0.isoformat()}'"}
        )
        got = query(config, sql)
        assert got == hour_status(ledger, rows, h0)
        results += got
    return results


def edited_copy(landed: Landed, tmp_path: Path, edit: Any) -> Path:
    landing = tmp_path / "landing"
    shutil.copytree(landed.landing, landing)
    events = edit(json_lines(landing / "_ledger"))
    shutil.rmtree(landing / "_ledger")
    (landing / "_ledger").mkdir()
    (landing / "_ledger" / "all.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return write_config(tmp_path / "c.toml", str(landing))


def test_hour_complete_as_landed(landed: Landed) -> None:
    results = check_hours(landed.config, landed.landing)
    # Streaming began minutes ago: no hour is known complete, and every gap was healed.
    assert results and not any(r["complete"] for r in results)
    assert all(r["unhealed_gaps"] == 0 for r in results)


def test_hour_complete_with_an_earlier_start(landed: Landed, tmp_path: Path) -> None:
    first = min(r["timestamp"] for r in landed.rows) - timedelta(hours=2)

    def earlier(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        starts = [
            {"event": "stream_started", "subscription": s, "recorded_at": first.isoformat()}
            for s in ("dc", "everything")
        ]
        return starts + events

    results = check_hours(edited_copy(landed, tmp_path, earlier), tmp_path / "landing")
    assert any(r["complete"] for r in results) and not all(r["complete"] for r in results)


def test_hour_complete_with_unhealed_gaps(landed: Landed, tmp_path: Path) -> None:
    def unhealed(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if e["event"] != "backfill"]

    results = check_hours(edited_copy(landed, tmp_path, unhealed), tmp_path / "landing")
    assert {r["subscription"] for r in results if r["unhealed_gaps"]} == {"dc", "everything"}


def test_export_one_track_to_geojson(landed: Landed, tmp_path: Path) -> None:
    track = max(DC_TRACKS, key=lambda t: len(path_of(landed, t)))
    path = path_of(landed, track)
    start, end = path[len(path) // 4]["timestamp"], path[3 * len(path) // 4]["timestamp"]
    command = recipes("sh")["track-geojson"].replace("\\\n", " ")
    command = substitute(
        command,
        {
            "connector.toml": str(landed.config),
            "ship-0000.geojson": str(tmp_path / "track.geojson"),
            "'ship-0000'": f"'{track}'",
            "'2026-05-01 10:00:00'": f"'{start.isoformat()}'",
            "'2026-05-01 11:00:00'": f"'{end.isoformat()}'",
        },
    )
    argv = shlex.split(command)
    assert argv[:2] == ["gotham-connector", "sql"]
    assert main(argv[1:]) == 0
    collection = json.loads((tmp_path / "track.geojson").read_text())
    [feature] = collection["features"]
    want = [[r["longitude"], r["latitude"]] for r in path if start <= r["timestamp"] <= end]
    assert feature["geometry"] == {"type": "LineString", "coordinates": want}
    assert feature["properties"]["track_id"] == track and feature["properties"]["points"] == len(
        want
    )
    assert all(math.isfinite(c) for point in want for c in point)
