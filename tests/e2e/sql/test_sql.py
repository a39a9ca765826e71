"""`gotham-connector sql` over a real landing zone: views, macros, outputs, errors, sessions.

Every answer is compared with the files read directly (pyarrow, json), never with DuckDB.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from connector.cli import main
from tests.e2e.sql.conftest import (
    DC_TRACKS,
    Landed,
    identity,
    query,
    run_cli,
    utc,
    write_config,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def canonical(rows: list[Any]) -> list[str]:
    """Order-free comparison of rows holding None, datetimes and numbers."""
    return sorted(json.dumps(r, default=str, sort_keys=True) for r in rows)


def describe(config: Path, view: str) -> list[tuple[str, str]]:
    return [(r["column_name"], r["column_type"]) for r in query(config, f"DESCRIBE {view}")]


def duckdb_text(ts: datetime) -> str:
    """How DuckDB prints a TIMESTAMPTZ in UTC: trailing zeros of the fraction dropped."""
    fraction = f".{ts.microsecond:06d}".rstrip("0") if ts.microsecond else ""
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + fraction + "+00"


def test_observations_is_every_landed_row_in_its_partition(landed: Landed) -> None:
    got = query(
        landed.config,
        "SELECT subscription, seq, track_id, timestamp, longitude, latitude, extra, "
        "observation_spec_id, date, hour FROM observations",
    )
    assert len(got) == len(landed.rows) > 1000
    fields = ("subscription", "seq", "track_id", "timestamp", "longitude", "latitude", "extra")
    assert canonical([[r[f] for f in fields] for r in got]) == canonical(
        [[r[f] for f in fields] for r in landed.rows]
    )
    # The partition columns are the folder each file sits in.
    folders = {
        (r["subscription"], r["seq"], r["track_id"], r["timestamp"]): r["_path"].split("/")[:3]
        for r in landed.rows
    }
    for r in got:
        spec, date, hour = folders[(r["subscription"], r["seq"], r["track_id"], r["timestamp"])]
        assert spec == f"observation_spec_id={r['observation_spec_id']}"
        assert (date, hour) == (f"date={r['date'].isoformat()}", f"hour={r['hour']:02d}")
    assert len({(r["date"], r["hour"]) for r in got}) > 1, "late reports land in older hours"


def test_timestamps_are_shown_in_utc_whatever_the_machine_zone(landed: Landed) -> None:
    env = {**os.environ, "TZ": "America/New_York"}
    probe = "import duckdb; print(duckdb.sql(\"SELECT current_setting('TimeZone')\").fetchall())"
    control = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "America/New_York" in control.stdout  # the zone does reach DuckDB
    sql = "SELECT current_setting('TimeZone') AS tz, min(timestamp) AS first FROM observations"
    done = run_cli(landed.config, "-c", sql, "--output", "csv", env=env)
    assert done.returncode == 0, done.stderr
    [row] = list(csv.DictReader(io.StringIO(done.stdout)))
    assert row == {"tz": "UTC", "first": duckdb_text(min(r["timestamp"] for r in landed.rows))}


def test_ledger_view_types_every_event(landed: Landed) -> None:
    times = ("recorded_at", "gap_start", "gap_end", "window_start", "window_end")
    plain = ("event", "subscription", "id", "reason", "outcome", "fetched", "matched", "rows")
    got = query(landed.config, f"SELECT {', '.join(times + plain)} FROM ledger")
    want = [
        {
            **{k: utc(e[k]) if k in e else None for k in times},
            **{k: e.get(k) for k in plain},
        }
        for e in landed.ledger
    ]
    assert canonical(got) == canonical(want)
    assert {"stream_started", "gap", "backfill"} <= {e["event"] for e in landed.ledger}
    columns = dict(describe(landed.config, "ledger"))
    assert {k for e in landed.ledger for k in e} <= set(columns), "a ledger field has no column"
    assert columns["recorded_at"] == columns["gap_end"] == "TIMESTAMP WITH TIME ZONE"
    assert columns["rows"] == "BIGINT"


def test_dead_letters_view(landed: Landed) -> None:
    got = query(
        landed.config,
        'SELECT seq, received_at, subscription, reason, "index", payload FROM dead_letters',
    )
    want = [
        {
            "seq": d["seq"],
            "received_at": EPOCH + timedelta(microseconds=d["received_at_us"]),
            "subscription": d["subscription"],
            "reason": d["reason"],
            "index": d["index"],
            "payload": d.get("payload"),
        }
        for d in landed.dead_letters
    ]
    assert canonical(got) == canonical(want)
    reasons = " | ".join(d["reason"] for d in landed.dead_letters)
    assert "not valid JSON" in reasons and "unknown subscription id" in reasons


def test_views_exist_empty_before_anything_landed(landed: Landed, tmp_path: Path) -> None:
    (tmp_path / "landing").mkdir()
    config = write_config(tmp_path / "c.toml", str(tmp_path / "landing"))
    for view in ("observations", "ledger", "dead_letters"):
        assert query(config, f"SELECT count(*) AS n FROM {view}") == [{"n": 0}]
        # The empty views have the columns and types the real files give.
        assert describe(config, view) == describe(landed.config, view), view


def test_property_macros_read_the_json_text(landed: Landed) -> None:
    got = query(
        landed.config,
        "SELECT subscription, seq, track_id, timestamp, prop(static_properties, 'crew') AS crew, "
        "prop_text(static_properties, 'crew') AS crew_text, "
        "prop_double(static_properties, 'crew') AS crew_number, "
        "prop_double(live_properties, 'speed') AS speed, "
        "prop_text(live_properties, 'status') AS status, "
        "prop_text(live_properties, 'lastFix') AS last_fix, "
        "prop_double(live_properties, 'status') AS not_a_number, "
        "prop(live_properties, 'no such property') AS missing FROM observations",
    )

    def number(text: str | None) -> float | None:
        if text is None:
            return None
        value = json.loads(text)
        try:
            return float(value) if not isinstance(value, dict | list | bool) else None
        except ValueError:
            return None

    def unquoted(text: str | None) -> str | None:
        value = None if text is None else json.loads(text)
        return value if isinstance(value, str) else text

    want = []
    for r in landed.rows:
        static, live = dict(r["static_properties"] or []), dict(r["live_properties"] or [])
        want.append(
            {
                **{k: r[k] for k in ("subscription", "seq", "track_id", "timestamp")},
                "crew": static.get("crew"),
                "crew_text": unquoted(static.get("crew")),
                "crew_number": number(static.get("crew")),
                "speed": number(live.get("speed")),
                "status": unquoted(live.get("status")),
                "last_fix": unquoted(live.get("lastFix")),
                "not_a_number": number(live.get("status")),
                "missing": None,
            }
        )
    assert canonical(got) == canonical(want)
    assert {r["crew"] for r in got} == {"12", '"12"'}, '12 and "12" stay distinct'
    assert any(r["last_fix"] and r["last_fix"].startswith('{"type"') for r in got)


def test_track_path_is_one_track_once_in_time_order(landed: Landed) -> None:
    # A track the dc polygon holds: each observation is two rows (dc, everything).
    track = max(DC_TRACKS, key=lambda t: sum(r["track_id"] == t for r in landed.rows))
    mine = [r for r in landed.rows if r["track_id"] == track]
    unique = sorted({identity(r): r for r in mine}.values(), key=lambda r: r["timestamp"])
    assert len(mine) > len(unique) > 10
    start, end = unique[len(unique) // 4]["timestamp"], unique[3 * len(unique) // 4]["timestamp"]
    got = query(
        landed.config,
        f"SELECT * FROM track_path('{track}', TIMESTAMPTZ '{start.isoformat()}', "
        f"'{end.isoformat()}')",
    )
    expected = [r for r in unique if start <= r["timestamp"] <= end]
    assert [(r["timestamp"], r["longitude"], r["latitude"]) for r in got] == [
        (r["timestamp"], r["longitude"], r["latitude"]) for r in expected
    ]
    assert "subscription" not in got[0] and "seq" not in got[0]
    whole = query(landed.config, f"SELECT count(*) AS n FROM track_path('{track}')")
    assert whole == [{"n": len(unique)}]


def test_csv_json_and_table_outputs(landed: Landed, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT track_id, count(*) AS n FROM observations GROUP BY track_id ORDER BY track_id"
    want = sorted(Counter(r["track_id"] for r in landed.rows).items())
    done = run_cli(landed.config, "-c", sql, "--output", "csv")
    assert done.returncode == 0, done.stderr
    assert [(r["track_id"], int(r["n"])) for r in csv.DictReader(io.StringIO(done.stdout))] == want
    done = run_cli(landed.config, "-c", sql, "--output", "json")
    assert done.returncode == 0, done.stderr
    assert [(r["track_id"], r["n"]) for r in json.loads(done.stdout)] == want
    assert main(["sql", "--config", str(landed.config), "-c", sql]) == 0
    table = capsys.readouterr().out
    assert all(track in table for track, _ in want) and f"{len(want)} rows" in table


def test_several_statements_and_no_result(landed: Landed, tmp_path: Path) -> None:
    sql = (
        "SET VARIABLE t = 'ship-0000'; "
        "SELECT count(*) AS n FROM observations WHERE track_id = getvariable('t')"
    )
    assert query(landed.config, sql) == [
        {"n": sum(r["track_id"] == "ship-0000" for r in landed.rows)}
    ]
    out = tmp_path / "nothing.csv"
    argv = ["sql", "--config", str(landed.config), "-c", "CREATE TABLE t AS SELECT 1", "--out"]
    assert main([*argv, str(out), "--output", "csv"]) == 0
    assert not out.exists()  # a statement without a result writes nothing


def test_geojson_points_carry_every_other_column(landed: Landed, tmp_path: Path) -> None:
    out = tmp_path / "dc.geojson"
    sql = "SELECT * FROM observations WHERE subscription = 'dc'"
    argv = ["sql", "--config", str(landed.config), "-c", sql, "--output", "geojson"]
    assert main([*argv, "--out", str(out)]) == 0
    collection = json.loads(out.read_text())
    assert collection["type"] == "FeatureCollection"
    rows = {
        (r["seq"], r["track_id"], r["timestamp"]): r
        for r in landed.rows
        if r["subscription"] == "dc"
    }
    assert len(collection["features"]) == len(rows) > 0
    for feature in collection["features"]:
        props = feature["properties"]
        row = rows[(props["seq"], props["track_id"], datetime.fromisoformat(props["timestamp"]))]
        assert feature["geometry"] == {
            "type": "Point",
            "coordinates": [row["longitude"], row["latitude"]],
        }
        assert "longitude" not in props and "latitude" not in props
        # Property values are decoded JSON: 12 and "12" arrive as a number and a string.
        assert props["static_properties"] == {k: json.loads(v) for k, v in row["static_properties"]}
        assert props["name"] == row["name"] and props["extra"] == row["extra"]


def test_geojson_lines_one_per_track_in_time_order(landed: Landed, tmp_path: Path) -> None:
    out = tmp_path / "tracks.geojson"
    sql = (
        "SELECT track_id, timestamp, longitude, latitude FROM observations "
        f"WHERE track_id IN {DC_TRACKS} ORDER BY random()"  # lines are drawn in time order anyway
    )
    argv = ["sql", "--config", str(landed.config), "-c", sql, "--output", "geojson"]
    assert main([*argv, "--out", str(out), "--geojson-lines"]) == 0
    features = json.loads(out.read_text())["features"]
    assert {f["properties"]["track_id"] for f in features} == set(DC_TRACKS)
    for feature in features:
        track = feature["properties"]["track_id"]
        # The query's rows (duplicates across subscriptions included) sorted by time.
        mine = sorted(
            (r["timestamp"], r["longitude"], r["latitude"])
            for r in landed.rows
            if r["track_id"] == track
        )
        assert feature["geometry"]["type"] == "LineString"
        assert feature["geometry"]["coordinates"] == [[lon, lat] for _, lon, lat in mine]
        props = feature["properties"]
        assert props["points"] == len(mine)
        assert datetime.fromisoformat(props["start"]) == mine[0][0]
        assert datetime.fromisoformat(props["end"]) == mine[-1][0]


def test_geojson_from_a_wkb_point_column(landed: Landed, tmp_path: Path) -> None:
    wkb = struct.pack("<BIdd", 1, 1, -77.03, 38.9).hex()
    for expr in (f"from_hex('{wkb}')", f"ST_GeomFromWKB(from_hex('{wkb}'))"):
        out = tmp_path / "wkb.geojson"
        sql = f"SELECT 'x' AS track_id, {expr} AS geometry"
        argv = ["sql", "--config", str(landed.config), "-c", sql, "--output", "geojson"]
        assert main([*argv, "--out", str(out)]) == 0
        [feature] = json.loads(out.read_text())["features"]
        assert feature["geometry"] == {"type": "Point", "coordinates": [-77.03, 38.9]}
        assert feature["properties"] == {"track_id": "x"}


def test_geojson_opens_with_gdal(landed: Landed, tmp_path: Path) -> None:
    pyogrio = pytest.importorskip("pyogrio")  # GDAL's GeoJSON driver, as QGIS uses it
    out = tmp_path / "path.geojson"
    sql = "SELECT * FROM track_path('ground-0026')"
    argv = ["sql", "--config", str(landed.config), "-c", sql, "--output", "geojson"]
    assert main([*argv, "--out", str(out)]) == 0
    info = pyogrio.read_info(out)
    assert info["features"] == 1 and info["geometry_type"] == "LineString"
    sql = "SELECT * FROM observations WHERE subscription = 'dc'"
    argv = ["sql", "--config", str(landed.config), "-c", sql, "--output", "geojson"]
    assert main([*argv, "--out", str(out)]) == 0
    info = pyogrio.read_info(out)
    assert info["geometry_type"] == "Point"
    assert info["features"] == sum(r["subscription"] == "dc" for r in landed.rows)
    assert {"track_id", "timestamp", "live_properties", "name"} <= set(info["fields"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "SELEC 1"], "Parser Error"),
        (["-c", "SELECT * FROM no_such_table"], "no_such_table"),
        (["-c", "SELECT 1 AS x", "--output", "geojson"], "needs longitude and latitude"),
        (["-c", "SELECT 1 AS x", "--output", "parquet"], "needs --out"),
        (["-c", "SELECT 1.0 AS lon, 2.0 AS lat", "--output", "geojson", "--out", "/no/x"], "/no/x"),
        (["-c", "  "], "no SQL statement"),
        # No extension download: a path no registered filesystem serves fails at once.
        (["-c", "FROM read_parquet('https://example.invalid/x.parquet')"], "httpfs"),
    ],
)
def test_errors_exit_2_with_a_message(
    landed: Landed, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sql", "--config", str(landed.config), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_missing_landing_zone_and_bad_sql_as_a_process(landed: Landed, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", str(tmp_path / "nowhere"))
    done = run_cli(config, "-c", "SELECT 1")
    assert done.returncode == 2
    assert "no landing zone at sink.url" in done.stderr and "Traceback" not in done.stderr
    done = run_cli(landed.config, "-c", "SELECT nope FROM observations")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert 'column with name "nope"' in done.stderr or "nope" in done.stderr


def test_python_prompt_runs_a_piped_script(landed: Landed) -> None:
    script = (
        "SELECT count(*) AS n\n  FROM observations;\nSELEC 1;\nSELECT 40 + 2 AS answer;\n"
        ".quit\nSELECT 'not run';\n"
    )
    done = run_cli(landed.config, "--shell", "python", stdin=script)
    assert done.returncode == 2  # a statement failed
    assert str(len(landed.rows)) in done.stdout and "42" in done.stdout
    assert "not run" not in done.stdout and "Parser Error" in done.stderr
    done = run_cli(landed.config, "--shell", "python", stdin="SELECT 1 AS one;\n")
    assert done.returncode == 0


@pytest.mark.skipif(shutil.which("duckdb") is None, reason="the duckdb CLI is not installed")
def test_duckdb_cli_session_has_the_views(landed: Landed) -> None:
    script = (
        "SELECT count(*) AS n FROM observations;\nSELECT count(*) FROM track_path('ship-0000');\n"
    )
    done = run_cli(landed.config, "--shell", "duckdb", stdin=script)
    assert done.returncode == 0, done.stderr
    assert str(len(landed.rows)) in done.stdout


@pytest.mark.skipif(shutil.which("duckdb") is not None, reason="the duckdb CLI is installed")
def test_duckdb_shell_without_the_cli_says_so(
    landed: Landed, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sql", "--config", str(landed.config), "--shell", "duckdb"]) == 2
    assert "needs the duckdb CLI" in capsys.readouterr().err


def test_files_with_and_without_the_geoparquet_columns_read_side_by_side(
    landed: Landed, tmp_path: Path
) -> None:
    # One landed file rewritten as an older writer would have left it (no geometry, no bbox),
    # or, if this build does not write them yet, as a newer one (an extra column).
    landing = tmp_path / "landing"
    shutil.copytree(landed.landing, landing)
    original = sorted(landing.rglob("*.parquet"))[0]
    table = pq.read_table(original)
    geo = [c for c in ("geometry", "bbox") if c in table.column_names]
    other = table.drop_columns(geo) if geo else table.append_column("future", table["seq"])
    pq.write_table(other, original.with_name("z-other-000000000001-000000000001.parquet"))
    config = write_config(tmp_path / "c.toml", str(landing))
    column = geo[0] if geo else "future"
    [counts] = query(
        config,
        f"SELECT count(*) AS n, count({column}) AS with_column FROM observations",
    )
    assert counts["n"] == len(landed.rows) + other.num_rows
    assert counts["with_column"] == (len(landed.rows) if geo else other.num_rows)
