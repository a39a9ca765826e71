"""flush_cut end to end: a real spool, a real sink (local folder or S3 over HTTP), Parquet read
back with DuckDB and compared with the observations that went in."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest

from connector import ledger
from connector.flush import Lookahead, flush_cut
from connector.jobs import CutJob, FlushSettings
from connector.records import FrameMeta
from connector.sink import Sink
from connector.spool import DATA, DEAD, LEDGER, RecordMeta, Spool, read_ranges
from tests.oracle import row_to_observation

from .conftest import FAST, MotoS3

WRITER = "edge-1a2b3c4d"


def us(ts: str) -> int:
    dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def aircraft(track: str, ts: str, lon: float, lat: float, **more: Any) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "sourceSystemId": "adsb-feed",
        "collectionId": "air",
        "observationSpecId": "baz",
        "trackId": track,
        "position": {"longitude": lon, "latitude": lat, "elevation": 3120.5},
        "timestamp": ts,
        "name": f"flight {track}",
        "staticProperties": [{"propertyType": "tailNumber", "value": "N512B"}],
        "liveProperties": [
            {"propertyType": "speed", "value": 412.5},
            {"propertyType": "status", "value": "airborne"},
        ],
        "style": {"blueprintIconName": "airplane"},
    }
    obs.update(more)
    return obs


def ship(track: str, ts: str, lon: float, lat: float, **more: Any) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "sourceSystemId": "ais-feed",
        "collectionId": "maritime",
        "observationSpecId": "foo",
        "trackId": track,
        "position": {"longitude": lon, "latitude": lat},
        "timestamp": ts,
        "staticProperties": [{"propertyType": "mmsi", "value": "366900000"}],
        "liveProperties": [{"propertyType": "speed", "value": 11}],
    }
    obs.update(more)
    return obs


def frame(*observations: Any, sub_id: str = "3255ebeb") -> bytes:
    return json.dumps(
        {"type": "data", "id": sub_id, "observations": list(observations)}, ensure_ascii=False
    ).encode()


# A rejected observation, spelled with odd spacing and non-ASCII text: it must land verbatim.
BAD_OBSERVATION = '{ "sourceSystemId" : "ais-feed",  "collectionId":"maritime", "note": "Ñandú" }'
BROKEN_FRAME = b'{"type": "data", "id": "3255ebeb", "observations": [{"trackId": '
NOT_UTF8 = b"\xff\xfe\x00garbage"


@dataclass
class Fixture:
    """What went into the spool: expected rows keyed by (seq, track, timestamp)."""

    spool: Spool
    first: int
    last: int
    expected: dict[tuple[int, str, str], tuple[dict[str, Any], dict[str, Any]]]
    dead: list[dict[str, Any]]
    ledger: list[dict[str, Any]]

    def job(self, spool: Spool | None = None) -> CutJob:
        """The cut as the intake hands it to the converter: its byte ranges in the spool."""
        spool = spool or self.spool
        return CutJob(self.first, self.last, tuple(spool.ranges(self.first, self.last)))


def read(sink: Sink, relative: str) -> bytes:
    data: bytes = sink.fs.cat_file(sink.path(relative))
    return data


def fill_spool(directory: Path) -> Fixture:
    spool = Spool(directory, segment_bytes=2048, max_bytes=1 << 30)  # several segments
    spool.open(0)
    expected: dict[tuple[int, str, str], tuple[dict[str, Any], dict[str, Any]]] = {}
    dead: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []

    def data(
        observations: list[Any],
        received: str,
        sub: str,
        sub_id: str | None,
        origin: str = "stream",
        raw: bytes | None = None,
    ) -> int:
        meta = RecordMeta(sub=sub, id=sub_id, origin=origin, n=len(observations))
        body = raw if raw is not None else frame(*observations, sub_id=sub_id or "")
        seq = spool.append(DATA, meta, body, us(received))
        lineage = {"subscription": sub, "subscription_id": sub_id, "origin": origin}
        for obs in observations:
            if isinstance(obs, dict) and "trackId" in obs:
                lineage_row = {**lineage, "seq": seq, "received_at_us": us(received)}
                expected[(seq, obs["trackId"], obs["timestamp"])] = (obs, lineage_row)
        return seq

    first = data(
        [
            aircraft("aircraft-0002", "2024-06-24T17:05:00Z", -77.01, 38.89),
            aircraft("aircraft-0001", "2024-06-24T17:10:00.123456Z", -77.02, 38.88),
            aircraft("aircraft-0001", "2024-06-24T17:00:00.5Z", -77.03, 38.87, confidence=0.93),
        ],
        "2024-06-24T17:10:01Z",
        "air",
        "3255ebeb",
    )
    data(
        [
            aircraft("aircraft-0001", "2024-06-24T17:59:59.999999Z", -77.04, 38.86),
            aircraft("aircraft-0002", "2024-06-24T18:00:00Z", -77.05, 38.85, name=None),
            aircraft("aircraft-0001", "2024-06-24T18:00:00.000001Z", -77.06, 38.84),
        ],
        "2024-06-24T18:00:01Z",
        "air",
        "3255ebeb",
    )
    good_ship = ship("ship-0000", "2024-06-24T18:20:00Z", -76.90, 38.95)
    odd_ship = ship(
        "ship-0001",
        "2024-06-24T18:10:00Z",
        -76.91,
        38.96,
        sensorMeta={"sensor": "radar-3", "quality": "high"},
        name="東京丸",
    )
    odd_ship["position"]["elevation"] = None
    raw = (
        b'{"type": "data", "id": "7d1c", "observations": ['
        + json.dumps(good_ship).encode()
        + b", "
        + BAD_OBSERVATION.encode()
        + b", "
        + json.dumps(odd_ship, ensure_ascii=False).encode()
        + b"]}"
    )
    ships = data(
        [good_ship, json.loads(BAD_OBSERVATION), odd_ship],
        "2024-06-24T18:20:05Z",
        "sea",
        "7d1c",
        raw=raw,
    )
    dead.append(
        {
            "seq": ships,
            "reason": "observationSpecId is missing or not a string",
            "payload": BAD_OBSERVATION,
            "index": 1,
            "subscription": "sea",
        }
    )

    seq = spool.append(
        DEAD, RecordMeta(reason="malformed message"), BROKEN_FRAME, us("2024-06-24T18:21:00Z")
    )
    dead.append(
        {
            "seq": seq,
            "reason": "malformed message",
            "payload": BROKEN_FRAME.decode(),
            "index": None,
            "subscription": None,
        }
    )

    gap = ledger.event(
        ledger.GAP,
        "air",
        us("2024-06-24T18:30:00Z"),
        gap_start=us("2024-06-24T18:25:00Z"),
        gap_end=us("2024-06-24T18:30:00Z"),
        reason="disconnect",
    )
    spool.append(
        LEDGER, RecordMeta(), msgspec.json.encode(gap), us("2024-06-24T18:30:00Z"), force=True
    )
    events.append(gap)

    # Late data: an observation from the previous day arrives long after, via backfill.
    data(
        [
            aircraft("aircraft-0003", "2024-06-23T23:59:58Z", -77.5, 38.5),
            aircraft("aircraft-0001", "2024-06-24T17:00:00Z", -77.07, 38.83),
        ],
        "2024-06-24T18:31:00Z",
        "air",
        None,
        origin="backfill",
    )
    seq = data([], "2024-06-24T18:32:00Z", "sea", "7d1c", raw=NOT_UTF8)
    dead.append(
        {
            "seq": seq,
            "reason": "bad data frame",
            "payload_base64": NOT_UTF8,
            "index": None,
            "subscription": "sea",
        }
    )
    started = ledger.event(ledger.STREAM_STARTED, "sea", us("2024-06-24T18:33:00Z"))
    last = spool.append(
        LEDGER, RecordMeta(), msgspec.json.encode(started), us("2024-06-24T18:33:00Z"), force=True
    )
    events.append(started)
    spool.append_cut(first, last, us("2024-06-24T18:34:00Z"))
    # Not part of this cut: must not be flushed with it.
    spool.append(
        DATA,
        RecordMeta(sub="air", id="x", n=1),
        frame(aircraft("later", "2024-06-24T19:00:00Z", 0.0, 0.0)),
        us("2024-06-24T19:00:01Z"),
    )
    return Fixture(spool, first, last, expected, dead, events)


@pytest.fixture
def spooled(tmp_path: Path) -> Iterator[Fixture]:
    fx = fill_spool(tmp_path / "spool")
    yield fx
    fx.spool.close()


def connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    con.execute("SET TimeZone = 'UTC'")
    return con


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    rel = con.sql(sql)
    return [dict(zip(rel.columns, r, strict=True)) for r in rel.fetchall()]


def stem(first: int, last: int) -> str:
    return f"{WRITER}-{first:012d}-{last:012d}"


def expected_files(fx: Fixture) -> list[str]:
    s = stem(fx.first, fx.last)
    return sorted(
        [
            f"observation_spec_id=baz/date=2024-06-23/hour=23/{s}.parquet",
            f"observation_spec_id=baz/date=2024-06-24/hour=17/{s}.parquet",
            f"observation_spec_id=baz/date=2024-06-24/hour=18/{s}.parquet",
            f"observation_spec_id=foo/date=2024-06-24/hour=18/{s}.parquet",
            f"_dead_letter/{s}.jsonl",
            f"_ledger/{s}.jsonl",
        ]
    )


def check_landed_rows(fx: Fixture, got: list[dict[str, Any]]) -> None:
    """Every observation of the cut once, field by field, and nothing else."""
    assert len(got) == len(fx.expected)
    seen = set()
    for row in got:
        obs = row_to_observation(row)
        key = (row["seq"], obs["trackId"], obs["timestamp"])
        assert key not in seen
        seen.add(key)
        original, lineage = fx.expected[key]
        assert obs == original
        # The typed columns hold the values themselves, not just something that round-trips.
        assert row["track_id"] == original["trackId"]
        assert row["observation_spec_id"] == original["observationSpecId"]
        assert row["longitude"] == original["position"]["longitude"]
        assert row["latitude"] == original["position"]["latitude"]
        assert row["timestamp"] == datetime.fromisoformat(
            original["timestamp"].replace("Z", "+00:00")
        )
        assert row["received_at"] == datetime.fromtimestamp(lineage["received_at_us"] / 1e6, tz=UTC)
        for column in ("subscription", "subscription_id", "origin", "seq"):
            assert row[column] == lineage[column]
        # Hive partition columns agree with the observation time.
        assert row["date"] == row["timestamp"].date()
        assert row["hour"] == row["timestamp"].hour
        assert row["track_id"] != "later"
    assert seen == set(fx.expected)


def test_flush_lands_partitioned_sorted_parquet(spooled: Fixture, tmp_path: Path) -> None:
    fx = spooled
    sink = Sink(str(tmp_path / "lake"), **FAST)
    result = flush_cut(fx.job(), sink, FlushSettings(WRITER))

    assert sink.list() == expected_files(fx)
    parquet_files = [f for f in expected_files(fx) if f.endswith(".parquet")]
    assert sorted(p for p, _, _ in result.files) == parquet_files
    assert result.rows == len(fx.expected) == sum(n for _, n, _ in result.files)
    assert result.bytes == sum((tmp_path / "lake" / p).stat().st_size for p in parquet_files)
    assert result.rejected == 2 + 1  # one bad observation, one DEAD frame, one non-JSON frame
    assert result.ledger_events == 2
    assert result.rows_by_subscription == {"air": 8, "sea": 2}

    con = connect()
    root = tmp_path / "lake"
    got = rows(con, f"SELECT * FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true)")
    check_landed_rows(fx, got)

    # Inside each file, rows are sorted by (track_id, timestamp).
    for path in parquet_files:
        order = con.sql(
            f"SELECT track_id, timestamp FROM read_parquet('{root / path}', file_row_number=true)"
            " ORDER BY file_row_number"
        ).fetchall()
        assert order == sorted(order), path
        assert len(order) == next(n for p, n, _ in result.files if p == path)


def test_late_observation_lands_in_its_own_older_partition(
    spooled: Fixture, tmp_path: Path
) -> None:
    fx = spooled
    sink = Sink(str(tmp_path / "lake"), **FAST)
    flush_cut(fx.job(), sink, FlushSettings(WRITER))
    late = f"observation_spec_id=baz/date=2024-06-23/hour=23/{stem(fx.first, fx.last)}.parquet"
    got = rows(
        connect(),
        f"SELECT track_id, origin, received_at FROM read_parquet('{tmp_path / 'lake' / late}')",
    )
    assert got == [
        {
            "track_id": "aircraft-0003",
            "origin": "backfill",
            "received_at": datetime(2024, 6, 24, 18, 31, tzinfo=UTC),
        }
    ]


def test_flushing_the_same_cut_twice_is_idempotent(spooled: Fixture, tmp_path: Path) -> None:
    fx = spooled
    sink = Sink(str(tmp_path / "lake"), **FAST)
    flush_cut(fx.job(), sink, FlushSettings(WRITER))
    first_pass = {name: read(sink, name) for name in sink.list()}
    # A crash after the files, before the checkpoint: the restart replays the same cut.
    fx.spool.close()
    replay = Spool(fx.spool.dir, segment_bytes=2048, max_bytes=1 << 30)
    recovered = replay.open(0)
    assert recovered.cuts == [(fx.first, fx.last)]
    flush_cut(fx.job(replay), sink, FlushSettings(WRITER))
    replay.close()

    assert {name: read(sink, name) for name in sink.list()} == first_pass
    root = tmp_path / "lake"
    con = connect()
    [(total, distinct)] = con.sql(
        f"SELECT count(*), count(DISTINCT (seq, track_id, timestamp)) "
        f"FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true)"
    ).fetchall()
    assert total == distinct == len(fx.expected)


def test_dead_letters_are_verbatim_and_outside_the_parquet_glob(
    spooled: Fixture, tmp_path: Path
) -> None:
    fx = spooled
    root = tmp_path / "lake"
    sink = Sink(str(root), **FAST)
    flush_cut(fx.job(), sink, FlushSettings(WRITER))
    s = stem(fx.first, fx.last)
    lines = [json.loads(line) for line in read(sink, f"_dead_letter/{s}.jsonl").splitlines()]
    assert len(lines) == len(fx.dead)
    by_seq = {(d["seq"], d["index"]): d for d in lines}
    for want in fx.dead:
        got = by_seq[(want["seq"], want["index"])]
        assert got["reason"] == want["reason"]
        assert got["subscription"] == want["subscription"]
        assert isinstance(got["received_at_us"], int)
        if "payload_base64" in want:
            assert "payload" not in got
            assert base64.b64decode(got["payload_base64"]) == want["payload_base64"]
        else:
            assert got["payload"] == want["payload"]  # byte for byte, spacing included
    globbed = {str(p.relative_to(root)) for p in root.glob("**/*.parquet")}
    assert all(not g.startswith(("_dead_letter", "_ledger")) for g in globbed)
    assert len(globbed) == 4
    # DuckDB over the whole landing zone sees only observations.
    [(n,)] = (
        connect()
        .sql(f"SELECT count(*) FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true)")
        .fetchall()
    )
    assert n == len(fx.expected)


def test_ledger_events_land_as_json_lines(spooled: Fixture, tmp_path: Path) -> None:
    fx = spooled
    root = tmp_path / "lake"
    sink = Sink(str(root), **FAST)
    flush_cut(fx.job(), sink, FlushSettings(WRITER))
    got = rows(
        connect(),
        f"SELECT * FROM read_json_auto('{root}/_ledger/*.jsonl', format='newline_delimited')",
    )
    assert len(got) == 2
    gap, started = got
    assert gap == {
        "event": "gap",
        "subscription": "air",
        "reason": "disconnect",
        "recorded_at": datetime(2024, 6, 24, 18, 30, tzinfo=UTC),
        "gap_start": datetime(2024, 6, 24, 18, 25, tzinfo=UTC),
        "gap_end": datetime(2024, 6, 24, 18, 30, tzinfo=UTC),
    }
    assert started["event"] == "stream_started" and started["subscription"] == "sea"
    assert started["recorded_at"] == datetime(2024, 6, 24, 18, 33, tzinfo=UTC)
    raw = read(sink, f"_ledger/{stem(fx.first, fx.last)}.jsonl")
    assert [json.loads(line) for line in raw.splitlines()] == fx.ledger


@pytest.mark.parametrize(
    ("setting", "parquet_name"),
    [("zstd", "ZSTD"), ("snappy", "SNAPPY"), ("gzip", "GZIP"), ("none", "UNCOMPRESSED")],
)
def test_compression_setting_is_honoured(
    spooled: Fixture, tmp_path: Path, setting: str, parquet_name: str
) -> None:
    fx = spooled
    root = tmp_path / "lake"
    sink = Sink(str(root), **FAST)
    settings = FlushSettings(WRITER, compression=setting, row_group_rows=2)
    flush_cut(fx.job(), sink, settings)
    con = connect()
    meta = rows(
        con,
        f"SELECT file_name, row_group_id, compression, row_group_num_rows "
        f"FROM parquet_metadata('{root}/**/*.parquet')",
    )
    assert {m["compression"] for m in meta} == {parquet_name}
    assert max(m["row_group_num_rows"] for m in meta) <= 2  # row_group_rows honoured too
    got = rows(con, f"SELECT * FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true)")
    check_landed_rows(fx, got)


def test_flush_to_s3_reads_back_through_fsspec(spooled: Fixture, moto_s3: MotoS3) -> None:
    fx = spooled
    bucket = moto_s3.create_bucket()
    sink = Sink(f"s3://{bucket}/lake", moto_s3.options(), **FAST)
    flush_cut(fx.job(), sink, FlushSettings(WRITER))
    assert sink.list() == expected_files(fx)

    con = connect()
    sink.fs.invalidate_cache()
    con.register_filesystem(sink.fs)
    got = rows(
        con,
        f"SELECT * FROM read_parquet('s3://{bucket}/lake/**/*.parquet', hive_partitioning=true)",
    )
    check_landed_rows(fx, got)
    s = stem(fx.first, fx.last)
    events = rows(con, f"SELECT event FROM read_json_auto('s3://{bucket}/lake/_ledger/{s}.jsonl')")
    assert [e["event"] for e in events] == ["gap", "stream_started"]

    # Replay against the object store: same keys, same rows, no duplicates.
    before = {name: read(sink, name) for name in sink.list()}
    flush_cut(fx.job(), sink, FlushSettings(WRITER))
    assert {name: read(sink, name) for name in sink.list()} == before


def test_empty_cut_writes_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", segment_bytes=1 << 20, max_bytes=1 << 30)
    spool.open(0)
    seq = spool.append(DATA, RecordMeta(sub="air", id="x"), frame(), us("2024-06-24T17:00:00Z"))
    spool.append_cut(seq, seq, us("2024-06-24T17:00:01Z"))
    sink = Sink(str(tmp_path / "lake"), **FAST)
    result = flush_cut(CutJob(seq, seq, tuple(spool.ranges(seq, seq))), sink, FlushSettings(WRITER))
    spool.close()
    assert (result.files, result.rows, result.rejected) == ([], 0, 0)
    assert sink.list() == []


def test_a_damaged_record_is_reported_and_the_rest_of_the_cut_lands(
    spooled: Fixture, tmp_path: Path
) -> None:
    """A record whose bytes changed on disk (its crc fails) cannot be read back: the cut lands
    what is readable and reports the lost seq range (a raise would fail it on every start)."""
    fx = spooled
    fx.spool.close()
    job = fx.job()
    segment = Path(job.ranges[0].path)
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the first segment's records
    segment.write_bytes(bytes(data))
    sink = Sink(str(tmp_path / "lake"), **FAST)
    result = flush_cut(job, sink, FlushSettings(WRITER))
    assert len(result.missing) == 1
    lost_first, lost_last = result.missing[0]
    assert fx.first <= lost_first <= lost_last <= fx.last
    assert (lost_first, lost_last) != (fx.first, fx.last)  # later segments still land
    readable = [r for r in read_ranges(list(job.ranges), fx.first, fx.last)]
    assert all(not lost_first <= r.seq <= lost_last for r in readable)
    landed_seqs = {seq for (seq, _, _) in fx.expected if not lost_first <= seq <= lost_last}
    rows = duckdb.sql(f"SELECT DISTINCT seq FROM read_parquet('{tmp_path}/lake/**/*.parquet')")
    assert {s for (s,) in rows.fetchall()} == landed_seqs


def test_a_job_missing_a_byte_range_reports_the_hole(spooled: Fixture, tmp_path: Path) -> None:
    fx = spooled
    job = fx.job()
    assert len(job.ranges) > 2  # the fixture spans several segments
    short = CutJob(job.first, job.last, job.ranges[:1] + job.ranges[2:])
    sink = Sink(str(tmp_path / "lake"), **FAST)
    result = flush_cut(short, sink, FlushSettings(WRITER))
    assert len(result.missing) == 1 and result.rows > 0


def test_a_cut_larger_than_a_piece_lands_every_row_once(tmp_path: Path) -> None:
    """Cuts are converted a piece at a time; the pieces' tables become one set of files. Odd
    observations (unknown fields) in some frames take the general path, the rest the fast one."""
    from connector.flush import PIECE_OBSERVATIONS

    spool = Spool(tmp_path / "spool", segment_bytes=1 << 20, max_bytes=1 << 30)
    spool.open(0)
    per_frame = 500
    frames = (5 * PIECE_OBSERVATIONS // 2) // per_frame + 1
    base = us("2024-06-24T16:30:00Z")
    expected: set[tuple[int, str, int]] = set()
    odd = 0
    first = spool.next_seq
    for f in range(frames):
        observations = []
        for i in range(per_frame):
            at = base + (f * per_frame + i) * 200_000  # 0.2 s apart: about 3 hours in all
            ts = datetime.fromtimestamp(at / 1e6, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            obs = (ship if i % 2 else aircraft)(f"t-{i % 37}", ts, -77.0 + i / 1000, 38.0)
            if f % 7 == 3 and i % 100 == 0:
                obs["confidence"] = 0.5  # not in the documented shape
                odd += 1
            observations.append(obs)
        seq = spool.append(
            DATA,
            RecordMeta(sub="air", id="3255ebeb", n=per_frame),
            frame(*observations),
            base + f,
        )
        expected |= {(seq, o["trackId"], us(o["timestamp"])) for o in observations}
    last = spool.next_seq - 1
    spool.append_cut(first, last, base + frames)
    sink = Sink(str(tmp_path / "lake"), **FAST)
    result = flush_cut(
        CutJob(first, last, tuple(spool.ranges(first, last))), sink, FlushSettings(WRITER)
    )
    spool.close()

    assert result.rows == frames * per_frame == len(expected)
    assert result.rows_by_subscription == {"air": result.rows}
    assert result.slow_rows == odd > 0  # only the odd observations took the general path
    root = tmp_path / "lake"
    landed = connect().sql(
        f"SELECT seq, track_id, epoch_us(timestamp) FROM "
        f"read_parquet('{root}/**/*.parquet', hive_partitioning=true)"
    )
    got = landed.fetchall()
    assert len(got) == len(expected)
    assert set(got) == expected
    # One file per (spec, hour): two specs, three or four hours each.
    assert {p.split("/")[0] for p, _, _ in result.files} == {
        "observation_spec_id=baz",
        "observation_spec_id=foo",
    }
    assert len(result.files) == len({p.rsplit("/", 1)[0] for p, _, _ in result.files})


def test_a_frame_larger_than_a_piece_is_converted_in_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message may be 256 MiB: such a frame is split into piece-sized parts (memory holds
    one part's objects), every row lands once, and a rejected observation keeps its index in
    the original frame."""
    import connector.flush as flush_module

    monkeypatch.setattr(flush_module, "PIECE_OBSERVATIONS", 50)
    monkeypatch.setattr(flush_module, "PIECE_BYTES", 4096)
    spool = Spool(tmp_path / "spool", segment_bytes=1 << 20, max_bytes=1 << 30)
    spool.open(0)
    base = us("2024-06-24T17:00:00Z")
    observations: list[Any] = [
        ship(f"t-{i % 9}", f"2024-06-24T17:{i // 60:02d}:{i % 60:02d}Z", -77.0, 38.0)
        for i in range(230)
    ]
    observations[137] = {"trackId": "no ids, no position"}  # lands in _dead_letter/
    body = frame(*observations)
    assert len(body) > 4096
    seq = spool.append(DATA, RecordMeta(sub="sea", id="3255ebeb", n=230), body, base)
    spool.append_cut(seq, seq, base)
    sink = Sink(str(tmp_path / "lake"), **FAST)
    result = flush_cut(CutJob(seq, seq, tuple(spool.ranges(seq, seq))), sink, FlushSettings(WRITER))
    spool.close()

    assert (result.rows, result.rejected, result.missing) == (229, 1, [])
    rows = duckdb.sql(
        f"SELECT track_id, timestamp FROM read_parquet('{tmp_path}/lake/**/*.parquet')"
    ).fetchall()
    assert len(rows) == len(set(rows)) == 229
    [dead] = (tmp_path / "lake" / "_dead_letter").glob("*.jsonl")
    [line] = dead.read_text().splitlines()
    item = json.loads(line)
    assert item["index"] == 137 and json.loads(item["payload"]) == observations[137]


