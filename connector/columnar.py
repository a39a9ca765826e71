"""Frames -> Arrow table of the fixed schema, a batch at a time. Pure: no I/O.

The fast path decodes whole frames of documented-shape observations with msgspec (in C, into
structs whose property values and style stay verbatim JSON bytes) and builds each column with
one pass and Arrow kernels: timestamps are parsed and checked in C++, property values become a
string array from one joined buffer. What it cannot hold exactly goes, observation by
observation, to `records.Columns` (the general, lossless Python path): a frame that fails the
typed decode, integer or huge coordinates, an explicit null name, a non-canonical timestamp, a
repeated propertyType, text that is not valid UTF-8. Both paths produce the same rows (a
differential Hypothesis test holds them to it).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from connector import wire
from connector.records import Columns, FrameMeta, Rejected
from connector.schema import SCHEMA, UTC_US

_UNSET = wire.UNSET
_Unset = wire.Unset
_Observation = wire.Observation
_Field = wire.Field
_frame_decoder = wire.frame_decoder
_raw_decoder = wire.raw_frame_decoder
_observation_decoder = wire.observation_decoder
_PAIRWISE_UP_TO = 16  # longest property list checked for repeats by pairwise passes
# What the cast reads as UTC; years 0001-9999 (RE2 has no lookahead: the year spelled out).
_Z_SHAPED = (
    r"^([1-9]\d{3}|0[1-9]\d\d|00[1-9]\d|000[1-9])-\d\d-\d\dT([01]\d|2[0-3]):[0-5]\d:[0-5]\d"
    r"(\.\d{1,9})?Z$"
)
_key = attrgetter("propertyType")
_value = attrgetter("value")
_chain = itertools.chain.from_iterable


class _Decoded:
    """A frame's observations that decoded as documented, and where their text is."""

    __slots__ = ("indices", "meta", "observations", "raw", "texts")

    def __init__(
        self,
        meta: FrameMeta,
        observations: list[_Observation],
        raw: bytes,
        texts: list[msgspec.Raw] | None = None,
        indices: list[int] | None = None,
    ) -> None:
        self.meta, self.observations, self.raw = meta, observations, raw
        self.texts, self.indices = texts, indices  # None: the whole frame, in order

    def text(self, i: int) -> tuple[int, msgspec.Raw]:
        """(index in the frame, verbatim text) of the i-th decoded observation."""
        if self.texts is None:
            self.texts = _raw_decoder.decode(self.raw).observations
        return (i if self.indices is None else self.indices[i]), self.texts[i]


def _one_by_one(meta: FrameMeta, raw: bytes, slow: Columns) -> _Decoded:
    """A frame with some odd observation: the documented ones still take the fast path."""
    try:
        texts = _raw_decoder.decode(raw).observations
    except (msgspec.DecodeError, RecursionError, ValueError):
        slow.add_frame(meta, raw)  # rejected whole, as the general path decides
        return _Decoded(meta, [], raw, [], [])
    good: list[_Observation] = []
    good_texts: list[msgspec.Raw] = []
    indices: list[int] = []
    odd: list[tuple[int, msgspec.Raw]] = []
    for index, text in enumerate(texts):
        try:
            good.append(_observation_decoder.decode(text))
        except (msgspec.DecodeError, RecursionError, ValueError):
            odd.append((index, text))
            continue
        good_texts.append(text)
        indices.append(index)
    if odd:
        slow.add_observations(meta, odd)
    return _Decoded(meta, good, raw, good_texts, indices)


@dataclass
class Converted:
    table: pa.Table
    rejected: list[Rejected] = field(default_factory=list)
    slow_rows: int = 0  # rows that took the general path (a figure for the benchmark)


def convert(frames: Sequence[tuple[FrameMeta, bytes]]) -> Converted:
    """One table (schema SCHEMA, rows in no particular order) for the frames' observations."""
    slow = Columns()
    decoded: list[_Decoded] = []
    for meta, raw in frames:
        try:
            decoded.append(_Decoded(meta, _frame_decoder.decode(raw).observations, raw))
        except (msgspec.ValidationError, RecursionError, ValueError):
            decoded.append(_one_by_one(meta, raw, slow))
        except msgspec.DecodeError:  # not JSON at all: the general path rejects it whole
            slow.add_frame(meta, raw)
    tables = []
    if decoded:
        tables.append(_fast(decoded, slow))
    slow_table = slow.to_table()
    if slow_table.num_rows or not tables:
        tables.append(slow_table)
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    return Converted(table, slow.rejected, slow_table.num_rows)


