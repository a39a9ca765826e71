"""Fixtures for the storage tests: real folders, real `memory://`, and S3 over HTTP via moto.

The S3 endpoint is moto's ThreadedMotoServer on 127.0.0.1 (an ephemeral port), reached through
s3fs exactly like a production bucket; nothing here mocks a connector component.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import fsspec
import pytest
from moto.server import ThreadedMotoServer

from connector.sink import Sink

AWS_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}
# Small tenacity waits: a transient failure costs milliseconds, not seconds, in tests.
FAST: dict[str, Any] = {"max_attempts": 3, "max_wait": 0.01}


@dataclass
class MotoS3:
    endpoint_url: str
    server: ThreadedMotoServer

    def options(self, **extra: Any) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint_url, "key": "testing", "secret": "testing", **extra}

    def create_bucket(self, name: str | None = None) -> str:
        bucket = name or f"landing-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint_url).create_bucket(Bucket=bucket)
        return bucket


def start_moto() -> MotoS3:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return MotoS3(f"http://{host}:{port}", server)


def stop_moto(moto: MotoS3) -> None:
    """Stop serving and close the listening socket, so new connections are refused."""
    moto.server.stop()
    listener = moto.server._server
    if listener is not None:
        listener.server_close()


@pytest.fixture(scope="session")
def aws_env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def moto_s3(aws_env: None) -> Iterator[MotoS3]:
    moto = start_moto()
    yield moto
    stop_moto(moto)


@dataclass
class SinkTarget:
    """One backend of the contract suite: how to build a Sink and where its files really are."""

    kind: str
    url: str
    storage_options: dict[str, Any]
    local_root: Path | None = None

    def sink(self, **kwargs: Any) -> Sink:
        return Sink(self.url, self.storage_options, **{**FAST, **kwargs})

    def raw_fs(self) -> Any:
        """A filesystem independent of the Sink under test, to look behind its back."""
        fs, _ = fsspec.core.url_to_fs(self.url, **self.storage_options)
        return fs


@pytest.fixture(params=["local", "memory", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SinkTarget]:
    kind = request.param
    if kind == "local":
        root = tmp_path / "lake"
        yield SinkTarget(kind, str(root), {}, local_root=root)
    elif kind == "memory":
        url = f"memory://lake-{uuid.uuid4().hex}"
        yield SinkTarget(kind, url, {})
        fs, root = fsspec.core.url_to_fs(url)
        if fs.exists(root):
            fs.rm(root, recursive=True)
    else:
        moto: MotoS3 = request.getfixturevalue("moto_s3")
        bucket = moto.create_bucket()
        yield SinkTarget(kind, f"s3://{bucket}/lake", moto.options())


@pytest.fixture
def make_s3_sink(moto_s3: MotoS3) -> Callable[..., Sink]:
    def make(**kwargs: Any) -> Sink:
        bucket = moto_s3.create_bucket()
        return Sink(f"s3://{bucket}/lake", moto_s3.options(), **{**FAST, **kwargs})

    return make
