"""What dedupe compares: an observation's identity. Pure.

(sourceSystemId, collectionId, observationSpecId, trackId, timestamp in microseconds): the
same on both sides of a comparison, whether the observation came from REST, the spool or a
landed file.
"""

from __future__ import annotations

from typing import Any

import msgspec

from connector.timeparse import parse_timestamp_us

Identity = tuple[str, str, str, str, int]


def identity(obs: dict[str, Any]) -> Identity | None:
    ts = obs.get("timestamp")
    at = parse_timestamp_us(ts) if isinstance(ts, str) else None
    keys = (
        obs.get("sourceSystemId"),
        obs.get("collectionId"),
        obs.get("observationSpecId"),
        obs.get("trackId"),
    )
    if at is None or not all(isinstance(k, str) for k in keys):
        return None
    return (str(keys[0]), str(keys[1]), str(keys[2]), str(keys[3]), at)


class _Ids(msgspec.Struct):
    sourceSystemId: Any = None
    collectionId: Any = None
    observationSpecId: Any = None
    trackId: Any = None
    timestamp: Any = None


class _Frame(msgspec.Struct):
    observations: list[msgspec.Raw] = msgspec.field(default_factory=list)


_frame = msgspec.json.Decoder(_Frame)
_ids = msgspec.json.Decoder(_Ids)
_UNDECODABLE = (msgspec.DecodeError, ValueError, RecursionError)


def frame_identities(payload: bytes) -> set[Identity]:
    """Identities of a data frame's observations (those that have one); never raises. Only the
    identity fields are decoded, observation by observation: one odd observation does not hide
    its neighbours."""
    try:
        texts = _frame.decode(payload).observations
    except _UNDECODABLE:
        return set()  # a frame that does not decode lands no row to collide with
    found = set()
    for text in texts:
        try:
            o = _ids.decode(text)
        except _UNDECODABLE:
            continue
        ident = identity(
            {
                "sourceSystemId": o.sourceSystemId,
                "collectionId": o.collectionId,
                "observationSpecId": o.observationSpecId,
                "trackId": o.trackId,
                "timestamp": o.timestamp,
            }
        )
        if ident is not None:
            found.add(ident)
    return found