def _fast(decoded: list[_Decoded], slow: Columns) -> pa.Table:
    observations = list(_chain(d.observations for d in decoded))
    n = len(observations)
    if n == 0:
        return SCHEMA.empty_table()
    # One comprehension per column: measured 3x faster than transposing with zip(*...).
    src = [o.sourceSystemId for o in observations]
    col = [o.collectionId for o in observations]
    spec = [o.observationSpecId for o in observations]
    track = [o.trackId for o in observations]
    ts = [o.timestamp for o in observations]
    names = [o.name for o in observations]
    pos = [o.position for o in observations]
    static = [o.staticProperties for o in observations]
    live = [o.liveProperties for o in observations]
    style = [o.style for o in observations]
    odd: set[int] = set()
    longitude, latitude, elevation = _position(pos, odd)
    timestamps, kept_stamp = _timestamps(pa.array(ts, pa.string()), odd)
    # An explicit null name (unlike an absent one) is kept in `extra`, after the timestamp.
    null_name = None
    if None in names:
        nulls = pa.array([v is None for v in names], pa.bool_())
        null_name = pc.if_else(nulls, pa.scalar('"name":null'), pa.scalar(None, pa.string()))
    extra = _extra(n, kept_stamp, null_name)
    static_map = _properties(static, odd)
    live_map = _properties(live, odd)
    style_text = _text(
        [b"" if s is _UNSET else s for s in style], [s is _UNSET for s in style], odd
    )
    arrays = {
        "source_system_id": _strings(src, odd),
        "collection_id": _strings(col, odd),
        "observation_spec_id": _strings(spec, odd),
        "track_id": _strings(track, odd),
        "timestamp": timestamps,
        "longitude": longitude,
        "latitude": latitude,
        "elevation": elevation,
        "name": _strings([v if type(v) is str else None for v in names], odd),
        "static_properties": static_map,
        "live_properties": live_map,
        "style": style_text,
        "extra": extra,
        **_frame_columns(decoded),
    }
    table = pa.Table.from_arrays([arrays[f.name] for f in SCHEMA], schema=SCHEMA)
    if odd:
        dropped = _to_slow_path(decoded, sorted(odd), slow)
        table = table.filter(pa.array([i not in dropped for i in range(n)], pa.bool_()))
    return table


def _position(pos: list[wire.Position], odd: set[int]) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Floats as they are; ints (exact or not) and their rows are the general path's to judge."""
    out = []
    for values in ([p.longitude for p in pos], [p.latitude for p in pos]):
        if set(map(type, values)) == {float}:
            out.append(pa.array(values, pa.float64()))
        else:
            odd.update(i for i, v in enumerate(values) if type(v) is not float)
            out.append(_floats(values))
    elevations = [None if p.elevation is _UNSET else p.elevation for p in pos]
    if not set(map(type, elevations)) <= {float, type(None)}:
        odd.update(i for i, e in enumerate(elevations) if e is not None and type(e) is not float)
    return out[0], out[1], _floats(elevations)


def _strings(values: Sequence[str | None], odd: set[int]) -> pa.Array:
    try:
        return pa.array(values, pa.string())
    except UnicodeEncodeError:  # a lone surrogate from a \\ud800 escape: not UTF-8
        bad = {i for i, v in enumerate(values) if v is not None and not _encodable(v)}
        odd.update(bad)
        return pa.array(["" if i in bad else v for i, v in enumerate(values)], pa.string())


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _floats(values: Iterable[object]) -> pa.Array:
    # Rows routed to the general path may hold ints of any size: zero them, they are dropped.
    return pa.array([v if type(v) is float or v is None else 0.0 for v in values], pa.float64())


