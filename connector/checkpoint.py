"""Versioned JSON checkpoint, replaced atomically (temp file, fsync, rename, fsync folder)."""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from connector.errors import ConfigError

VERSION = 1
log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    writer_id: str
    committed_seq: int = 0
    # Per subscription: ledger state (last data, open gaps, ...). Owned by the runner.
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    version: int = VERSION


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
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(data, dict) or "writer_id" not in data:
                    raise ValueError("not a checkpoint object")
            except (OSError, ValueError) as exc:
                raise ConfigError.single(
                    "state.dir",
                    f"cannot read {self.path}: {exc} (restore it or use a new state dir)",
                ) from None
            data = _migrate(data)
            try:
                cp = Checkpoint(**data)
            except TypeError as exc:
                raise ConfigError.single("state.dir", f"{self.path}: {exc}") from None
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

    def save(self, cp: Checkpoint) -> None:
        self.write(self.encode(cp))

    @staticmethod
    def encode(cp: Checkpoint) -> bytes:
        """Snapshot on the caller's thread, so a writer thread never sees a dict mid-change."""
        return json.dumps(asdict(cp), indent=1, sort_keys=True).encode()

    def write(self, data: bytes) -> None:
        tmp = self.dir / f".checkpoint.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    version = data.get("version", 1)
    if version > VERSION:
        raise ConfigError.single(
            "state.dir",
            f"checkpoint version {version} is newer than this connector ({VERSION})",
        )
    return data
