"""Synthetic tracks around Washington DC and the observations they report.

Content is deterministic for a seed (one `random.Random`), timestamps come from the wall clock.
Observation identity (source, collection, spec, track, printed timestamp) never repeats:
- each track prints a fixed number of fractional digits, so its timestamps live on a lattice of
  one unit (1 s, 1 ms, 1 us or 1 ns);
- live reports use even lattice points and must strictly increase, so a track that already
  reported in the current unit is skipped rather than repeated;
- late reports (1-3 h in the past) use odd lattice points and are remembered until they fall
  out of the late window, so they can collide neither with live reports nor with each other.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from connector.simulator.options import SimulatorOptions

# Longitude/latitude box the tracks stay inside; tests draw polygons over part of it.
REGION = (-77.5, 38.5, -76.5, 39.3)
LATE_MIN_S, LATE_MAX_S = 3600.0, 10800.0
_NS = 1_000_000_000
_UNITS = {0: _NS, 3: 1_000_000, 6: 1_000, 9: 1}
_KINDS = ("ship", "aircraft", "ground")
_SOURCES = {"ship": "ais-feed", "aircraft": "adsb-feed", "ground": "blue-force-tracker"}
_COLLECTIONS = {"ship": "maritime", "aircraft": "air", "ground": "land"}
# Loop period in seconds and path half-size in degrees per kind.
_MOTION = {"ship": (1800.0, 0.08), "aircraft": (600.0, 0.3), "ground": (3600.0, 0.04)}
_ABSENT = object()
_ENCODER = msgspec.json.Encoder()
_NAMES: tuple[object, ...] = (
    "Ñandú",
    "東京丸",
    "Øresund Star",
    None,
    "Eagle One",
    _ABSENT,
    "Приморье",
    "Zürich Express",
)
_STATUS = {
    "ship": ("underway", "anchored", "moored"),
    "aircraft": ("airborne", "climbing", "descending"),
    "ground": ("moving", "halted", "engaged"),
}
_STYLE = {
    "ship": {"blueprintIconName": "ship", "symbology": {"type": "iconSym", "code": "ship-cargo"}},
    "aircraft": {
        "blueprintIconName": "airplane",
        "symbology": {"type": "milSym", "code": "SFAPMF----*****"},
    },
    "ground": {
        "blueprintIconName": "unit",
        "symbology": {"type": "milSym", "code": "SFGPUCI---*****"},
    },
}


@dataclass(slots=True)
class Generated:
    """One observation as sent: the dict, its exact JSON text and its parsed timestamp."""

    obs: dict[str, Any]
    text: str
    ts_ns: int
    track: str
    spec: str


@dataclass
class Track:
    index: int
    kind: str
    spec: str
    track_id: str
    digits: int
    name: object
    static: list[dict[str, Any]]
    style: dict[str, Any] | None
    center: tuple[float, float]
    size: tuple[float, float]
    omega: float
    phase: float
    last_live: int = -1
    late_used: set[int] = field(default_factory=set)

    @property
    def unit_ns(self) -> int:
        return _UNITS[self.digits]

    @property
    def source(self) -> str:
        return _SOURCES[self.kind]

    @property
    def collection(self) -> str:
        return _COLLECTIONS[self.kind]

    @property
    def key(self) -> str:
        return f"{self.spec}/{self.source}/{self.collection}/{self.track_id}"


def _make_track(i: int, spec: str, rng: random.Random) -> Track:
    kind = _KINDS[i % 3]
    period, half = _MOTION[kind]
    size = (half * rng.uniform(0.5, 1.0), half * rng.uniform(0.5, 1.0) * 0.8)
    west, south, east, north = REGION
    center = (
        rng.uniform(west + size[0], east - size[0]),
        rng.uniform(south + size[1], north - size[1]),
    )
    # "12" and 12 both occur so clients can be checked for exact JSON equality.
    crew: object = 12 if i % 2 == 0 else "12"
    static: list[dict[str, Any]]
    if kind == "ship":
        static = [
            {"propertyType": "mmsi", "value": f"3669{i:05d}"},
            {"propertyType": "flag", "value": rng.choice(("US", "PA", "LR", "JP"))},
            {"propertyType": "vesselType", "value": rng.choice(("cargo", "tanker", "fishing"))},
        ]
    elif kind == "aircraft":
        static = [
            {"propertyType": "tailNumber", "value": f"N{rng.randint(100, 999)}{chr(65 + i % 26)}"},
            {"propertyType": "aircraftType", "value": rng.choice(("C-130", "A320", "UH-60"))},
        ]
    else:
        static = [
            {"propertyType": "callsign", "value": f"BRAVO-{i}"},
            {"propertyType": "unitType", "value": rng.choice(("infantry", "armor", "recon"))},
        ]
    static.append({"propertyType": "crew", "value": crew})
    return Track(
        index=i,
        kind=kind,
        spec=spec,
        track_id=f"{kind}-{i:04d}",
        digits=(0, 3, 6, 9)[i % 4],
        name=_NAMES[i % len(_NAMES)],
        static=static,
        style=_STYLE[kind] if i % 5 != 4 else None,
        center=center,
        size=size,
        omega=2 * math.pi / (period * rng.uniform(0.8, 1.2)),
        phase=rng.uniform(0, 2 * math.pi),
    )


class Generator:
    def __init__(self, options: SimulatorOptions) -> None:
        self._rng = random.Random(options.seed)
        self._late_fraction = options.late_fraction
        self.tracks = [
            _make_track(i, options.spec_ids[i % len(options.spec_ids)], self._rng)
            for i in range(options.tracks)
        ]
        self._cursor = 0
        self._next_prune_ns = 0
        self._second_cache: tuple[int, str] = (-1, "")

    def generate(self, count: int, spec: str | None = None) -> list[Generated]:
        """Up to `count` new observations, fewer when every track already reported this unit."""
        out: list[Generated] = []
        tracks = self.tracks if spec is None else [t for t in self.tracks if t.spec == spec]
        if not tracks:
            return out
        misses = 0
        while len(out) < count and misses < len(tracks):
            track = tracks[self._cursor % len(tracks)]
            self._cursor += 1
            made = self._report(track, time.time_ns())
            if made is None:
                misses += 1
            else:
                misses = 0
                out.append(made)
        return out

    def _report(self, track: Track, now_ns: int) -> Generated | None:
        unit = track.unit_ns
        if now_ns >= self._next_prune_ns:
            self._prune_late(now_ns)
        lattice = -1
        if self._late_fraction and self._rng.random() < self._late_fraction:
            past = now_ns - int(self._rng.uniform(LATE_MIN_S, LATE_MAX_S) * _NS)
            lattice = (past // unit) | 1
            if lattice in track.late_used:
                lattice = -1
            else:
                track.late_used.add(lattice)
        if lattice < 0:
            lattice = (now_ns // unit) & ~1
            if lattice <= track.last_live:
                return None
            track.last_live = lattice
        ts_ns = lattice * unit
        obs = self._observation(track, ts_ns)
        # msgspec: compact UTF-8 JSON several times faster than json.dumps, for --rate 0.
        text = _ENCODER.encode(obs).decode()
        return Generated(obs=obs, text=text, ts_ns=ts_ns, track=track.key, spec=track.spec)

    def _prune_late(self, now_ns: int) -> None:
        # Late reports older than the late window can never be drawn again.
        horizon = now_ns - int((LATE_MAX_S + 60) * _NS)
        for track in self.tracks:
            if track.late_used:
                unit = track.unit_ns
                track.late_used = {k for k in track.late_used if k * unit >= horizon}
        self._next_prune_ns = now_ns + 60 * _NS

    def _format(self, ts_ns: int, digits: int) -> str:
        seconds, frac = divmod(ts_ns, _NS)
        if self._second_cache[0] != seconds:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            self._second_cache = (seconds, stamp)
        base = self._second_cache[1]
        if digits:
            base += "." + f"{frac:09d}"[:digits]
        return base + "Z"

    def _observation(self, track: Track, ts_ns: int) -> dict[str, Any]:
        rng = self._rng
        t = ts_ns / _NS
        angle = track.omega * t + track.phase
        lon = track.center[0] + track.size[0] * math.cos(angle)
        lat = track.center[1] + track.size[1] * math.sin(angle)
        dx = -track.size[0] * track.omega * math.sin(angle)
        dy = track.size[1] * track.omega * math.cos(angle)
        heading = round(math.degrees(math.atan2(dx, dy)) % 360.0, 1)
        knots = round(math.hypot(dx, dy) * 60.0 * 3600.0, 1)
        position: dict[str, Any] = {"longitude": round(lon, 7), "latitude": round(lat, 7)}
        live: list[dict[str, Any]] = [
            {"propertyType": "speed", "value": knots},
            {"propertyType": "heading", "value": heading},
            {"propertyType": "status", "value": rng.choice(_STATUS[track.kind])},
        ]
        if track.kind == "aircraft":
            altitude = round(3000.0 + 1500.0 * math.sin(angle * 3), 1)
            position["elevation"] = None if rng.random() < 0.05 else altitude
            live.append({"propertyType": "altitude", "value": altitude})
        elif track.kind == "ship":
            # GeoJSON travels as a string value, as the API describes it.
            point = {"type": "Point", "coordinates": [position["longitude"], position["latitude"]]}
            live.append({"propertyType": "lastFix", "value": json.dumps(point)})
        obs: dict[str, Any] = {
            "sourceSystemId": track.source,
            "collectionId": track.collection,
            "observationSpecId": track.spec,
            "trackId": track.track_id,
            "position": position,
            "timestamp": self._format(ts_ns, track.digits),
        }
        if track.name is not _ABSENT:
            obs["name"] = track.name
        obs["staticProperties"] = [dict(p) for p in track.static]
        obs["liveProperties"] = live
        if track.style is not None:
            style = track.style
            obs["style"] = {
                "blueprintIconName": style["blueprintIconName"],
                "symbology": dict(style["symbology"]),
            }
        if rng.random() < 0.01:
            # Fields the published schema does not know; clients must carry them through.
            if rng.random() < 0.5:
                obs["confidence"] = round(rng.uniform(0.5, 1.0), 2)
            else:
                obs["sensorMeta"] = {"sensor": f"radar-{rng.randint(1, 9)}", "quality": "high"}
        return obs
