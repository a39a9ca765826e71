"""Queries over a day of landed files read only what they need, by DuckDB's own account.

A day of observations (2,000 tracks, timestamps spread over 24 hours) is landed by the real
write path: cuts of the stream as the batcher makes them -> convert -> split -> parquet.encode,
each file at its hive folder under its cut's name. Queries run on the `sql` command's own
`observations` view (connector.sqlviews), with DuckDB's profiling on; the figures its parquet
scan reports (files read, row groups scanned, rows scanned) are checked against counts taken
independently from the files' Parquet metadata, and every result against a pyarrow filter.

What the profiles show:
- `date = ... AND hour = ...` prunes files: only the hour's folder is opened.
- a `timestamp` range opens every file and skips row groups by their statistics: each file
  holds one hour, so a whole hour reads exactly the hour's row groups; inside an hour, files
  of cuts outside the range are skipped, but nothing finer (rows are sorted by track, so every
  row group spans its file's whole time slice).
- `track_id = ...` skips row groups by statistics: rows are sorted by (track_id, timestamp),
  so a track's rows in a file sit in one row group, or two when they straddle a boundary.

Sizes are scaled down to keep the test fast: cuts of 10,000 rows and row groups of 1,000 give
files of up to 10 row groups, as cuts of 50,000 rows (batch.max_rows) would with row groups of
5,000. With the default row groups of 25,000, such a file has at most 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from connector import layout, parquet, sqlviews
from connector.columnar import convert
from connector.partition import split
from connector.records import FrameMeta

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from loadserver import FRAME_HEAD, FRAME_TAIL, TRACKS, observation_parts

DAY = datetime(2026, 11, 29, tzinfo=UTC)
OBSERVATIONS = 288_000  # 12,000 an hour; observation i is on track i % TRACKS
STEP_US = 86_400_000_000 // OBSERVATIONS
PER_MESSAGE = 500
CUT_ROWS = 10_000  # not a divisor of an hour's rows: most hours get files from 2 cuts
ROW_GROUP_ROWS = 1_000
HOUR = 13
TRACK = "track-0042"
COLUMNS = "track_id, epoch_us(timestamp), seq"


@dataclass(frozen=True)
class Group:
    """One row group of one landed file, from the file's Parquet metadata."""

    path: Path
    rows: int
    track_min: str
    track_max: str
    time_min: datetime
    time_max: datetime

    def admits(self, start: datetime, end: datetime) -> bool:
        """Whether the statistics admit a row with start <= timestamp < end."""
        return self.time_min < end and self.time_max >= start


@dataclass(frozen=True)
class Day:
    root: Path
    files: dict[Path, str]  # every landed file -> its partition folder (relative to root)
    groups: list[Group]
    table: pa.Table  # every row: track_id, timestamp, seq (read back with pyarrow)

    def files_in(self, folder: str) -> set[Path]:
        return {path for path, at in self.files.items() if at == folder}

    def groups_in(self, paths: set[Path]) -> list[Group]:
        return [g for g in self.groups if g.path in paths]


@dataclass(frozen=True)
class Scan:
    """What DuckDB's profile says the parquet scan did."""

    files_read: int
    scanning_files: str | None  # "read/total", present when hive filters pruned the file list
    filenames: list[str]
    row_groups_scanned: int
    row_groups_total: int
    rows_scanned: int
    bytes_scanned: int


def _observations() -> Iterator[bytes]:
    """The load server's observations, with timestamps STEP_US apart from DAY's midnight."""
    start = int(DAY.timestamp())
    seconds: dict[int, bytes] = {}
    for i, (before, after) in enumerate(observation_parts(OBSERVATIONS, 7)):
        second, micros = divmod(i * STEP_US, 1_000_000)
        text = seconds.get(second)
        if text is None:
            at = datetime.fromtimestamp(start + second, UTC)
            text = seconds[second] = at.strftime("%Y-%m-%dT%H:%M:%S").encode()
        yield before + text + b".%06dZ" % micros + after


def _land(root: Path) -> None:
    """Cuts of CUT_ROWS observations (frames of PER_MESSAGE), landed as connector.flush does."""
    observations = list(_observations())
    seq = 0
    for start in range(0, OBSERVATIONS, CUT_ROWS):
        cut = observations[start : start + CUT_ROWS]
        frames = [
            FRAME_HEAD + b",".join(cut[i : i + PER_MESSAGE]) + FRAME_TAIL
            for i in range(0, len(cut), PER_MESSAGE)
        ]
        received = int(DAY.timestamp() * 1_000_000) + (start + len(cut)) * STEP_US
        converted = convert(
            [
                (FrameMeta(seq + n, received, "all", "sub-1", "stream"), f)
                for n, f in enumerate(frames)
            ]
        )
        assert not converted.rejected
        stem = layout.file_stem("w", seq, seq + len(frames) - 1)
        for folder, part, order in split(converted.table):
            data = parquet.encode(
                part, compression="zstd", row_group_rows=ROW_GROUP_ROWS, order=order
            )
            path = root / folder / f"{stem}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data.to_pybytes())
        seq += len(frames)