def test_parts_split_a_huge_frame_at_piece_size_and_keep_its_observations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import connector.flush as flush_module

    monkeypatch.setattr(flush_module, "PIECE_OBSERVATIONS", 40)
    monkeypatch.setattr(flush_module, "PIECE_BYTES", 1024)
    observations = [{"trackId": f"t-{i}", "n": i} for i in range(100)]
    meta = FrameMeta(5, 1, "sea", "x", "stream")
    parts = list(flush_module._parts(meta, frame(*observations), 100))
    assert [size for _, size in parts] == [40, 40, 20]
    assert [m.first_index for (m, _), _ in parts] == [0, 40, 80]
    rebuilt = [o for (_, body), _ in parts for o in json.loads(body)["observations"]]
    assert rebuilt == observations
    small = frame(*observations[:3])
    assert list(flush_module._parts(meta, small, 3)) == [((meta, small), 3)]


# -- Lookahead: the next cut prepared while this one is written -------------------------------


def halves(fx: Fixture) -> tuple[CutJob, CutJob]:
    middle = (fx.first + fx.last) // 2
    return (
        CutJob(fx.first, middle, tuple(fx.spool.ranges(fx.first, middle))),
        CutJob(middle + 1, fx.last, tuple(fx.spool.ranges(middle + 1, fx.last))),
    )


