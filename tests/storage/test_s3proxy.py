"""The fault-injecting S3 proxy itself: transparent when quiet, and each fault as S3 shows it."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import s3fs
from botocore.config import Config
from botocore.exceptions import ClientError

from .conftest import MotoS3
from .s3proxy import FaultyS3Proxy, allow_small_parts


@pytest.fixture
def proxy(moto_s3: MotoS3) -> Iterator[FaultyS3Proxy]:
    with FaultyS3Proxy(moto_s3.endpoint_url, seed=1) as running:
        yield running


def client(endpoint: str, attempts: int = 1) -> Any:
    config = Config(retries={"mode": "standard", "total_max_attempts": attempts})
    return boto3.client("s3", endpoint_url=endpoint, config=config)


def s3(endpoint: str) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(
        endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True
    )


def raw(proxy: FaultyS3Proxy, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        conn.request(method, path, body=body or None)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_quiet_proxy_is_transparent(
    proxy: FaultyS3Proxy, moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    allow_small_parts(monkeypatch)
    bucket = moto_s3.create_bucket()
    via, direct = s3(proxy.url), s3(moto_s3.endpoint_url)
    payload = bytes(range(256)) * 9000  # 2.2 MiB
    via.pipe_file(f"{bucket}/a/small.bin", b"hello")
    via.pipe_file(f"{bucket}/a/parts.bin", payload, chunksize=1 << 20)  # multipart, 3 parts
    assert direct.cat_file(f"{bucket}/a/parts.bin") == payload
    assert via.cat_file(f"{bucket}/a/small.bin") == b"hello"
    assert via.info(f"{bucket}/a/parts.bin")["size"] == len(payload)  # HEAD keeps its length
    assert sorted(via.ls(f"{bucket}/a")) == [f"{bucket}/a/parts.bin", f"{bucket}/a/small.bin"]
    assert not proxy.faults
    assert {(r.method, r.query.split("=")[0]) for r in proxy.log} >= {
        ("POST", "uploads"),
        ("PUT", "partNumber"),
        ("POST", "uploadId"),
        ("HEAD", ""),
    }


def test_slowdown_is_s3s_503_and_never_reaches_the_store(
    proxy: FaultyS3Proxy, moto_s3: MotoS3
) -> None:
    bucket = moto_s3.create_bucket()
    proxy.configure(slowdown=1.0)
    with pytest.raises(ClientError) as caught:
        client(proxy.url).put_object(Bucket=bucket, Key="k", Body=b"x")
    response = caught.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert response["Error"]["Code"] == "SlowDown"
    assert response["Error"]["Message"] == "Please reduce your request rate."
    assert "Contents" not in client(moto_s3.endpoint_url).list_objects_v2(Bucket=bucket)
    assert proxy.faults["slowdown"] == 1


def test_a_cut_response_was_applied_but_the_client_cannot_know(
    proxy: FaultyS3Proxy, moto_s3: MotoS3
) -> None:
    bucket = moto_s3.create_bucket()
    payload = b"0123456789" * 1000
    client(moto_s3.endpoint_url).put_object(Bucket=bucket, Key="read-me", Body=payload)
    proxy.configure(reset=1.0)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        raw(proxy, "PUT", f"/{bucket}/written", b"applied")
    assert s3(moto_s3.endpoint_url).cat_file(f"{bucket}/written") == b"applied"
    # A body is cut half-way: the headers promise more than arrives before the reset.
    url = client(proxy.url).generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "read-me"}
    )
    target = url.removeprefix(proxy.url)
    request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n\r\n"
    received = b""
    with socket.create_connection(("127.0.0.1", proxy.port), 5) as sock:
        sock.sendall(request.encode())
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(payload)}".encode() in head
    assert body == payload[: len(payload) // 2]
    assert [r.fault for r in proxy.log] == ["reset", "reset"]


def test_delays_hold_requests(proxy: FaultyS3Proxy, moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    proxy.configure(delay=1.0, delay_seconds=(0.4, 0.4))
    started = time.monotonic()
    assert raw(proxy, "HEAD", f"/{bucket}")[0] == 200
    assert time.monotonic() - started >= 0.4
    assert proxy.faults["delayed"] == 1 and proxy.log[-1].delayed == pytest.approx(0.4)


def test_shares_are_roughly_what_was_asked(proxy: FaultyS3Proxy, moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    proxy.configure(slowdown=0.2, reset=0.1)
    for _ in range(200):
        with contextlib.suppress(ConnectionError, http.client.HTTPException):
            raw(proxy, "HEAD", f"/{bucket}")
    assert 25 <= proxy.faults["slowdown"] <= 55 and 8 <= proxy.faults["reset"] <= 35


def test_outage_503_then_refused_then_back_on_the_same_port(
    proxy: FaultyS3Proxy, moto_s3: MotoS3
) -> None:
    bucket = moto_s3.create_bucket()
    port = proxy.port
    proxy.outage("503")
    assert [raw(proxy, "HEAD", f"/{bucket}")[0] for _ in range(5)] == [503] * 5
    status, body = raw(proxy, "GET", f"/{bucket}")
    assert status == 503 and b"<Code>SlowDown</Code>" in body
    proxy.outage("refuse")
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 2):
        pass
    proxy.outage(None)
    assert proxy.port == port and raw(proxy, "HEAD", f"/{bucket}")[0] == 200
    assert proxy.faults["outage_503"] == 6


def test_outage_resets_open_connections(proxy: FaultyS3Proxy, moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    conn.request("HEAD", f"/{bucket}")
    assert conn.getresponse().status == 200  # a kept-alive connection
    proxy.outage("refuse")
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        conn.request("HEAD", f"/{bucket}")
        conn.getresponse()
    conn.close()


def test_hold_parks_matching_requests_until_released(proxy: FaultyS3Proxy, moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    held = proxy.hold(lambda method, target: method == "PUT")
    fs = s3(proxy.url)
    writer = threading.Thread(target=fs.pipe_file, args=(f"{bucket}/held", b"late"))
    writer.start()
    assert held.wait(5)
    time.sleep(0.3)
    assert not s3(moto_s3.endpoint_url).exists(f"{bucket}/held")
    proxy.release()
    writer.join(10)
    assert s3(moto_s3.endpoint_url).cat_file(f"{bucket}/held") == b"late"
    assert proxy.log[-1].delayed >= 0.3
