"""Every exit code and every bad-input path, as a user sees them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from connector.config import load_config
from connector.query import CLOCKWISE_NOTE
from connector.simulator import SimulatorThread
from tests.e2e.conftest import TOKEN, Deployment, wait_for

SEED_QUERY = json.loads(
    (Path(__file__).parents[1] / "cases" / "subscribe_seed_polygon.json").read_text()
)["query"]


def test_validate_reports_every_problem_with_its_key(deployment: Deployment) -> None:
    deployment.sections["sink"] = {"compression": "lz4", "colour": "blue"}
    deployment.sections["batch"] = {"max_rows": -5}
    deployment.subscriptions["bad-polygon"] = {
        "location": [{"longitude": 0, "latitude": 0}, {"longitude": 1, "latitude": 1}]
    }
    deployment.subscriptions["bad name!"] = {}
    deployment.subscriptions["flat"] = {
        "location": [{"longitude": x, "latitude": x} for x in (0, 1, 2, 0)]
    }
    proc = deployment.start("validate")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    for needle in (
        "sink.compression: expected one of zstd, snappy, gzip, none",
        "sink.colour: unknown key",
        "batch.max_rows: expected positive integer",
        "(bad-polygon).query: location needs at least 4 points",
        "polygon is not closed",
        "name: 'bad name!' must match",
        "(flat).query: location polygon has zero area",
    ):
        assert needle in err, err


def test_validate_warns_about_a_clockwise_polygon_and_accepts_it(deployment: Deployment) -> None:
    deployment.subscriptions["seed"] = SEED_QUERY  # Palantir's example polygon: clockwise
    proc = deployment.start("validate")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "OK (3 subscription(s))" in out
    assert err == f"warning: subscription 'seed': {CLOCKWISE_NOTE}\n"


def test_validate_show_prints_the_effective_config(deployment: Deployment) -> None:
    clockwise = [(0, 0), (0, 1), (1, 1), (1, 0), (0, 0)]
    deployment.subscriptions["cw"] = {
        "location": [{"longitude": x, "latitude": y} for x, y in clockwise]
    }
    deployment.sections["sink"] = {"storage_options": {"secret": "sink-secret", "anon": False}}
    deployment.env["GOTHAM_CONNECTOR__BATCH__MAX_ROWS"] = "1234"
    proc = deployment.start("validate", "--show")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    shown = tomllib.loads(out)
    assert shown["batch"]["max_rows"] == 1234  # from the environment
    assert shown["source"]["max_message_bytes"] == 268435456  # a default
    assert shown["source"]["token_env"] == "GOTHAM_TOKEN"
    assert shown["sink"]["storage_options"] == {"secret": "***", "anon": False}
    assert TOKEN not in out + err and "sink-secret" not in out + err
    assert "clockwise" in err and "clockwise" not in out  # stdout is only the config
    # Loaded back without the environment, it is the configuration `run` would use.
    deployment.sections["sink"] = {"storage_options": {"secret": "***", "anon": False}}
    expected = load_config(deployment.write_config(), deployment.env)
    path = deployment.root / "shown.toml"
    path.write_text(out)
    assert load_config(path, {}) == expected


def test_run_refuses_an_invalid_config_before_connecting(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    deployment.subscriptions["dc"] = {
        "time": {"start": "2024-02-01T00:00:00Z", "end": "2024-01-01T00:00:00Z"}
    }
    proc = deployment.start()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "subscriptions[0] (dc).query: time.start is after time.end" in err
    assert sim.stats()["connections"] == 0


def test_validate_accepts_a_good_config(deployment: Deployment) -> None:
    proc = deployment.start("validate")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "OK (2 subscription(s))" in out


def test_server_rejecting_a_subscription_at_startup_exits_2(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    sim.inject({"action": "reject_subscribe", "count": 1, "error": "QueryTooBroad"})
    proc = deployment.start()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert "subscription 'dc' refused by the server: QueryTooBroad" in err


def test_refused_token_exits_3_without_printing_it(deployment: Deployment) -> None:
    wrong = "wrong-token-abcdef"
    deployment.env = {"GOTHAM_TOKEN": wrong}
    proc = deployment.start()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert "refused the token (HTTP 401)" in err
    assert wrong not in out + err


def test_missing_token_names_the_key(deployment: Deployment) -> None:
    deployment.env = {}
    proc = deployment.start()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "source.token_env: environment variable GOTHAM_TOKEN is not set" in err


def test_token_that_cannot_travel_as_subprotocol(deployment: Deployment) -> None:
    bad = "abc def\u00e9secret"
    deployment.env = {"GOTHAM_TOKEN": bad}
    proc = deployment.start()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "source.token_env: the token contains characters" in err
    assert "secret" not in err and bad not in err


def test_unwritable_sink_exits_4_and_names_the_sink(deployment: Deployment, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the landing folder should be")
    deployment.sections["sink"] = {"url": str(blocker / "landing")}
    proc = deployment.start()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 4, err
    assert f"error: sink {blocker / 'landing'}: " in err, err
    assert "NotADirectoryError" in err or "FileExistsError" in err


def test_bad_frames_are_counted_kept_aside_and_nothing_else_is_lost(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    deployment.sections["source"] = {"max_message_bytes": 64 * 1024 * 1024}
    proc = deployment.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)
    for action in ("malformed", "unknown_type", "unknown_subscription"):
        sim.inject({"action": action})
    sim.inject({"action": "large", "bytes": 20_000_000})
    time.sleep(3)
    assert proc.poll() is None, "the connector must survive bad frames"
    code, err = deployment.stop(proc, timeout=60)
    assert code == 0, err
    assert err.count("malformed frame") >= 3
    letters = [
        json.loads(line)
        for path in (deployment.landing / "_dead_letter").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    reasons = " | ".join(item["reason"] for item in letters)
    assert "not valid JSON" in reasons
    assert "unknown message type 'mystery'" in reasons or "unknown message type" in reasons
    assert "unknown subscription id" in reasons
    assert all(item.get("payload") for item in letters)
    # Dead letters are JSON lines, invisible to the analysts' Parquet glob.
    assert not list((deployment.landing / "_dead_letter").rglob("*.parquet"))
    sent = sum(s["sent"] for s in sim.stats()["subscriptions"].values())
    assert len(deployment.rows()) == sent


def test_token_never_reaches_state_logs_or_argv(
    deployment: Deployment, sim: SimulatorThread
) -> None:
    token_file = deployment.root / "token"
    token_file.write_text(TOKEN + "\n")
    deployment.env = {}
    deployment.sections["source"] = {"token_file": str(token_file)}
    deployment.sections["log"] = {"level": "DEBUG", "format": "json"}
    proc = deployment.start()
    wait_for(lambda: len(sim.stats()["subscriptions"]) == 2)
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    time.sleep(1.5)
    code, err = deployment.stop(proc)
    assert code == 0
    assert TOKEN.encode() not in cmdline
    assert TOKEN not in err
    for line in err.splitlines():
        json.loads(line)  # JSON logs are one object per line
    for path in [*deployment.state.rglob("*"), *deployment.landing.rglob("*")]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_python_dash_m_is_the_same_program() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "connector", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("gotham-connector ")


def test_corrupt_checkpoint_names_the_state_dir(deployment: Deployment) -> None:
    deployment.state.mkdir(parents=True)
    (deployment.state / "checkpoint.json").write_text("{ not json")
    proc = deployment.start()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "state.dir: cannot read" in err and "Traceback" not in err
