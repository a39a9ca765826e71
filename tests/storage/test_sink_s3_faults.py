"""connector.sink.Sink on S3 that misbehaves (moto's server behind the fault-injecting proxy):
every put lands whole or raises, the combined retry policy (botocore x s3fs x tenacity) stays
bounded, multipart uploads follow the configured part size, and an upload aborted behind our
back is redone rather than fatal."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import s3fs

from connector.errors import TransientSinkError
from connector.sink import S3_BOTOCORE_RETRIES, Sink

from .conftest import MotoS3
from .s3proxy import FaultyS3Proxy, allow_small_parts

TIME_FACTOR = float(os.environ.get("GOTHAM_TEST_TIME_FACTOR", "1"))
PART = "observation_spec_id=baz/date=2024-06-24/hour=17"


@pytest.fixture
def proxy(moto_s3: MotoS3) -> Iterator[FaultyS3Proxy]:
    with FaultyS3Proxy(moto_s3.endpoint_url, seed=3) as running:
        yield running


def sink_via(proxy: FaultyS3Proxy, bucket: str, **options: Any) -> Sink:
    """A Sink with the production retry policy (only tenacity's attempts may be given)."""
    attempts = options.pop("max_attempts", 6)
    opts = {"endpoint_url": proxy.url, "key": "testing", "secret": "testing", **options}
    return Sink(f"s3://{bucket}/lake", opts, max_attempts=attempts)


def direct(moto: MotoS3) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(
        endpoint_url=moto.endpoint_url, key="testing", secret="testing", skip_instance_cache=True
    )


def test_puts_under_a_quarter_of_faults_all_land_whole(
    proxy: FaultyS3Proxy, moto_s3: MotoS3
) -> None:
    bucket = moto_s3.create_bucket()
    sink = sink_via(proxy, bucket)
    proxy.configure(slowdown=0.15, reset=0.10, delay=0.1, delay_seconds=(0.01, 0.2))
    rng = random.Random(4)
    written = {}
    for i in range(15):
        name = f"{PART}/w-{i:012d}-{i:012d}.parquet"
        written[name] = rng.randbytes(rng.randint(1, 200_000))
        sink.put(name, written[name])
    fs = direct(moto_s3)
    landed = {p.removeprefix(f"{bucket}/lake/"): fs.cat_file(p) for p in fs.find(bucket)}
    assert landed == written  # every one, whole, nothing else (no zero-byte leftovers)
    assert proxy.faults["slowdown"] >= 2 and proxy.faults["reset"] >= 1


def test_the_combined_retry_policy_is_bounded(proxy: FaultyS3Proxy, moto_s3: MotoS3) -> None:
    """In a full outage one tenacity attempt is botocore's 3 requests and s3fs adds none:
    with s3fs's and botocore's defaults it was 5 x 5 = 25 requests and up to ~40 s."""
    bucket = moto_s3.create_bucket()
    sink = sink_via(proxy, bucket, max_attempts=2)
    assert S3_BOTOCORE_RETRIES["total_max_attempts"] == 3
    proxy.outage("503")
    started = time.monotonic()
    with pytest.raises(TransientSinkError, match="reduce your request rate"):
        sink.put("a.parquet", b"data")
    elapsed = time.monotonic() - started
    assert len(proxy.requests(started)) == 2 * 3
    # botocore sleeps at most 1 + 2 s per call, s3fs 0.1 s, tenacity at most 0.2 s between.
    assert elapsed < (2 * 3.1 + 0.2 + 1.0) * TIME_FACTOR
    proxy.outage(None)
    sink.put("a.parquet", b"data")  # and it is fine again at once
    assert direct(moto_s3).cat_file(f"{bucket}/lake/a.parquet") == b"data"


def test_storage_options_can_set_botocore_retries(proxy: FaultyS3Proxy, moto_s3: MotoS3) -> None:
    bucket = moto_s3.create_bucket()
    retries = {"mode": "standard", "total_max_attempts": 1}
    sink = sink_via(proxy, bucket, max_attempts=2, config_kwargs={"retries": retries})
    proxy.outage("refuse")
    with pytest.raises(TransientSinkError):
        sink.put("a.parquet", b"data")
    proxy.outage("503")
    started = time.monotonic()
    with pytest.raises(TransientSinkError):
        sink.put("a.parquet", b"data")
    assert len(proxy.requests(started)) == 2 * 1


def test_multipart_part_size_is_default_block_size(
    proxy: FaultyS3Proxy, moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = allow_small_parts(monkeypatch)
    bucket = moto_s3.create_bucket()
    payload = random.Random(5).randbytes(3 * part + 1000)
    sink_via(proxy, bucket).put("default.parquet", payload)  # 50 MiB parts: one PUT
    assert [(r.method, r.query) for r in proxy.log] == [("PUT", "")]
    started = time.monotonic()
    sink_via(proxy, bucket, default_block_size=part).put("parts.parquet", payload)
    calls = [(r.method, r.query.split("=")[0]) for r in proxy.requests(started)]
    assert calls.count(("PUT", "partNumber")) == 4
    assert calls[0] == ("POST", "uploads") and calls[-1] == ("POST", "uploadId")
    assert direct(moto_s3).cat_file(f"{bucket}/lake/parts.parquet") == payload


def test_an_upload_aborted_behind_our_back_is_redone_not_fatal(
    proxy: FaultyS3Proxy, moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lifecycle rule (AbortIncompleteMultipartUpload, as the README recommends) may abort a
    slow upload: S3 then answers NoSuchUpload, which s3fs turns into FileNotFoundError. That
    is no missing bucket: the put starts over, it does not stop the connector (exit 4)."""
    part = allow_small_parts(monkeypatch)
    bucket = moto_s3.create_bucket()
    payload = random.Random(6).randbytes(3 * part)
    sink = sink_via(proxy, bucket, default_block_size=part)
    held = proxy.hold(lambda method, target: method == "PUT" and "partNumber=2&" in target)
    outcome: list[BaseException | None] = []

    def put() -> None:
        try:
            sink.put("slow.parquet", payload)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    writer = threading.Thread(target=put)
    writer.start()
    assert held.wait(10 * TIME_FACTOR)
    s3 = boto3.client("s3", endpoint_url=moto_s3.endpoint_url)
    (upload,) = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    proxy.release()
    writer.join(30 * TIME_FACTOR)
    assert outcome == [None]
    assert direct(moto_s3).cat_file(f"{bucket}/lake/slow.parquet") == payload
    assert [r.query for r in proxy.log].count("uploads") == 2  # started over
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
