"""What backfill compares against: identities already landed or spooled. Converter-side."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from connector.identity import Identity, frame_identities
from connector.layout import SPEC_PREFIX
from connector.schema import IDENTITY
from connector.sink import Sink
from connector.spool import DATA, SpoolRange, read_ranges


def identities(table: pa.Table) -> set[Identity]:
    """(source, collection, spec, track, timestamp in us) of every row: what dedupe compares."""
    micros = table["timestamp"].cast(pa.int64()).to_pylist()
    return set(
        zip(
            table["source_system_id"].to_pylist(),
            table["collection_id"].to_pylist(),
            table["observation_spec_id"].to_pylist(),
            table["track_id"].to_pylist(),
            micros,
            strict=True,
        )
    )


def landed_identities(
    sink: Sink, hours: list[str], name: str, start: int, end: int
) -> set[Identity]:
    """Identities of this subscription's rows landed within [start, end]: under every spec's
    folder, since rows are partitioned by their own spec id, not the configured one."""
    found: set[Identity] = set()
    specs = [p for p in sink.list_dirs("") if p.startswith(SPEC_PREFIX)]
    for directory in (f"{spec}/{hour}" for spec in specs for hour in hours):
        for path in sink.list(directory):
            if not path.endswith(".parquet"):
                continue
            with sink.fs.open(sink.path(path), "rb") as fh:
                table = pq.read_table(fh, columns=[*IDENTITY, "subscription"])
            micros = table["timestamp"].cast(pa.int64())
            mask = pc.and_(
                pc.equal(table["subscription"], name),
                pc.and_(pc.greater_equal(micros, start), pc.less_equal(micros, end)),
            )
            found |= identities(table.filter(mask))
    return found


def spooled_identities(ranges: list[SpoolRange], first: int, last: int, name: str) -> set[Identity]:
    """Identities of this subscription's observations in the spool range (received, not yet
    landed): the same light decode the receiving process uses for the newest frames."""
    found: set[Identity] = set()
    for rec in read_ranges(ranges, first, last):
        if rec.kind == DATA and rec.meta.sub == name:
            found |= frame_identities(rec.payload)
    return found
