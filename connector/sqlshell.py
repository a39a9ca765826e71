"""`gotham-connector sql`: DuckDB over a config's landing zone, with views and macros ready.

The landing zone is read through the connector's own fsspec filesystem (the sink's URL and
storage_options), handed to DuckDB with `register_filesystem`: S3, memory:// and any other
fsspec store work without DuckDB's httpfs extension, so nothing is downloaded at run time.
A local folder is read by DuckDB directly (its own reader is faster than a Python bridge).

Heavy libraries are imported inside functions: the CLI imports this module for every command,
including `run`, whose receiving process must stay free of pyarrow and DuckDB.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connector import layout, sqlviews
from connector.errors import ConnectorError, SinkError
from connector.sqlexport import SqlError

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from connector.config import Config, SinkConfig

OUTPUTS = ("table", "csv", "json", "parquet", "geojson")
# Statements whose result is the answer; anything else (SET, CREATE, COPY...) just runs.
_RESULT_TYPES = ("SELECT", "PRAGMA", "EXPLAIN", "CALL", "MULTI", "EXECUTE")
_TRACK_PATH = re.compile(r"\btrack_path\s*\(", re.IGNORECASE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("-c", dest="sql", metavar="SQL", help="run this SQL and exit")
    parser.add_argument("--output", choices=OUTPUTS, default="table")
    parser.add_argument("--out", type=Path, help="write the result here instead of stdout")
    lines = parser.add_mutually_exclusive_group()
    lines.add_argument(
        "--geojson-lines",
        dest="geojson_lines",
        action="store_const",
        const=True,
        help="one LineString per track (the default when the query calls track_path)",
    )
    lines.add_argument(
        "--geojson-points",
        dest="geojson_lines",
        action="store_const",
        const=False,
        help="one Point per row, even when the query calls track_path",
    )
    parser.add_argument("--max-rows", type=int, default=1000, help="rows shown by --output table")
    parser.add_argument(
        "--shell",
        choices=("auto", "duckdb", "python"),
        default="auto",
        help="interactive session: the duckdb CLI (local landing zones) or a Python prompt",
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    import duckdb

    try:
        landing = open_landing(cfg.sink)
        if args.sql is None:
            return interactive(landing, args.shell)
        con = connect(landing)
        return run_once(con, args)
    except ConnectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except duckdb.Error as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return SqlError.exit_code
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # --out in a missing folder, a full disk
        print(f"error: {exc}", file=sys.stderr)
        return SqlError.exit_code


def _one_line(exc: BaseException) -> str:
    # DuckDB's messages name their kind already ("Parser Error: ...", "Catalog Error: ...").
    return str(exc).strip()


@dataclass
class Landing:
    url: str
    fs: Any  # the fsspec filesystem of the sink
    root: str  # the sink root as the filesystem names it
    local: bool

    @property
    def base(self) -> str:
        """The root as DuckDB must name it: a path, or a URL of the registered filesystem."""
        return self.root if self.local else str(self.fs.unstrip_protocol(self.root))


def open_landing(sink_cfg: SinkConfig) -> Landing:
    from connector.sink import Sink

    sink = Sink(sink_cfg.url, sink_cfg.storage_options)
    landing = Landing(sink_cfg.url, sink.fs, sink.root, sink.local)
    if not _storage(landing, landing.fs.exists, landing.root):
        raise SqlError(
            f"no landing zone at sink.url {sink_cfg.url!r} "
            "(nothing has landed there yet, or sink.url points elsewhere)"
        )
    return landing


def _storage(landing: Landing, fn: Any, *args: Any) -> Any:
    """A storage call; failures (denied, unreachable) become exit code 4 with the store's word."""
    try:
        return fn(*args)
    except FileNotFoundError:
        return False
    except Exception as exc:
        raise SinkError(f"sink {landing.url}: {type(exc).__name__}: {exc}") from exc


def session_statements(landing: Landing) -> list[str]:
    """What prepares a session over this landing zone; views over missing folders are empty."""
    entries = _storage(landing, landing.fs.ls, landing.root, False) or []
    names = {str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries}
    has_specs = any(n.startswith(layout.SPEC_PREFIX) for n in names)
    base = landing.base
    return sqlviews.session_sql(
        observations_base=base if has_specs else None,
        ledger_base=base if layout.LEDGER_DIR in names else None,
        dead_letters_base=base if layout.DEAD_LETTER_DIR in names else None,
        empty_observations=observation_columns(),
    )


def observation_columns() -> list[tuple[str, str]]:
    """The observation schema as DuckDB types, plus the partition columns the view adds."""
    from connector import schema

    # What the files hold: FILE_SCHEMA (the row schema plus the GeoParquet columns) where the
    # schema module defines it, else the row schema itself.
    columns = getattr(schema, "FILE_SCHEMA", schema.SCHEMA)
    return [(f.name, column_type(f)) for f in columns] + list(sqlviews.HIVE_COLUMNS)


def column_type(field: pa.Field) -> str:
    import pyarrow as pa

    # DuckDB reads a GeoParquet WKB column as its core GEOMETRY type: the empty view must match.
    if field.name == sqlviews.GEOMETRY_COLUMN and pa.types.is_binary(field.type):
        return sqlviews.GEOMETRY_TYPE
    return duckdb_type(field.type)


