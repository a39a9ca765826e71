"""The documented observation shape as msgspec structs, shared by both conversion paths. Pure.

An observation exactly as documented decodes straight into these (no dicts; property values
and style stay as their verbatim JSON text). Anything else (unknown or explicitly-null
fields, odd types) fails validation and is left to the general path. `gc=False`: decoded JSON
holds no reference cycles, so the collector need not track millions of these.
"""

from __future__ import annotations

import msgspec

UNSET = msgspec.UNSET
Unset = msgspec.UnsetType
# What msgspec raises for input it cannot decode (UnicodeDecodeError is a ValueError).
UNDECODABLE = (msgspec.DecodeError, ValueError, RecursionError)


class Field(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    propertyType: str
    value: msgspec.Raw


class Position(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    longitude: float | int
    latitude: float | int
    elevation: float | int | Unset = UNSET


class Observation(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    sourceSystemId: str
    collectionId: str
    observationSpecId: str
    trackId: str
    position: Position
    timestamp: str
    name: str | Unset | None = UNSET
    staticProperties: list[Field] | Unset = UNSET
    liveProperties: list[Field] | Unset = UNSET
    style: msgspec.Raw | Unset = UNSET


class RawFrame(msgspec.Struct, gc=False):
    observations: list[msgspec.Raw]


raw_frame_decoder = msgspec.json.Decoder(RawFrame)
observation_decoder = msgspec.json.Decoder(Observation)
