"""Landed files are GeoParquet 1.1: GeoPandas reads them as points and prunes by bbox, DuckDB
reads the column as GEOMETRY, and files from before the geometry columns read side by side.

Files are encoded by the real path (convert -> split -> parquet.encode) from simulator-shaped
frames; expectations come from the longitude/latitude columns and `struct`, not from `geo`.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import duckdb
import geopandas
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Point

from connector import parquet
from connector.columnar import convert
from connector.partition import split
from connector.records import FrameMeta

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from loadserver import blast_frames


def _land(tmp_path: Path, observations: int = 6_000, row_group_rows: int = 1_000) -> Path:
    frames = blast_frames(observations, 100, 7)
    table = convert([(FrameMeta(i, 1, "main", "s", "stream"), f) for i, f in enumerate(frames)])
    [(_, part, order)] = list(split(table.table))
    data = parquet.encode(
        part, compression="zstd", level=3, row_group_rows=row_group_rows, order=order
    )
    path = tmp_path / "part.parquet"
    path.write_bytes(data.to_pybytes())
    return path


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _land(tmp_path_factory.mktemp("geo"))


def test_geopandas_reads_points_equal_to_the_coordinates(landed: Path) -> None:
    frame = geopandas.read_parquet(landed)
    assert isinstance(frame, geopandas.GeoDataFrame)
    assert frame.geometry.name == "geometry"
    assert frame.crs is not None and frame.crs.to_string() == "OGC:CRS84"
    expected = [Point(x, y) for x, y in zip(frame.longitude, frame.latitude, strict=True)]
    assert list(frame.geometry) == expected


def test_the_wkb_is_the_21_byte_little_endian_point(landed: Path) -> None:
    table = pq.read_table(landed, columns=["longitude", "latitude", "geometry"])
    for lon, lat, wkb in zip(*(table[c].to_pylist() for c in table.column_names), strict=True):
        assert wkb == struct.pack("<BIdd", 1, 1, lon, lat)


def test_geo_metadata_is_geoparquet_1_1_with_the_file_bbox_and_covering(landed: Path) -> None:
    table = pq.read_table(landed)
    meta = json.loads(pq.read_schema(landed).metadata[b"geo"])
    assert meta["version"] == "1.1.0"
    assert meta["primary_column"] == "geometry"
    column = meta["columns"]["geometry"]
    assert column["encoding"] == "WKB"
    assert column["geometry_types"] == ["Point"]
    lon, lat = table["longitude"].to_pylist(), table["latitude"].to_pylist()
    assert column["bbox"] == [min(lon), min(lat), max(lon), max(lat)]
    assert column["covering"] == {
        "bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}
    }
    assert table["bbox"].to_pylist()[0] == {
        "xmin": lon[0],
        "ymin": lat[0],
        "xmax": lon[0],
        "ymax": lat[0],
    }


@settings(max_examples=15, deadline=None)
@given(
    st.floats(-78.0, -76.0),
    st.floats(38.0, 39.5),
    st.floats(0.01, 1.0),
    st.floats(0.01, 1.0),
)
def test_read_with_a_bbox_returns_exactly_the_rows_inside(
    landed: Path, x: float, y: float, width: float, height: float
) -> None:
    box = (x, y, x + width, y + height)
    got = geopandas.read_parquet(landed, bbox=box)
    table = pq.read_table(landed, columns=["longitude", "latitude", "track_id", "timestamp"])
    expected = {
        (t, ts)
        for lon, lat, t, ts in zip(*(c.to_pylist() for c in table.columns), strict=True)
        if box[0] <= lon <= box[2] and box[1] <= lat <= box[3]
    }
    assert set(zip(got.track_id, got.timestamp.dt.to_pydatetime(), strict=True)) == expected


def test_duckdb_reads_the_column_as_geometry(landed: Path) -> None:
    con = duckdb.connect()
    kind, text, lon, lat = con.sql(
        f"SELECT typeof(geometry), geometry::VARCHAR, longitude, latitude FROM '{landed}' LIMIT 1"
    ).fetchall()[0]
    assert kind.startswith("GEOMETRY")
    assert text == f"POINT ({lon!r} {lat!r})"


def test_bbox_statistics_let_a_reader_skip_row_groups(landed: Path) -> None:
    stats = pq.ParquetFile(landed).metadata
    names = [stats.schema.column(i).path for i in range(stats.num_columns)]
    xmin = names.index("bbox.xmin")
    bounds = [
        (
            stats.row_group(g).column(xmin).statistics.min,
            stats.row_group(g).column(xmin).statistics.max,
        )
        for g in range(stats.num_row_groups)
    ]
    assert stats.num_row_groups > 1
    assert all(low is not None and high is not None for low, high in bounds)


def test_files_from_before_the_geometry_columns_read_side_by_side(
    landed: Path, tmp_path: Path
) -> None:
    old = pq.read_table(landed).drop_columns(["geometry", "bbox"]).slice(0, 10)
    pq.write_table(old, tmp_path / "old.parquet")
    (tmp_path / "new.parquet").write_bytes(landed.read_bytes())
    con = duckdb.connect()
    rows = con.sql(
        f"SELECT count(*), count(geometry) FROM read_parquet('{tmp_path}/*.parquet', "
        "union_by_name = true)"
    ).fetchall()[0]
    total = pq.read_metadata(landed).num_rows
    assert rows == (total + 10, total)
    assert pa.types.is_binary(pq.read_schema(landed).field("geometry").type)