def _extra(n: int, *parts: pa.Array | None) -> pa.Array:
    """`extra` as the general path writes it: a JSON object of the present parts, in order."""
    present = [p for p in parts if p is not None]
    if not present:
        return pa.nulls(n, pa.string())
    body = present[0]
    for part in present[1:]:
        # Both, else whichever is there (null_handling="skip" drops rows in pyarrow 26).
        body = pc.coalesce(pc.binary_join_element_wise(body, part, ","), body, part)
    return pc.binary_join_element_wise("{", body, "}", "")


def _timestamps(stamps: pa.Array, odd: set[int]) -> tuple[pa.Array, pa.Array | None]:
    """Parsed in C++. A `...Z` spelling format_us would not write (`.120Z`, 7-9 digits) keeps
    its text for `extra` (the second result); other zones and forms go to the general path.
    One regex checks the shape; canonical-or-not then needs only cheap string kernels."""
    shaped = pc.match_substring_regex(stamps, _Z_SHAPED)
    if not pc.all(shaped).as_py():
        odd.update(i for i, ok in enumerate(shaped.to_pylist()) if not ok)
        stamps = pc.if_else(shaped, stamps, pa.scalar("1970-01-01T00:00:00Z"))
    fraction = pc.match_substring(stamps, ".")
    # Shaped, so the length says the digits: 27 characters is a 6-digit fraction.
    too_long = pc.greater(pc.utf8_length(stamps), 27)
    trailing_zero = pc.and_(fraction, pc.ends_with(stamps, "0Z"))
    kept = None
    if pc.any(pc.or_(trailing_zero, too_long)).as_py():
        noncanonical = pc.or_(trailing_zero, too_long)
        text = pc.binary_join_element_wise('"timestamp":"', stamps, '"', "")
        kept = pc.if_else(noncanonical, text, pa.scalar(None, pa.string()))
        if pc.any(too_long).as_py():
            # Microseconds, rounded down as parse_z does: drop digits beyond the sixth.
            stamps = pc.replace_substring_regex(stamps, r"(\.\d{6})\d+Z$", r"\1Z")
    try:
        return stamps.cast(UTC_US), kept
    except pa.ArrowInvalid:  # the right shape but no such day (2023-02-30): rare, go slow
        timestamps, bad = _timestamps_one_by_one(stamps)
        odd.update(bad)
        return timestamps, kept


def _timestamps_one_by_one(stamps: pa.Array) -> tuple[pa.Array, list[int]]:
    out, bad = [], []
    for i, scalar in enumerate(stamps):
        try:
            out.append(pa.array([scalar.as_py()], pa.string()).cast(UTC_US)[0].value)
        except pa.ArrowInvalid:
            out.append(0)
            bad.append(i)
    return pa.array(out, pa.int64()).cast(UTC_US), bad


def _properties(lists: list[list[_Field] | _Unset], odd: set[int]) -> pa.Array:
    absent = lists.count(_UNSET)  # C-level scan; usually 0
    present: list[Any] = [() if p is _UNSET else p for p in lists] if absent else lists
    lengths = list(map(len, present))
    offsets = pa.array(list(itertools.accumulate(lengths, initial=0)), pa.int32())
    fields = list(_chain(present))
    key_odd: set[int] = set()
    keys = _strings(list(map(_key, fields)), key_odd)
    values = _text(list(map(_value, fields)), None, key_odd)
    if key_odd:  # entry -> the observation holding it
        ends = list(itertools.accumulate(lengths))
        odd.update(bisect.bisect_right(ends, i) for i in key_odd)
    _repeated_keys(offsets, keys, odd)
    mask = pa.array([p is _UNSET for p in lists], pa.bool_()) if absent else None
    return pa.MapArray.from_arrays(offsets, keys, values, mask=mask)


