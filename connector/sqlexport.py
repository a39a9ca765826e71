"""Writes one query result as a table, CSV, JSON, Parquet or GeoJSON (for `gotham-connector sql`).

CSV, JSON and Parquet are DuckDB's own writers (COPY streams the result, whatever its size);
GeoJSON is built here from Arrow batches, because DuckDB writes it only through the spatial
extension, which the DuckDB we ship cannot load offline.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import struct
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec

from connector.errors import ConnectorError
from connector.sqlviews import GEOMETRY_COLUMN, literal

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

RESULT_VIEW = "_gotham_sql_result"
COPY_OPTIONS = {
    "csv": "FORMAT csv, HEADER true",
    "json": "FORMAT json, ARRAY true",
    "parquet": "FORMAT parquet, COMPRESSION zstd",
}
# Pairs tried in order; the first present names the point of each row.
COORDINATE_PAIRS = (("longitude", "latitude"), ("lon", "lat"), ("lng", "lat"))
WKB_COLUMN = GEOMETRY_COLUMN
TRACK_KEYS = ("source_system_id", "collection_id", "observation_spec_id", "track_id")
# Their values are JSON text: decoded, they become nested GeoJSON values (12 and "12" survive).
JSON_MAPS = ("static_properties", "live_properties")
_BATCH_ROWS = 10_000


class SqlError(ConnectorError):
    """A query or an option the command cannot run; the message says which."""

    exit_code = 2


def write_copy(
    con: duckdb.DuckDBPyConnection, rel: duckdb.DuckDBPyRelation, fmt: str, out: Path | None
) -> None:
    """CSV, JSON or Parquet through DuckDB's COPY, to `out` or (CSV, JSON) to stdout."""
    rel.to_view(RESULT_VIEW)
    try:
        if out is not None:
            _copy(con, fmt, out)
            return
        with tempfile.TemporaryDirectory(prefix="gotham-sql-") as tmp:
            path = Path(tmp) / f"result.{fmt}"
            _copy(con, fmt, path)
            sys.stdout.flush()
            with path.open("rb") as src:
                shutil.copyfileobj(src, sys.stdout.buffer)
            sys.stdout.buffer.flush()
    finally:
        con.execute(f"DROP VIEW IF EXISTS {RESULT_VIEW}")


def _copy(con: duckdb.DuckDBPyConnection, fmt: str, path: Path) -> None:
    target = literal(str(path))
    con.execute(f"COPY (FROM {RESULT_VIEW}) TO {target} ({COPY_OPTIONS[fmt]})")


def write_table(rel: duckdb.DuckDBPyRelation, out: Path | None, max_rows: int) -> None:
    # Unbounded width when not a terminal: a piped table should not lose columns.
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() and out is None else 10**6
    if out is None:
        rel.show(max_width=width, max_rows=max_rows)
        return
    with out.open("w", encoding="utf-8") as target, contextlib.redirect_stdout(target):
        rel.show(max_width=width, max_rows=max_rows)


def write_geojson(rel: duckdb.DuckDBPyRelation, out: Path | None, *, lines: bool) -> None:
    """A FeatureCollection (RFC 7946): one Point per row, or one LineString per track."""
    # to_arrow_reader is DuckDB 2's name; 1.x has only fetch_record_batch (deprecated in 2).
    to_reader = getattr(rel, "to_arrow_reader", None) or rel.fetch_record_batch
    reader = to_reader(_BATCH_ROWS)
    schema: pa.Schema = reader.schema
    locate = point_locator(schema)
    features = _track_features(reader, schema, locate) if lines else _point_features(reader, locate)
    with _target(out) as target:
        target.write(b'{"type":"FeatureCollection","features":[\n')
        for i, feature in enumerate(features):
            target.write((b",\n" if i else b"") + _encode(feature))
        target.write(b"\n]}\n")


@contextlib.contextmanager
def _target(out: Path | None) -> Iterator[IO[bytes]]:
    if out is None:
        sys.stdout.flush()
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
    else:
        with out.open("wb") as handle:
            yield handle


def _encode(value: Any) -> bytes:
    # str() for what JSON has no type for (intervals, decimals): readable, never a crash.
    return msgspec.json.encode(value, enc_hook=str)