def landed(sink: Sink) -> dict[str, bytes]:
    return {name: read(sink, name) for name in sink.list()}


def landed_plainly(root: Path, *jobs: CutJob) -> dict[str, bytes]:
    """What flush_cut alone lands for these cuts: the reference for the lookahead."""
    plain = Sink(str(root), **FAST)
    for job in jobs:
        flush_cut(job, plain, FlushSettings(WRITER))
    return landed(plain)


def test_lookahead_lands_what_flush_cut_lands(spooled: Fixture, tmp_path: Path) -> None:
    one, two = halves(spooled)
    plain = landed_plainly(tmp_path / "plain", one, two)
    ahead = Sink(str(tmp_path / "ahead"), **FAST)
    lookahead = Lookahead()
    first = lookahead.flush(one, ahead, FlushSettings(WRITER), two)
    # Nothing of the cut prepared ahead is written before it is asked for.
    assert all(stem(two.first, two.last) not in name for name in ahead.list())
    second = lookahead.flush(two, ahead, FlushSettings(WRITER))
    assert landed(ahead) == plain
    assert first.rows + second.rows == len(spooled.expected)


def test_lookahead_uses_the_cut_it_prepared(spooled: Fixture, tmp_path: Path) -> None:
    one, two = halves(spooled)
    plain = landed_plainly(tmp_path / "plain", two)
    sink = Sink(str(tmp_path / "ahead"), **FAST)
    lookahead = Lookahead()
    lookahead.flush(one, sink, FlushSettings(WRITER), two)
    assert lookahead._ahead is not None  # white box: wait for the preparation to finish
    lookahead._ahead[1].result()
    spooled.spool.close()
    for segment in spooled.spool.dir.iterdir():
        segment.unlink()  # reading the spool now would find nothing
    result = lookahead.flush(two, sink, FlushSettings(WRITER))
    assert result.missing == [] and result.rows > 0
    assert {n: b for n, b in landed(sink).items() if stem(two.first, two.last) in n} == plain


