"""The SQL in the README runs, against a real landing with a healed gap, and says what it claims."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from connector.simulator import SimulatorOptions, SimulatorThread
from tests.e2e.conftest import TOKEN, Deployment, wait_for

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    options = SimulatorOptions(token=TOKEN, tracks=40, rate=300.0, batch=30, seed=3)
    with SimulatorThread(options) as sim:
        dep = Deployment(tmp_path_factory.mktemp("readme"), sim.ws_url)
        dep.sections["backfill"] = {"enabled": True, "overlap_seconds": 2.0}
        dep.sections["source"] = {"reconnect_min_seconds": 0.3, "reconnect_max_seconds": 1.0}
        proc = dep.start()
        wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)
        time.sleep(1.5)
        sim.inject({"action": "drop", "mode": "reset"})
        wait_for(lambda: len(sim.stats()["subscriptions"]) == 4)
        time.sleep(3)
        code, err = dep.stop(proc)
        assert code == 0, err
        yield dep


def run(dep: Deployment, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con.sql(sql.replace("'landing/", f"'{dep.landing}/")).fetchall()


def test_readme_has_the_queries() -> None:
    assert len(BLOCKS) == 5


def test_latest_positions(landed: Deployment) -> None:
    rows = run(landed, BLOCKS[0])
    assert len(rows) == 40  # one per simulated track
    assert all(-78 < lon < -76 and 38 < lat < 40 for _, lon, lat, *_ in rows)


def test_speed_per_vessel_type(landed: Deployment) -> None:
    rows = run(landed, BLOCKS[1])
    assert {r[2] for r in rows} <= {"cargo", "tanker", "fishing"} and rows
    assert all(isinstance(r[4], float) for r in rows)


def test_rows_per_origin(landed: Deployment) -> None:
    rows = run(landed, BLOCKS[2])
    origins = {(sub, origin) for sub, origin, *_ in rows}
    assert ("everything", "stream") in origins and ("everything", "backfill") in origins


def test_every_hour_is_complete_after_backfill(landed: Deployment) -> None:
    assert run(landed, BLOCKS[3]) == []
    events = run(landed, BLOCKS[4])
    kinds = [e[1] for e in events]
    assert kinds.count("gap") == 2 and kinds.count("backfill") == 2
    assert {e[5] for e in events if e[1] == "backfill"} == {"ok"}


def test_an_unhealed_gap_shows_up(landed: Deployment, tmp_path: Path) -> None:
    # The same ledger without its backfill events: the hour query must now report the gaps.
    lines = [
        line
        for path in (landed.landing / "_ledger").glob("*.jsonl")
        for line in path.read_text().splitlines()
        if '"event":"backfill"' not in line
    ]
    copy = Deployment(tmp_path, landed.ws_url)
    (copy.landing / "_ledger").mkdir(parents=True)
    (copy.landing / "_ledger" / "x.jsonl").write_text("\n".join(lines) + "\n")
    assert {r[0] for r in run(copy, BLOCKS[3])} == {"dc", "everything"}


def test_a_gap_partly_beyond_max_window_is_partial_and_reported_incomplete(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    """Only a backfill whose window covered the whole gap may say "ok": the hour query reads
    "ok" as healed. Here the gap starts before now - max_window when backfill runs."""
    deployment.sections["backfill"] = {"enabled": True, "overlap_seconds": 0.5, "max_window": 2}
    deployment.sections["source"] = {"reconnect_min_seconds": 0.3, "reconnect_max_seconds": 1.0}
    deployment.sections["batch"] = {"max_seconds": 0.5}
    proc = deployment.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)
    sim.inject({"action": "refuse", "seconds": 4})
    sim.inject({"action": "drop", "mode": "clean"})
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 4, timeout=30)
    wait_for(lambda: len([e for e in deployment.ledger() if e["event"] == "backfill"]) >= 4)
    code, err = deployment.stop(proc)
    assert code == 0, err
    events = deployment.ledger()
    gaps = {(e["subscription"], e["gap_start"]) for e in events if e["event"] == "gap"}
    assert {sub for sub, _ in gaps} == {"dc", "everything"}
    for sub, start in gaps:
        outcomes = {
            e["outcome"]: e
            for e in events
            if e["event"] == "backfill" and (e["subscription"], e["gap_start"]) == (sub, start)
        }
        assert set(outcomes) == {"unrecoverable", "partial"}, outcomes
        assert outcomes["unrecoverable"]["window_end"] == outcomes["partial"]["window_start"]
    assert {r[0] for r in run(deployment, BLOCKS[3])} == {"dc", "everything"}
