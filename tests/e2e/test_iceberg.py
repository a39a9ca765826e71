"""Every cut committed to an Iceberg table exactly once: real connector processes against the
simulator, pyiceberg's SQL catalog on SQLite in a temp dir, SIGKILLs, a checkpoint that lags the
table, two replicas committing at once, and a catalog that is locked for 20 s.

The oracle is the landing zone (other e2e tests hold it to the simulator): the table must hold
exactly its rows and exactly its files, and each landed cut must be one snapshot.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pyiceberg.catalog import load_catalog
from pyiceberg.table import Table

from connector.demo import DC_POLYGON
from connector.icebergspec import key_of
from connector.icebergsync import landed_cuts
from connector.simulator import SimulatorOptions, SimulatorThread
from connector.sink import Sink
from tests.e2e.conftest import TOKEN, Deployment, wait_for
from tests.e2e.test_durability import assert_complete

ROW_KEY = (
    "subscription",
    "source_system_id",
    "collection_id",
    "observation_spec_id",
    "track_id",
    "timestamp",
    "seq",
)


@pytest.fixture
def sim_options() -> SimulatorOptions:
    return SimulatorOptions(token=TOKEN, tracks=30, rate=300.0, batch=30, seed=23)


def lake(root: Path) -> dict[str, Any]:
    return {
        "enabled": True,
        "table": "gotham.observations",
        "catalog_name": "lake",
        "catalog": {
            "type": "sql",
            "uri": f"sqlite:///{root}/catalog.db",
            "warehouse": f"file://{root}/warehouse",
        },
    }


def table_of(root: Path) -> Table:
    props = lake(root)["catalog"]
    return load_catalog("lake", **props).load_table("gotham.observations")


def landing_rows(landing: Path) -> Counter[tuple[Any, ...]]:
    rel = duckdb.sql(
        f"SELECT {', '.join(ROW_KEY)} FROM read_parquet('{landing}/**/*.parquet', "
        "hive_partitioning = false)"
    )
    return Counter(rel.fetchall())


def table_rows(table: Table) -> Counter[tuple[Any, ...]]:
    arrow = table.scan(selected_fields=ROW_KEY).to_arrow()  # noqa: F841 - read by DuckDB
    return Counter(duckdb.sql(f"SELECT {', '.join(ROW_KEY)} FROM arrow").fetchall())


def assert_exactly_the_landing(table: Table, landing: Path) -> dict[str, int]:
    """The table holds the landing's rows and files, each landed cut in one snapshot."""
    want, have = landing_rows(landing), table_rows(table)
    assert sum(have.values()) == sum(want.values()) > 0
    assert have == want, f"missing {want - have}, extra {have - want}"
    duplicates = sum(n - 1 for n in have.values() if n > 1)
    assert duplicates == 0
    files = {t.file.file_path: t.file.file_size_in_bytes for t in table.scan().plan_files()}
    # Iceberg paths are written as stores spell them, not percent-encoded as URIs would be.
    on_disk = {f"file://{p}": p.stat().st_size for p in landing.rglob("*.parquet")}
    # The same paths, and the sizes the table recorded are the files' own (a replay rewrites
    # a committed cut's files: they must come out byte for byte the same size).
    differ = {p: (files.get(p), on_disk.get(p)) for p in files.keys() | on_disk.keys()}
    assert not {p: sizes for p, sizes in differ.items() if sizes[0] != sizes[1]}
    snapshots = Counter(key_of(s.summary.additional_properties) for s in table.snapshots())
    snapshots.pop(None, None)
    assert all(n == 1 for n in snapshots.values()), snapshots.most_common(3)
    cuts = set(landed_cuts(Sink(str(landing))))
    assert set(snapshots) == cuts
    return {"cuts": len(cuts), "rows": sum(have.values()), "files": len(files)}


def _cuts(root: Path) -> list[int]:
    """The last seq of every cut in the table (none while it cannot be read)."""
    try:
        keys = [key_of(s.summary.additional_properties) for s in table_of(root).snapshots()]
    except Exception:
        return []
    return [k.last for k in keys if k is not None]


def _newest_commit(root: Path) -> int:
    return max(_cuts(root), default=0)


def _checkpoint_in_own_segment(state: Path) -> bool:
    """Only this run's spool segment is left, and the checkpoint is at or past its first seq: every
    record after the checkpoint is in a segment that stays (the current one is never deleted)."""
    segments = sorted(int(p.stem) for p in (state / "spool").glob("*.seg"))
    committed = json.loads((state / "checkpoint.json").read_text())["committed_seq"]
    return len(segments) == 1 and committed >= segments[0] - 1


def _end(proc: Any) -> str:
    """A killed process's log (stderr)."""
    _, err = proc.communicate(timeout=10)
    return str(err)