def _repeated_keys(offsets: pa.Array, keys: pa.Array, odd: set[int]) -> None:
    """A propertyType twice in one list does not fit a map: those rows take the general path.
    Entries d apart in the same row are compared for d < the longest list: a few cheap
    vectorised passes instead of hashing every (row, key) pair."""
    if len(keys) < 2:
        return
    rows = pc.list_parent_indices(pa.ListArray.from_arrays(offsets, keys))
    longest = pc.max(pc.list_value_length(pa.ListArray.from_arrays(offsets, keys))).as_py()
    if not longest or longest < 2:
        return
    numbers = pc.dictionary_encode(keys).indices
    if longest > _PAIRWISE_UP_TO:  # long lists: count distinct (row, key) pairs instead
        width = pa.scalar(len(keys), pa.int64())
        pairs = pc.add(pc.multiply(rows.cast(pa.int64()), width), numbers.cast(pa.int64()))
        if pc.count_distinct(pairs).as_py() == len(keys):
            return
        counts = pc.value_counts(pairs)
        repeated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
        odd.update(pc.divide(repeated, width).to_pylist())
        return
    n = len(keys)
    for d in range(1, longest):
        same = pc.and_(
            pc.equal(rows.slice(0, n - d), rows.slice(d)),
            pc.equal(numbers.slice(0, n - d), numbers.slice(d)),
        )
        if pc.any(same).as_py():
            odd.update(rows.slice(0, n - d).filter(same).to_pylist())


def _text(raws: Sequence[msgspec.Raw | bytes], nulls: list[bool] | None, odd: set[int]) -> pa.Array:
    """A string array from verbatim JSON bytes (one join, no per-value objects), checked as
    UTF-8 in C++; rows holding invalid text are sent to the general path."""
    offsets = pa.array(list(itertools.accumulate(map(len, raws), initial=0)), pa.int32())
    data = pa.py_buffer(b"".join(raws))
    mask = None if nulls is None else pa.array(nulls, pa.bool_())
    binary = pa.Array.from_buffers(pa.binary(), len(raws), [None, offsets.buffers()[1], data])
    if mask is not None:
        binary = pc.if_else(mask, pa.nulls(len(raws), pa.binary()), binary)
    try:
        return binary.cast(pa.string())
    except pa.ArrowInvalid:
        values = binary.to_pylist()
        bad = {i for i, v in enumerate(values) if v is not None and not _utf8(v)}
        odd.update(bad)
        return pa.array([b"" if i in bad else v for i, v in enumerate(values)]).cast(pa.string())


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _frame_columns(decoded: list[_Decoded]) -> dict[str, pa.Array]:
    """Per-frame values, repeated for each of the frame's rows by run-end decoding (in C++)."""
    metas = [(d.meta, len(d.observations)) for d in decoded if d.observations]
    run_ends = pa.array(itertools.accumulate(count for _, count in metas), pa.int64())

    def runs(values: list[object], dtype: pa.DataType) -> pa.Array:
        encoded = pa.RunEndEncodedArray.from_arrays(run_ends, pa.array(values, dtype))
        return pc.run_end_decode(encoded)

    return {
        "subscription": runs([m.subscription for m, _ in metas], pa.string()),
        "subscription_id": runs([m.subscription_id for m, _ in metas], pa.string()),
        "origin": runs([m.origin for m, _ in metas], pa.string()),
        "received_at": runs([m.received_at_us for m, _ in metas], pa.int64()).cast(UTC_US),
        "seq": runs([m.seq for m, _ in metas], pa.int64()),
    }


def _to_slow_path(decoded: list[_Decoded], odd: list[int], slow: Columns) -> set[int]:
    """Hand the odd rows' verbatim observations to the general path, frame by frame; returns
    the rows to drop from the fast table. A frame whose text cannot be split again (nesting at
    the decoder's limit, which depends on stack depth) goes to the general path whole."""
    starts = list(itertools.accumulate((len(d.observations) for d in decoded), initial=0))
    by_frame: dict[int, list[int]] = {}
    frame = 0
    for row in odd:
        while starts[frame + 1] <= row:
            frame += 1
        by_frame.setdefault(frame, []).append(row)
    dropped: set[int] = set()
    for frame, rows in by_frame.items():
        item = decoded[frame]
        try:
            picked = [item.text(row - starts[frame]) for row in rows]
        except (msgspec.DecodeError, RecursionError, ValueError):
            slow.add_frame(item.meta, item.raw)
            dropped.update(range(starts[frame], starts[frame + 1]))
            continue
        slow.add_observations(item.meta, picked)
        dropped.update(rows)
    return dropped
