"""Never lose, never duplicate: SIGKILL chaos, forced disconnects, spool full, reload, rotation.

Expected data is what the simulator generated (its full history), filtered by each
subscription's query, between the first subscribe and the final unsubscribe.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from typing import Any

import pytest

from connector.simulator import SimulatorThread, matches
from connector.timeparse import parse_timestamp_us
from tests.e2e.conftest import (
    SUBSCRIPTIONS,
    TOKEN,
    Deployment,
    identity,
    landed_observations,
    wait_for,
)

MARGIN_US = (
    300_000  # observations this close to the first subscribe / last unsubscribe are in flight
)


def _us(text: str) -> int:
    value = parse_timestamp_us(text)
    assert value is not None
    return value


def streaming_window(dep: Deployment) -> tuple[int, int]:
    events = dep.ledger()
    starts = [_us(e["recorded_at"]) for e in events if e["event"] == "stream_started"]
    stops = [_us(e["recorded_at"]) for e in events if e["event"] == "stream_stopped"]
    assert starts and stops, events
    return min(starts) + MARGIN_US, max(stops) - 2 * MARGIN_US


def expected(
    sim: SimulatorThread, query: dict[str, Any], window: tuple[int, int]
) -> set[tuple[str, ...]]:
    return {
        identity(o)
        for o in sim.observations()
        if matches(query, o) and window[0] <= _us(o["timestamp"]) <= window[1]
    }


def assert_no_duplicates(dep: Deployment) -> None:
    dups = dep.sql(
        "SELECT count(*) FROM (SELECT subscription, source_system_id, collection_id, "
        "observation_spec_id, track_id, timestamp, count(*) AS n FROM obs "
        "GROUP BY ALL HAVING n > 1)"
    )
    assert dups == [(0,)]


def assert_complete(dep: Deployment, sim: SimulatorThread) -> dict[str, int]:
    window = streaming_window(dep)
    found = {}
    for name, query in dep.subscriptions.items():
        want = expected(sim, query, window)
        have = {identity(o) for o in landed_observations(dep, name)}
        missing = want - have
        assert not missing, (
            f"{name}: {len(missing)} of {len(want)} missing, e.g. {sorted(missing)[:3]}"
        )
        found[name] = len(want)
    return found


def no_partial_files(dep: Deployment) -> None:
    # A kill mid-write may leave a hidden temp file behind; it must never look like Parquet.
    temps = [p for p in dep.landing.rglob("*") if p.is_file() and ".tmp" in p.name]
    assert all(p.name.startswith(".") and not p.name.endswith(".parquet") for p in temps)
    # Every Parquet file opens and has rows: a half-written file would fail here.
    assert dep.sql("SELECT count(*) = 0 FROM obs") == [(False,)]


@pytest.fixture
def sim_options() -> Any:
    from connector.simulator import SimulatorOptions

    return SimulatorOptions(token=TOKEN, tracks=40, rate=300.0, batch=30, seed=11)


def _gaps_pending(dep: Deployment) -> bool:
    """Whether the checkpoint still holds gaps for backfill to settle (each restart's backfill
    begins again with them: on a loaded machine, the last run needs longer than a fixed wait)."""
    try:
        state = json.loads((dep.state / "checkpoint.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return True
    return any(sub["pending_gaps"] for sub in state["subscriptions"].values())


def _chaos(dep: Deployment, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    proc = dep.start()
    for _ in range(kills):
        time.sleep(rng.uniform(0.6, 1.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = dep.start()
    time.sleep(5)
    wait_for(lambda: not _gaps_pending(dep), timeout=60)
    code, err = dep.stop(proc, timeout=30)
    assert code == 0, err


@pytest.mark.slow
def test_sigkill_chaos_with_backfill_loses_and_duplicates_nothing(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    deployment.sections["backfill"] = {"enabled": True, "overlap_seconds": 2.0}
    _chaos(deployment, kills=10, seed=1)
    no_partial_files(deployment)
    assert_no_duplicates(deployment)
    counts = assert_complete(deployment, sim)
    assert counts["everything"] > 1000
    events = deployment.ledger()
    gaps = {
        (e["subscription"], _us(e["gap_start"]), _us(e["gap_end"]))
        for e in events
        if e["event"] == "gap"
    }
    healed = [
        (e["subscription"], _us(e["window_start"]), _us(e["window_end"]))
        for e in events
        if e["event"] == "backfill" and e["outcome"] == "ok"
    ]
    # Kills before the resubscribe merge into one longer gap, so fewer gaps than kills is right;
    # a kill between a gap's ledger record and its checkpoint records it again, longer.
    assert len(gaps) >= 3 * len(SUBSCRIPTIONS)
    unhealed = {
        (sub, start, end)
        for sub, start, end in gaps
        if not any(s == sub and lo <= start and end <= hi for s, lo, hi in healed)
    }
    assert not unhealed, unhealed
    origins = dict(deployment.sql("SELECT origin, count(*) FROM obs GROUP BY origin"))
    assert origins.get("backfill", 0) > 0 and origins.get("stream", 0) > 0


@pytest.mark.slow
def test_sigkill_chaos_without_backfill_records_every_loss_as_a_gap(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    _chaos(deployment, kills=10, seed=2)
    no_partial_files(deployment)
    assert_no_duplicates(deployment)
    window = streaming_window(deployment)
    gaps: dict[str, list[tuple[int, int]]] = {}
    for e in deployment.ledger():
        if e["event"] == "gap":
            gaps.setdefault(e["subscription"], []).append((_us(e["gap_start"]), _us(e["gap_end"])))
    assert all(len(g) >= 3 for g in gaps.values())  # kills before resubscribing merge gaps
    for name, query in deployment.subscriptions.items():
        have = {identity(o) for o in landed_observations(deployment, name)}
        missing = [i for i in expected(sim, query, window) if i not in have]
        assert missing, "kills without backfill should lose something (else the test is blind)"
        for ident in missing:
            at = _us(ident[4])
            assert any(s - 1_000_000 <= at <= e + 1_000_000 for s, e in gaps[name]), ident


@pytest.mark.slow
def test_forced_disconnects_are_healed_by_backfill(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    deployment.sections["backfill"] = {"enabled": True, "overlap_seconds": 2.0}
    deployment.sections["source"] = {"reconnect_min_seconds": 0.3, "reconnect_max_seconds": 1.0}
    proc = deployment.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)
    for i in range(6):
        time.sleep(1.0)
        sim.inject({"action": "drop", "mode": "clean" if i % 2 else "reset"})
        # Each reconnect resubscribes both subscriptions under new ids.
        wait_for(lambda n=2 * (i + 2): len(sim.stats()["subscriptions"]) >= n, timeout=15)
    time.sleep(4)
    code, err = deployment.stop(proc, timeout=30)
    assert code == 0, err
    assert err.count("connection lost") >= 6
    assert_no_duplicates(deployment)
    assert_complete(deployment, sim)
    outcomes = Counter(e["outcome"] for e in deployment.ledger() if e["event"] == "backfill")
    assert outcomes["ok"] >= 12 and set(outcomes) == {"ok"}


@pytest.mark.slow
def test_spool_full_is_recorded_as_a_gap_and_healed(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    deployment.sections["backfill"] = {"enabled": True, "overlap_seconds": 2.0}
    # ~300 KB/s arrive; a 400 KB spool cut every 2 s must overflow between flushes.
    deployment.sections["state"] = {"max_spool_bytes": 400_000, "segment_bytes": 20_000}
    deployment.sections["batch"] = {"max_seconds": 2.0}
    proc = deployment.start()
    time.sleep(8)
    code, err = deployment.stop(proc, timeout=30)
    assert code == 0, err
    assert "dropping frames" in err
    reasons = Counter(e.get("reason") for e in deployment.ledger() if e["event"] == "gap")
    assert reasons["spool_full"] >= 1
    # A gap still open at the stop is kept and healed by the next start (with room to spare).
    deployment.sections["state"] = {"max_spool_bytes": 50_000_000, "segment_bytes": 1_000_000}
    proc = deployment.start()
    time.sleep(5)
    code, err = deployment.stop(proc, timeout=30)
    assert code == 0, err
    assert_no_duplicates(deployment)
    assert_complete(deployment, sim)


def test_sighup_adds_and_removes_subscriptions_on_the_live_socket(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    proc = deployment.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)
    deployment.subscriptions = {
        "everything": {},
        "ships": {"property": {"property": "vesselType", "values": ["cargo", "tanker"]}},
    }
    deployment.write_config()
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 3)
    time.sleep(1.5)
    stats = sim.stats()
    assert stats["connections"] == 1  # no reconnect
    active = {s["query"].__repr__(): s["active"] for s in stats["subscriptions"].values()}
    assert active[repr(SUBSCRIPTIONS["dc"])] is False
    assert sum(active.values()) == 2
    code, err = deployment.stop(proc)
    assert code == 0, err
    assert "reload: subscribing ships" in err and "reload: unsubscribing dc" in err
    names = {row["subscription"] for row in deployment.rows()}
    assert "ships" in names
    assert any(
        e["event"] == "subscription_ended" and e["subscription"] == "dc"
        for e in deployment.ledger()
    )


def test_sighup_with_an_invalid_config_keeps_the_old_one(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    proc = deployment.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)
    deployment.config.write_text("[source]\nurl = 5\n")
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert proc.poll() is None
    code, err = deployment.stop(proc)
    assert code == 0
    assert "reload refused, the running config stays" in err and "source.url" in err


def test_token_file_is_reread_on_reconnect(deployment: Deployment, sim: SimulatorThread) -> None:
    token_file = deployment.root / "token"
    token_file.write_text(TOKEN)
    deployment.env = {}
    deployment.sections["source"] = {
        "token_file": str(token_file),
        "reconnect_min_seconds": 0.3,
        "reconnect_max_seconds": 1.0,
    }
    proc = deployment.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)
    rotated = "rotated-token-987654"
    sim.inject({"action": "set_token", "token": rotated})
    sim.inject({"action": "drop", "mode": "reset"})
    time.sleep(1.5)  # reconnects are refused with the old token meanwhile
    token_file.write_text(rotated + "\n")
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 4, timeout=20)
    code, err = deployment.stop(proc)
    assert code == 0, err
    assert "refused the token" in err
    assert rotated not in err and TOKEN not in err
