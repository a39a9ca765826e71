"""The read-back oracle: rebuilds the original observation JSON from a landed row.

Test code on purpose: the connector never reads its own rows back into JSON. Written against
the documented schema (README, `schemas/observation.json`), not the converter's internals.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from connector.timeparse import format_us

_IDS = (
    ("sourceSystemId", "source_system_id"),
    ("collectionId", "collection_id"),
    ("observationSpecId", "observation_spec_id"),
    ("trackId", "track_id"),
)


def row_to_observation(row: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the original observation from a row (as read back from Parquet/DuckDB).

    `timestamp` may be a datetime or int microseconds; maps may be lists of pairs or dicts.
    """
    extra: dict[str, Any] = msgspec.json.decode(row["extra"]) if row.get("extra") else {}
    obs: dict[str, Any] = {wire: row[column] for wire, column in _IDS}
    ts = row["timestamp"]
    obs["timestamp"] = format_us(ts if isinstance(ts, int) else _datetime_us(ts))
    position: dict[str, Any] = {"longitude": row["longitude"], "latitude": row["latitude"]}
    if row.get("elevation") is not None:
        position["elevation"] = row["elevation"]
    obs["position"] = position
    if row.get("name") is not None:
        obs["name"] = row["name"]
    for wire, column in (
        ("staticProperties", "static_properties"),
        ("liveProperties", "live_properties"),
    ):
        entries = row.get(column)
        if entries is not None:
            pairs = entries.items() if isinstance(entries, dict) else entries
            obs[wire] = [{"propertyType": k, "value": msgspec.json.decode(v)} for k, v in pairs]
    if row.get("style") is not None:
        obs["style"] = msgspec.json.decode(row["style"])
    obs.update(extra)
    return obs


def _datetime_us(value: datetime) -> int:
    delta = value.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