def _read_back(root: Path) -> Day:
    files = {p: str(p.parent.relative_to(root)) for p in sorted(root.rglob("*.parquet"))}
    groups, tables = [], []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        names = [meta.schema.column(i).path for i in range(meta.num_columns)]
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            track = group.column(names.index("track_id")).statistics
            time = group.column(names.index("timestamp")).statistics
            for stats in (track, time):
                assert stats is not None and stats.has_min_max, f"{path} row group {g}: no stats"
            groups.append(Group(path, group.num_rows, track.min, track.max, time.min, time.max))
        tables.append(pq.read_table(path, columns=["track_id", "timestamp", "seq"]))
    return Day(root, files, groups, pa.concat_tables(tables))


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Day:
    root = tmp_path_factory.mktemp("pruning") / "lake"
    _land(root)
    landed = _read_back(root)
    # The premises of every figure below; without them the test would prove nothing.
    assert landed.table.num_rows == OBSERVATIONS
    assert len({at for at in landed.files.values()}) == 24
    assert len(landed.files_in(_folder(HOUR))) > 1  # the hour has files from several cuts
    assert len(landed.groups) >= 4 * len(landed.files)  # files have several row groups
    return landed


@pytest.fixture
def con(day: Day) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    for statement in sqlviews.session_sql(
        observations_base=str(day.root),
        ledger_base=None,
        dead_letters_base=None,
        empty_observations=[],
    ):
        connection.execute(statement)
    # no_output: the profile is kept for get_profiling_information(), nothing is printed.
    connection.execute("PRAGMA enable_profiling = 'no_output'")
    yield connection
    connection.close()


def _folder(hour: int) -> str:
    return layout.partition_dir("baz", DAY.date().isoformat(), hour)


def _query(con: duckdb.DuckDBPyConnection, where: str) -> tuple[list[tuple[Any, ...]], Scan]:
    """The rows (sorted) and the parquet scan's figures of `SELECT COLUMNS ... WHERE where`."""
    rows = con.sql(f"SELECT {COLUMNS} FROM observations WHERE {where}").fetchall()
    profile = json.loads(con.get_profiling_information(format="json"))
    [scan] = [n for n in _nodes(profile) if n.get("type") == "TABLE_SCAN"]
    info = scan["extra_info"]
    assert info["Function"] == "READ_PARQUET"
    names = info.get("Filename(s)", "")
    return sorted(rows), Scan(
        files_read=int(info["Total Files Read"]),
        scanning_files=info.get("Scanning Files"),
        filenames=names.split(", ") if names else [],
        row_groups_scanned=scan["row_groups_scanned"],
        row_groups_total=scan["total_row_groups_to_scan"],
        rows_scanned=scan["rows_scanned"],
        bytes_scanned=scan["bytes_scanned"],
    )


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("operator", []) + node.get("children", []):
        yield from _nodes(child)


def _expected(day: Day, mask: pa.Array) -> list[tuple[Any, ...]]:
    rows = day.table.filter(mask)
    micros = pc.cast(rows["timestamp"], pa.int64())
    return sorted(
        zip(rows["track_id"].to_pylist(), micros.to_pylist(), rows["seq"].to_pylist(), strict=True)
    )


def _in_hour(day: Day, start: datetime, end: datetime) -> pa.Array:
    stamps = day.table["timestamp"]
    return pc.and_(
        pc.greater_equal(stamps, pa.scalar(start, stamps.type)),
        pc.less(stamps, pa.scalar(end, stamps.type)),
    )


def _hour(hour: int, minute: int = 0) -> datetime:
    return DAY.replace(hour=hour, minute=minute)


def test_an_hour_by_its_partition_columns_opens_only_that_folder(
    day: Day, con: duckdb.DuckDBPyConnection
) -> None:
    rows, scan = _query(con, f"date = '{DAY.date()}' AND hour = {HOUR}")

    hour_files = day.files_in(_folder(HOUR))
    hour_groups = day.groups_in(hour_files)
    assert scan.scanning_files == f"{len(hour_files)}/{len(day.files)}"
    assert scan.files_read == len(hour_files)
    assert {Path(name) for name in scan.filenames} == hour_files
    # Every row group of those files and nothing else: the pruning happened at the files.
    assert scan.row_groups_total == scan.row_groups_scanned == len(hour_groups)
    assert scan.rows_scanned == sum(g.rows for g in hour_groups) == len(rows)
    assert rows == _expected(day, _in_hour(day, _hour(HOUR), _hour(HOUR + 1)))


