"""`[iceberg]`: the table every cut is committed to. Pure: no pyiceberg, no I/O framework.

The receiving process reads the section and hands an `IcebergSpec` to the converter process
(`connector.iceberg`), which resolves the catalog's secrets and commits. The errors and the
snapshot-summary tags live here too: an error raised in the converter is unpickled in the
receiving process, which must not need pyiceberg to do so.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from connector import __version__
from connector.errors import ConnectorError, Terminal, Transient
from connector.secret import RedactFilter, Secret
from connector.tables import Reader

DEFAULT_TABLE = "gotham.observations"
DEFAULT_CATALOG_NAME = "default"
# Remembers which table (by uuid) this state dir committed to: see connector.iceberg.
PIN_FILE = "iceberg-table.json"
SECRET_SUFFIXES = ("_env", "_file")
# pyiceberg's property names that carry credentials (credential, token, s3.secret-access-key,
# adls.sas-token, ...): shown as *** by `validate --show`, scrubbed from logs once read.
_SECRET_PROPERTY = re.compile(r"key|secret|token|passw|credential|sas", re.I)
_TABLE = re.compile(r"[^.\s]+(\.[^.\s]+)+\Z")

# Snapshot summary properties: which cut a snapshot holds. A cut is (writer id, first seq,
# last seq), the same triple its file names derive from (connector.layout.file_stem).
PREFIX = "gotham-connector."
WRITER = PREFIX + "writer-id"
FIRST = PREFIX + "first-seq"
LAST = PREFIX + "last-seq"
VERSION = PREFIX + "version"
COMMITTER = PREFIX + "committed-by"  # "run" (the connector) or "sync" (`iceberg sync`)


class IcebergSetupError(ConnectorError):
    """The catalog cannot be used as configured (a secret missing, an unknown catalog type).
    A plain message: it crosses the process boundary pickled."""

    exit_code = 2


class IcebergUnavailable(Transient):
    """The catalog (or its storage) failed or conflicts outlasted the retries: the cut waits
    in the spool and is landed and committed again, as in a sink outage."""


class IcebergRefused(Terminal):
    """The catalog refused for good (permission denied, an incompatible table): stop, keep
    the data in the spool."""

    exit_code = 4


class UnfitFile(IcebergRefused):
    """A landed file the table cannot hold (written by an older connector, another schema)."""


@dataclass(frozen=True)
class IcebergConfig:
    enabled: bool = False
    table: str = DEFAULT_TABLE
    catalog_name: str = DEFAULT_CATALOG_NAME
    # pyiceberg catalog properties, passed through; secret values are Secrets, and a key
    # ending in _env or _file names where a property's value is read (`credential_file`).
    catalog: Mapping[str, str | Secret] = field(default_factory=dict)


@dataclass(frozen=True)
class IcebergSpec:
    """What the converter process needs to commit (picklable, hashable)."""

    table: str
    catalog_name: str
    catalog: tuple[tuple[str, str | Secret], ...]
    pin: str  # the state dir's pin file

    @property
    def identifier(self) -> tuple[str, ...]:
        return tuple(self.table.split("."))


def spec_for(cfg: IcebergConfig, state_dir: Path) -> IcebergSpec | None:
    if not cfg.enabled:
        return None
    pin = str((state_dir / PIN_FILE).absolute())
    return IcebergSpec(cfg.table, cfg.catalog_name, tuple(sorted(cfg.catalog.items())), pin)


def read_iceberg(tbl: Mapping[str, Any], problems: list[tuple[str, str]]) -> IcebergConfig:
    """`[iceberg]` from its TOML table; problems are recorded with their keys."""
    r = Reader(tbl, "iceberg", problems)
    d = IcebergConfig()
    enabled = r.get("enabled", "bool", d.enabled)
    table = r.get("table", "string", d.table)
    if not _TABLE.match(table):
        r.fail("table", f"expected namespace.table (like {DEFAULT_TABLE}), got {table!r}")
    name = r.get("catalog_name", "string", d.catalog_name)
    catalog = _catalog(r.get("catalog", "table", {}), Reader({}, r.key("catalog"), problems))
    r.unknown()
    if enabled and importlib.util.find_spec("pyiceberg") is None:
        r.fail("enabled", "pyiceberg is not installed: pip install 'gotham-connector[iceberg]'")
    return IcebergConfig(enabled, table, name, catalog)


def _catalog(raw: Mapping[str, Any], r: Reader) -> dict[str, str | Secret]:
    out: dict[str, str | Secret] = {}
    for key, value in raw.items():
        if key.endswith(SECRET_SUFFIXES):
            if not isinstance(value, str) or not value:
                r.fail(key, "expected the name of an environment variable or a file")
            elif clash := [k for k in _earlier_spellings(key) if k in raw]:
                r.fail(key, f"give one of {key} and {', '.join(clash)}, not both")
            else:
                out[key] = value
        elif isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, int | float):
            out[key] = str(value)
        elif isinstance(value, str):
            out[key] = Secret(value) if _secret(key, value) else value
        else:
            r.fail(key, "expected a string, number or bool (a pyiceberg catalog property)")
    return out


def _base(key: str) -> str:
    """The property a `*_env` / `*_file` key reads: `credential_file` -> `credential`."""
    for suffix in SECRET_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def _earlier_spellings(key: str) -> list[str]:
    """The other ways of giving the same property, those ordered before `key` (so that a clash
    is reported once): `credential` before `credential_env` before `credential_file`."""
    base = _base(key)
    spellings = [base, *(base + suffix for suffix in SECRET_SUFFIXES)]
    return spellings[: spellings.index(key)]


def _secret(key: str, value: str) -> bool:
    if _SECRET_PROPERTY.search(key):
        return True
    try:
        return urlsplit(value).password is not None  # uri = "postgresql://user:pw@host/db"
    except ValueError:
        return False


def resolve(spec: IcebergSpec, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The catalog properties with every secret read (from the environment or a file, on each
    call: a rotated secret is picked up when the catalog is next opened). Each secret value is
    registered with the log scrubber before anything could print it."""
    env = os.environ if environ is None else environ
    props: dict[str, str] = {}
    for key, value in spec.catalog:
        where = f"iceberg.catalog.{key}"
        if isinstance(value, Secret):
            props[key] = _register(value.reveal())
        elif key.endswith("_env"):
            found = env.get(value, "").strip()
            if not found:
                raise IcebergSetupError(f"{where}: environment variable {value} is not set")
            props[_base(key)] = _register(found)
        elif key.endswith("_file"):
            try:
                text = Path(value).expanduser().read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise IcebergSetupError(f"{where}: cannot read {value}: {exc.strerror}") from None
            if not text:
                raise IcebergSetupError(f"{where}: {value} is empty")
            props[_base(key)] = _register(text)
        else:
            props[key] = value
    return props


