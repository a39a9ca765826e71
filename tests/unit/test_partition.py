"""connector.partition: a cut's table -> Hive partitions by the UTC date/hour of each row's own
timestamp, each with a row order by (track_id, timestamp, seq)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pyarrow as pa

from connector.partition import split
from connector.records import Columns, FrameMeta
from connector.timeparse import format_us


def table_of(rows: list[tuple[str, str, str]]) -> pa.Table:
    """(spec, track, timestamp) triples -> a real table built by connector.records."""
    columns = Columns()
    for seq, (spec, track, ts) in enumerate(rows, start=1):
        observation = {
            "sourceSystemId": "s",
            "collectionId": "c",
            "observationSpecId": spec,
            "trackId": track,
            "position": {"longitude": 1.0, "latitude": 2.0},
            "timestamp": ts,
        }
        columns.add_observations(
            FrameMeta(seq, 1_719_248_400_000_000, "dc", "id", "stream"),
            [(0, msgspec.json.encode(observation))],
        )
    assert columns.rejected == []
    return columns.to_table()


def parts_of(table: pa.Table) -> dict[str, pa.Table]:
    """folder -> its rows in the order `split` asks them to be written."""
    out: dict[str, pa.Table] = {}
    for directory, part, order in split(table):
        assert directory not in out
        # A permutation of the part's rows: none lost, none written twice.
        assert sorted(order.to_pylist()) == list(range(part.num_rows))
        out[directory] = part.take(order)
    return out


def test_partitions_by_utc_date_and_hour_with_late_rows_apart() -> None:
    table = table_of(
        [
            ("baz", "t2", "2024-06-24T17:59:59.999999Z"),
            ("baz", "t1", "2024-06-24T18:00:00Z"),
            ("baz", "t1", "2024-06-24T19:30:00+01:00"),  # 18:30Z
            ("baz", "t0", "2024-06-23T02:00:00Z"),  # a late straggler from yesterday
            ("baz", "t0", "2024-06-25T00:30:00+01:00"),  # 23:30Z on the 24th
            ("other", "t9", "2024-06-24T17:10:00Z"),
        ]
    )
    parts = parts_of(table)
    assert sorted(parts) == [
        "observation_spec_id=baz/date=2024-06-23/hour=02",
        "observation_spec_id=baz/date=2024-06-24/hour=17",
        "observation_spec_id=baz/date=2024-06-24/hour=18",
        "observation_spec_id=baz/date=2024-06-24/hour=23",
        "observation_spec_id=other/date=2024-06-24/hour=17",
    ]
    assert sum(t.num_rows for t in parts.values()) == table.num_rows
    assert parts["observation_spec_id=baz/date=2024-06-23/hour=02"]["seq"].to_pylist() == [4]
    assert parts["observation_spec_id=baz/date=2024-06-24/hour=23"]["seq"].to_pylist() == [5]
    for directory, part in parts.items():
        assert part.schema == table.schema
        for ts in part["timestamp"].to_pylist():
            assert directory.endswith(f"date={ts:%Y-%m-%d}/hour={ts.hour:02d}")


def test_rows_sorted_by_track_then_timestamp_then_seq() -> None:
    table = table_of(
        [
            ("baz", "b", "2024-06-24T17:00:03Z"),
            ("baz", "a", "2024-06-24T17:00:05Z"),
            ("baz", "b", "2024-06-24T17:00:01Z"),
            ("baz", "a", "2024-06-24T17:00:05Z"),
            ("baz", "Z", "2024-06-24T17:59:00Z"),
            ("baz", "é", "2024-06-24T17:00:00Z"),
            ("baz", "a", "2024-06-24T17:00:00.5Z"),
        ]
    )
    [part] = parts_of(table).values()
    keys = list(
        zip(
            part["track_id"].to_pylist(),
            part["timestamp"].to_pylist(),
            part["seq"].to_pylist(),
            strict=True,
        )
    )
    assert keys == sorted(keys)
    assert part["seq"].to_pylist() == [5, 7, 2, 4, 3, 1, 6]


def test_spec_ids_that_look_like_paths_stay_one_partition_level() -> None:
    parts = parts_of(
        table_of([("a/b", "t", "2024-06-24T17:00:00Z"), ("a=b", "t", "2024-06-24T17:00:00Z")])
    )
    assert sorted(parts) == [
        "observation_spec_id=a%2Fb/date=2024-06-24/hour=17",
        "observation_spec_id=a%3Db/date=2024-06-24/hour=17",
    ]
    assert all(k.count("/") == 2 for k in parts)


def test_old_years_are_zero_padded_and_pre_epoch_hours_floor() -> None:
    parts = parts_of(
        table_of([("baz", "t", "0099-03-01T05:10:00Z"), ("baz", "t", "1969-12-31T23:59:59Z")])
    )
    assert sorted(parts) == [
        "observation_spec_id=baz/date=0099-03-01/hour=05",
        "observation_spec_id=baz/date=1969-12-31/hour=23",
    ]


def test_every_hour_of_a_day_gets_its_own_partition() -> None:
    start = datetime(2024, 2, 28, 22, 0, tzinfo=UTC)
    stamps = [start + timedelta(minutes=37 * i) for i in range(100)]
    us = [(s - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) for s in stamps]
    parts = parts_of(table_of([("baz", "t", format_us(u)) for u in us]))
    expected = {f"observation_spec_id=baz/date={s:%Y-%m-%d}/hour={s.hour:02d}" for s in stamps}
    assert set(parts) == expected
    assert "observation_spec_id=baz/date=2024-02-29/hour=23" in parts  # leap day


def test_empty_table_has_no_partitions() -> None:
    assert list(split(Columns().to_table())) == []


def test_a_single_partition_is_the_whole_table_in_sort_order() -> None:
    """One spec, one hour (the common cut): every row, ordered, nothing of another hour."""
    stamps = [f"2024-06-24T17:{m:02d}:00Z" for m in (59, 0, 30, 30, 1)]
    table = table_of([("baz", t, ts) for t, ts in zip("bacab", stamps, strict=True)])
    [(directory, part, order)] = list(split(table))
    assert directory == "observation_spec_id=baz/date=2024-06-24/hour=17"
    assert part.num_rows == table.num_rows
    ordered = part.take(order)
    keys = list(
        zip(
            ordered["track_id"].to_pylist(),
            ordered["timestamp"].to_pylist(),
            ordered["seq"].to_pylist(),
            strict=True,
        )
    )
    assert keys == sorted(keys)
    assert sorted(ordered["seq"].to_pylist()) == [1, 2, 3, 4, 5]