@dataclass(frozen=True)
class Locator:
    """Where each row's point is: x and y columns, or (y None) a WKB point column in x."""

    x: str
    y: str | None
    dropped: frozenset[str]  # left out of the properties: the point itself, binary (not JSON)
    maps: frozenset[str]


def point_locator(schema: pa.Schema) -> Locator:
    import pyarrow as pa

    names = set(schema.names)
    binary = {
        f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
    }
    maps = frozenset(f.name for f in schema if pa.types.is_map(f.type))
    for x, y in COORDINATE_PAIRS:
        if x in names and y in names:
            return Locator(x, y, frozenset(binary | {x, y}), maps)
    if WKB_COLUMN in binary:
        return Locator(WKB_COLUMN, None, frozenset(binary), maps)
    raise SqlError(
        "--output geojson needs longitude and latitude columns (or lon/lat, lng/lat, or a WKB "
        f"point column named {WKB_COLUMN!r}); the result has: {', '.join(schema.names)}"
    )


def position(row: dict[str, Any], locate: Locator) -> list[float] | None:
    if locate.y is None:
        return wkb_point(row.get(locate.x))
    lon, lat = row.get(locate.x), row.get(locate.y)
    if not (isinstance(lon, int | float) and isinstance(lat, int | float)):
        return None
    return [float(lon), float(lat)] if math.isfinite(lon) and math.isfinite(lat) else None


def wkb_point(blob: object) -> list[float] | None:
    """The 2D point of an ISO WKB Point (21 bytes); None for anything else."""
    if not isinstance(blob, bytes | bytearray) or len(blob) != 21 or blob[0] not in (0, 1):
        return None
    order = "<" if blob[0] == 1 else ">"
    (kind,) = struct.unpack_from(order + "I", blob, 1)
    if kind != 1:
        return None
    x, y = struct.unpack_from(order + "dd", blob, 5)
    return [x, y] if math.isfinite(x) and math.isfinite(y) else None


def _rows(reader: Any) -> Iterator[dict[str, Any]]:
    for batch in reader:
        yield from batch.to_pylist()


def properties(row: dict[str, Any], locate: Locator) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name in locate.dropped:
            continue
        if name in locate.maps and value is not None:
            value = dict(value)  # Arrow maps arrive as (key, value) pairs
            if name in JSON_MAPS:
                value = {k: _json_or_text(v) for k, v in value.items()}
        out[name] = value
    return out


def _json_or_text(text: object) -> object:
    if not isinstance(text, str):
        return text
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


def _point_features(reader: Any, locate: Locator) -> Iterator[dict[str, Any]]:
    for row in _rows(reader):
        where = position(row, locate)
        yield {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": where} if where else None,
            "properties": properties(row, locate),
        }


def _track_features(reader: Any, schema: pa.Schema, locate: Locator) -> Iterator[dict[str, Any]]:
    keys = [k for k in TRACK_KEYS if k in schema.names]
    if "track_id" not in keys:
        raise SqlError("GeoJSON lines need a track_id column (one LineString per track)")
    timed = "timestamp" in schema.names
    tracks: dict[tuple[Any, ...], list[tuple[Any, list[float]]]] = {}
    for row in _rows(reader):
        where = position(row, locate)
        if where is not None:
            tracks.setdefault(tuple(row[k] for k in keys), []).append(
                (row["timestamp"] if timed else None, where)
            )
    for key, points in tracks.items():
        if timed:  # a path is drawn in time order, whatever order the query chose
            points.sort(key=lambda p: (p[0] is None, p[0] or 0))
        coords = [p for _, p in points]
        props: dict[str, Any] = dict(zip(keys, key, strict=True))
        props["points"] = len(coords)
        if timed:
            props["start"], props["end"] = points[0][0], points[-1][0]
        # A single position is no line: it stays a Point rather than a degenerate LineString.
        geometry = (
            {"type": "LineString", "coordinates": coords}
            if len(coords) > 1
            else {"type": "Point", "coordinates": coords[0]}
        )
        yield {"type": "Feature", "geometry": geometry, "properties": props}
