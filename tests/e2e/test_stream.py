"""The connector as a user runs it: a real process against the simulator on loopback."""

from __future__ import annotations

import time
from collections import Counter

import pyarrow.parquet as pq

from connector.simulator import SimulatorThread, matches
from tests.e2e.conftest import (
    SUBSCRIPTIONS,
    TOKEN,
    Deployment,
    identity,
    landed_observations,
    wait_for,
)


def test_lands_every_observation_sent_field_by_field(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    proc = deployment.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)
    time.sleep(3)
    code, err = deployment.stop(proc)
    assert code == 0, err
    assert "subscribed dc -> " in err and "subscribed everything -> " in err
    assert "stopped:" in err
    stats = sim.stats()
    sent_by_id = {sid: s["sent"] for sid, s in stats["subscriptions"].items()}
    generated = {identity(o): o for o in sim.observations()}
    for name, query in SUBSCRIPTIONS.items():
        landed = landed_observations(deployment, name)
        ids = [identity(o) for o in landed]
        assert len(ids) == len(set(ids)), f"duplicates in {name}"
        sub_ids = [sid for sid, s in stats["subscriptions"].items() if s["query"] == query]
        assert len(landed) == sum(sent_by_id[sid] for sid in sub_ids) > 0
        for obs in landed:
            original = generated[identity(obs)]
            assert obs == original  # field by field, unknown fields and nulls included
            assert matches(query, original)
    assert TOKEN not in err


def test_files_are_partitioned_sorted_and_typed(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    proc = deployment.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)
    time.sleep(2)
    assert deployment.stop(proc)[0] == 0
    files = sorted(deployment.landing.rglob("*.parquet"))
    assert files
    for path in files:
        rel = path.relative_to(deployment.landing).parts
        assert rel[0] == "observation_spec_id=baz"
        assert rel[1].startswith("date=") and rel[2].startswith("hour=")
    # Every row sits in the partition of its own UTC hour, and files are sorted by track, time.
    mismatched = deployment.sql(
        "SELECT count(*) FROM obs WHERE strftime(timestamp AT TIME ZONE 'UTC', '%Y-%m-%d') <> "
        "CAST(date AS VARCHAR) OR hour(timestamp AT TIME ZONE 'UTC') <> CAST(hour AS INTEGER)"
    )
    assert mismatched == [(0,)]
    for path in files:
        table = pq.read_table(path, columns=["track_id", "timestamp"])
        keys = list(zip(table["track_id"].to_pylist(), table["timestamp"].to_pylist(), strict=True))
        assert keys == sorted(keys), f"{path} is not sorted by (track_id, timestamp)"
    speeds = deployment.sql(
        "SELECT count(*) FROM obs WHERE live_properties['speed'] IS NOT NULL "
        "AND TRY_CAST(live_properties['speed'] AS DOUBLE) IS NULL"
    )
    assert speeds == [(0,)]


def test_stop_flushes_everything_received(deployment: Deployment, sim: SimulatorThread) -> None:
    deployment.sections["batch"] = {"max_seconds": 3600.0, "max_rows": 10_000_000}
    proc = deployment.start()
    wait_for(lambda: sum(s["sent"] for s in sim.stats()["subscriptions"].values()) > 200)
    code, err = deployment.stop(proc)
    assert code == 0, err
    counts = Counter(row["subscription"] for row in deployment.rows())
    assert counts["everything"] > 0
    assert sum(counts.values()) == sum(s["sent"] for s in sim.stats()["subscriptions"].values())