@pytest.mark.slow
def test_kills_and_a_lagging_checkpoint_commit_every_cut_once(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    deployment.sections["iceberg"] = lake(deployment.root)
    rng, logs, kills = random.Random(5), [], 0
    proc = deployment.start()
    wait_for(lambda: (deployment.root / "catalog.db").exists(), timeout=30)
    saved = deployment.root / "checkpoint.saved"
    for i in range(4):
        started = len(_cuts(deployment.root))
        time.sleep(rng.uniform(1.2, 2.2))
        if i == 2:
            # What a kill between commits and their checkpoint save leaves: the checkpoint
            # of a moment ago. Taken once this run has committed the previous run's tail and
            # more: the spool still holds every record after it (this run's own segment).
            # The checkpoint itself must be past the older segments, not only the table (a cut
            # is committed to it before the checkpoint is saved): a copy taken in between
            # would point into a segment the run deletes right after.
            wait_for(lambda n=started: len(_cuts(deployment.root)) >= n + 3, timeout=20)
            wait_for(lambda: _checkpoint_in_own_segment(deployment.state), timeout=20)
            shutil.copy(deployment.state / "checkpoint.json", saved)
            behind = json.loads(saved.read_text())["committed_seq"]
            wait_for(lambda b=behind: _newest_commit(deployment.root) > b, timeout=20)
        proc.send_signal(signal.SIGKILL)
        logs.append(_end(proc))
        kills += 1
        if i == 2:
            shutil.copy(saved, deployment.state / "checkpoint.json")
        proc = deployment.start()
    time.sleep(2)
    code, err = deployment.stop(proc, timeout=30)
    assert code == 0, err
    logs.append(err)
    replays = sum(log.count("is in the table already") for log in logs)
    assert not any("damaged" in log for log in logs)  # the replay found every record
    assert replays >= 1, "the lagging checkpoint replays committed cuts"
    figures = assert_exactly_the_landing(table_of(deployment.root), deployment.landing)
    print(f"kills={kills} replays_skipped={replays} {figures}")


@pytest.mark.slow
def test_two_replicas_commit_to_one_table_at_once(tmp_path: Path, sim: SimulatorThread) -> None:
    landing = tmp_path / "landing"
    replicas = []
    for name, subs in (("a", {"dc": {"location": DC_POLYGON}}), ("b", {"everything": {}})):
        dep = Deployment(tmp_path / name, sim.ws_url, subscriptions=subs)
        dep.root.mkdir()
        dep.sections = {
            "iceberg": lake(tmp_path),
            "sink": {"url": str(landing)},
            "batch": {"max_seconds": 0.4},
            "state": {"writer_id": name},
        }
        replicas.append(dep)
    procs = [dep.start() for dep in replicas]

    def writers() -> Counter[str]:
        return Counter(key.writer.split("-")[0] for key in landed_cuts(Sink(str(landing))))

    try:
        # Both replicas must have landed (and so committed) several cuts while the other ran:
        # waited for, not slept for, so a slow machine does not leave one replica at one cut.
        wait_for(lambda: min(writers()["a"], writers()["b"]) >= 3, timeout=60)
        logs = []
        for dep, proc in zip(replicas, procs, strict=True):
            code, err = dep.stop(proc, timeout=30)
            assert code == 0, err
            logs.append(err)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    figures = assert_exactly_the_landing(table_of(tmp_path), landing)
    landed = writers()
    assert landed["a"] >= 3 and landed["b"] >= 3
    conflicts = sum(log.count("commit conflict") for log in logs)
    print(f"cuts by writer={dict(landed)} conflicts={conflicts} {figures}")


@pytest.mark.slow
def test_catalog_locked_for_20s_loses_nothing(deployment: Deployment, sim: SimulatorThread) -> None:
    deployment.sections["iceberg"] = lake(deployment.root)
    proc = deployment.start()
    wait_for(lambda: len(_files(deployment.root)) >= 2, timeout=30)
    # Another process holds the catalog database: every commit meets "database is locked".
    blocker = sqlite3.connect(deployment.root / "catalog.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    time.sleep(20)
    blocker.execute("COMMIT")
    blocker.close()
    backlog = _landed(deployment.landing) - _files(deployment.root)
    # The backlog commits: every landed file reaches the table while the stream goes on.
    wait_for(lambda: _landed(deployment.landing) <= _files(deployment.root), timeout=40)
    code, err = deployment.stop(proc, timeout=30)
    assert code == 0, err
    assert "waits in the spool" in err and "database is locked" in err
    figures = assert_exactly_the_landing(table_of(deployment.root), deployment.landing)
    assert_complete(deployment, sim)  # and the landing holds everything the stream sent
    print(f"files landed, not committed when the lock ended={len(backlog)} {figures}")


def _landed(landing: Path) -> set[str]:
    return {f"file://{p}" for p in landing.rglob("*.parquet")}


def _files(root: Path) -> set[str]:
    """The table's data files now; none while the catalog cannot be read."""
    try:
        return {t.file.file_path for t in table_of(root).scan().plan_files()}
    except Exception:
        return set()
