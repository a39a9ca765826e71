"""Commits every landed cut to an Apache Iceberg table, exactly once. Converter process only.

`connector.worker`'s flush handler calls `commit_cut` once a cut's files are visible in the
sink and before its reply lets the committer advance the checkpoint, so a kill leaves either
- files, no commit: the replay rewrites the same files (same names) and commits them; or
- files and a commit, no checkpoint: the replay rewrites the same files and finds the cut's
  snapshot (summary tags: writer id, first and last seq; `connector.icebergspec`): no append.
The files are appended as they are (DataFile entries built from their Parquet footers, which
carry the table's field ids), one fast-append snapshot per cut.

Conflicts (another replica committed first) refresh the table and look for the cut again
before the next attempt. pyiceberg's own commit retry is switched off for our commits: it would
re-apply the append without that look (a cut registered meanwhile by `iceberg sync`, or by a
converter orphaned by a killed connector, would be appended twice).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from pyiceberg.catalog import load_catalog
from pyiceberg.exceptions import (
    BadRequestError,
    CommitFailedException,
    ForbiddenError,
    NoSuchNamespaceError,
    NoSuchTableError,
    NotInstalledError,
    OAuthError,
    RESTError,
    UnauthorizedError,
    ValidationError,
    WaitingForLockException,
)
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table, TableProperties

from connector.backoff import Backoff
from connector.errors import ConnectorError
from connector.icebergfiles import data_files, live_paths
from connector.icebergschema import (
    PARTITION_SPEC,
    SORT_ORDER,
    iceberg_schema,
    table_problems,
    table_properties,
)
from connector.icebergspec import (
    CutKey,
    IcebergRefused,
    IcebergSetupError,
    IcebergSpec,
    IcebergUnavailable,
    find_cut,
    resolve,
)
from connector.secret import scrub

if TYPE_CHECKING:
    from connector.sink import Sink

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS = 8  # conflicts in a row before the cut waits in the spool (and is retried)
_MESSAGE_CHARS = 600
_HOUR_US = 3_600_000_000


class Target:
    """One table, opened once per process; dropped after a failure (reopened next time, with
    the secrets read again)."""

    def __init__(self, spec: IcebergSpec) -> None:
        self.spec = spec
        self.table: Table | None = None
        # Until this process has committed, a cut may be one whose commit landed just before
        # a kill or a lost reply: its files are looked for in the table too, not only its
        # summary (which expiring snapshots removes).
        self.suspect = True

    def open(self) -> Table:
        if self.table is None:
            self.table = open_table(self.spec)
        return self.table


_targets: dict[IcebergSpec, Target] = {}


def commit_cut(
    spec: IcebergSpec, key: CutKey, files: Sequence[tuple[str, int, int]], sink: Sink
) -> None:
    """Commit a landed cut's files ((path under the sink root, rows, bytes)) in one snapshot,
    unless the table holds the cut already. Errors come out as IcebergUnavailable (transient:
    the committer retries the cut), IcebergRefused or IcebergSetupError."""
    target = _targets.setdefault(spec, Target(spec))
    sized = [(path, size) for path, _, size in files]
    try:
        commit(target, key, sized, sink, "run", check_files=target.suspect)
    except Exception as exc:
        target.table, target.suspect = None, True
        raise translate(exc, f"commit of cut {key.first}-{key.last}") from None
    target.suspect = False


def commit(
    target: Target,
    key: CutKey,
    files: Sequence[tuple[str, int]],
    sink: Sink,
    committed_by: str,
    *,
    check_files: bool,
) -> bool:
    """Commit `files` ((path, bytes)) as cut `key`; False when the table already held it."""
    backoff = Backoff(0.2, 5.0)
    data: list[DataFile] | None = None
    for _ in range(COMMIT_ATTEMPTS):
        table = target.open()
        found = committed_snapshot(table, key)
        if found is not None:
            log.info("cut %d-%d is in the table already (snapshot %d)", key.first, key.last, found)
            return False
        if data is None:
            data = data_files(table, sink, files)
        live = live_paths(table, data) if check_files else set()
        fresh = [d for d in data if d.file_path not in live]
        if not fresh:
            log.info("cut %d-%d: its files are in the table already", key.first, key.last)
            return False
        try:
            target.table = append(table, fresh, key.summary(committed_by))
        except CommitFailedException as exc:
            delay = backoff.next()
            log.info(
                "cut %d-%d: commit conflict (%s), again in %.1fs", key.first, key.last, exc, delay
            )
            time.sleep(delay)
            target.table = table.refresh()
            continue
        snapshot = target.table.current_snapshot()
        log.info(
            "cut %d-%d committed: snapshot %s, %d file(s)",
            key.first,
            key.last,
            snapshot.snapshot_id if snapshot else "?",
            len(fresh),
        )
        return True
    raise IcebergUnavailable(
        f"cut {key.first}-{key.last}: commit conflicts outlasted {COMMIT_ATTEMPTS} attempts"
    )


def committed_snapshot(table: Table, key: CutKey) -> int | None:
    """The snapshot of the table's current history that holds `key`."""
    return find_cut(key, history(table))


def history(table: Table) -> Iterator[tuple[int, dict[str, str]]]:
    """(id, summary properties) of main's snapshots, newest first: what the table holds now
    (a rolled-back snapshot's rows are not in it)."""
    by_id = {s.snapshot_id: s for s in table.metadata.snapshots}
    snapshot = table.current_snapshot()
    while snapshot is not None:
        yield (
            snapshot.snapshot_id,
            snapshot.summary.additional_properties if snapshot.summary else {},
        )
        parent = snapshot.parent_snapshot_id
        snapshot = by_id.get(parent) if parent is not None else None


