"""The SQL text of the `sql` command's session: views over the landing zone and macros. Pure.

The same statements feed the Python session and, for a local landing zone, the `duckdb` CLI's
init file, so both offer the same names. Everything here is plain DuckDB SQL (json and parquet
are built in): nothing needs an extension download.
"""

from __future__ import annotations

from collections.abc import Sequence

from connector import layout

# Exactly the partition layout: a stray Parquet file elsewhere under the root (someone's
# export) cannot leak into the view or break its schema.
OBSERVATION_GLOB = f"{layout.SPEC_PREFIX}*/date=*/hour=*/*.parquet"
# Pinned rather than inferred: a numeric spec id ("123") would otherwise become a BIGINT that
# clashes with the file's VARCHAR column, and `hour=05` would depend on DuckDB's guess.
HIVE_TYPES = "{'observation_spec_id': 'VARCHAR', 'date': 'DATE', 'hour': 'INTEGER'}"
HIVE_COLUMNS = (("date", "DATE"), ("hour", "INTEGER"))
GEOMETRY_COLUMN = "geometry"
GEOMETRY_TYPE = "GEOMETRY('OGC:CRS84')"

# Every field connector/ledger.py and its callers write (coverage, backfill, committer).
LEDGER_COLUMNS = (
    ("event", "VARCHAR"),
    ("subscription", "VARCHAR"),
    ("recorded_at", "TIMESTAMPTZ"),
    ("id", "VARCHAR"),
    ("reason", "VARCHAR"),
    ("gap_start", "TIMESTAMPTZ"),
    ("gap_end", "TIMESTAMPTZ"),
    ("window_start", "TIMESTAMPTZ"),
    ("window_end", "TIMESTAMPTZ"),
    ("outcome", "VARCHAR"),
    ("fetched", "BIGINT"),
    ("matched", "BIGINT"),
    ("rows", "BIGINT"),
    ("error", "VARCHAR"),
    ("errors", "JSON"),
    ("seq_first", "BIGINT"),
    ("seq_last", "BIGINT"),
)

# connector/flush.py dead_letter_lines.
DEAD_LETTER_COLUMNS = (
    ("seq", "BIGINT"),
    ("received_at_us", "BIGINT"),
    ("subscription", "VARCHAR"),
    ("reason", "VARCHAR"),
    ("index", "BIGINT"),
    ("payload", "VARCHAR"),
    ("payload_base64", "VARCHAR"),
)

# Ray casting (even-odd rule) over a closed ring [[lon, lat], ...] whose last point repeats the
# first, as Gotham's own polygons are written. DuckDB's spatial extension cannot be loaded
# without a download on the DuckDB version we ship, so the test is plain list arithmetic.
_POINT_IN_POLYGON = """CREATE OR REPLACE MACRO point_in_polygon(x, y, ring) AS (
  list_sum(list_transform(range(1, len(ring)), lambda i:
    CASE WHEN ((ring[i][2] > y) != (ring[i + 1][2] > y))
          AND x < (ring[i + 1][1] - ring[i][1]) * (y - ring[i][2])
                  / (ring[i + 1][2] - ring[i][2]) + ring[i][1]
         THEN 1 ELSE 0 END)) % 2 = 1
)"""

MACROS = (
    # Property values are JSON text: `prop` gives it as is (12 and "12" stay distinct).
    "CREATE OR REPLACE MACRO prop(m, name) AS m[name]",
    # A number or a numeric string ("12.5") as DOUBLE; NULL for anything else.
    "CREATE OR REPLACE MACRO prop_double(m, name) AS TRY_CAST(m[name] ->> '$' AS DOUBLE)",
    # Strings unquoted; numbers, booleans and objects as their JSON text.
    "CREATE OR REPLACE MACRO prop_text(m, name) AS m[name] ->> '$'",
    _POINT_IN_POLYGON,
    # One row per observation (a point matched by two subscriptions lands twice), in time
    # order; start and end are inclusive and optional.
    """CREATE OR REPLACE MACRO track_path(tid, start_at := NULL, end_at := NULL) AS TABLE
SELECT DISTINCT ON (source_system_id, collection_id, observation_spec_id, track_id, timestamp)
       * EXCLUDE (subscription, subscription_id, origin, received_at, seq)
FROM observations
WHERE track_id = tid
  AND (start_at IS NULL OR timestamp >= CAST(start_at AS TIMESTAMPTZ))
  AND (end_at IS NULL OR timestamp <= CAST(end_at AS TIMESTAMPTZ))
ORDER BY timestamp, source_system_id, collection_id, observation_spec_id""",
)

