"""Lifecycle paths a long-lived container goes through: signals, refusals, rejections, restarts."""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from connector.query import CLOCKWISE_NOTE
from connector.simulator import SimulatorThread, matches
from tests.e2e.conftest import (
    TOKEN,
    Deployment,
    identity,
    landed_observations,
    wait_for,
)

# Palantir's websocket example polygon, verbatim: clockwise, about 250 m across, in Washington.
SEED_RING = json.loads(
    (Path(__file__).parents[1] / "cases" / "subscribe_seed_polygon.json").read_text()
)["query"]["location"]


def test_sigint_is_a_clean_stop(deployment: Deployment, sim: SimulatorThread) -> None:
    proc = deployment.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "stopped:" in err


def test_second_signal_exits_at_once_and_loses_nothing(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    deployment.sections["batch"] = {"max_seconds": 3600.0}
    proc = deployment.start()
    wait_for(lambda: sum(s["sent"] for s in sim.stats()["subscriptions"].values()) > 300)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)  # the kernel merges a second pending SIGTERM into the first
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 130, err
    # What was read waits in the spool: the next run lands it.
    proc = deployment.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) >= 4)
    code, err = deployment.stop(proc)
    assert code == 0, err
    assert "replaying 0 cut(s) and 0 record(s)" not in err
    assert len(deployment.rows()) > 300


def test_handshake_refused_for_a_while_then_connects(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    sim.inject({"action": "refuse", "seconds": 2})
    deployment.sections["source"] = {"reconnect_min_seconds": 0.3, "reconnect_max_seconds": 1.0}
    proc = deployment.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 2, timeout=20)
    code, err = deployment.stop(proc)
    assert code == 0, err
    assert "handshake refused with HTTP 503" in err


def test_token_refused_on_reconnect_exits_3_after_the_retry_window(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    deployment.sections["source"] = {
        "auth_retry_seconds": 2.0,
        "reconnect_min_seconds": 0.3,
        "reconnect_max_seconds": 0.6,
    }
    proc = deployment.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)
    sim.inject({"action": "set_token", "token": "someone-elses-token"})
    sim.inject({"action": "drop", "mode": "clean"})
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert err.count("refused the token") >= 2  # retried before giving up
    assert TOKEN not in err


def test_subscription_rejected_on_reconnect_is_retried_while_others_stream(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    deployment.sections["source"] = {"reconnect_min_seconds": 0.3, "reconnect_max_seconds": 1.0}
    proc = deployment.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)
    sim.inject({"action": "reject_subscribe", "count": 1, "error": "TemporarilyUnavailable"})
    sim.inject({"action": "drop", "mode": "clean"})
    # The rejected one is retried on the same socket; all three successful subscribes appear.
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 4, timeout=30)
    code, err = deployment.stop(proc)
    assert code == 0, err
    assert "subscription dc refused: TemporarilyUnavailable" in err
    events = deployment.ledger()
    assert any(e["event"] == "subscribe_rejected" and e["subscription"] == "dc" for e in events)


def test_backfill_honours_429_and_503(deployment: Deployment, sim: SimulatorThread) -> None:
    deployment.sections["backfill"] = {"enabled": True, "overlap_seconds": 1.0}
    deployment.sections["source"] = {"reconnect_min_seconds": 0.3, "reconnect_max_seconds": 1.0}
    proc = deployment.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)
    sim.inject({"action": "rest_status", "status": 429, "count": 1})
    sim.inject({"action": "rest_status", "status": 503, "count": 1})
    sim.inject({"action": "drop", "mode": "reset"})
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 4)
    wait_for(lambda: sum(e["event"] == "backfill" for e in deployment.ledger()) >= 2, timeout=40)
    code, err = deployment.stop(proc)
    assert code == 0, err
    outcomes = [e["outcome"] for e in deployment.ledger() if e["event"] == "backfill"]
    assert outcomes == ["ok", "ok"], outcomes