def duckdb_type(t: pa.DataType) -> str:
    import pyarrow as pa

    simple = {
        pa.string(): "VARCHAR",
        pa.large_string(): "VARCHAR",
        pa.float64(): "DOUBLE",
        pa.float32(): "FLOAT",
        pa.int64(): "BIGINT",
        pa.int32(): "INTEGER",
        pa.bool_(): "BOOLEAN",
        pa.binary(): "BLOB",
        pa.large_binary(): "BLOB",
    }
    if t in simple:
        return simple[t]
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_map(t):
        return f"MAP({duckdb_type(t.key_type)}, {duckdb_type(t.item_type)})"
    if pa.types.is_struct(t):
        fields = ", ".join(f"{sqlviews.quote_name(f.name)} {duckdb_type(f.type)}" for f in t)
        return f"STRUCT({fields})"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"{duckdb_type(t.value_type)}[]"
    raise ValueError(f"no DuckDB type for the Arrow type {t}")


def connect(landing: Landing) -> duckdb.DuckDBPyConnection:
    import duckdb

    con = duckdb.connect()
    # A path no registered filesystem serves (https://, or s3:// when the sink is elsewhere)
    # must fail with a message, not fetch an extension from the internet.
    con.execute("SET autoinstall_known_extensions = false")
    if not landing.local:
        con.register_filesystem(landing.fs)
    for statement in session_statements(landing):
        con.execute(statement)
    return con


def execute(con: duckdb.DuckDBPyConnection, text: str) -> duckdb.DuckDBPyRelation | None:
    """Run every statement; the last one's result, when it is a query."""
    statements = con.extract_statements(text)
    if not statements:
        raise SqlError("no SQL statement given")
    for statement in statements[:-1]:
        con.execute(statement.query)
    last = statements[-1]
    if last.type.name in _RESULT_TYPES:
        return con.sql(last.query)
    con.execute(last.query)
    return None


def run_once(con: duckdb.DuckDBPyConnection, args: argparse.Namespace) -> int:
    from connector import sqlexport

    if args.output == "parquet" and args.out is None:
        raise SqlError("--output parquet needs --out PATH (binary output is not printed)")
    rel = execute(con, args.sql)
    if rel is None:
        return 0
    if args.output == "table":
        sqlexport.write_table(rel, args.out, args.max_rows)
    elif args.output == "geojson":
        lines = args.geojson_lines
        if lines is None:
            lines = bool(_TRACK_PATH.search(con.extract_statements(args.sql)[-1].query))
        sqlexport.write_geojson(rel, args.out, lines=lines)
    else:
        sqlexport.write_copy(con, rel, args.output, args.out)
    return 0


def interactive(landing: Landing, shell: str) -> int:
    cli = shutil.which("duckdb") if shell != "python" else None
    if shell == "duckdb" and (cli is None or not landing.local):
        raise SqlError(
            "--shell duckdb needs the duckdb CLI on PATH and a local landing zone "
            "(the CLI cannot use the connector's filesystem for S3 or memory://)"
        )
    if cli is not None and landing.local:
        return _duckdb_cli(cli, session_statements(landing))
    return prompt_loop(connect(landing), landing)


def _duckdb_cli(cli: str, statements: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="gotham-sql-") as tmp:
        init = Path(tmp) / "init.sql"
        init.write_text(";\n".join(statements) + ";\n", encoding="utf-8")
        # The analyst's own terminal session: the CLI takes over stdin and stdout.
        return subprocess.call([cli, "-init", str(init), ":memory:"])  # noqa: S603


def prompt_loop(con: duckdb.DuckDBPyConnection, landing: Landing) -> int:
    """A minimal SQL prompt: statements end with `;`, `.quit` or end of input leaves. Piped
    input (a script) exits 2 when a statement failed, like `-c`."""
    import duckdb

    from connector import sqlexport

    tty = sys.stdin.isatty()
    if tty:
        with contextlib.suppress(ImportError):  # line editing and history where available
            importlib.import_module("readline")
        print(sqlviews.BANNER + " End statements with ';'. .quit to leave.")
    failed = False
    for text in _statements(tty):
        if not landing.local:
            landing.fs.invalidate_cache()  # files landed since the last statement must show
        try:
            rel = execute(con, text)
            if rel is not None:
                sqlexport.write_table(rel, None, 1000)
        except (duckdb.Error, SqlError) as exc:
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            failed = True
    return 2 if failed and not tty else 0


def _read_line(tty: bool, continuing: bool) -> str | None:
    """One line without its newline; None at the end of input."""
    if not tty:
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    try:
        return input("· " if continuing else "D ")
    except EOFError:
        print()
        return None


def _statements(tty: bool) -> Iterator[str]:
    """Complete statements as typed: lines accumulate until one ends with `;`."""
    buffer: list[str] = []
    while True:
        try:
            line = _read_line(tty, bool(buffer))
        except KeyboardInterrupt:  # drops the statement being typed, as shells do
            print()
            buffer = []
            continue
        if line is None:
            break
        command = line.strip()
        if not buffer and command in (".quit", ".exit"):
            break
        if not buffer and command == ".help":
            print(sqlviews.BANNER)
            continue
        if command or buffer:
            buffer.append(line)
        if "\n".join(buffer).rstrip().endswith(";"):
            yield "\n".join(buffer)
            buffer = []
    if "".join(buffer).strip():
        yield "\n".join(buffer)