def test_a_retry_of_an_earlier_cut_is_not_confused_with_the_one_ahead(
    spooled: Fixture, tmp_path: Path
) -> None:
    one, two = halves(spooled)
    plain = landed_plainly(tmp_path / "plain", one, two)
    sink = Sink(str(tmp_path / "ahead"), **FAST)
    lookahead = Lookahead()
    lookahead.flush(one, sink, FlushSettings(WRITER), two)
    lookahead.flush(one, sink, FlushSettings(WRITER), two)  # the committer retries cut one
    lookahead.flush(two, sink, FlushSettings(WRITER), one)  # a stale hint is dropped later
    lookahead.flush(two, sink, FlushSettings(WRITER))
    assert landed(sink) == plain


def test_a_failed_preparation_is_the_cut_s_own_error(spooled: Fixture, tmp_path: Path) -> None:
    one, two = halves(spooled)
    gone = CutJob(two.first, two.last, tuple(replace(r, path=r.path + ".gone") for r in two.ranges))
    with pytest.raises(FileNotFoundError):
        flush_cut(gone, Sink(str(tmp_path / "plain"), **FAST), FlushSettings(WRITER))
    sink = Sink(str(tmp_path / "ahead"), **FAST)
    lookahead = Lookahead()
    lookahead.flush(one, sink, FlushSettings(WRITER), gone)  # its error waits for its turn
    with pytest.raises(FileNotFoundError):
        lookahead.flush(gone, sink, FlushSettings(WRITER))
    assert lookahead.flush(two, sink, FlushSettings(WRITER)).rows > 0  # and nothing sticks