def test_an_hour_as_a_timestamp_range_opens_every_file_and_skips_row_groups(
    day: Day, con: duckdb.DuckDBPyConnection
) -> None:
    rows, scan = _query(
        con,
        f"timestamp >= '{DAY.date()} {HOUR}:00' AND timestamp < '{DAY.date()} {HOUR + 1}:00'",
    )

    hour_groups = day.groups_in(day.files_in(_folder(HOUR)))
    # No file is pruned (DuckDB knows nothing of the folders' meaning), but the row groups of
    # other hours are skipped by their timestamp statistics: what is read is the hour's.
    assert [g for g in day.groups if g.admits(_hour(HOUR), _hour(HOUR + 1))] == hour_groups
    assert scan.scanning_files is None
    assert scan.files_read == len(day.files)
    assert scan.row_groups_total == len(day.groups)
    assert scan.row_groups_scanned == len(hour_groups)
    assert scan.rows_scanned == sum(g.rows for g in hour_groups) == len(rows)
    assert rows == _expected(day, _in_hour(day, _hour(HOUR), _hour(HOUR + 1)))


def test_a_range_inside_an_hour_skips_the_files_of_other_cuts(
    day: Day, con: duckdb.DuckDBPyConnection
) -> None:
    start, end = _hour(HOUR, 30), _hour(HOUR, 45)
    rows, scan = _query(
        con, f"timestamp >= '{start:%Y-%m-%d %H:%M}' AND timestamp < '{end:%Y-%m-%d %H:%M}'"
    )

    hour_files = day.files_in(_folder(HOUR))
    admitted = [g for g in day.groups if g.admits(start, end)]
    touched = {g.path for g in admitted}
    assert scan.row_groups_scanned == len(admitted)
    # The stream arrives in time order, so each cut's file holds a slice of the hour and the
    # files of cuts outside the range are skipped; but rows are sorted by track first, so every
    # row group of a file spans the file's slice: within a file, time prunes nothing.
    assert touched < hour_files
    assert admitted == day.groups_in(touched)
    assert rows == _expected(day, _in_hour(day, start, end))
    assert 0 < len(rows) < sum(g.rows for g in admitted) / 2


def test_one_track_skips_most_row_groups(day: Day, con: duckdb.DuckDBPyConnection) -> None:
    rows, scan = _query(con, f"track_id = '{TRACK}'")

    # The row groups whose statistics admit the track: the only ones a reader must decode.
    admitted = [g for g in day.groups if g.track_min <= TRACK <= g.track_max]
    total_rows = sum(g.rows for g in day.groups)
    read_rows = sum(g.rows for g in admitted)
    assert scan.files_read == len(day.files)  # no file is skipped: each holds every track
    assert scan.row_groups_total == len(day.groups)
    assert scan.row_groups_scanned == len(admitted)
    # Sorted by track, a track's rows in a file lie in one row group or straddle two.
    per_file = {path: sum(g.path == path for g in admitted) for path in day.files}
    assert max(per_file.values()) <= 2
    assert read_rows <= 2 * ROW_GROUP_ROWS * len(day.files)
    # At most 2 row groups a file, of files of 6 on average (4 at least: see `day`).
    assert read_rows * 4 < total_rows
    # rows_scanned counts the rows the scan emits after its pushed-down filter, not the rows
    # it decoded: those are bounded by the admitted row groups' rows above.
    assert scan.rows_scanned == len(rows) <= read_rows
    expected = _expected(day, pc.equal(day.table["track_id"], TRACK))
    assert rows == expected
    assert len(rows) == OBSERVATIONS // TRACKS


def test_an_hour_and_a_track_prune_both_files_and_row_groups(
    day: Day, con: duckdb.DuckDBPyConnection
) -> None:
    rows, scan = _query(con, f"date = '{DAY.date()}' AND hour = {HOUR} AND track_id = '{TRACK}'")

    hour_files = day.files_in(_folder(HOUR))
    admitted = [g for g in day.groups_in(hour_files) if g.track_min <= TRACK <= g.track_max]
    assert scan.files_read == len(hour_files)
    assert scan.row_groups_total == len(day.groups_in(hour_files))
    assert scan.row_groups_scanned == len(admitted) <= 2 * len(hour_files)
    mask = pc.and_(
        _in_hour(day, _hour(HOUR), _hour(HOUR + 1)), pc.equal(day.table["track_id"], TRACK)
    )
    assert rows == _expected(day, mask)
    assert len(rows) == OBSERVATIONS // TRACKS // 24


def test_statistics_are_kept_where_they_prune_and_only_there(day: Day) -> None:
    meta = pq.ParquetFile(next(iter(day.files))).metadata
    group = meta.row_group(0)
    stats = {
        meta.schema.column(i).path: group.column(i).is_stats_set for i in range(meta.num_columns)
    }
    pruning = ["timestamp", "track_id", "observation_spec_id", "seq", "received_at"]
    assert all(stats[c] for c in pruning + [f"bbox.{k}" for k in ("xmin", "ymin", "xmax", "ymax")])
    # WKB bytes, map entries and the extra JSON text: min/max there would prune nothing.
    assert not stats["geometry"] and not stats["extra"]
    assert not any(v for k, v in stats.items() if k.endswith(("key_value.key", "key_value.value")))
