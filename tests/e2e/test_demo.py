"""The quickstart's first command, shortened: it must land data and summarise it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb


def test_demo_lands_and_summarises(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "connector", "demo", "--seconds", "4", "--rate", "500"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    assert "stopped cleanly" in out.stdout
    assert "rows per subscription" in out.stdout and "read_parquet(" in out.stdout
    landing = tmp_path / "landing"
    rows = dict(
        duckdb.sql(
            f"SELECT subscription, count(*) FROM read_parquet('{landing}/**/*.parquet', "
            "hive_partitioning = true) GROUP BY ALL"
        ).fetchall()
    )
    assert rows["everything"] > rows["dc_polygon"] > 0
    # The summary printed the same counts DuckDB finds now.
    assert (
        f"│ everything   │ {rows['everything']:>5} │" in out.stdout
        or str(rows["everything"]) in out.stdout
    )
    # A second run replaces the demo's own output instead of refusing or mixing runs.
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert again.returncode == 0, again.stderr


def test_demo_refuses_to_touch_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "landing").mkdir()
    (tmp_path / "landing" / "precious.txt").write_text("user data")
    out = subprocess.run(
        [sys.executable, "-m", "connector", "demo", "--seconds", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert (tmp_path / "landing" / "precious.txt").read_text() == "user data"
