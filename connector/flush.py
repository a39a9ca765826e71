"""One cut -> files on the sink. Runs in the converter process (`connector.worker`).

Reads the cut's frames back from the spool files (the same path serves live flushes and replays
after a crash), converts them a piece at a time (Python objects for one piece at most; the cut
itself is held only as compact Arrow columns), partitions, encodes, and puts each file under a
name derived from the cut.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace

import msgspec
import pyarrow as pa

from connector import layout, parquet
from connector.columnar import convert
from connector.jobs import CutJob, FlushResult, FlushSettings
from connector.partition import split
from connector.records import FrameMeta, Rejected
from connector.sink import Sink
from connector.spool import DATA, DEAD, LEDGER, Record, read_ranges
from connector.wire import raw_frame_decoder

# A piece is converted at once: its frames' Python objects live only while it is converted.
# Measured alone, smaller pieces are also faster (they stay in cache): 2,500 -> 6.6 us/obs,
# 5,000 -> 6.7, 40,000 -> 8.5; in the whole pipeline 2,500 measured no better than 5,000.
PIECE_OBSERVATIONS = 5_000
PIECE_BYTES = 2 << 20


@dataclass
class Prepared:
    """A cut converted and read, nothing written yet: what `write` lands."""

    job: CutJob
    table: pa.Table | None
    reading: _Reading
    slow_rows: int


def flush_cut(job: CutJob, sink: Sink, settings: FlushSettings) -> FlushResult:
    return write(prepare(job), sink, settings)


def prepare(job: CutJob) -> Prepared:
    """Read the cut back from the spool and convert it. Writes nothing, so it may run ahead."""
    reading = _Reading()
    tables: list[pa.Table] = []
    slow_rows = 0
    for piece in reading.pieces(read_ranges(list(job.ranges), job.first, job.last)):
        converted = convert(piece)
        reading.rejected += converted.rejected
        slow_rows += converted.slow_rows
        if converted.table.num_rows:
            tables.append(converted.table)
    return Prepared(job, _contiguous(tables) if tables else None, reading, slow_rows)


def _contiguous(tables: list[pa.Table]) -> pa.Table:
    """The pieces as one table with one chunk per column, built a column at a time so that at
    most one column exists twice. Sorting and taking row groups from one chunk is cheaper than
    from twenty: measured 0.8 -> 0.5 us/observation, as `take` on chunked columns joins them
    again for every row group."""
    schema = tables[0].schema
    chunks = [[c for t in tables for c in t.column(i).chunks] for i in range(len(schema))]
    tables.clear()
    columns = []
    for i in range(len(chunks)):
        columns.append(pa.concat_arrays(chunks[i]))
        chunks[i] = []  # the pieces' buffers of this column can go now
    return pa.Table.from_arrays(columns, schema=schema)


def write(prepared: Prepared, sink: Sink, settings: FlushSettings) -> FlushResult:
    job, reading = prepared.job, prepared.reading
    result = FlushResult(slow_rows=prepared.slow_rows)
    # Records the spool cannot give back (bytes damaged on disk) are reported, not raised: a
    # raise would fail this cut again on every start, and nothing after it would ever land.
    result.missing = _holes(reading.seqs, job.first, job.last)
    stem = layout.file_stem(settings.writer_id, job.first, job.last)
    result.rejected = len(reading.rejected)
    result.dead_frames = reading.dead_frames
    if prepared.table is not None:
        _land(prepared.table, stem, sink, settings, result)
    if reading.rejected:
        sink.put(f"{layout.DEAD_LETTER_DIR}/{stem}.jsonl", dead_letter_lines(reading.rejected))
    if reading.ledger:
        sink.put(f"{layout.LEDGER_DIR}/{stem}.jsonl", b"\n".join(reading.ledger) + b"\n")
    result.ledger_events = len(reading.ledger)
    return result


class Lookahead:
    """Prepares the next cut on a thread while this one is written.

    Writing is mostly Parquet encoding and compression, which run without the GIL, so the next
    cut's reading and conversion overlap it on the second core. Only preparing runs ahead, and
    it writes nothing: a cut's files still appear only when the committer asks for that cut, so
    a failure or a kill leaves exactly what it did without the lookahead. At most one cut is
    prepared ahead (memory: one cut's Arrow columns).
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lookahead")
        self._ahead: tuple[CutJob, Future[Prepared]] | None = None

    def flush(
        self, job: CutJob, sink: Sink, settings: FlushSettings, ahead: CutJob | None = None
    ) -> FlushResult:
        prepared = self._take(job)
        if ahead is not None and ahead != job:
            self._ahead = (ahead, self._pool.submit(prepare, ahead))
        return write(prepared, sink, settings)

    def _take(self, job: CutJob) -> Prepared:
        if self._ahead is None:
            return prepare(job)
        ahead, future = self._ahead
        self._ahead = None
        if ahead == job:
            return future.result()  # its error, if any, is this cut's error, as if done now
        # Not the cut that came (a retry of an earlier one): drop it, but never let two
        # prepared cuts be in memory at once.
        wait([future])
        return prepare(job)


def _land(
    table: pa.Table, stem: str, sink: Sink, settings: FlushSettings, result: FlushResult
) -> None:
    counts = table.group_by(["subscription", "origin"]).aggregate([("seq", "count")])
    # By name: the column order of aggregate() output differs between pyarrow versions.
    for sub, origin, count in zip(
        counts["subscription"].to_pylist(),
        counts["origin"].to_pylist(),
        counts["seq_count"].to_pylist(),
        strict=True,
    ):
        result.rows_by_subscription[sub] = result.rows_by_subscription.get(sub, 0) + count
        result.rows_by_origin[(sub, origin)] = count
    for directory, part, order in split(table):
        data = parquet.encode(
            part,
            compression=settings.compression,
            level=settings.compression_level,
            row_group_rows=settings.row_group_rows,
            order=order,
        )
        path = f"{directory}/{stem}.parquet"
        sink.put(path, data)
        result.files.append((path, part.num_rows, len(data)))
        result.rows += part.num_rows
        result.bytes += len(data)


def _parts(
    frame: FrameMeta, payload: bytes, count: int
) -> Iterator[tuple[tuple[FrameMeta, bytes], int]]:
    """A frame as it is, or a huge one (a message may be 256 MiB) as frames of a piece's size
    each: conversion then never holds more than a piece's Python objects at once."""
    if len(payload) <= PIECE_BYTES or count <= PIECE_OBSERVATIONS:
        yield (frame, payload), count
        return
    try:
        texts = raw_frame_decoder.decode(payload).observations
    except (msgspec.DecodeError, ValueError, RecursionError):
        yield (frame, payload), count  # the converter rejects it whole, as it is
        return
    for start in range(0, len(texts), PIECE_OBSERVATIONS):
        group = texts[start : start + PIECE_OBSERVATIONS]
        part = b"".join((b'{"observations":[', b",".join(group), b"]}"))
        yield (replace(frame, first_index=start), part), len(group)


def _holes(seqs: list[int], first: int, last: int) -> list[tuple[int, int]]:
    """The ranges of [first, last] that `seqs` (ascending) does not cover."""
    holes, expected = [], first
    for seq in seqs:
        if seq > expected:
            holes.append((expected, seq - 1))
        expected = max(expected, seq + 1)
    if expected <= last:
        holes.append((expected, last))
    return holes


class _Reading:
    """Sorts a cut's records: DATA frames into pieces, ledger and dead records aside."""

    def __init__(self) -> None:
        self.records = 0
        self.seqs: list[int] = []
        self.ledger: list[bytes] = []
        self.rejected: list[Rejected] = []
        self.dead_frames = 0

    def pieces(self, records: Iterator[Record]) -> Iterator[list[tuple[FrameMeta, bytes]]]:
        piece: list[tuple[FrameMeta, bytes]] = []
        observations = size = 0
        for rec in records:
            self.records += 1
            self.seqs.append(rec.seq)
            meta = rec.meta
            if rec.kind == DATA:
                frame = FrameMeta(rec.seq, rec.received_at_us, meta.sub or "", meta.id, meta.origin)
                for part, part_size in _parts(frame, rec.payload, meta.n):
                    piece.append(part)
                    observations += part_size
                    size += len(part[1])
                    if observations >= PIECE_OBSERVATIONS or size >= PIECE_BYTES:
                        yield piece
                        piece, observations, size = [], 0, 0
            elif rec.kind == DEAD:
                self.dead_frames += 1
                reason = meta.reason or "malformed frame"
                self.rejected.append(
                    Rejected(rec.seq, rec.received_at_us, meta.sub, reason, rec.payload)
                )
            elif rec.kind == LEDGER:
                self.ledger.append(rec.payload)
        if piece:
            yield piece


def dead_letter_lines(rejected: list[Rejected]) -> bytes:
    """JSON lines; `payload` is the verbatim text (or `payload_base64` when it is not UTF-8)."""
    out = []
    for r in rejected:
        item: dict[str, object] = {
            "seq": r.seq,
            "received_at_us": r.received_at_us,
            "subscription": r.subscription,
            "reason": r.reason,
            "index": r.index,
        }
        try:
            item["payload"] = r.payload.decode("utf-8")
        except UnicodeDecodeError:
            item["payload_base64"] = base64.b64encode(r.payload).decode()
        out.append(msgspec.json.encode(item))
    return b"\n".join(out) + b"\n"
