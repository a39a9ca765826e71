"""Fuzzing a live connector: Hypothesis-generated hostile frames through the real CLI.

One connector process (`python -m connector run`) streams from the embedded simulator for the
whole test. Each Hypothesis example is a handful of frames, written byte by byte and pushed to
the connector's socket with the simulator's `send_frames` action, in between the simulator's
own (good) traffic: truncated JSON, deep nesting, huge strings, invalid UTF-8, lone surrogate
escapes, NaN and Infinity, wrong types in every field, duplicate keys, timestamps at and beyond
the year limits, empty and null observation lists, 10,000-character ids, mixed with good
observations in the same frames and in frames of their own. A fixed catalogue of every listed
case (and one frame of 8,000 observations, which the converter takes in parts) goes first.

What each observation must become is decided here, per generated case, by the documented rules
alone (README "The observation schema" and "Bad input loses nothing else", the API reference),
never by the connector's conversion code:

* LAND: a documented observation, or one the lossless rules cover (unknown fields, explicit
  nulls, odd types in `name`/`elevation`/the property lists, extra keys, spellings of a
  timestamp that RFC 3339 allows, duplicate keys where the last one is valid: JSON objects are
  read last-wins). It lands exactly once, and the oracle rebuilds it from its row as
  `json.loads` reads the original text.
* DEAD: an observation that does not fit the schema (not an object, an id missing or not a
  string, no numeric longitude/latitude a float64 holds exactly, a timestamp missing, invalid
  or outside years 1-9999, invalid UTF-8 inside it): exactly one dead letter, its verbatim text,
  with its index in the frame.
* EITHER: what the README leaves open ("it lands or is a dead letter": a number beyond float64
  outside the coordinates, an inexact elevation, invalid UTF-8 in a value a later duplicate key
  replaces, timestamp spellings beyond RFC 3339): exactly one of the two, never both or neither.
* A frame that is not a usable data message (not JSON at all, cut short, NaN/Infinity or a lone
  surrogate escape or nesting beyond any decoder's limit anywhere in it, a wrong envelope, an
  unknown subscription id) is one dead letter as a whole: its exact bytes, no index.

Then: the process never exits while frames arrive; SIGTERM stops it with 0; every good
observation lands exactly once and field by field; every bad one is a dead letter; the
simulator's own observations land exactly once; and good + dead == sent, per observation, with
whole-frame rejections counted as their frames.

`GOTHAM_FUZZ_EXAMPLES` sets the number of examples (default 200: about 20 s on 2 cores);
`make fuzz` runs thousands. Run with `-s` for the figures and how often each rule was met.
There is no shrinking (each example costs a live round trip): a failure lists the offending
items with their bytes and the rule that decided their fate.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from connector.simulator import SimulatorOptions, SimulatorThread
from tests.e2e.conftest import TIME_FACTOR, TOKEN, Deployment, identity, wait_for
from tests.oracle import row_to_observation

EXAMPLES = int(os.environ.get("GOTHAM_FUZZ_EXAMPLES", "200"))
CHUNK = 500

pytestmark = pytest.mark.slow

# Placeholders written into the frames and replaced when an example is sent: each observation
# gets a serial of its own (so every payload is distinct and every row is traceable), each
# frame the live subscription id.
SERIAL = b"~SERIAL~"
SID = b"~SID~"
OUR_TRACK = re.compile(r"^fz([0-9]+)[.]")
LAND, DEAD, EITHER = "land", "dead", "either"


# -- frames as bytes ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Raw:
    """JSON text (or not) written into the frame verbatim."""

    text: bytes


@dataclass(frozen=True)
class Obj:
    """A JSON object as written: pairs in order, so a key may repeat or be `Raw`."""

    pairs: tuple[tuple[str | Raw, Any], ...]


def dump(value: Any, spaced: bool = False) -> bytes:
    comma, colon = (b" ,\n ", b" : ") if spaced else (b",", b":")
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Obj | dict):
        pairs = value.pairs if isinstance(value, Obj) else tuple(value.items())
        return b"{" + comma.join(dump(k, spaced) + colon + dump(v, spaced) for k, v in pairs) + b"}"
    if isinstance(value, list):
        return b"[" + comma.join(dump(v, spaced) for v in value) + b"]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()


def string_with(inner: bytes, prefix: bytes = b"") -> Raw:
    """A JSON string literal holding `inner` as it is (invalid UTF-8, escapes)."""
    return Raw(b'"' + prefix + inner + b'"')


def nest(depth: int, objects: bool) -> Raw:
    if objects:
        return Raw(b'{"a":' * depth + b"1" + b"}" * depth)
    return Raw(b"[" * depth + b"1" + b"]" * depth)


# -- values ---------------------------------------------------------------------------------------
TEXT = st.text(max_size=8)  # any code point but surrogates, control characters included
INT64 = st.integers(-(2**63), 2**63 - 1)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)  # -0.0, subnormals, 1.8e308
SCALARS = st.none() | st.booleans() | INT64 | FLOATS | TEXT
SPELLINGS = [  # valid JSON that a generator of Python values would not write
    b"1e5",
    b"-0",
    b"-0.0",
    b"1.0",
    b"4.9e-324",
    b"2.5e-400",  # underflows to 0.0 for every reader
    b"18446744073709551617",
    b"-123456789012345678901234567890",
    b'"\\u00e9\\ud83d\\ude00"',  # escapes, a surrogate pair
    b'"tab\\t nl\\n nul\\u0000 \\"q\\" \\\\ \\/"',
    b'""',
    b"[ ]",
    b"{ }",
]
JSONISH = st.recursive(
    SCALARS | st.sampled_from(SPELLINGS).map(Raw),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
# Nesting any decoder holds (json.loads in this process included), and beyond msgspec's limit.
DEEP_OK = st.builds(nest, st.sampled_from([50, 200, 400]), st.booleans())
DEEP_KILLER = st.builds(nest, st.sampled_from([2_000, 20_000]), st.booleans())


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each `weight` times as likely as a weight of 1."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]

    @st.composite
    def pick(draw: st.DrawFn) -> Any:
        return draw(table[draw(st.integers(0, len(table) - 1))])

    return pick()


@st.composite
def huge_text(draw: st.DrawFn) -> str:
    """10 kB to 1 MB of text (rare in the values: the run's bytes stay bounded)."""
    unit = draw(st.text(min_size=1, max_size=3))
    size = draw(st.sampled_from([10_000] * 6 + [100_000] * 3 + [1_000_000]))
    return (unit * (size // len(unit) + 1))[:size]


# Most values are drawn from pools (one draw each): the hostility is in the fields, and a
# cheap value leaves time for more frames; JSONISH and the big ones come in between.
SCALAR_POOL = [
    None,
    True,
    False,
    0,
    -1,
    12,
    "12",
    "",
    "x",
    "東京",
    "é😀",
    "nul\u0000 nl\n tab\t",
    '"quoted" \\back/slash',
    1.5,
    -0.0,
    2**63 - 1,
    -(2**63),
    1.7976931348623157e308,
    5e-324,
]
CHEAP = weighted((8, st.sampled_from(SCALAR_POOL)), (2, FLOATS), (1, INT64), (1, TEXT))
VALUES = weighted(
    (24, CHEAP),
    (6, JSONISH),
    (4, st.sampled_from(SPELLINGS).map(Raw)),
    (3, st.integers(-1000, 1000).map(str)),
    (1, DEEP_OK),
    (1, huge_text()),
)
BAD_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"a\xc3",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xc0\xaf",
    b"\x80",
]
# Any one of these anywhere makes the frame undecodable JSON: the frame goes whole.
KILLER_TEXTS = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b'"\\ud800"',  # lone surrogate escapes
    b'"\\udc00"',
    b'"x\\ud800y"',
    b'"\\udfff\\ud800"',
    b'"\\ud800\\u0041"',
    b'"ctl\x01char"',  # a raw control character in a string
    b"01",
    b"+1",
    b".5",
    b"1.",
    b"tru",
    b"'single'",
    b"[1,]",
    b'{"a":1,}',
    b'"\\x"',
]
KILLERS = st.sampled_from(KILLER_TEXTS).map(Raw) | DEEP_KILLER
OUT_OF_RANGE = st.sampled_from([b"1e400", b"-1e400", b"1" * 400 + b".5e10"]).map(Raw)


# -- timestamps -----------------------------------------------------------------------------------
def iso(dt: datetime, digits: str = "", sep: str = "T", zone: str = "Z") -> str:
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}{sep}{dt.hour:02d}:{dt.minute:02d}:"
        f"{dt.second:02d}{'.' + digits if digits else ''}{zone}"
    )


