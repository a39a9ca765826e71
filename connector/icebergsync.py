"""`gotham-connector iceberg sync`: register landed files the Iceberg table does not hold yet.

For a table switched on after files had landed, or files whose cuts never reached the table
(a state dir lost during a catalog outage). Each cut (the files of one name stem) becomes one
commit tagged like the connector's own, so sync and the connector never register a cut twice,
and running sync again registers nothing new.

It takes the state dir's lock: the connector of that state dir is stopped meanwhile. Its own
writer's cuts are registered up to its checkpoint (later ones are the connector's to replay and
commit when it starts); other writers' files only with --all-writers (stop those connectors
first, or a cut they are landing could be registered half-written).

pyiceberg is imported inside `run`: the CLI imports this module for every command.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from connector import logs
from connector.checkpoint import CheckpointStore
from connector.errors import ConfigError, ConnectorError
from connector.icebergspec import CutKey, UnfitFile, key_of, spec_for
from connector.statedir import StateDirLock

if TYPE_CHECKING:
    from pyiceberg.table import Table

    from connector.config import Config
    from connector.sink import Sink

log = logging.getLogger(__name__)

# connector.layout.file_stem: writer id, first and last sequence number, 12 digits at least.
_STEM = re.compile(r"(?P<writer>[A-Za-z0-9_-]+)-(?P<first>\d{12,})-(?P<last>\d{12,})\.parquet\Z")

Files = list[tuple[str, int]]  # (path under the sink root, bytes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    sync = actions.add_parser("sync", help="register landed files the table does not hold yet")
    sync.add_argument("--config", type=Path, required=True)
    sync.add_argument(
        "--all-writers",
        action="store_true",
        help="also other writers' files (only while no other connector writes to the landing)",
    )


@dataclass
class Report:
    registered: int = 0
    files: int = 0
    present: int = 0
    left: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        text = (
            f"iceberg sync: {self.registered} cut(s) registered ({self.files} file(s)), "
            f"{self.present} already in the table"
        )
        return text + "".join(f"; {n} {why}" for why, n in sorted(self.left.items()))


def run(cfg: Config, args: argparse.Namespace) -> int:
    logs.setup(cfg.log.level, cfg.log.format)
    lock = StateDirLock(cfg.state.dir)
    try:
        spec = spec_for(cfg.iceberg, cfg.state.dir)
        if spec is None:
            raise ConfigError.single("iceberg.enabled", "is false: sync commits to that table")
        lock.acquire()
        report = sync(cfg, args.all_writers)
    except ConfigError as exc:
        for key, message in exc.problems:
            print(f"configuration error: {key}: {message}", file=sys.stderr)
        return exc.exit_code
    except ConnectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        lock.release()
    print(report.line())
    return 0


def sync(cfg: Config, all_writers: bool) -> Report:
    from connector.iceberg import Target, commit, translate
    from connector.sink import Sink

    spec = spec_for(cfg.iceberg, cfg.state.dir)
    assert spec is not None
    sink = Sink(cfg.sink.url, cfg.sink.storage_options, max_attempts=cfg.sink.max_attempts)
    report = Report()
    cuts = _chosen(landed_cuts(sink), _own(cfg), all_writers, report)
    target = Target(spec)
    try:
        table = target.open()
        held = _held_cuts(table)
        live = {t.file.file_path for t in table.scan().plan_files()} if held is not None else set()
        for key in sorted(cuts):
            missing = [(p, size) for p, size in cuts[key] if _uri(sink, p) not in live]
            if key in (held or set()) or not missing:
                report.present += 1
                continue
            try:
                commit(target, key, missing, sink, "sync", check_files=False)
            except UnfitFile as exc:
                log.warning("%s: cut %d-%d not registered: %s", key.writer, *key.range, exc)
                report.left["cut(s) whose files do not fit the table"] += 1
                continue
            report.registered += 1
            report.files += len(missing)
    except Exception as exc:
        raise translate(exc, "sync") from None
    return report


def landed_cuts(sink: Sink) -> dict[CutKey, Files]:
    """Every cut with data files in the landing zone, by the name stem they share."""
    cuts: dict[CutKey, Files] = {}
    prefix = sink.root + "/" if sink.root else ""
    try:
        found = sink.fs.find(sink.root, detail=True)
    except FileNotFoundError:
        return cuts
    for path, info in found.items():
        relative = path[len(prefix) :] if path.startswith(prefix) else path
        match = _STEM.match(relative.rsplit("/", 1)[-1])
        if match is None or relative.startswith("_"):  # _dead_letter, _ledger, probes
            continue
        key = CutKey(match["writer"], int(match["first"]), int(match["last"]))
        cuts.setdefault(key, []).append((relative, int(info["size"])))
    return cuts


def _own(cfg: Config) -> tuple[str, int] | None:
    """This state dir's writer id and committed seq; None before its first start."""
    store = CheckpointStore(cfg.state.dir)
    if not store.path.exists():
        return None
    cp = store.load(cfg.state.writer_id)
    return cp.writer_id, cp.committed_seq


def _chosen(
    cuts: dict[CutKey, Files], own: tuple[str, int] | None, all_writers: bool, report: Report
) -> dict[CutKey, Files]:
    chosen = {}
    for key, files in cuts.items():
        if own is not None and key.writer == own[0]:
            if key.last > own[1]:
                report.left["cut(s) past the checkpoint (the connector commits them)"] += 1
                continue
        elif not all_writers:
            report.left["cut(s) of other writers (see --all-writers)"] += 1
            continue
        chosen[key] = files
    return chosen


def _held_cuts(table: Table) -> set[CutKey] | None:
    """The cuts the table's current history names; None for a table without snapshots."""
    from connector.iceberg import history

    if table.current_snapshot() is None:
        return None
    return {k for k in (key_of(summary) for _, summary in history(table)) if k is not None}


def _uri(sink: Sink, relative: str) -> str:
    uri: str = sink.fs.unstrip_protocol(sink.path(relative))
    return uri
