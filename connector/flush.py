"""One cut -> files on the sink. Synchronous on purpose: the runner calls it in a worker thread.

Reads the cut's frames back from the spool (the same path serves live flushes and replays after a
crash), converts, partitions, encodes, and puts each file under a name derived from the cut.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import msgspec

from connector import layout, parquet
from connector.errors import Crashed
from connector.records import Columns, FrameMeta, Rejected
from connector.sink import Sink
from connector.spool import DATA, DEAD, LEDGER, Spool


@dataclass
class FlushResult:
    files: list[tuple[str, int, int]] = field(default_factory=list)  # (path, rows, bytes)
    rows: int = 0
    bytes: int = 0
    rejected: int = 0
    ledger_events: int = 0
    rows_by_subscription: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FlushSettings:
    writer_id: str
    compression: str = "zstd"
    compression_level: int | None = None
    row_group_rows: int = 100_000


def flush_cut(
    spool: Spool, first: int, last: int, sink: Sink, settings: FlushSettings
) -> FlushResult:
    # The cut record and its frames must be on disk before files named after them exist: after
    # a power loss, a replay must find the same cut, not re-cut and write other names.
    spool.sync()
    columns = Columns()
    ledger: list[bytes] = []
    seen = 0
    for rec in spool.read(first, last):
        seen += 1
        if rec.kind == DATA:
            meta = FrameMeta(
                rec.seq,
                rec.received_at_us,
                rec.meta["sub"],
                rec.meta.get("id"),
                rec.meta.get("origin", "stream"),
            )
            columns.add_frame(meta, rec.payload)
        elif rec.kind == DEAD:
            columns.rejected.append(
                Rejected(
                    rec.seq,
                    rec.received_at_us,
                    rec.meta.get("sub"),
                    rec.meta["reason"],
                    rec.payload,
                )
            )
        elif rec.kind == LEDGER:
            ledger.append(rec.payload)
    if seen != last - first + 1:
        # Never commit a cut short: a damaged record would silently drop rows.
        raise Crashed(
            f"spool damaged: read {seen} of {last - first + 1} records of seq {first}-{last}"
        )
    stem = layout.file_stem(settings.writer_id, first, last)
    result = FlushResult(rejected=len(columns.rejected))
    table = columns.to_table()
    counts = table.group_by("subscription").aggregate([("seq", "count")])
    # By name: the column order of aggregate() output differs between pyarrow versions.
    for sub, count in zip(
        counts["subscription"].to_pylist(), counts["seq_count"].to_pylist(), strict=True
    ):
        result.rows_by_subscription[sub] = count
    for directory, part in layout.split(table):
        data = parquet.encode(
            part,
            compression=settings.compression,
            level=settings.compression_level,
            row_group_rows=settings.row_group_rows,
        )
        path = f"{directory}/{stem}.parquet"
        sink.put(path, data)
        result.files.append((path, part.num_rows, len(data)))
        result.rows += part.num_rows
        result.bytes += len(data)
    if columns.rejected:
        sink.put(f"{layout.DEAD_LETTER_DIR}/{stem}.jsonl", dead_letter_lines(columns.rejected))
    if ledger:
        sink.put(f"{layout.LEDGER_DIR}/{stem}.jsonl", b"\n".join(ledger) + b"\n")
    result.ledger_events = len(ledger)
    return result


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