def seconds_after(start: datetime, seconds: int) -> datetime:
    return start + timedelta(seconds=seconds)


AFTERNOON = datetime(2024, 6, 24, 12)
YEAR_1 = datetime(1, 1, 1)
LAST_SECOND = (datetime(9999, 12, 31, 23, 59, 59) - YEAR_1) // timedelta(seconds=1)
ANY_YEAR = st.integers(0, LAST_SECOND).map(lambda s: seconds_after(YEAR_1, s))
DIGITS = st.builds(lambda ns, n: f"{ns:09d}"[:n], st.integers(0, 10**9 - 1), st.integers(0, 9))


@st.composite
def rfc3339_timestamps(draw: st.DrawFn) -> str:
    """Other RFC 3339 spellings (the README: kept verbatim in `extra`, the instant in the
    column): lowercase t/z, a space, numeric offsets; the instant stays inside years 1-9999."""
    dt = draw(ANY_YEAR.filter(lambda d: 1 < d.year < 9999))
    zone = draw(
        st.sampled_from(["z", "+00:00", "-00:00"])
        | st.builds(
            lambda sign, h, m: f"{sign}{h:02d}:{m:02d}",
            st.sampled_from("+-"),
            st.integers(0, 23),
            st.integers(0, 59),
        )
    )
    return iso(dt, draw(DIGITS), draw(st.sampled_from(["T", "t", " "])), zone)


AT_THE_LIMITS = [
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00.000000001Z",
    "0001-01-01T00:30:00-01:00",
    "0001-01-01T00:59:59+00:59",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59.999999999Z",
    "9999-12-31T23:30:00+01:00",
]
BEYOND_THE_LIMITS = [
    "0000-01-01T00:00:00Z",
    "0000-12-31T23:59:59.999999Z",
    "10000-01-01T00:00:00Z",
    "+10000-01-01T00:00:00Z",
    "-0001-01-01T00:00:00Z",
    "99999-12-31T00:00:00Z",
    "0001-01-01T00:00:00+00:01",  # before year 1 in UTC
    "0001-01-01T00:00:00.5+01:00",
    "9999-12-31T23:59:59-00:01",  # after year 9999 in UTC
    "9999-12-31T23:30:00-01:00",
]
INVALID_TIMESTAMPS = [
    "2024-06-24T17:00:00",  # no zone
    "2024-06-24",
    "",
    "now",
    "2023-02-29T00:00:00Z",
    "2023-02-30T00:00:00Z",
    "2024-13-01T00:00:00Z",
    "2024-00-10T00:00:00Z",
    "2024-06-24T25:00:00Z",
    "2024-06-24T17:60:00Z",
    "2024-06-24T17:00:00.Z",
    "2024-06-24T17:00:00Z\n",
    " 2024-06-24T17:00:00Z",
    "2024-06-24T17:00:00ZZ",
    "2024-06-24T17:00:00+24:00",
    "2024-06-24T17:00:00+05:60",
    "\uff12\uff10\uff12\uff14-06-24T17:00:00Z",  # fullwidth digits
    "2024-06-24T17:00:00\u200bZ",
]
# Spellings the README leaves open: ISO 8601 forms RFC 3339 does not have, a leap second
# (RFC 3339 has it, the column cannot hold it), more than the README's 0-9 fractional digits.
OPEN_SPELLINGS = [
    "2016-12-31T23:59:60Z",
    "2024-06-24T24:00:00Z",
    "2024-06-24T17:00:00+05",
    "2024-06-24T17:00:00+0530",
    "2024-06-24T17:00:00,5Z",
    "2024-06-24T17:00:00.1234567890Z",
    "2024-06-24T17:00:00.123456789012345678901234567890Z",
    "20240624T170000Z",
    "2024-06-24T17:00Z",
    "2024-W26-1T17:00:00Z",
    "2024-176T17:00:00Z",
]


# -- observations ---------------------------------------------------------------------------------
@dataclass
class Obs:
    """One observation as written, and what the documented rules say becomes of it."""

    pairs: list[tuple[str | Raw, Any]] | None  # None: `whole` is the observation
    whole: Any = None
    rules: list[tuple[str, str]] = field(default_factory=list)  # (outcome, why)
    kills_frame: str | None = None  # why the whole frame goes

    @property
    def outcome(self) -> str:
        outcomes = {o for o, _ in self.rules}
        return DEAD if DEAD in outcomes else EITHER if EITHER in outcomes else LAND

    def dump(self, spaced: bool) -> bytes:
        return dump(self.whole if self.pairs is None else Obj(tuple(self.pairs)), spaced)


IDS = ("sourceSystemId", "collectionId", "observationSpecId", "trackId")
KNOWN = {*IDS, "position", "timestamp", "name", "staticProperties", "liveProperties", "style"}
LONG_ID = st.builds(
    lambda c, n: c * n, st.sampled_from(["x", "é", "東", "/", "%"]), st.just(10_000)
)
ID_POOL = ["src", "foo", "東京", "", "a/b", "..", ".", "x=y", "%2F", "é", "a b", "date=1", "\\"]
KEY_POOL = ["speed", "crew", "status", "東京", "", "p/q", "a=b", "é😀", "nul\u0000"]


def track_id(suffix: str = "") -> Raw:
    return Raw(b'"fz' + SERIAL + b"." + json.dumps(suffix, ensure_ascii=False)[1:].encode())


