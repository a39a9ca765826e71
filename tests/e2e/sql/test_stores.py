"""The same landing zone on S3 (moto's server over HTTP) and memory:// answers like the folder.

The landed files are copied there byte for byte; the command reads them through the fsspec
filesystem it builds from the config's [sink] (url, storage_options), with no DuckDB extension.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

from connector.cli import main
from tests.e2e.sql.conftest import Landed, query, recipes, run_cli, write_config
from tests.storage.conftest import AWS_ENV, MotoS3, start_moto, stop_moto

QUERIES = [
    "SELECT subscription, seq, track_id, timestamp, longitude, latitude, live_properties, date, "
    "hour FROM observations ORDER BY subscription, seq, track_id, timestamp",
    "SELECT * FROM ledger ORDER BY ALL",
    "SELECT * EXCLUDE (payload) FROM dead_letters ORDER BY ALL",
    "SELECT * FROM track_path('ground-0026')",
    "DESCRIBE observations",
]


def copy_landing(landing: Path, fs: fsspec.AbstractFileSystem, root: str) -> int:
    count = 0
    for path in landing.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"{root}/{path.relative_to(landing).as_posix()}", path.read_bytes())
            count += 1
    return count


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)  # the child processes inherit the region and keys too
    server = start_moto()
    yield server
    stop_moto(server)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def s3_config(landed: Landed, moto: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Path:
    url = f"s3://{moto.create_bucket()}/lake"
    fs, root = fsspec.core.url_to_fs(url, **moto.options())
    assert copy_landing(landed.landing, fs, root) > 10
    return write_config(tmp_path_factory.mktemp("s3") / "c.toml", url, moto.options())


@pytest.fixture
def memory_config(landed: Landed, tmp_path: Path) -> Iterator[Path]:
    url = f"memory://lake-{uuid.uuid4().hex}"
    fs, root = fsspec.core.url_to_fs(url)
    copy_landing(landed.landing, fs, root)
    yield write_config(tmp_path / "c.toml", url)
    fs.rm(root, recursive=True)


@pytest.mark.parametrize("sql", QUERIES)
def test_s3_answers_like_the_local_folder(landed: Landed, s3_config: Path, sql: str) -> None:
    local = query(landed.config, sql)
    assert local and query(s3_config, sql) == local


@pytest.mark.parametrize("sql", QUERIES)
def test_memory_answers_like_the_local_folder(
    landed: Landed, memory_config: Path, sql: str
) -> None:
    local = query(landed.config, sql)
    assert local and query(memory_config, sql) == local


@pytest.mark.parametrize("name", sorted(recipes()))
def test_recipes_answer_alike_on_s3_and_memory(
    landed: Landed, s3_config: Path, memory_config: Path, name: str
) -> None:
    sql = recipes()[name]
    local = query(landed.config, sql)
    for config in (s3_config, memory_config):
        assert_alike(query(config, sql), local)


def assert_alike(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Equal, but for the last bits of float sums (parallel aggregation adds in any order)."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key, value in w.items():
            if isinstance(value, float):
                assert math.isclose(g[key], value, rel_tol=1e-12), key
            else:
                assert g[key] == value, key


def test_s3_from_a_separate_process(landed: Landed, s3_config: Path) -> None:
    sql = "SELECT subscription, origin, count(*) AS n FROM observations GROUP BY ALL ORDER BY ALL"
    on_s3 = run_cli(s3_config, "-c", sql, "--output", "csv")
    assert on_s3.returncode == 0, on_s3.stderr
    local = run_cli(landed.config, "-c", sql, "--output", "csv")
    assert on_s3.stdout == local.stdout and on_s3.stdout.count("\n") >= 4
    session = run_cli(s3_config, stdin="SELECT count(*) AS n FROM dead_letters;\n")
    assert session.returncode == 0, session.stderr
    assert str(len(landed.dead_letters)) in session.stdout


def test_s3_prefix_with_nothing_is_no_landing_zone(
    moto: MotoS3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "c.toml", f"s3://{moto.create_bucket()}/empty", moto.options())
    assert main(["sql", "--config", str(config), "-c", "SELECT 1"]) == 2
    assert "no landing zone at sink.url" in capsys.readouterr().err


def test_unreachable_store_exits_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = {
        "endpoint_url": "http://127.0.0.1:9",  # discard port: nothing listens
        "key": "testing",
        "secret": "testing",
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    config = write_config(tmp_path / "c.toml", "s3://lake/landing", options)
    assert main(["sql", "--config", str(config), "-c", "SELECT 1"]) == 4
    err = capsys.readouterr().err
    assert err.startswith("error: sink s3://lake/landing:") and "EndpointConnectionError" in err
