"""The container recipe and compose stack, checked without a Docker engine: every path they name
exists, the connector's config resolves from the compose environment, commands parse."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from connector.config import load_config
from connector.simulator import cli as simulator_cli

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_copies_what_exists_and_runs_our_entry_point() -> None:
    text = dockerfile()
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", text, flags=re.M):
        for source in shlex.split(sources):
            assert (ROOT / source).exists(), source
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert 'ENTRYPOINT ["gotham-connector"]' in text and "gotham-connector" in scripts
    copied_to = re.search(r"COPY examples/connector.toml (\S+)", text)
    assert copied_to and f'"--config", "{copied_to.group(1)}"' in text
    assert "USER connector" in text  # never root


def test_compose_environment_resolves_to_a_valid_config() -> None:
    services = compose()["services"]
    env = services["connector"]["environment"]
    cfg = load_config(ROOT / "examples" / "connector.toml", environ=env)
    assert cfg.source.url == "ws://simulator:8765"
    assert cfg.sink.url == "s3://gotham-lake/observations"
    assert cfg.sink.storage_options["endpoint_url"] == "http://minio:9000"
    assert cfg.batch.max_seconds == 10.0
    # Docker mounts secret <name> at /run/secrets/<name>: the config must read exactly there.
    [secret] = services["connector"]["secrets"]
    assert cfg.source.token.file == Path("/run/secrets") / secret
    token_file = (
        ROOT / "examples" / compose()["secrets"][secret]["file"].removeprefix("./examples/")
    )
    assert token_file.read_text().strip() == services["simulator"]["environment"]["GOTHAM_TOKEN"]
    assert cfg.state.dir == Path("/var/lib/gotham-connector")
    assert "connector-state:/var/lib/gotham-connector" in services["connector"]["volumes"]


def test_compose_simulator_command_parses() -> None:
    command = compose()["services"]["simulator"]["command"]
    assert command[0] == "simulate"
    parser = argparse.ArgumentParser()
    simulator_cli.add_arguments(parser)
    args = parser.parse_args(command[1:])
    assert (args.host, args.port) == ("0.0.0.0", 8765)


def test_example_config_validates() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "connector",
            "validate",
            "--config",
            str(ROOT / "examples" / "connector.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


def test_compose_metrics_profile_scrapes_the_connector() -> None:
    services = compose()["services"]
    # Only Prometheus is optional: a plain `docker compose up` starts what it always did.
    assert {name for name, s in services.items() if "profiles" in s} == {"prometheus"}
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["metrics"]
    image, _, tag = prometheus["image"].partition(":")
    assert image == "prom/prometheus" and tag and tag != "latest"
    assert "connector" in prometheus["depends_on"]
    [config_mount] = [v for v in prometheus["volumes"] if ":/etc/prometheus/prometheus.yml" in v]
    host_path = ROOT / config_mount.split(":")[0]
    assert config_mount.endswith(":ro") and host_path.is_file()
    # The connector serves metrics on every interface of its container (from the environment).
    connector = services["connector"]
    cfg = load_config(ROOT / "examples" / "connector.toml", environ=connector["environment"])
    assert (cfg.metrics.enabled, cfg.metrics.host) == (True, "0.0.0.0")
    # Prometheus scrapes exactly that: the connector service's name and metrics port.
    scrape = yaml.safe_load(host_path.read_text())
    [job] = scrape["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scheme", "http") == "http"
    [static] = job["static_configs"]
    assert static["targets"] == [f"connector:{cfg.metrics.port}"]
    # The host sees the same endpoints on loopback, and compose's health check asks /healthz.
    assert f"127.0.0.1:{cfg.metrics.port}:{cfg.metrics.port}" in connector["ports"]
    check = " ".join(connector["healthcheck"]["test"])
    assert f"http://127.0.0.1:{cfg.metrics.port}/healthz" in check
    assert "prometheus-data" in compose()["volumes"]
