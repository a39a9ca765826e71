"""One contract for connector.sink.Sink, run against every backend: a local folder, `memory://`
and S3 (moto's server over real HTTP). Then the failure translation at the sink's boundary."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from connector.errors import SinkError, TransientSinkError
from connector.sink import Sink

from .conftest import FAST, MotoS3, SinkTarget, start_moto, stop_moto

PART = "observation_spec_id=baz/date=2024-06-24/hour=17"


def read(sink: Sink, relative: str) -> bytes:
    """Read a landed file back through the sink's own filesystem, at root/relative."""
    data: bytes = sink.fs.cat_file(sink.path(relative))
    return data


def retry_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "connector.sink" and "Retrying" in r.message]


# -- the contract ---------------------------------------------------------------------------
def test_put_then_read_returns_the_bytes(target: SinkTarget) -> None:
    sink = target.sink()
    payload = bytes(range(256)) * 1000
    sink.put("a.parquet", payload)
    assert read(sink, "a.parquet") == payload
    # Another client of the same store sees the same object at root/relative.
    fs = target.raw_fs()
    assert fs.cat_file(sink.path("a.parquet")) == payload


def test_put_overwrites_the_same_name(target: SinkTarget) -> None:
    sink = target.sink()
    sink.put(f"{PART}/w-1-2.parquet", b"first attempt")
    sink.put(f"{PART}/w-1-2.parquet", b"replayed")
    assert read(sink, f"{PART}/w-1-2.parquet") == b"replayed"
    assert sink.list() == [f"{PART}/w-1-2.parquet"]


def test_list_returns_sorted_relative_paths(target: SinkTarget) -> None:
    sink = target.sink()
    assert sink.list() == []
    names = [
        f"{PART}/w-000000000003-000000000004.parquet",
        f"{PART}/w-000000000001-000000000002.parquet",
        "observation_spec_id=foo/date=2024-06-23/hour=00/w-1-2.parquet",
        "_dead_letter/w-1-2.jsonl",
    ]
    for name in names:
        sink.put(name, name.encode())
    assert sink.list() == sorted(names)
    assert sink.list(PART) == sorted(n for n in names if n.startswith(PART))
    assert sink.list("nothing/here") == []
    for name in sink.list():
        assert not name.startswith("/")
        assert read(sink, name) == name.encode()


def test_put_into_nested_partition_dirs(target: SinkTarget) -> None:
    sink = target.sink()
    deep = "observation_spec_id=a%2Fb/date=2024-01-01/hour=00/x/y/z/w-1-1.parquet"
    sink.put(deep, b"deep")
    assert read(sink, deep) == b"deep"
    assert sink.list() == [deep]


def test_nothing_left_behind_after_puts(target: SinkTarget) -> None:
    sink = target.sink()
    for i in range(3):
        sink.put(f"{PART}/w-{i}.parquet", b"x" * 10_000)
    sink.put(f"{PART}/w-0.parquet", b"y" * 10)  # overwrite
    fs = target.raw_fs()
    everything = sorted(fs.find(sink.root))
    assert everything == [sink.path(f"{PART}/w-{i}.parquet") for i in range(3)]
    if target.local_root is not None:
        leftovers = [p for p in target.local_root.rglob("*") if p.is_file()]
        assert sorted(leftovers) == sorted(
            target.local_root / PART / f"w-{i}.parquet" for i in range(3)
        )
        assert not list(target.local_root.rglob("*.tmp"))