def test_subscription_removed_between_runs_is_recorded_as_ended(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    proc = deployment.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)
    assert deployment.stop(proc)[0] == 0
    del deployment.subscriptions["dc"]
    deployment.subscriptions["ships"] = {
        "property": {"property": "vesselType", "values": ["cargo", "tanker", "fishing"]}
    }
    proc = deployment.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 4)
    time.sleep(1.5)
    code, err = deployment.stop(proc)
    assert code == 0, err
    events = deployment.ledger()
    assert any(e["event"] == "subscription_ended" and e["subscription"] == "dc" for e in events)
    # The continuing subscription's downtime between runs is a gap; the new one starts fresh.
    gaps = {e["subscription"] for e in events if e["event"] == "gap"}
    assert gaps == {"everything"}
    # (dc may have had nothing inside its polygon during its short first run)
    assert {"everything", "ships"} <= {r["subscription"] for r in deployment.rows()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_simulate_command_serves_until_sigterm() -> None:
    port = free_port()
    env_token = "cli-sim-token"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connector",
            "simulate",
            "--port",
            str(port),
            "--rate",
            "200",
            "--token",
            env_token,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"ws://127.0.0.1:{port}/api/ws/gotham/v1/observations/baz?preview=true"
        deadline = time.monotonic() + 20
        while True:
            try:
                ws = connect(url, subprotocols=[f"Bearer-{env_token}"], proxy=None)  # type: ignore[list-item]
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with ws:
            ws.send(json.dumps({"type": "subscribe", "query": {}}))
            reply = json.loads(ws.recv(timeout=10))
            assert reply["type"] == "subscribed" and reply["errors"] == []
            data = json.loads(ws.recv(timeout=10))
            assert data["type"] == "data" and data["id"] == reply["id"] and data["observations"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert env_token not in err


def park_track_inside(sim: SimulatorThread, ring: list[dict[str, Any]]) -> str:
    """Put one simulated track on a tiny loop inside `ring`; returns its track id.

    The simulator's tracks roam some 100 km, so a short run would rarely see one cross a 250 m
    polygon, and the simulator has no option to place tracks: the test moves one. Track 1
    reports with millisecond digits, so it reports often (~10/s here)."""
    tracks = sim.simulator._generator.tracks
    corners = ring[:-1]
    center = (
        sum(p["longitude"] for p in corners) / len(corners),
        sum(p["latitude"] for p in corners) / len(corners),
    )
    # One list-item assignment: the simulator's thread sees the old track or the new one.
    tracks[1] = dataclasses.replace(tracks[1], center=center, size=(1e-4, 1e-4))
    return tracks[1].track_id


def test_palantirs_clockwise_example_polygon_is_sent_reversed_and_lands(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    track_id = park_track_inside(sim, SEED_RING)
    deployment.subscriptions = {"seed": {"location": SEED_RING}}
    deployment.sections["source"] = {"reconnect_min_seconds": 0.3, "reconnect_max_seconds": 1.0}
    # "subscription": backfill's REST search carries the query, which the simulator checks too.
    deployment.sections["backfill"] = {
        "enabled": True,
        "tracks": "subscription",
        "overlap_seconds": 1.0,
    }
    proc = deployment.start()
    wait_for(lambda: sum(s["sent"] for s in sim.stats()["subscriptions"].values()) >= 10)
    sim.inject({"action": "drop", "mode": "reset"})
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)  # subscribed again
    wait_for(lambda: any(e["event"] == "backfill" for e in deployment.ledger()), timeout=40)
    code, err = deployment.stop(proc)
    assert code == 0, err
    assert err.count(f"subscription seed: {CLOCKWISE_NOTE}") == 1, err  # not once per subscribe
    # The simulator refuses clockwise rings (the search docs' rule): both subscribes carried the
    # same ring reversed, and were accepted.
    ccw = {"location": SEED_RING[::-1]}
    assert [s["query"] for s in sim.stats()["subscriptions"].values()] == [ccw, ccw]
    # So did backfill's REST searches: a clockwise ring would have been refused there too.
    outcomes = [e["outcome"] for e in deployment.ledger() if e["event"] == "backfill"]
    assert outcomes and set(outcomes) == {"ok"}, outcomes
    landed = landed_observations(deployment, "seed")
    assert deployment.rows("origin = 'stream'")
    assert len({identity(o) for o in landed}) == len(landed)
    assert {o["trackId"] for o in landed} == {track_id}
    assert all(matches(ccw, o) for o in landed)
