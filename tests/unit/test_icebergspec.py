"""`[iceberg]`: parsing with every problem named by its key, secrets read from the environment
or files and never shown, and the snapshot-summary tags that make a commit exactly once."""

from __future__ import annotations

import logging
import pickle
import tomllib
from pathlib import Path
from typing import Any

import pytest

from connector.config import parse_config
from connector.errors import ConfigError, is_transient
from connector.icebergspec import (
    COMMITTER,
    FIRST,
    LAST,
    WRITER,
    CutKey,
    IcebergConfig,
    IcebergRefused,
    IcebergSetupError,
    IcebergUnavailable,
    UnfitFile,
    find_cut,
    key_of,
    resolve,
    spec_for,
)
from connector.secret import RedactFilter, Secret
from connector.tables import show_toml

BASE: dict[str, Any] = {
    "source": {"url": "wss://gotham.example.com", "observation_spec_id": "baz"},
    "subscriptions": [{"name": "all", "query": {}}],
}


def parse(iceberg: dict[str, Any]) -> IcebergConfig:
    return parse_config({**BASE, "iceberg": iceberg}).iceberg


def problems(iceberg: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse(iceberg)
    return dict(info.value.problems)


def test_absent_section_is_disabled_with_defaults() -> None:
    cfg = parse_config(BASE).iceberg
    assert cfg == IcebergConfig(False, "gotham.observations", "default", {})
    assert spec_for(cfg, Path("state")) is None


def test_catalog_properties_pass_through_as_strings() -> None:
    cfg = parse(
        {
            "enabled": True,
            "table": "lake.gotham.observations",
            "catalog_name": "lake",
            "catalog": {
                "type": "rest",
                "uri": "https://cat.example.com",
                "rest.sigv4-enabled": True,
            },
        }
    )
    assert cfg.catalog == {
        "type": "rest",
        "uri": "https://cat.example.com",
        "rest.sigv4-enabled": "true",
    }
    spec = spec_for(cfg, Path("state"))
    assert spec is not None and spec.identifier == ("lake", "gotham", "observations")
    assert spec.pin == str(Path("state/iceberg-table.json").absolute())


def test_every_problem_names_its_key() -> None:
    found = problems(
        {
            "enabled": "yes",
            "table": "observations",
            "catalog": {"credential_env": "", "token": "t", "token_file": "/x", "nested": {}},
            "extra": 1,
        }
    )
    assert found == {
        "iceberg.enabled": "expected bool, got str 'yes'",
        "iceberg.table": "expected namespace.table (like gotham.observations), got 'observations'",
        "iceberg.catalog.credential_env": "expected the name of an environment variable or a file",
        "iceberg.catalog.token_file": "give one of token_file and token, not both",
        "iceberg.catalog.nested": (
            "expected a string, number or bool (a pyiceberg catalog property)"
        ),
        "iceberg.extra": "unknown key",
    }
    assert "give one of credential_file and credential_env" in problems(
        {"catalog": {"credential_env": "A", "credential_file": "/b"}}
    ).get("iceberg.catalog.credential_file", "")


def test_inline_secrets_are_redacted_when_shown() -> None:
    catalog = {
        "uri": "postgresql://lake:pg-password@db/catalog",
        "credential": "client:cred-secret",
        "s3.secret-access-key": "s3-secret",
        "token_file": "/run/secrets/other",  # not inline: its name is shown
        "warehouse": "s3://lake/warehouse",
    }
    cfg = parse_config({**BASE, "iceberg": {"catalog": catalog}})
    assert isinstance(cfg.iceberg.catalog["credential"], Secret)
    shown = show_toml(cfg)
    for secret in ("pg-password", "cred-secret", "s3-secret"):
        assert secret not in shown
    loaded = tomllib.loads(shown)["iceberg"]["catalog"]
    assert loaded["token_file"] == "/run/secrets/other"
    assert loaded["warehouse"] == "s3://lake/warehouse" and loaded["uri"] == "***"


def test_secrets_are_read_from_env_and_files_and_scrubbed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text("file-secret-123\n")
    catalog = {"uri": "https://cat", "token_file": str(secret_file), "credential_env": "CRED"}
    spec = spec_for(parse({"enabled": True, "catalog": catalog}), tmp_path)
    assert spec is not None
    props = resolve(spec, {"CRED": "env-secret-456"})
    assert props == {
        "uri": "https://cat",
        "token": "file-secret-123",
        "credential": "env-secret-456",
    }
    logger = logging.getLogger("test.iceberg")
    logger.addFilter(RedactFilter())
    with caplog.at_level(logging.INFO):
        logger.info("props %s", props)
    assert "file-secret-123" not in caplog.text and "env-secret-456" not in caplog.text


def test_missing_secrets_are_setup_errors_naming_the_key(tmp_path: Path) -> None:
    spec = spec_for(parse({"enabled": True, "catalog": {"credential_env": "NOPE"}}), tmp_path)
    assert spec is not None
    with pytest.raises(IcebergSetupError, match=r"iceberg.catalog.credential_env: .* NOPE"):
        resolve(spec, {})
    missing = str(tmp_path / "absent")
    spec = spec_for(parse({"enabled": True, "catalog": {"token_file": missing}}), tmp_path)
    assert spec is not None
    with pytest.raises(IcebergSetupError, match=r"iceberg.catalog.token_file: cannot read"):
        resolve(spec, {})


def test_errors_cross_the_process_boundary_and_drive_the_retry_policy() -> None:
    for error, transient, code in (
        (IcebergUnavailable("down"), True, 1),
        (IcebergRefused("no"), False, 4),
        (UnfitFile("old"), False, 4),
        (IcebergSetupError("bad"), False, 2),
    ):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)
        assert is_transient(again) is transient and again.exit_code == code


def test_summary_names_the_cut_and_is_read_back() -> None:
    key = CutKey("w-1a2b3c4d", 101, 250)
    summary = {"operation": "append", **key.summary("run")}
    assert summary[WRITER] == "w-1a2b3c4d" and summary[COMMITTER] == "run"
    assert key_of(summary) == key
    assert key_of({"operation": "append"}) is None  # another writer's snapshot
    assert key_of({WRITER: "w", FIRST: "x", LAST: "2"}) is None


def test_find_cut_matches_the_exact_range_only() -> None:
    key = CutKey("w-a", 11, 20)
    chain = [
        (5, CutKey("w-b", 11, 20).summary("run")),  # another writer, same range
        (4, CutKey("w-a", 21, 30).summary("run")),
        (3, {"added-records": "9"}),  # someone else's commit
        (2, CutKey("w-a", 11, 20).summary("sync")),
        (1, CutKey("w-a", 1, 10).summary("run")),
    ]
    assert find_cut(key, chain) == 2
    assert find_cut(CutKey("w-a", 11, 21), chain) is None
    assert find_cut(key, []) is None
