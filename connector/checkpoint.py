"""Versioned, typed checkpoint, replaced atomically (temp file, fsync, rename, fsync folder).

Version 2 (typed): per-subscription state is a struct, `last_seen_us` a field. Version 1 files
(free-form dicts, `totals.last_seen_us`) are migrated on load and written back as version 2.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import msgspec

from connector.errors import ConfigError
from connector.statedir import fsync_dir

VERSION = 2
log = logging.getLogger(__name__)


class SubscriptionState(msgspec.Struct):
    """What the connector must remember about a subscription across restarts."""

    accepted: bool = False  # the server accepted it at least once (it streamed)
    gap_from_us: int | None = None  # the stream stopped for it here; closed when resubscribed
    # Gaps recorded but not yet healed by backfill: retried on the next start.
    pending_gaps: list[tuple[int, int]] = msgspec.field(default_factory=list)
    # A full spool is dropping this subscription's frames since then (persisted at once: a kill
    # during the episode must not forget where the loss began).
    spool_full_from_us: int | None = None


class Checkpoint(msgspec.Struct):
    writer_id: str
    committed_seq: int = 0
    subscriptions: dict[str, SubscriptionState] = msgspec.field(default_factory=dict)
    # Newest moment the connector knew the stream was flowing (synced to disk with the spool).
    last_seen_us: int = 0
    version: int = VERSION


_decoder = msgspec.json.Decoder(Checkpoint)


class CheckpointStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "checkpoint.json"

    def load(self, writer_id: str | None) -> Checkpoint:
        """Read the checkpoint or start one; a writer id, once chosen, sticks to the state dir."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError.single("state.dir", f"cannot create {self.dir}: {exc}") from None
        if self.path.exists():
            cp = self._read()
            prefix = cp.writer_id.rpartition("-")[0]
            if writer_id is not None and prefix != writer_id:
                # Replays must rewrite the very names a crash may have left: the id of a state
                # dir never changes. A new writer id needs a new state dir.
                log.warning(
                    "state.writer_id %r ignored: %s belongs to writer %s (use a new state.dir)",
                    writer_id,
                    self.dir,
                    cp.writer_id,
                )
            return cp
        # The random suffix makes names unique even if a wiped state dir restarts at seq 1.
        cp = Checkpoint(writer_id=f"{writer_id or 'w'}-{uuid.uuid4().hex[:8]}")
        self.save(cp)
        return cp

    def _read(self) -> Checkpoint:
        def refuse(problem: object) -> ConfigError:
            advice = "restore it or use a new state dir"
            return ConfigError.single("state.dir", f"cannot read {self.path}: {problem} ({advice})")

        try:
            data = msgspec.json.decode(self.path.read_bytes())
        except (OSError, msgspec.DecodeError) as exc:
            raise refuse(exc) from None
        if not isinstance(data, dict) or "writer_id" not in data:
            raise refuse("not a checkpoint object")
        try:
            return _decoder.decode(msgspec.json.encode(migrate(data)))
        except msgspec.ValidationError as exc:
            raise refuse(exc) from None

    def save(self, cp: Checkpoint) -> None:
        self.write(self.encode(cp))

    @staticmethod
    def encode(cp: Checkpoint) -> bytes:
        """Snapshot on the caller's thread, so a writer thread never sees a struct mid-change."""
        return msgspec.json.format(msgspec.json.encode(cp), indent=1)

    def write(self, data: bytes) -> None:
        tmp = self.dir / f".checkpoint.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.dir)


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring a checkpoint of any known version to the current one."""
    version = data.get("version", 1)
    if not isinstance(version, int) or version > VERSION:
        raise ConfigError.single(
            "state.dir", f"checkpoint version {version} is newer than this connector ({VERSION})"
        )
    if version == 1:
        totals = data.pop("totals", None) or {}
        data["last_seen_us"] = int(totals.get("last_seen_us", 0))
        subs = data.get("subscriptions") or {}
        data["subscriptions"] = {
            name: {
                "accepted": bool(state.get("accepted", False)),
                "gap_from_us": state.get("gap_from_us"),
                "pending_gaps": [list(g) for g in state.get("pending_gaps", [])],
            }
            for name, state in subs.items()
            if isinstance(state, dict)
        }
        data["version"] = 2
    return data
