"""connector.lookups: what backfill dedupes against. Identities landed in a real sink (a local
folder, memory:// and S3 over HTTP), found under every spec's folder, and identities still in a
real spool, read from its byte ranges. Expected identities are computed here from the
observations themselves, and must agree with how backfill identifies what it fetches."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from connector.backfill import identity
from connector.flush import flush_cut
from connector.jobs import CutJob, FlushSettings, Identity
from connector.layout import hour_dirs
from connector.lookups import identities, landed_identities, spooled_identities
from connector.sink import Sink
from connector.spool import DATA, DEAD, LEDGER, RecordMeta, Spool

from .conftest import SinkTarget

WRITER = "edge-1a2b3c4d"
EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")
_FRACTION = re.compile(r"\.(\d+)")


def micros(ts: str) -> int:
    """Microseconds since the epoch, digits beyond the sixth dropped (datetime arithmetic)."""
    match = _FRACTION.search(ts)
    digits = match.group(1) if match else ""
    plain = _FRACTION.sub("", ts).replace("Z", "+00:00")
    whole = (datetime.fromisoformat(plain) - EPOCH) // timedelta(microseconds=1)
    return whole + int(digits[:6].ljust(6, "0") or 0)


def observation(spec: str, track: str, ts: str, **more: Any) -> dict[str, Any]:
    return {
        "sourceSystemId": "adsb-feed",
        "collectionId": "air",
        "observationSpecId": spec,
        "trackId": track,
        "position": {"longitude": -77.0, "latitude": 38.9},
        "timestamp": ts,
        **more,
    }


def ident(obs: dict[str, Any]) -> Identity:
    return (
        obs["sourceSystemId"],
        obs["collectionId"],
        obs["observationSpecId"],
        obs["trackId"],
        micros(obs["timestamp"]),
    )


def frame(observations: list[dict[str, Any]]) -> bytes:
    return json.dumps({"type": "data", "id": "3255ebeb", "observations": observations}).encode()


def new_spool(directory: Path, segment_bytes: int = 1 << 20) -> Spool:
    spool = Spool(directory, segment_bytes=segment_bytes, max_bytes=1 << 30)
    spool.open(0)
    return spool


def spool_frame(spool: Spool, sub: str, observations: list[dict[str, Any]], **meta: Any) -> int:
    record = RecordMeta(sub=sub, n=len(observations), **({"id": "3255ebeb"} | meta))
    return spool.append(DATA, record, frame(observations), micros("2024-06-24T19:00:00Z"))


START, END = micros("2024-06-24T17:10:00Z"), micros("2024-06-24T18:20:00Z")
AIR = [
    observation("baz", "a1", "2024-06-24T17:10:00Z"),  # exactly at the start: in
    observation("baz", "a1", "2024-06-24T17:09:59.999999Z"),  # a microsecond before: out
    observation("baz", "a2", "2024-06-24T18:20:00.000000999Z"),  # 9 digits, floors to END: in
    observation("baz", "a2", "2024-06-24T18:20:00.000001Z"),  # after the end: out
    observation("foo", "f1", "2024-06-24T17:30:00Z"),  # another spec's folder: in
    observation("a/b", "p1", "2024-06-24T19:45:00+02:00"),  # 17:45Z, spec folder encoded: in
    observation("baz", "a3", "2024-06-24T18:05:00Z", name=None, sensor={"x": 1}),  # slow path
    observation("baz", "a4", "2024-06-24T21:00:00Z"),  # an hour outside the window: out
]
SEA = [observation("baz", "s1", "2024-06-24T17:30:00Z")]  # same folder, other subscription


def test_landed_identities_are_found_under_every_specs_folder(
    target: SinkTarget, tmp_path: Path
) -> None:
    spool = new_spool(tmp_path / "spool")
    first = spool_frame(spool, "air", AIR[:4])
    spool_frame(spool, "sea", SEA)
    spool_frame(spool, "air", AIR[4:], id=None, origin="backfill")
    spool.append(DEAD, RecordMeta(reason="malformed message"), b"{", 0)
    spool.append(LEDGER, RecordMeta(), b'{"event":"gap"}', 0, force=True)
    last = spool.next_seq - 1
    sink = target.sink()
    job = CutJob(first, last, tuple(spool.ranges(first, last)))
    result = flush_cut(job, sink, FlushSettings(WRITER))
    spool.close()
    assert result.rows == len(AIR) + len(SEA)
    # Not Parquet, though inside a spec folder: not read.
    sink.put("observation_spec_id=baz/date=2024-06-24/hour=17/notes.txt", b"not parquet")
    assert any(p.startswith("_dead_letter/") for p in sink.list())

    found = landed_identities(sink, hour_dirs(START, END), "air", START, END)
    expected = {ident(o) for o in AIR if START <= micros(o["timestamp"]) <= END}
    assert len(expected) == 5
    assert found == expected
    # Backfill names what it fetches the same way: these would be recognised as landed.
    assert {identity(o) for o in AIR} & found == expected
    assert landed_identities(sink, hour_dirs(START, END), "sea", START, END) == {ident(SEA[0])}
    assert landed_identities(sink, hour_dirs(START, END), "nobody", START, END) == set()
    # Only the hours asked for are read: a wider window alone finds nothing in another hour.
    late = micros("2024-06-24T21:00:00Z")
    wider = landed_identities(sink, hour_dirs(START, END), "air", START, late)
    assert wider == expected | {ident(AIR[3])}
    assert landed_identities(sink, hour_dirs(late, late), "air", START, late) == {ident(AIR[7])}


def test_nothing_landed_yet(target: SinkTarget) -> None:
    sink = target.sink()
    assert landed_identities(sink, hour_dirs(START, END), "air", START, END) == set()


def test_a_sink_root_that_does_not_exist_has_nothing_landed(tmp_path: Path) -> None:
    sink = Sink(str(tmp_path / "not" / "created"))
    assert landed_identities(sink, hour_dirs(START, END), "air", START, END) == set()


def test_spooled_identities_come_from_the_spool_range_of_one_subscription(tmp_path: Path) -> None:
    """Several segments and more frames than one conversion batch; only the range's frames of
    the named subscription count (stream or backfill), nothing of DEAD, LEDGER or CUT records."""
    spool = new_spool(tmp_path / "spool", segment_bytes=16 << 10)
    before = spool_frame(spool, "air", [observation("baz", "early", "2024-06-24T17:00:00Z")])
    spool.append_cut(before, before, 0)
    expected: set[Identity] = set()
    first = spool.next_seq
    for i in range(450):
        minute, second = divmod(i, 60)
        obs = [
            observation("baz", f"t{i % 13}", f"2024-06-24T17:{minute:02d}:{second:02d}.5Z"),
            observation("foo", f"u{i}", f"2024-06-24T19:{minute:02d}:{second:02d}+02:00"),
        ]
        origin = {"origin": "backfill", "id": None} if i % 50 == 0 else {}
        spool_frame(spool, "air", obs, **origin)
        expected |= {ident(o) for o in obs}
        if i % 100 == 7:
            spool_frame(spool, "sea", [observation("baz", f"sea{i}", "2024-06-24T17:00:00Z")])
            spool.append(DEAD, RecordMeta(reason="malformed message", sub="air"), b"[", 0)
            spool.append(LEDGER, RecordMeta(), b'{"event":"gap"}', 0, force=True)
        if i == 300:
            spool.append_cut(first, spool.next_seq - 1, 0)
    last = spool.next_seq - 1
    spool_frame(spool, "air", [observation("baz", "later", "2024-06-24T17:00:00Z")])
    ranges = spool.ranges(first, last)
    assert len(ranges) > 1

    found = spooled_identities(ranges, first, last, "air")
    assert len(expected) == 900
    assert found == expected
    assert spooled_identities(ranges, first, last, "sea") == {
        ident(observation("baz", f"sea{i}", "2024-06-24T17:00:00Z"))
        for i in (7, 107, 207, 307, 407)
    }
    assert spooled_identities(ranges, first, last, "nobody") == set()
    assert spooled_identities([], first, last, "air") == set()
    spool.close()


def test_identities_of_an_empty_table() -> None:
    from connector.schema import SCHEMA

    assert identities(SCHEMA.empty_table()) == set()