def test_glob_never_sees_a_partial_or_temporary_file(target: SinkTarget) -> None:
    """A reader globbing **/*.parquet while files are being (re)written only ever sees whole
    files under their final names."""
    sink = target.sink()
    name = f"{PART}/w-000000000001-000000000009.parquet"
    versions = [bytes([i]) * (2 << 20) for i in range(1, 5)]  # 2 MiB each: writes take a while
    final = sink.path(name)
    fs = target.raw_fs()
    seen_names: set[str] = set()
    bad_reads: list[int] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            if target.local_root is not None:
                found = [str(p) for p in target.local_root.glob("**/*.parquet")]
            else:
                fs.invalidate_cache()
                found = fs.glob(f"{sink.root}/**/*.parquet")
            for path in found:
                seen_names.add(path)
                try:
                    data = fs.cat_file(path)
                except FileNotFoundError:
                    continue
                if data not in versions:
                    bad_reads.append(len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(3):
            for version in versions:
                sink.put(name, version)
    finally:
        done.set()
        thread.join()
    assert bad_reads == []
    assert {fs._strip_protocol(p) for p in seen_names} <= {fs._strip_protocol(final)}
    assert read(sink, name) == versions[-1]


def test_list_dirs_names_the_folders_directly_below(target: SinkTarget) -> None:
    sink = target.sink()
    assert sink.list_dirs("") == []  # nothing written yet: the root may not even exist
    names = [
        f"{PART}/w-1-2.parquet",
        "observation_spec_id=baz/date=2024-06-24/hour=18/w-1-2.parquet",
        "observation_spec_id=baz/date=2024-06-23/hour=23/w-1-2.parquet",
        "observation_spec_id=a%2Fb/date=2024-06-24/hour=17/w-1-2.parquet",
        "_dead_letter/w-1-2.jsonl",
        "top-level-file.txt",  # a file is not a folder
    ]
    for name in names:
        sink.put(name, b"x")
    assert sink.list_dirs("") == [
        "_dead_letter",
        "observation_spec_id=a%2Fb",
        "observation_spec_id=baz",
    ]
    assert sink.list_dirs("observation_spec_id=baz") == ["date=2024-06-23", "date=2024-06-24"]
    assert sink.list_dirs("observation_spec_id=baz/date=2024-06-24") == ["hour=17", "hour=18"]
    assert sink.list_dirs(PART) == []  # only files below
    assert sink.list_dirs("nothing/here") == []


def test_put_accepts_an_arrow_buffer(target: SinkTarget) -> None:
    """Parquet bytes come out of pyarrow as a Buffer: they land byte for byte on every store."""
    sink = target.sink()
    data = bytes(range(256)) * 100
    sink.put(f"{PART}/w-1-2.parquet", pa.py_buffer(data))
    sink.put(f"{PART}/w-3-4.parquet", memoryview(data))
    assert read(sink, f"{PART}/w-1-2.parquet") == data
    assert read(sink, f"{PART}/w-3-4.parquet") == data


def test_check_passes_on_a_writable_sink_and_leaves_no_file(target: SinkTarget) -> None:
    sink = target.sink()
    sink.check()
    assert sink.list() == []


# -- failure translation ----------------------------------------------------------------------
def test_missing_bucket_is_terminal_and_named(
    moto_s3: MotoS3, caplog: pytest.LogCaptureFixture
) -> None:
    sink = Sink("s3://no-such-bucket-here/lake", moto_s3.options(), **FAST)
    with caplog.at_level(logging.WARNING, logger="connector.sink"):
        with pytest.raises(SinkError, match=r"(?i)bucket does not exist") as info:
            sink.put("a.parquet", b"x")
        with pytest.raises(SinkError, match=r"(?i)bucket"):
            sink.check()
    assert not isinstance(info.value, TransientSinkError)
    assert "s3://no-such-bucket-here/lake" in str(info.value)
    assert info.value.exit_code == 4
    assert retry_warnings(caplog) == []  # terminal: not retried


def test_a_storage_option_the_library_does_not_take_is_terminal_and_named(
    moto_s3: MotoS3, caplog: pytest.LogCaptureFixture
) -> None:
    """s3fs accepts any keyword when the sink is made and fails on the first request."""
    options = moto_s3.options(endpoint_ulr=moto_s3.endpoint_url)  # misspelt
    sink = Sink("s3://lake/x", options, **FAST)
    with (
        caplog.at_level(logging.WARNING, logger="connector.sink"),
        pytest.raises(SinkError, match=r"sink\.storage_options.*endpoint_ulr") as info,
    ):
        sink.check()
    assert not isinstance(info.value, TransientSinkError) and info.value.exit_code == 4
    assert retry_warnings(caplog) == []


def test_local_root_under_a_regular_file_is_terminal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Running as root, permissions do not fail; a path through a regular file always does."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"I am a file")
    sink = Sink(str(blocker / "lake"), **FAST)
    with caplog.at_level(logging.WARNING, logger="connector.sink"):
        with pytest.raises(SinkError, match="NotADirectoryError"):
            sink.put(f"{PART}/w-1-2.parquet", b"x")
        with pytest.raises(SinkError):
            sink.check()
    assert retry_warnings(caplog) == []
    assert blocker.read_bytes() == b"I am a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


def test_local_target_folder_that_is_a_file_is_terminal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The partition folder exists as a regular file (FileExistsError from mkdir)."""
    root = tmp_path / "lake"
    root.mkdir()
    (root / "date=2024-06-24").write_bytes(b"")
    sink = Sink(str(root), **FAST)
    with caplog.at_level(logging.WARNING, logger="connector.sink"), pytest.raises(SinkError):
        sink.put("date=2024-06-24/w-1-2.parquet", b"x")
    assert retry_warnings(caplog) == []


def test_local_failed_replace_leaves_no_temp_file(tmp_path: Path) -> None:
    """os.replace onto an existing folder fails after the temp file was written: it goes away."""
    root = tmp_path / "lake"
    (root / PART / "w-1-2.parquet").mkdir(parents=True)
    sink = Sink(str(root), **FAST)
    with pytest.raises(SinkError):
        sink.put(f"{PART}/w-1-2.parquet", b"x" * 1000)
    assert [p for p in root.rglob("*") if p.is_file()] == []
    assert sorted(os.listdir(root / PART)) == ["w-1-2.parquet"]


def test_unreachable_endpoint_is_retried_then_transient(
    aws_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    """An S3 endpoint that went away (server stopped, port closed: connection refused)."""
    moto = start_moto()
    try:
        bucket = moto.create_bucket()
        # botocore's own retries would add seconds per attempt; the Sink's retries are under test.
        options = moto.options(config_kwargs={"retries": {"total_max_attempts": 1}})
        sink = Sink(f"s3://{bucket}/lake", options, max_attempts=3, max_wait=0.01)
        sink.put("before.parquet", b"ok")
        assert read(sink, "before.parquet") == b"ok"
    finally:
        stop_moto(moto)
    with (
        caplog.at_level(logging.WARNING, logger="connector.sink"),
        pytest.raises(TransientSinkError, match=r"(?i)connect") as info,
    ):
        sink.put("after.parquet", b"lost?")
    assert not isinstance(info.value, SinkError)
    assert len(retry_warnings(caplog)) == 2  # 3 attempts, 2 waits


def test_sweep_removes_only_what_a_killed_write_leaves_on_a_local_sink(tmp_path: Path) -> None:
    sink = Sink(str(tmp_path / "lake"))
    sink.put(
        "observation_spec_id=baz/date=2024-06-24/hour=17/w-1-000000000001-000000000002.parquet",
        b"PAR1",
    )
    part = tmp_path / "lake" / "observation_spec_id=baz" / "date=2024-06-24" / "hour=17"
    left = part / ".w-1-000000000003-000000000004.parquet.0123456789ab.tmp"
    left.write_bytes(b"half a file")
    kept = [part / "notes.txt", part / "w-1-000000000001-000000000002.parquet"]
    kept[0].write_text("not ours to remove")
    assert sink.sweep_temp_files() == 1
    assert not left.exists() and all(p.exists() for p in kept)
    assert sink.sweep_temp_files() == 0
    assert Sink("memory://swept-nothing").sweep_temp_files() == 0
