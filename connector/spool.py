"""Durable, append-only spool of received frames under `state.dir/spool/`.

Every frame is written (one os.write, so it sits in the page cache and survives SIGKILL) before
anything else happens to it. A record is: header `<IIB` (body length, crc32 of body, kind) and
body `<Qq` (seq, received_at in us) + `<H` meta length + meta JSON + payload. A torn tail (a
crash mid-write) fails its length or crc check and is truncated on open. Segments are named by
their first sequence number and deleted once the checkpoint has committed past their last one.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<IIB")
_BODY = struct.Struct("<QqH")
DATA, DEAD, CUT, LEDGER = 1, 2, 3, 4
_SUFFIX = ".seg"


class SpoolFull(Exception):
    """The spool reached `state.max_spool_bytes`; the caller records the loss as a gap."""


@dataclass(frozen=True, slots=True)
class Record:
    kind: int
    seq: int
    received_at_us: int
    meta: dict[str, Any]
    payload: bytes
    size: int  # payload length; recovery reads sizes, not payloads, to keep memory flat


@dataclass
class _Segment:
    first_seq: int
    path: Path
    size: int = 0
    last_seq: int = -1
    # (seq, offset) of each record, for reading a cut's range without a full scan.
    seqs: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)


@dataclass
class Recovered:
    """What `open()` found beyond the committed sequence number."""

    cuts: list[tuple[int, int]]
    tail: list[Record]  # records after the last recorded cut, in order, payloads not loaded
    torn_bytes: int
    last_received_us: int  # newest receive time on record: where a crash's gap begins


class Spool:
    def __init__(self, directory: Path, *, segment_bytes: int, max_bytes: int) -> None:
        self.dir = directory
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self.next_seq = 1
        self._dirty = False
        self._retiring: list[threading.Thread] = []
        self._size = 0  # bytes in all segments; checked on every append

    # -- start-up -------------------------------------------------------------------------
    def open(self, committed_seq: int) -> Recovered:
        """Scan segments, truncate a torn tail, and return what still needs landing."""
        self.dir.mkdir(parents=True, exist_ok=True)
        cuts: list[tuple[int, int]] = []
        pending: list[Record] = []
        torn = 0
        max_seq = committed_seq
        last_received = 0
        for path in sorted(self.dir.glob(f"*{_SUFFIX}")):
            seg = _Segment(int(path.stem), path)
            good_end = 0
            with open(path, "rb") as fh:
                data = fh.read()
            for offset, end, record in _scan(data, with_payload=False):
                good_end = end
                self._index(seg, record, offset)
                max_seq = max(max_seq, record.seq)
                if record.kind == DATA:
                    last_received = max(last_received, record.received_at_us)
                if record.seq <= committed_seq:
                    continue
                if record.kind == CUT:
                    first, last = record.meta["first"], record.meta["last"]
                    cuts.append((first, last))
                    pending = [r for r in pending if r.seq > last]
                else:
                    pending.append(record)
            if good_end < len(data):
                torn += len(data) - good_end
                log.warning(
                    "spool segment %s: truncating %d torn bytes", path.name, len(data) - good_end
                )
                with open(path, "r+b") as fh:
                    fh.truncate(good_end)
                    os.fsync(fh.fileno())
            seg.size = good_end
            self._size += good_end
            self._segments.append(seg)
        self.next_seq = max_seq + 1
        return Recovered(cuts, pending, torn, last_received)

    @staticmethod
    def _index(seg: _Segment, record: Record, offset: int) -> None:
        seg.last_seq = max(seg.last_seq, record.seq)
        if record.kind != CUT:  # cuts are never read back as data
            seg.seqs.append(record.seq)
            seg.offsets.append(offset)

    # -- writing --------------------------------------------------------------------------
    @property
    def size_bytes(self) -> int:
        return self._size

    def append(
        self,
        kind: int,
        meta: dict[str, Any],
        payload: bytes,
        received_at_us: int,
        *,
        force: bool = False,
    ) -> int:
        """Append a DATA, DEAD or LEDGER record; returns its sequence number. Raises SpoolFull."""
        if not force and self.size_bytes + len(payload) > self.max_bytes:
            raise SpoolFull(f"spool holds {self.size_bytes} bytes, limit {self.max_bytes}")
        seq = self.next_seq
        self._write(kind, seq, received_at_us, meta, payload)
        self.next_seq += 1
        return seq

    def append_cut(self, first: int, last: int, at_us: int) -> None:
        """Record a flush decision before any file is written: replays honour it."""
        self._write(CUT, last, at_us, {"first": first, "last": last}, b"")

    def _write(self, kind: int, seq: int, at_us: int, meta: dict[str, Any], payload: bytes) -> None:
        seg = self._current()
        meta_bytes = msgspec.json.encode(meta)
        body = b"".join((_BODY.pack(seq, at_us, len(meta_bytes)), meta_bytes, payload))
        record = _HEADER.pack(len(body), zlib.crc32(body), kind) + body
        assert self._fd is not None
        offset = seg.size
        written = os.write(self._fd, record)
        while written < len(record):  # os.write may be partial on huge records
            written += os.write(self._fd, record[written:])
        seg.size += len(record)
        self._size += len(record)
        self._index(seg, Record(kind, seq, at_us, meta, b"", len(payload)), offset)
        self._dirty = True

    def _current(self) -> _Segment:
        if self._fd is not None and self._segments[-1].size < self.segment_bytes:
            return self._segments[-1]
        self._retire_fd()
        seg = _Segment(self.next_seq, self.dir / f"{self.next_seq:020d}{_SUFFIX}")
        if self._segments and self._segments[-1].path == seg.path:
            seg = self._segments.pop()  # reopen the last segment after a restart
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segments.append(seg)
        _fsync_dir(self.dir)
        return seg

    def sync(self) -> None:
        """fsync the segment being written (and wait for retired ones): bounds what a machine
        crash can cost. Called from worker threads, never the event loop."""
        while self._retiring:
            self._retiring.pop().join()
        if self._fd is not None and self._dirty:
            self._dirty = False
            os.fsync(self._fd)

    # -- reading and releasing --------------------------------------------------------------
    def read(self, first: int, last: int) -> Iterator[Record]:
        """DATA and DEAD records with first <= seq <= last, in order."""
        for seg in list(self._segments):
            if seg.last_seq < first or seg.first_seq > last or not seg.seqs:
                continue
            start = bisect.bisect_left(seg.seqs, first)
            if start >= len(seg.seqs):
                continue
            with open(seg.path, "rb") as fh:
                fh.seek(seg.offsets[start])
                data = fh.read(seg.size - seg.offsets[start])
            for _, _, record in _scan(data):
                if record.seq > last:
                    break
                if record.kind != CUT and record.seq >= first:
                    yield record

    def release(self, committed_seq: int) -> int:
        """Delete segments wholly at or below the committed sequence number; returns how many."""
        removed = 0
        for seg in list(self._segments):
            is_current = seg is self._segments[-1] and self._fd is not None
            if seg.last_seq <= committed_seq and not is_current:
                seg.path.unlink(missing_ok=True)
                self._segments.remove(seg)
                self._size -= seg.size
                removed += 1
        if removed:
            _fsync_dir(self.dir)
        return removed

    def close(self) -> None:
        self.sync()
        self._close_fd()

    def _retire_fd(self) -> None:
        """Rotation happens on the event loop: the old segment's fsync runs in a thread."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            thread = threading.Thread(target=_fsync_close, args=(fd,), name="spool-fsync")
            thread.daemon = True
            thread.start()
            self._retiring.append(thread)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


def _scan(data: bytes, *, with_payload: bool = True) -> Iterator[tuple[int, int, Record]]:
    """Yield (offset, end, record) for each intact record; stop at the first torn one."""
    offset, size = 0, len(data)
    view = memoryview(data)
    while offset + _HEADER.size <= size:
        length, crc, kind = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        end = start + length
        if end > size or length < _BODY.size:
            return
        body = view[start:end]
        if zlib.crc32(body) != crc:
            return
        seq, at_us, meta_len = _BODY.unpack_from(body)
        meta_end = _BODY.size + meta_len
        meta = msgspec.json.decode(body[_BODY.size : meta_end])
        payload = bytes(body[meta_end:]) if with_payload else b""
        yield offset, end, Record(kind, seq, at_us, meta, payload, length - meta_end)
        offset = end


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