# The documented fields are filled from a seeded `random.Random` (one Hypothesis draw per
# observation, not fifty: generation is where the time goes), from pools of edge values and
# random bit patterns; Hypothesis drives the structure and every hostile change.
FLOAT_POOL = [0.0, -0.0, 1.5, -77.05, 38.9, 180.0, -90.0, 5e-324, -5e-324, 2.2250738585072014e-308]
FLOAT_POOL += [1.7976931348623157e308, -1.7976931348623157e308, 2.0**53, 0.1, 1e-7, 123456.789]
TEXT_RANGES = [(0x20, 0x7E), (0x00, 0x1F), (0x80, 0x2FF), (0x4E00, 0x4FFF), (0x1F600, 0x1F64F)]
TEXT_RANGES += [(0xE000, 0xFFFF), (0x10000, 0x10FFFF)]  # private use, U+FFFF, astral planes


def plain_float(rng: random.Random) -> float:
    if rng.random() < 0.5:
        return rng.choice(FLOAT_POOL)
    while True:  # any bit pattern but NaN and the infinities: subnormals, huge, tiny
        (value,) = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))
        if math.isfinite(value):
            return float(value)


def plain_text(rng: random.Random, size: int = 8) -> str:
    out = []
    for _ in range(rng.randint(0, size)):
        low, high = rng.choice(TEXT_RANGES)
        out.append(chr(rng.randint(low, high)))
    return "".join(out)


