"""Where things land: Hive partition folder names, deterministic file names, and the hour
folders a time window covers (connector.layout, pure and free of pyarrow)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from connector.layout import SPEC_PREFIX, file_stem, hour_dirs, partition_dir

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(microseconds=1)


def test_partition_dir_and_file_stem() -> None:
    assert (
        partition_dir("baz", "2024-06-24", 7) == "observation_spec_id=baz/date=2024-06-24/hour=07"
    )
    assert partition_dir("a/b=c d", "2024-06-24", 17) == (
        "observation_spec_id=a%2Fb%3Dc%20d/date=2024-06-24/hour=17"
    )
    assert file_stem("w1", 1, 1234) == "w1-000000000001-000000001234"
    assert sorted([file_stem("w", 9, 10), file_stem("w", 10, 11)]) == [
        file_stem("w", 9, 10),
        file_stem("w", 10, 11),
    ]


def test_hour_dirs_cover_every_hour_of_the_window_inclusive() -> None:
    start = datetime(2024, 2, 28, 22, 59, 59, 999_999, tzinfo=UTC)
    end = datetime(2024, 3, 1, 1, 0, tzinfo=UTC)  # exactly on an hour: that hour is included
    dirs = hour_dirs(us(start), us(end))
    expected = []
    hour = start.replace(minute=0, second=0, microsecond=0)
    while hour <= end:
        expected.append(f"date={hour:%Y-%m-%d}/hour={hour:%H}")
        hour += timedelta(hours=1)
    assert dirs == expected
    assert "date=2024-02-29/hour=23" in dirs  # leap day
    assert dirs[0] == "date=2024-02-28/hour=22" and dirs[-1] == "date=2024-03-01/hour=01"
    # Each is exactly what a partition folder ends with, below its spec folder.
    for d in dirs:
        date, hour_text = d.removeprefix("date=").split("/hour=")
        assert partition_dir("baz", date, int(hour_text)) == f"{SPEC_PREFIX}baz/{d}"


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        # One instant: its own hour.
        (datetime(2024, 6, 24, 17, 30, tzinfo=UTC), None, ["date=2024-06-24/hour=17"]),
        # Before the epoch the hour floors (does not truncate toward zero).
        (
            datetime(1969, 12, 31, 23, 0, 0, 1, tzinfo=UTC),
            datetime(1970, 1, 1, 0, 0, tzinfo=UTC),
            ["date=1969-12-31/hour=23", "date=1970-01-01/hour=00"],
        ),
    ],
)
def test_hour_dirs_edges(start: datetime, end: datetime | None, expected: list[str]) -> None:
    assert hour_dirs(us(start), us(end or start)) == expected


def test_hour_dirs_of_an_empty_window_is_empty() -> None:
    t = us(datetime(2024, 6, 24, 17, 30, tzinfo=UTC))
    assert hour_dirs(t, t - 3_600_000_000) == []


def test_long_partition_values_are_bounded_distinct_and_stable() -> None:
    """A 10,000-character spec id must not make a folder name no file system accepts."""
    long_a, long_b = "a" * 10_000, "a" * 9_999 + "b"
    for value in (long_a, long_b, "é" * 400, "\ud800" * 300, "x/" * 200):
        folder = partition_dir(value, "2024-06-24", 7).split("/")[0]
        assert len(folder.encode()) <= 255
        assert partition_dir(value, "2024-06-24", 7) == partition_dir(value, "2024-06-24", 7)
        assert "/" not in folder
    assert partition_dir(long_a, "2024-06-24", 7) != partition_dir(long_b, "2024-06-24", 7)
    # Short values keep their readable, reversible form.
    assert partition_dir("baz", "2024-06-24", 7).startswith("observation_spec_id=baz/")


def test_a_landed_file_with_a_very_long_spec_id_can_be_written(tmp_path: Path) -> None:
    spec = "spec-" + "é" * 3000
    path = tmp_path / partition_dir(spec, "2024-06-24", 7) / (file_stem("w-1", 1, 2) + ".parquet")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PAR1")
    assert path.read_bytes() == b"PAR1"