def append(table: Table, data: Sequence[DataFile], summary: dict[str, str]) -> Table:
    """One fast-append snapshot of `data`; the table as it is after the commit."""
    view = _without_retries(table)
    with (
        view.transaction() as tx,
        tx.update_snapshot(snapshot_properties=summary).fast_append() as add,
    ):
        for data_file in data:
            add.append_data_file(data_file)
    return view


def _without_retries(table: Table) -> Table:
    """The table with pyiceberg's commit retry off, for this process only: the property is
    changed in the loaded metadata, never committed (commits send updates, not metadata)."""
    properties = {**table.metadata.properties, TableProperties.COMMIT_NUM_RETRIES: "0"}
    metadata = table.metadata.model_copy(update={"properties": properties})
    return Table(table.name(), metadata, table.metadata_location, table.io, table.catalog)


def open_table(spec: IcebergSpec) -> Table:
    """Load the table, creating it (and its namespace) when missing, unless this state dir
    committed to a table of that name before: then it is an outage, not a new table (a SQLite
    catalog file that went missing would otherwise start a new, empty table)."""
    try:
        catalog = load_catalog(spec.catalog_name, **resolve(spec))
    except (ValueError, NotInstalledError) as exc:
        raise IcebergSetupError(scrub(f"iceberg.catalog: {exc}")[:_MESSAGE_CHARS]) from None
    pinned = read_pin(spec)
    try:
        table = catalog.load_table(spec.identifier)
    except (NoSuchTableError, NoSuchNamespaceError):
        if pinned is not None:
            raise IcebergUnavailable(
                f"table {spec.table} (uuid {pinned}) is not in catalog {spec.catalog_name}; "
                f"restore it, or delete {spec.pin} to start a new table (then "
                "`gotham-connector iceberg sync` registers what is landed)"
            ) from None
        catalog.create_namespace_if_not_exists(spec.identifier[:-1])
        table = catalog.create_table_if_not_exists(
            spec.identifier,
            iceberg_schema(),
            partition_spec=PARTITION_SPEC,
            sort_order=SORT_ORDER,
            properties=table_properties(),
        )
        log.info("iceberg table %s ready (uuid %s)", spec.table, table.metadata.table_uuid)
    found = str(table.metadata.table_uuid)
    if pinned is not None and pinned != found:
        raise IcebergUnavailable(
            f"table {spec.table} is another table now (uuid {found}, this state dir committed "
            f"to {pinned}); restore it, or delete {spec.pin} to commit to the new one"
        )
    problems = table_problems(table)
    if problems:
        raise IcebergRefused(f"table {spec.table} does not fit the files: {'; '.join(problems)}")
    if pinned is None:
        write_pin(spec, found)
    return table


def read_pin(spec: IcebergSpec) -> str | None:
    """The uuid of the table this state dir committed to, if it was this catalog and table."""
    try:
        with open(spec.pin, encoding="utf-8") as fh:
            pin = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IcebergSetupError(f"state.dir: cannot read {spec.pin}: {exc}") from None
    if not isinstance(pin, dict) or (pin.get("catalog_name"), pin.get("table")) != (
        spec.catalog_name,
        spec.table,
    ):
        return None  # the config names another table now: that one is pinned instead
    value = pin.get("uuid")
    return value if isinstance(value, str) else None


def write_pin(spec: IcebergSpec, table_uuid: str) -> None:
    pin = {"catalog_name": spec.catalog_name, "table": spec.table, "uuid": table_uuid}
    directory = os.path.dirname(spec.pin)
    tmp = os.path.join(directory, f".iceberg-table.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(pin, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, spec.pin)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def translate(exc: Exception, what: str) -> Exception:
    """The retry policy's view of a catalog error (`connector.errors.is_transient`). The
    message is scrubbed of every secret this process read: it is logged by the receiving one."""
    if isinstance(exc, ConnectorError):
        return exc
    message = scrub(f"iceberg {what}: {type(exc).__name__}: {exc}")[:_MESSAGE_CHARS]
    if isinstance(exc, _REFUSED):
        return IcebergRefused(message)
    if isinstance(exc, _transient()):
        return IcebergUnavailable(message)
    return exc  # nobody classified it: a bug, surfaced as one


# The catalog said no for good: credentials, permissions, a request it will never accept.
_REFUSED = (
    ForbiddenError,
    UnauthorizedError,
    OAuthError,
    BadRequestError,
    ValidationError,
    PermissionError,  # the warehouse refuses our metadata files (as the sink's SinkError)
)


def _transient() -> tuple[type[BaseException], ...]:
    """Catalog or storage trouble a later attempt may not meet: the network, the server, a
    busy or locked database, a conflict that outlasted the retries, a table gone missing."""
    import requests

    kinds: list[type[BaseException]] = [
        OSError,  # includes ConnectionError and TimeoutError; FileIO failures
        CommitFailedException,
        RESTError,  # server errors, 429, expired authorization, commit state unknown
        WaitingForLockException,
        NoSuchTableError,
        NoSuchNamespaceError,
        requests.RequestException,
    ]
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:  # a REST catalog needs no SQL driver
        pass
    else:
        kinds.append(SQLAlchemyError)
    return tuple(kinds)