def _register(value: str) -> str:
    RedactFilter.register(value)
    return value


@dataclass(frozen=True, order=True)
class CutKey:
    """A cut as a snapshot summary names it."""

    writer: str
    first: int
    last: int

    @property
    def range(self) -> tuple[int, int]:
        return self.first, self.last

    def summary(self, committed_by: str) -> dict[str, str]:
        return {
            WRITER: self.writer,
            FIRST: str(self.first),
            LAST: str(self.last),
            VERSION: __version__,
            COMMITTER: committed_by,
        }


def key_of(summary: Mapping[str, Any]) -> CutKey | None:
    """The cut a snapshot summary names; None for snapshots others made (or malformed tags)."""
    writer, first, last = summary.get(WRITER), summary.get(FIRST), summary.get(LAST)
    if not isinstance(writer, str) or not isinstance(first, str) or not isinstance(last, str):
        return None
    try:
        return CutKey(writer, int(first), int(last))
    except ValueError:
        return None


def find_cut(key: CutKey, chain: Iterable[tuple[int, Mapping[str, Any]]]) -> int | None:
    """The id of the snapshot in `chain` ((id, summary) pairs, newest first) holding `key`.

    Matches the exact range: a writer's cuts never overlap, and the range is recorded before
    its files are written, so a replay asks for the very range it committed."""
    for snapshot_id, summary in chain:
        if key_of(summary) == key:
            return snapshot_id
    return None