def plain_huge(rng: random.Random) -> str:
    unit = plain_text(rng, 3) or "x"
    size = rng.choice([10_000] * 12 + [100_000] * 3 + [1_000_000])
    return (unit * (size // len(unit) + 1))[:size]


def plain_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.randrange(100)
    if roll < 45:
        return rng.choice(SCALAR_POOL)
    if roll < 60:
        return plain_float(rng)
    if roll < 66:
        return rng.randint(-(2**63), 2**63 - 1)
    if roll < 76:
        return plain_text(rng)
    if roll < 82:
        return str(rng.randint(-1000, 1000))  # "12" next to 12
    if roll < 88:
        return Raw(rng.choice(SPELLINGS))
    if roll < 98 and depth < 3:
        if rng.random() < 0.5:
            return [plain_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
        return {plain_text(rng, 4): plain_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    if roll < 99:
        return nest(rng.choice([50, 200, 400]), rng.random() < 0.5)
    return plain_huge(rng)


def plain_id(rng: random.Random) -> str:
    roll = rng.randrange(100)
    if roll < 85:
        return rng.choice(ID_POOL)
    if roll < 98:
        return plain_text(rng)
    return rng.choice(["x", "é", "東", "/", "%"]) * 10_000


def plain_properties(rng: random.Random) -> list[Obj]:
    if rng.random() < 0.1:  # a long list
        keys = [f"p{i}" for i in range(rng.randint(17, 60))]
    else:
        drawn = [rng.choice(KEY_POOL) if rng.random() < 0.9 else plain_text(rng) for _ in "1234"]
        keys = list(dict.fromkeys(drawn[: rng.randint(0, 4)]))
    entries = []
    for key in keys:
        pairs: tuple[tuple[str, Any], ...] = (("propertyType", key), ("value", plain_value(rng)))
        entries.append(Obj(pairs if rng.random() < 0.8 else pairs[::-1]))
    return entries


def plain_timestamp(rng: random.Random) -> str:
    """`...Z` with 0-9 fractional digits (trailing zeros too); mostly one afternoon (few
    partitions), sometimes any second of years 1-9999."""
    if rng.random() < 0.85:
        dt = seconds_after(AFTERNOON, rng.randrange(2 * 3600))
    else:
        dt = seconds_after(YEAR_1, rng.randrange(LAST_SECOND + 1))
    return iso(dt, f"{rng.randrange(10**9):09d}"[: rng.randint(0, 9)])


def plain_documented(rng: random.Random) -> Obs:
    """An observation of the documented shape (documented-optional fields absent at times)."""
    pairs: list[tuple[str | Raw, Any]] = [(key, plain_id(rng)) for key in IDS[:3]]
    pairs.append(("trackId", track_id(plain_id(rng) if rng.random() < 0.3 else "")))
    position = [("longitude", plain_float(rng)), ("latitude", plain_float(rng))]
    if rng.random() < 0.5:
        position.append(("elevation", plain_float(rng)))
    pairs.append(("position", Obj(tuple(position))))
    pairs.append(("timestamp", plain_timestamp(rng)))
    if rng.random() < 0.75:
        pairs.append(("name", plain_huge(rng) if rng.random() < 0.02 else plain_id(rng)))
    for key in ("staticProperties", "liveProperties"):
        if rng.random() < 0.9:
            pairs.append((key, plain_properties(rng)))
    if rng.random() < 0.5:
        style = {"blueprintIconName": "ship", "symbology": {"type": "milSym", "code": "S"}}
        pairs.append(("style", style if rng.random() < 0.5 else plain_value(rng)))
    if rng.random() < 0.25:
        rng.shuffle(pairs)
    return Obs(pairs)


SEEDS = st.integers(0, 2**64 - 1)


@st.composite
def documented(draw: st.DrawFn) -> Obs:
    return plain_documented(random.Random(draw(SEEDS)))


@st.composite
def property_list(draw: st.DrawFn) -> list[Obj]:
    return plain_properties(random.Random(draw(SEEDS)))


def _set(obs: Obs, key: str, value: Any) -> None:
    """Set the occurrence of `key` that counts (the last), or add it."""
    assert obs.pairs is not None
    for i in reversed(range(len(obs.pairs))):
        if obs.pairs[i][0] == key:
            obs.pairs[i] = (key, value)
            return
    obs.pairs.append((key, value))


def _drop(obs: Obs, key: str) -> None:
    assert obs.pairs is not None
    obs.pairs[:] = [(k, v) for k, v in obs.pairs if k != key]


# Each mutation changes one field of a documented observation and says what the documented
# rules make of it. Mutations of one observation touch distinct fields.
@st.composite
def mutate_id(draw: st.DrawFn, obs: Obs) -> None:
    key = draw(st.sampled_from(IDS))
    how = draw(st.sampled_from(["missing", "type", "utf8", "long", "escaped"]))
    if how == "missing":
        _drop(obs, key)
        obs.rules.append((DEAD, f"{key} missing"))
    elif how == "type":
        _set(obs, key, draw(st.sampled_from([None, 5, 1.5, True, [], {}, ["x"]])))
        obs.rules.append((DEAD, f"{key} not a string"))
    elif how == "utf8":
        prefix = b"fz" + SERIAL + b"." if key == "trackId" else b"id"
        _set(obs, key, string_with(draw(st.sampled_from(BAD_UTF8)), prefix))
        obs.rules.append((DEAD, f"{key} invalid UTF-8"))
    elif how == "long" and key != "trackId":
        _set(obs, key, draw(LONG_ID | huge_text()))
        obs.rules.append((LAND, f"{key} long"))
    elif key != "trackId":  # the same string, spelt with escapes
        _set(obs, key, Raw(b'"\\u0041\\u00e9\\ud83d\\ude00\\/"'))
        obs.rules.append((LAND, f"{key} escaped"))


@st.composite
def mutate_position(draw: st.DrawFn, obs: Obs) -> None:
    lon, lat = draw(FLOATS), draw(FLOATS)
    how = draw(
        st.sampled_from(
            ["bad shape", "bad coordinate", "inexact", "huge", "int", "extra key", "elevation"]
        )
    )
    if how == "bad shape":
        value = draw(
            st.sampled_from([ABSENT, None, [1.5, 2.5], "1.5,2.5", {}, 5, {"longitude": 1.5}])
        )
        if value is ABSENT:
            _drop(obs, "position")
        else:
            _set(obs, "position", value)
        obs.rules.append((DEAD, "position not an object with longitude and latitude"))
        return
    which = draw(st.sampled_from(["longitude", "latitude"]))
    coordinates: dict[str, Any] = {"longitude": lon, "latitude": lat}
    if how == "bad coordinate":
        coordinates[which] = draw(st.sampled_from(["1.5", True, None, [1.5], {"v": 1}]))
        obs.rules.append((DEAD, f"{which} not a number"))
    elif how == "inexact":
        coordinates[which] = draw(st.sampled_from([2**53 + 1, -(10**30) - 1, 2**64 + 1]))
        obs.rules.append((DEAD, f"{which} an integer no float64 holds exactly"))
    elif how == "huge":
        coordinates[which] = draw(OUT_OF_RANGE)
        obs.rules.append((DEAD, f"{which} beyond float64"))
    elif how == "int":
        coordinates[which] = draw(st.integers(-(2**53), 2**53) | st.just(Raw(b"-0")))
        obs.rules.append((LAND, f"{which} an integer (lands as the equal float)"))
    elif how == "extra key":
        coordinates[draw(st.sampled_from(["crs", "accuracy", "東京", ""]))] = draw(VALUES)
        obs.rules.append((LAND, "position with an extra key"))
    else:
        kind = draw(st.sampled_from(sorted(ELEVATIONS)))
        coordinates["elevation"] = draw(ELEVATIONS[kind])
        obs.rules.append(ELEVATION_RULES[kind])
    pairs = list(coordinates.items())
    _set(obs, "position", Obj(tuple(draw(st.permutations(pairs)))))


ELEVATIONS: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "type": st.sampled_from(["high", True, [1], {"m": 1}, ""]),
    "int": st.integers(-(2**53), 2**53),
    "inexact": st.sampled_from([2**53 + 1, 10**30 + 1]),
    "huge": OUT_OF_RANGE,
}
ELEVATION_RULES = {
    "null": (LAND, "elevation null (extra)"),
    "type": (LAND, "elevation not a number (extra)"),
    "int": (LAND, "elevation an integer"),
    # The README rejects "coordinates a float64 cannot hold exactly"; an elevation kept
    # verbatim in `extra` is lossless too.
    "inexact": (EITHER, "elevation an inexact integer"),
    "huge": (EITHER, "elevation beyond float64"),
}


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()


@st.composite
def mutate_timestamp(draw: st.DrawFn, obs: Obs) -> None:
    how = draw(st.sampled_from(["rfc3339", "limits", "beyond", "invalid", "type", "utf8", "iso"]))
    if how == "rfc3339":
        value: Any = draw(rfc3339_timestamps() | st.just(Raw(b'"2024-06-24T17:00:00\\u005a"')))
        obs.rules.append((LAND, "timestamp spelt otherwise (extra)"))
    elif how == "limits":
        value = draw(st.sampled_from(AT_THE_LIMITS))
        obs.rules.append((LAND, "timestamp at the year limits"))
    elif how == "beyond":
        value = draw(st.sampled_from(BEYOND_THE_LIMITS))
        obs.rules.append((DEAD, "timestamp beyond years 1-9999"))
    elif how == "invalid":
        value = draw(st.sampled_from(INVALID_TIMESTAMPS))
        obs.rules.append((DEAD, "timestamp invalid"))
    elif how == "type":
        value = draw(st.sampled_from([ABSENT, None, 1719248400, 1.5, True, [], {}]))
        obs.rules.append((DEAD, "timestamp missing or not a string"))
    elif how == "utf8":
        value = string_with(b"2024-06-24T17:00:00" + draw(st.sampled_from(BAD_UTF8)) + b"Z")
        obs.rules.append((DEAD, "timestamp invalid UTF-8"))
    else:
        value = draw(st.sampled_from(OPEN_SPELLINGS))
        obs.rules.append((EITHER, "timestamp spelt as the README leaves open"))
    if value is ABSENT:
        _drop(obs, "timestamp")
    else:
        _set(obs, "timestamp", value)


@st.composite
def mutate_name(draw: st.DrawFn, obs: Obs) -> None:
    how = draw(st.sampled_from(["null", "type", "huge", "utf8", "escaped"]))
    if how == "null":
        _set(obs, "name", None)
        obs.rules.append((LAND, "name null (extra)"))
    elif how == "type":
        _set(obs, "name", draw(st.sampled_from([0, 1.5, True, [], ["a", 1], {"first": "x"}])))
        obs.rules.append((LAND, "name not a string (extra)"))
    elif how == "huge":
        _set(obs, "name", draw(huge_text()))
        obs.rules.append((LAND, "name huge"))
    elif how == "utf8":
        _set(obs, "name", string_with(draw(st.sampled_from(BAD_UTF8)), b"n"))
        obs.rules.append((DEAD, "name invalid UTF-8"))
    else:
        _set(obs, "name", Raw(b'"\\u00e9\\ud83d\\ude00\\u0000"'))
        obs.rules.append((LAND, "name with escapes"))


@st.composite
def mutate_properties(draw: st.DrawFn, obs: Obs, key: str) -> None:
    how = draw(
        st.sampled_from(
            ["not a list", "repeat", "entry", "utf8", "utf8 key", "huge number", "deep", "huge"]
        )
    )
    entries: list[Any] = draw(property_list())
    spot = draw(st.integers(0, len(entries)))
    if how == "not a list":
        _set(obs, key, draw(st.sampled_from([None, {"a": 1}, "[]", 5, True])))
        obs.rules.append((LAND, f"{key} not a list (extra)"))
        return
    if how == "repeat":
        entries.insert(spot, Obj((("propertyType", "twice"), ("value", 1))))
        entries.insert(spot, Obj((("propertyType", "twice"), ("value", draw(VALUES)))))
        obs.rules.append((LAND, f"{key} with a repeated propertyType (extra)"))
    elif how == "entry":
        entries.insert(
            spot,
            draw(
                st.sampled_from(
                    [
                        Obj((("propertyType", "u"), ("value", 1), ("unit", "kn"))),
                        Obj((("propertyType", "nv"),)),
                        Obj((("value", 1),)),
                        Obj((("propertyType", 5), ("value", 1))),
                        Obj((("propertyType", "d"), ("value", 1), ("value", 2))),
                        5,
                        None,
                        "x",
                        [],
                    ]
                )
            ),
        )
        obs.rules.append((LAND, f"{key} with an odd entry (extra)"))
    elif how == "utf8":
        entries.insert(spot, Obj((("propertyType", "k"), ("value", string_with(b"\xff")))))
        obs.rules.append((DEAD, f"{key} value invalid UTF-8"))
    elif how == "utf8 key":
        bad = string_with(draw(st.sampled_from(BAD_UTF8)))
        entries.insert(spot, Obj((("propertyType", bad), ("value", 1))))
        obs.rules.append((DEAD, f"{key} propertyType invalid UTF-8"))
    elif how == "huge number":
        entries.insert(spot, Obj((("propertyType", "far"), ("value", draw(OUT_OF_RANGE)))))
        obs.rules.append((EITHER, f"{key} value beyond float64"))
    elif how == "deep":
        entries.insert(spot, Obj((("propertyType", "deep"), ("value", draw(DEEP_OK)))))
        obs.rules.append((LAND, f"{key} value deeply nested"))
    else:
        entries.insert(spot, Obj((("propertyType", "huge"), ("value", draw(huge_text())))))
        obs.rules.append((LAND, f"{key} value huge"))
    _set(obs, key, entries)


@st.composite
def mutate_style(draw: st.DrawFn, obs: Obs) -> None:
    how = draw(st.sampled_from(["any", "utf8", "huge number"]))
    if how == "any":
        _set(obs, "style", draw(st.none() | VALUES))
        obs.rules.append((LAND, "style any JSON"))
    elif how == "utf8":
        _set(obs, "style", Obj((("blueprintIconName", string_with(b"\xc3")),)))
        obs.rules.append((DEAD, "style invalid UTF-8"))
    else:
        _set(obs, "style", Obj((("size", draw(OUT_OF_RANGE)),)))
        obs.rules.append((EITHER, "style number beyond float64"))


UNKNOWN_KEYS = st.text(min_size=0, max_size=8).filter(lambda k: k not in KNOWN)


@st.composite
def add_unknown(draw: st.DrawFn, obs: Obs) -> None:
    assert obs.pairs is not None
    how = draw(st.sampled_from(["value", "value", "null", "utf8 value", "utf8 key", "huge num"]))
    if how == "value":
        value: Any = draw(VALUES)
        obs.rules.append((LAND, "unknown field (extra)"))
    elif how == "null":
        value = None
        obs.rules.append((LAND, "unknown field null (extra)"))
    elif how == "utf8 value":
        value = string_with(draw(st.sampled_from(BAD_UTF8)))
        obs.rules.append((DEAD, "unknown field invalid UTF-8"))
    elif how == "utf8 key":
        key = string_with(draw(st.sampled_from(BAD_UTF8)), b"k")
        obs.pairs.insert(draw(st.integers(0, len(obs.pairs))), (key, 1))
        obs.rules.append((DEAD, "unknown key invalid UTF-8"))
        return
    else:
        value = draw(OUT_OF_RANGE)
        obs.rules.append((EITHER, "unknown field beyond float64"))
    names = {k for k, _ in obs.pairs}
    key_text = draw(UNKNOWN_KEYS.filter(lambda k: k not in names))
    obs.pairs.insert(draw(st.integers(0, len(obs.pairs))), (key_text, value))


@st.composite
def duplicate_key(draw: st.DrawFn, obs: Obs) -> None:
    """A key written twice: JSON objects are read last-wins (as json.loads, msgspec, JS)."""
    assert obs.pairs is not None
    present = [i for i, (k, _) in enumerate(obs.pairs) if isinstance(k, str)]
    if not present:
        return
    at = draw(st.sampled_from(present))
    key = obs.pairs[at][0]
    how = draw(st.sampled_from(["first", "first", "last bad", "first bad utf8"]))
    if how == "first":  # an earlier value, any valid JSON: the later one counts
        obs.pairs.insert(draw(st.integers(0, at)), (key, draw(VALUES)))
        obs.rules.append((LAND, "a key twice, the last valid"))
    elif how == "last bad" and key in ("timestamp", "trackId", "position"):
        obs.pairs.insert(draw(st.integers(at + 1, len(obs.pairs))), (key, 5))
        obs.rules.append((DEAD, f"{key} twice, the last a number"))
    elif how == "first bad utf8":
        obs.pairs.insert(draw(st.integers(0, at)), (key, string_with(b"\xff")))
        obs.rules.append((EITHER, "a key twice, the replaced value invalid UTF-8"))


@st.composite
def escaped_key(draw: st.DrawFn, obs: Obs) -> None:
    """A known key spelt with a \\u escape: the same key to any JSON reader."""
    assert obs.pairs is not None
    present = [i for i, (k, _) in enumerate(obs.pairs) if isinstance(k, str) and k in KNOWN]
    if not present:
        return
    at = draw(st.sampled_from(present))
    key, value = obs.pairs[at]
    assert isinstance(key, str)
    obs.pairs[at] = (Raw(b'"\\u%04x' % ord(key[0]) + key[1:].encode() + b'"'), value)
    obs.rules.append((LAND, "a known key spelt with an escape"))


@st.composite
def add_killer(draw: st.DrawFn, obs: Obs) -> None:
    """Something no JSON decoder takes, anywhere in the observation: the frame goes whole."""
    assert obs.pairs is not None
    killer = draw(KILLERS)
    where = draw(st.sampled_from(["unknown", "longitude", "property", "name", "key"]))
    if where == "key" and killer.text.startswith(b'"'):
        obs.pairs.insert(draw(st.integers(0, len(obs.pairs))), (killer, 1))
    elif where == "longitude":
        _set(obs, "position", Obj((("longitude", killer), ("latitude", 1.5))))
    elif where == "property":
        _set(obs, "liveProperties", [Obj((("propertyType", "k"), ("value", killer)))])
    elif where == "name":
        _set(obs, "name", killer)
    else:
        obs.pairs.insert(draw(st.integers(0, len(obs.pairs))), ("zz", killer))
    obs.kills_frame = f"{killer.text[:24]!r} in {where}"


SLOTS = [
    "id",
    "position",
    "timestamp",
    "name",
    "staticProperties",
    "liveProperties",
    "style",
    "unknown",
    "duplicate",
    "escaped",
]


@st.composite
def hostile(draw: st.DrawFn) -> Obs:
    """A documented observation with one to three fields changed (each one distinct field)."""
    if draw(st.integers(0, 14)) == 0:
        whole = draw(SCALARS | st.lists(SCALARS, max_size=2))
        return Obs(None, whole, [(DEAD, "observation not an object")])
    obs = draw(documented())
    slots = draw(st.lists(st.sampled_from(SLOTS), min_size=1, max_size=3, unique=True))
    for slot in sorted(slots, key=SLOTS.index):  # the duplicate and the escaped key last
        if slot == "id":
            draw(mutate_id(obs))
        elif slot == "position":
            draw(mutate_position(obs))
        elif slot == "timestamp":
            draw(mutate_timestamp(obs))
        elif slot == "name":
            draw(mutate_name(obs))
        elif slot in ("staticProperties", "liveProperties"):
            draw(mutate_properties(obs, slot))
        elif slot == "style":
            draw(mutate_style(obs))
        elif slot == "unknown":
            draw(add_unknown(obs))
        elif slot == "duplicate":
            draw(duplicate_key(obs))
        else:
            draw(escaped_key(obs))
    return obs


# -- frames ---------------------------------------------------------------------------------------
@dataclass
class Frame:
    kind: str
    observations: list[Obs]
    envelope: str = "data"  # how the envelope is written (see `write_frame`)
    envelope_value: Any = None
    dead: str | None = None  # why the whole frame is a dead letter
    spaced: bool = False
    cut: float = 0.0  # "truncated": where the bytes are cut, as a fraction of their length


ENVELOPE_DEAD = {
    "type missing": ABSENT,
    "type a number": 5,
    "type null": None,
    "type unknown": "mystery",
    "type upper case": "DATA",
    "type subscribed": "subscribed",
    "id missing": ABSENT,
    "id null": None,
    "id a number": 5,
    "id unknown": "00000000-0000-4000-8000-000000000000",
    "id of another": Raw(b'"' + SID + b'-x"'),
    "id lone surrogate": Raw(b'"' + SID + b'\\ud800"'),
    "id invalid UTF-8": Raw(b'"' + SID + b'\xff"'),
    "observations missing": ABSENT,
    "observations null": None,
    "observations an object": {"a": 1},
    "observations a string": "[]",
    "observations a number": 5,
}
GOOD_LISTS = st.lists(documented(), min_size=1, max_size=12)
MIXED_LISTS = st.lists(weighted((1, documented()), (2, hostile())), min_size=1, max_size=10)
GARBAGE = ["truncated", "empty", "not json", "bom", "trailing", "two objects", "not an object"]


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    kind = draw(
        st.sampled_from(
            ["good"] * 5 + ["mixed"] * 9 + ["killer"] * 2 + ["envelope"] * 2 + ["garbage"] * 2
        )
    )
    spaced = draw(st.integers(0, 4)) == 0
    if kind == "good":
        return Frame(kind, draw(GOOD_LISTS), spaced=spaced)
    observations = draw(MIXED_LISTS)
    if kind == "mixed":
        return Frame(kind, observations, spaced=spaced)
    if kind == "killer":
        victim = draw(st.sampled_from([o for o in observations if o.pairs is not None] or [None]))
        if victim is None:
            return Frame("mixed", observations, spaced=spaced)
        draw(add_killer(victim))
        return Frame(kind, observations, dead=victim.kills_frame, spaced=spaced)
    if kind == "envelope":
        how = draw(st.sampled_from([*ENVELOPE_DEAD, "empty list", "benign"]))
        if how == "empty list":
            return Frame(kind, [], "data", spaced=spaced)
        if how == "benign":  # unknown envelope fields, repeated type or id, any key order
            return Frame(kind, observations, "benign", draw(JSONISH), spaced=spaced)
        return Frame(kind, observations, how, ENVELOPE_DEAD[how], dead=how, spaced=spaced)
    how = draw(st.sampled_from(GARBAGE))
    return Frame(kind, observations, how, dead=how, cut=draw(st.floats(0, 0.999)))


def catalogue() -> list[Frame]:
    """Every listed hostile case once, whatever Hypothesis draws: sent first in every run."""
    rng = random.Random(8)
    out: list[Frame] = []

    def obs(outcome: str, why: str, **fields: Any) -> Obs:
        made = plain_documented(rng)
        for key, value in fields.items():
            if value is ABSENT:
                _drop(made, key)
            else:
                _set(made, key, value)
        made.rules.append((outcome, why))
        return made

    def frame(*observations: Obs) -> None:
        out.append(Frame("catalogue", [*observations, plain_documented(rng)]))

    for ts in AT_THE_LIMITS:
        frame(obs(LAND, "timestamp at the year limits", timestamp=ts))
    for ts in BEYOND_THE_LIMITS:
        frame(obs(DEAD, "timestamp beyond years 1-9999", timestamp=ts))
    for ts in INVALID_TIMESTAMPS:
        frame(obs(DEAD, "timestamp invalid", timestamp=ts))
    for ts in OPEN_SPELLINGS:
        frame(obs(EITHER, "timestamp spelt as the README leaves open", timestamp=ts))
    for bad in BAD_UTF8:
        frame(obs(DEAD, "name invalid UTF-8", name=string_with(bad)))
    for key in IDS:
        wrongs: list[Any] = [ABSENT, None, 5, True, [], {}]
        for wrong in wrongs:
            frame(obs(DEAD, f"{key} missing or not a string", **{key: wrong}))
    for key in IDS[:3]:
        frame(obs(LAND, f"{key} of 10,000 characters", **{key: "東" * 10_000}))
    out.append(Frame("catalogue", [obs(LAND, "trackId of 10,000 characters")]))
    _set(out[-1].observations[0], "trackId", track_id("x" * 10_000))
    frame(
        obs(LAND, "name of 1,000,000 characters", name="ü" * 1_000_000),
        obs(
            LAND,
            "value nested 400 deep",
            liveProperties=[Obj((("propertyType", "d"), ("value", nest(400, False))))],
        ),
        obs(LAND, "everything odd but valid", name=None, zz=None, staticProperties={"a": 1}),
    )
    for killer in [*KILLER_TEXTS, nest(2_000, True).text, nest(20_000, False).text]:
        victim = obs(LAND, "killer", zz=Raw(killer))
        out.append(Frame("catalogue", [plain_documented(rng), victim], dead=f"{killer[:24]!r}"))
    for how, value in ENVELOPE_DEAD.items():
        out.append(Frame("catalogue", [plain_documented(rng)], how, value, dead=how))
    for how in GARBAGE:
        out.append(Frame("catalogue", [plain_documented(rng)], how, dead=how, cut=0.5))
    # Over 2 MiB and 5,000 observations: the converter takes it in parts; the dead letters
    # still name each observation's index in the whole frame.
    big = []
    for i in range(8_000):
        made = Obs(
            [
                ("sourceSystemId", "big"),
                ("collectionId", "n" * 150),
                ("observationSpecId", "baz"),
                ("trackId", track_id()),
                ("position", {"longitude": i / 7, "latitude": -i / 9}),
                ("timestamp", iso(seconds_after(AFTERNOON, i))),
                ("name", None),
            ]
        )
        made.rules.append((LAND, "name null (extra), in a frame of 8,000"))
        if i % 97 == 5:
            _set(made, "timestamp", BEYOND_THE_LIMITS[i % len(BEYOND_THE_LIMITS)])
            made.rules.append((DEAD, "timestamp beyond years 1-9999, in a frame of 8,000"))
        elif i % 89 == 7:
            _set(made, "name", string_with(BAD_UTF8[i % len(BAD_UTF8)]))
            made.rules.append((DEAD, "name invalid UTF-8, in a frame of 8,000"))
        big.append(made)
    out.append(Frame("catalogue", big))
    out.append(Frame("catalogue", [], "data"))  # an empty observations list
    out.append(Frame("catalogue", [plain_documented(rng)], "benign", {"x": [1, None]}))
    return out


def write_frame(frame: Frame, texts: list[bytes], sid: bytes) -> bytes:
    """The frame's bytes, its observations written as `texts` (serials already in)."""
    observations = Raw(b"[" + (b",\n" if frame.spaced else b",").join(texts) + b"]")
    pairs: list[tuple[str | Raw, Any]] = [
        ("type", "data"),
        ("id", Raw(b'"' + SID + b'"')),
        ("observations", observations),
    ]
    how, value = frame.envelope, frame.envelope_value
    field_name = how.split(" ")[0]
    if how == "benign":
        pairs = [
            ("type", "mystery"),
            ("id", "00000000-0000-4000-8000-000000000000"),
            ("zzUnknown", value),
            *pairs,
            ("errorsNot", []),
        ]
    elif how in ENVELOPE_DEAD:  # one envelope field missing or wrong
        pairs = [(k, v if k != field_name else value) for k, v in pairs]
        pairs = [(k, v) for k, v in pairs if v is not ABSENT]
    raw = dump(Obj(tuple(pairs)), frame.spaced).replace(SID, sid)
    if how == "truncated":
        raw = raw[: int(frame.cut * len(raw))]
    elif how == "empty":
        raw = b""
    elif how == "not json":
        raw = b"not json " + raw
    elif how == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif how == "trailing":
        raw = raw + b"x"
    elif how == "two objects":
        raw = raw + raw
    elif how == "not an object":
        raw = b"[" + raw + b"]"
    return raw


# -- what was sent, and what each item must become ------------------------------------------------
@dataclass
class Item:
    """One unit of the accounting: an observation of a usable frame, or a dead frame. The bytes
    are kept compressed (a long run sends gigabytes of mostly repeated huge strings)."""

    packed: bytes
    digest: bytes
    outcome: str  # LAND, DEAD, EITHER, or "frame" (a whole-frame dead letter)
    why: str
    serial: int | None = None
    index: int | None = None

    @classmethod
    def of(
        cls,
        payload: bytes,
        outcome: str,
        why: str,
        serial: int | None = None,
        index: int | None = None,
    ) -> Item:
        return cls(zlib.compress(payload, 1), digest(payload), outcome, why, serial, index)

    @property
    def payload(self) -> bytes:
        return zlib.decompress(self.packed)


@dataclass
class Ledger:
    items: list[Item] = field(default_factory=list)
    frames: int = 0
    serial: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    whys: Counter[str] = field(default_factory=Counter)

    def record(self, frame: Frame, sid: bytes) -> bytes:
        texts, items = [], []
        for index, obs in enumerate(frame.observations):
            self.serial += 1
            text = obs.dump(frame.spaced).replace(SERIAL, str(self.serial).encode())
            texts.append(text)
            why = "; ".join(w for _, w in obs.rules) or "documented"
            items.append(Item.of(text, obs.outcome, why, self.serial, index))
        raw = write_frame(frame, texts, sid)
        self.frames += 1
        self.kinds[frame.kind] += 1
        if frame.dead is not None:
            self.items.append(Item.of(raw, "frame", f"frame: {frame.dead}"))
            self.whys[f"frame: {frame.dead.split(' in ')[0][:40]}"] += 1
        else:
            self.items += items
            for obs, item in zip(frame.observations, items, strict=True):
                for outcome, why in obs.rules or [(LAND, "documented")]:
                    self.whys[f"{outcome}: {why}"] += 1
                assert item.outcome in (LAND, DEAD, EITHER)
        return raw


# -- reading what landed -------------------------------------------------------------------------
def digest(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


def landed_rows(landing: Path) -> Iterator[dict[str, Any]]:
    """Every landed row, a batch at a time (rows may hold megabytes of text)."""
    if not list(landing.rglob("*.parquet")):
        return
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    # hive_partitioning = false: the file's own spec id, even when its folder name is cut.
    cursor = con.execute(
        'SELECT * REPLACE (epoch_us("timestamp") AS "timestamp") FROM read_parquet('
        f"'{landing}/**/*.parquet', hive_partitioning = false)"
    )
    names = [d[0] for d in cursor.description]
    while batch := cursor.fetchmany(500):
        yield from (dict(zip(names, row, strict=True)) for row in batch)


def count_ours(landing: Path) -> int:
    if not list(landing.rglob("*.parquet")):
        return 0
    query = (
        f"SELECT count(*) FROM read_parquet('{landing}/**/*.parquet', hive_partitioning = false)"
        f" WHERE regexp_matches(track_id, '{OUR_TRACK.pattern}')"
    )
    [(count,)] = duckdb.connect().sql(query).fetchall()
    return int(count)


def dead_letters(landing: Path) -> Iterator[dict[str, Any]]:
    for path in sorted((landing / "_dead_letter").glob("*.jsonl")):
        # Lines end at "\n" only: a payload may hold U+2028 or U+0085, which splitlines() splits at.
        yield from (json.loads(line) for line in path.read_bytes().split(b"\n") if line)


def count_dead_letters(landing: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in (landing / "_dead_letter").glob("*.jsonl"))


def letter_payload(letter: dict[str, Any]) -> bytes:
    if "payload_base64" in letter:
        return base64.b64decode(letter["payload_base64"])
    return str(letter["payload"]).encode("utf-8", "surrogatepass")


def our_serial(row: dict[str, Any]) -> int | None:
    match = OUR_TRACK.match(row["track_id"])
    return int(match.group(1)) if match else None


def canon(value: Any) -> Any:
    """Comparable form: numbers by value (1 == 1.0, as the README allows for coordinates), but
    true is not 1; objects in any key order; lists in order."""
    if isinstance(value, bool) or value is None:
        return ("const", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, dict):
        return ("object", tuple(sorted((k, canon(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("list", tuple(canon(v) for v in value))
    return ("string", value)


@contextlib.contextmanager
def deep_recursion() -> Iterator[None]:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def compare(item: Item, row: dict[str, Any]) -> str | None:
    """What is wrong with the row an observation landed as, if anything: the oracle must
    rebuild what `json.loads` reads from the original text."""
    with deep_recursion():  # values nested 400 deep, compared as nested tuples
        try:
            expected = canon(json.loads(item.payload))
            got = canon(row_to_observation(row))
        except (ValueError, RecursionError, msgspec.MsgspecError) as exc:
            if item.outcome == EITHER:
                return None  # e.g. 1e400 kept verbatim: no JSON reader here rebuilds it
            return f"UNREADABLE ({type(exc).__name__}: {exc})"[:300]
        if got == expected:
            return None
    return f"LANDED DIFFERENTLY (row {row!r})"[:2000]


def show(payload: bytes) -> str:
    return repr(payload if len(payload) <= 300 else payload[:300] + b"...")


# -- the run -------------------------------------------------------------------------------------
@pytest.fixture
def sim_options() -> SimulatorOptions:
    # The simulator's own, good traffic in frames of its own, between the generated frames.
    return SimulatorOptions(token=TOKEN, tracks=20, rate=100.0, batch=10, seed=3)


@pytest.fixture
def fuzz_deployment(deployment: Deployment) -> Iterator[Deployment]:
    deployment.subscriptions = {"everything": {}}
    deployment.sections["batch"] = {"max_seconds": 0.5}
    yield deployment


def start(dep: Deployment) -> tuple[subprocess.Popen[str], Path]:
    """The connector, with its log in a file: a pipe nobody reads would fill and block it."""
    dep.write_config()
    log = dep.root / "connector.log"
    env = {k: v for k, v in os.environ.items() if k != "GOTHAM_TOKEN"} | dep.env
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "connector", "run", "--config", str(dep.config)],
            env=env,
            stdout=out,
            stderr=out,
            text=True,
        )
    dep.procs.append(proc)
    return proc, log


def test_hostile_frames_through_a_live_connector(
    fuzz_deployment: Deployment, sim: SimulatorThread
) -> None:
    dep = fuzz_deployment
    began = time.monotonic()
    proc, log = start(dep)

    def active_ids() -> list[str]:
        subs = sim.stats()["subscriptions"]
        return [sid for sid, s in subs.items() if s["active"]]

    wait_for(lambda: len(active_ids()) == 1, timeout=30)
    sid = active_ids()[0].encode()
    ledger = Ledger()
    exited: list[int] = []

    def send(batch: list[Frame]) -> None:
        if exited:
            return
        raws = [ledger.record(frame, sid) for frame in batch]
        sim.inject(
            {"action": "send_frames", "frames": [base64.b64encode(r).decode() for r in raws]}
        )
        if proc.poll() is not None:
            exited.append(proc.returncode)

    def fuzz(examples: int) -> None:
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,  # each run is new: nothing to replay against another connector
            phases=[Phase.generate],  # no shrinking: the failure lists its frames
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.filter_too_much,
                HealthCheck.large_base_example,
            ],
        )
        @given(st.lists(frames(), min_size=1, max_size=6))
        def example(batch: list[Frame]) -> None:
            send(batch)

        example()

    send(catalogue())
    # In runs of CHUNK examples: one long Hypothesis run holds on to what it generated
    # (1.8 GB at 5,000 examples), short ones do not.
    for done in range(0, EXAMPLES, CHUNK):
        fuzz(min(CHUNK, EXAMPLES - done))
    sent_at = time.monotonic()
    assert not exited, f"the connector exited with {exited[0]}:\n{log.read_text()[-5000:]}"
    with contextlib.suppress(AssertionError):
        wait_for(lambda: sim.injected_sent() == ledger.frames, timeout=60)
    assert sim.injected_sent() == ledger.frames, (
        f"{sim.injected_sent()} of {ledger.frames} frames reached the socket (connector"
        f" {'running' if proc.poll() is None else 'exited'}):\n{log.read_text()[-5000:]}"
    )

    # Everything sent is converted while the connector runs: every item is somewhere.
    def accounted() -> bool:
        letters = count_dead_letters(dep.landing)
        return proc.poll() is not None or letters + count_ours(dep.landing) >= len(ledger.items)

    with contextlib.suppress(AssertionError):  # the full accounting below says what is missing
        wait_for(accounted, timeout=60, interval=0.5)
    assert proc.poll() is None, f"the connector exited:\n{log.read_text()[-5000:]}"
    assert active_ids() == [sid.decode()], "the connector reconnected during the run"
    landed_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30 * TIME_FACTOR)
    stopped_at = time.monotonic()
    stderr = log.read_text()
    assert proc.returncode == 0, stderr[-5000:]
    assert "Traceback" not in stderr, stderr[-5000:]

    # -- the accounting --------------------------------------------------------------------------
    problems: list[str] = []
    by_serial = {item.serial: item for item in ledger.items if item.serial is not None}
    rows: Counter[int] = Counter()  # serial -> rows landed
    theirs: list[dict[str, Any]] = []
    for row in landed_rows(dep.landing):
        serial = our_serial(row)
        if serial is None:
            theirs.append(row_to_observation(row))
            continue
        rows[serial] += 1
        item = by_serial.get(serial)
        if item is not None and item.outcome in (LAND, EITHER):
            difference = compare(item, row)
            if difference:
                problems.append(f"{difference} [{item.why}] {show(item.payload)}")
    letters = Counter(
        (digest(letter_payload(x)), x.get("index")) for x in dead_letters(dep.landing)
    )
    landed = dead = frames_dead = either_landed = 0
    for item in ledger.items:
        got_rows = rows.pop(item.serial, 0) if item.serial is not None else 0
        key = (item.digest, item.index)
        got_letter = letters[key] > 0
        if got_letter:
            letters[key] -= 1
        where = f"[{item.why}] {show(item.payload)}"
        if got_rows > 1:
            problems.append(f"DUPLICATE ({got_rows} rows) {where}")
        if got_rows and got_letter:
            problems.append(f"BOTH landed and dead-lettered {where}")
        if item.outcome == LAND:
            if got_rows:
                landed += 1
            else:
                problems.append(f"{'DEAD-LETTERED' if got_letter else 'LOST'}, not landed {where}")
        elif item.outcome in (DEAD, "frame"):
            if got_rows:
                problems.append(f"LANDED but should be a dead letter {where}")
            elif not got_letter:
                problems.append(f"LOST (no dead letter) {where}")
            else:
                dead += item.outcome == DEAD
                frames_dead += item.outcome == "frame"
        elif not (got_rows or got_letter):
            problems.append(f"LOST (either way) {where}")
        else:
            either_landed += bool(got_rows)
            dead += not got_rows
    for serial, count in rows.items():
        if count:
            problems.append(f"UNEXPECTED {count} row(s) with serial {serial}")
    for (_, index), count in letters.items():
        if count:
            problems.append(f"UNEXPECTED {count} dead letter(s) (index {index})")

    # The simulator's own observations: each sent one landed exactly once, as generated.
    generated = {identity(o): o for o in sim.observations()}
    sent = sum(s["sent"] for s in sim.stats()["subscriptions"].values())
    their_ids = Counter(identity(o) for o in theirs if generated.get(identity(o)) == o)
    if len(theirs) != sent or len(their_ids) != sent or max(their_ids.values(), default=1) > 1:
        problems.append(
            f"simulator traffic: {sent} sent, {len(theirs)} rows, {len(their_ids)} of them"
            " distinct and equal to what was generated"
        )
    gaps = [e for e in dep.ledger() if e["event"] == "gap"]
    if gaps:
        problems.append(f"gaps recorded during the run: {gaps}")

    observations = sum(1 for i in ledger.items if i.outcome != "frame")
    summary = (
        f"fuzz: {EXAMPLES} examples, {ledger.frames} frames ({dict(ledger.kinds)}), "
        f"{len(ledger.items)} items = {observations} observations in usable frames + "
        f"{frames_dead} whole dead frames; landed {landed} + either-landed {either_landed}, "
        f"dead-lettered {dead} observations + {frames_dead} frames; simulator {sent} good; "
        f"{len(problems)} problem(s); seconds: {sent_at - began:.1f} sending, "
        f"{landed_at - sent_at:.1f} landing, {stopped_at - landed_at:.1f} stopping, "
        f"{time.monotonic() - stopped_at:.1f} checking"
    )
    print(summary)
    for why, count in sorted(ledger.whys.items()):
        print(f"  {count:6d}  {why}")
    assert not problems, summary + "\n" + "\n".join(problems[:40])
    assert landed + either_landed + dead + frames_dead == len(ledger.items)