VIEW_NAMES = ("observations", "ledger", "dead_letters")
MACRO_NAMES = ("prop", "prop_double", "prop_text", "point_in_polygon", "track_path")


# Views cannot take bound parameters: every value in the SQL below goes through literal() or
# quote_name() (hence the S608 exemptions).
def literal(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def struct_literal(columns: Sequence[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{literal(name)}: {literal(kind)}" for name, kind in columns) + "}"


def empty_select(columns: Sequence[tuple[str, str]]) -> str:
    """A query with these typed columns and no rows: what a view shows before anything landed."""
    items = ", ".join(f"CAST(NULL AS {kind}) AS {quote_name(name)}" for name, kind in columns)
    return f"SELECT {items} WHERE false"


def quote_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def observations_view(base: str | None, empty_columns: Sequence[tuple[str, str]]) -> str:
    """`base` is the landing zone's URL or path; None when no partition exists yet."""
    if base is None:
        return f"CREATE OR REPLACE VIEW observations AS {empty_select(empty_columns)}"
    glob = literal(f"{base}/{OBSERVATION_GLOB}")
    # union_by_name: files written before and after a schema addition (a new column) read
    # side by side, the older ones showing NULL in it.
    return (
        "CREATE OR REPLACE VIEW observations AS SELECT * FROM read_parquet("  # noqa: S608
        f"{glob}, hive_partitioning = true, union_by_name = true, hive_types = {HIVE_TYPES})"
    )


def ledger_view(base: str | None) -> str:
    if base is None:
        return f"CREATE OR REPLACE VIEW ledger AS {empty_select(LEDGER_COLUMNS)}"
    glob = literal(f"{base}/{layout.LEDGER_DIR}/*.jsonl")
    names = ", ".join(quote_name(name) for name, _ in LEDGER_COLUMNS)
    return (
        f"CREATE OR REPLACE VIEW ledger AS SELECT {names} FROM read_json({glob}, "  # noqa: S608
        f"format = 'newline_delimited', columns = {struct_literal(LEDGER_COLUMNS)})"
    )


def dead_letters_view(base: str | None) -> str:
    # received_at is derived in UTC explicitly, so it does not move with the session's TimeZone.
    received = "make_timestamp(received_at_us) AT TIME ZONE 'UTC' AS received_at"
    if base is None:
        source = f"({empty_select(DEAD_LETTER_COLUMNS)})"
    else:
        glob = literal(f"{base}/{layout.DEAD_LETTER_DIR}/*.jsonl")
        source = (
            f"read_json({glob}, format = 'newline_delimited', "
            f"columns = {struct_literal(DEAD_LETTER_COLUMNS)})"
        )
    names = ", ".join(quote_name(name) for name, _ in DEAD_LETTER_COLUMNS)
    return (
        f"CREATE OR REPLACE VIEW dead_letters AS SELECT {names}, {received} "  # noqa: S608
        f"FROM {source}"
    )


def session_sql(
    *,
    observations_base: str | None,
    ledger_base: str | None,
    dead_letters_base: str | None,
    empty_observations: Sequence[tuple[str, str]],
) -> list[str]:
    """Every statement that prepares a session, in order (macros need the views first)."""
    return [
        "SET TimeZone = 'UTC'",
        observations_view(observations_base, empty_observations),
        ledger_view(ledger_base),
        dead_letters_view(dead_letters_base),
        *MACROS,
    ]


BANNER = (
    "gotham-connector sql: views observations, ledger, dead_letters; macros prop(map, name), "
    "prop_double, prop_text, point_in_polygon(lon, lat, ring), "
    "track_path(track_id, start_at, end_at). Timestamps in UTC."
)
