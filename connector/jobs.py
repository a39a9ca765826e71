"""The unit of work that crosses the process boundary: a cut to land, and what landing it did.

Plain picklable values and no heavy imports: the receiving process builds jobs without loading
pyarrow; the converter process runs them (`connector.worker`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from connector.icebergspec import IcebergSpec
from connector.identity import Identity
from connector.spool import SpoolRange

__all__ = ["CutJob", "FlushResult", "FlushSettings", "Identity", "SinkSpec"]


@dataclass(frozen=True)
class SinkSpec:
    """Enough to open the sink anywhere (a Sink object holds sockets; this does not)."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    max_attempts: int = 6


@dataclass(frozen=True)
class FlushSettings:
    writer_id: str
    compression: str = "zstd"
    compression_level: int | None = None
    row_group_rows: int = 10_000
    iceberg: IcebergSpec | None = None  # commit each cut to this table ([iceberg])


@dataclass(frozen=True)
class CutJob:
    """A recorded cut: the spool range, where its bytes are, and the names it lands under."""

    first: int
    last: int
    ranges: tuple[SpoolRange, ...]


@dataclass
class FlushResult:
    files: list[tuple[str, int, int]] = field(default_factory=list)  # (path, rows, bytes)
    rows: int = 0
    bytes: int = 0
    rejected: int = 0
    ledger_events: int = 0
    slow_rows: int = 0  # rows that needed the general (Python) conversion path
    # Seq ranges of the cut the spool could not give back (damaged on disk): lost, recorded.
    missing: list[tuple[int, int]] = field(default_factory=list)
    rows_by_subscription: dict[str, int] = field(default_factory=dict)
    # (subscription, origin) -> rows: what `rows_written_total{subscription,origin}` counts.
    rows_by_origin: dict[tuple[str, str], int] = field(default_factory=dict)
    dead_frames: int = 0  # of `rejected`: whole frames the receiving process set aside
