"""Makes finished files visible on any fsspec store, atomically, with bounded retries.

Local folders: temp file in the destination folder, fsync, os.replace, fsync of the folder;
a folder created on the way is fsynced into its parent (a power loss keeps what was landed).
Object stores: one PUT (or multipart completion) is the commit. Errors are translated here,
once: permanent ones become SinkError (stop, keep the data), the rest TransientSinkError.

Retries on S3 are layered, and each layer multiplies the ones inside it: botocore retries each
HTTP request, s3fs retries each call, tenacity here retries each put, and the committer retries
the cut. Left at their defaults (botocore legacy 5 attempts with up to 8 s sleeps, s3fs 5 calls)
one put in a 503 storm made 150 requests over ~4 minutes before anyone heard of it. So, unless
storage_options say otherwise: botocore standard mode with 3 attempts (jittered, at most ~3 s
of sleep; its retry quota stops retrying during an outage), s3fs 1 attempt, and the retries
that matter (logged, counted, capped) are ours.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from connector.errors import SinkError, TransientSinkError
from connector.statedir import fsync_dir, make_dirs

log = logging.getLogger(__name__)

_TERMINAL_CODES = {"AccessDenied", "NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
# s3fs translates these to FileNotFoundError, but a write meets them only when a retried
# multipart request finds its upload already completed or aborted: the put is redone whole.
_TRANSIENT_CODES = {"NoSuchUpload"}
# The combined policy's inner layers (see the module docstring). botocore's can be overridden
# with storage_options.config_kwargs.retries; s3fs's is a class attribute, not an option.
S3_BOTOCORE_RETRIES: dict[str, Any] = {"mode": "standard", "total_max_attempts": 3}
S3FS_RETRIES = 1


class Sink:
    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        max_attempts: int = 6,
        max_wait: float = 20.0,
    ) -> None:
        self.url = url
        options = _with_retry_defaults(url, dict(storage_options or {}))
        try:
            fs, root = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError, TypeError) as exc:
            raise SinkError(f"sink.url {url!r}: {exc}") from exc
        self.fs = fs
        self.root = root.rstrip("/")
        self.local = "file" in _protocols(fs)
        self._s3 = "s3" in _protocols(fs)
        if self._s3:
            fs.retries = S3FS_RETRIES  # a class attribute in s3fs, not an option
        self._retrying = Retrying(
            stop=stop_after_attempt(max_attempts),
            wait=wait_random_exponential(multiplier=0.2, max=max_wait),
            retry=retry_if_exception_type(TransientSinkError),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}" if self.root else relative

    def put(self, relative: str, data: bytes | memoryview | pa.Buffer) -> None:
        """Write `data` at `relative` (under the sink root) so it appears whole or not at all."""
        target = self.path(relative)
        for attempt in self._retrying:
            with attempt:
                self._translate(self._put_once, target, data)

    def _put_once(self, target: str, data: bytes | memoryview | pa.Buffer) -> None:
        if self.local:
            _atomic_local_write(Path(target), data)
        else:  # object-store clients want bytes (hashing, retries re-send the same object)
            payload = data if isinstance(data, bytes) else bytes(data)
            # s3fs uploads multipart from 2 parts up; its `default_block_size` storage option
            # (the part size of its own file writes, 50 MiB) sets the part size here too.
            part_size = getattr(self.fs, "default_block_size", None)
            if self._s3 and isinstance(part_size, int):
                self.fs.pipe_file(target, payload, chunksize=part_size)
            else:
                self.fs.pipe_file(target, payload)

    def list(self, relative: str = "") -> list[str]:
        """Paths (relative to the root) of every file below `relative`."""
        base = self.path(relative) if relative else self.root
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        prefix = self.root + "/" if self.root else ""
        return sorted(p[len(prefix) :] if p.startswith(prefix) else p for p in found)

    def list_dirs(self, relative: str) -> builtins.list[str]:
        """Names of the folders directly below `relative`."""
        base = self.path(relative) if relative else self.root
        try:
            entries = self.fs.ls(base, detail=True)
        except FileNotFoundError:
            return []
        names = (
            e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"
        )
        return sorted(names)

    def check(self) -> None:
        """Fail fast at start-up when the sink cannot be written at all (bucket missing, denied)."""
        # A fixed name: a kill between write and delete leaves one small file, not one per start.
        probe = self.path("_connector_probe/probe")
        for attempt in self._retrying:
            with attempt:
                if self.local:
                    self._translate(make_dirs, Path(self.path("_connector_probe")))
                self._translate(self.fs.pipe_file, probe, b"")
        try:
            self.fs.rm_file(probe)
        except Exception as exc:  # no DeleteObject permission is fine: we only write
            log.debug("sink probe %s left in place: %s", probe, exc)

    def sweep_temp_files(self) -> int:
        """Delete hidden temp files a kill left mid-write in a local landing zone; how many.
        Safe at start: this state dir's lock means no other process of ours writes here, and a
        temp name is never a file anyone reads (`**/*.parquet` cannot match it)."""
        if not self.local or not Path(self.root).is_dir():
            return 0
        removed = 0
        for tmp in Path(self.root).rglob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed += 1
        return removed

    def _translate(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except FileNotFoundError as exc:
            if _error_code(exc) in _TRANSIENT_CODES:
                raise TransientSinkError(f"sink {self.url}: {_error_code(exc)}: {exc}") from exc
            raise SinkError(f"sink {self.url}: {type(exc).__name__}: {exc}") from exc
        except (
            PermissionError,
            FileExistsError,  # a regular file sits where a partition folder must go
            IsADirectoryError,
            NotADirectoryError,
        ) as exc:
            raise SinkError(f"sink {self.url}: {type(exc).__name__}: {exc}") from exc
        except TypeError as exc:
            # A storage option the library does not take (a misspelt key) fails the first
            # request like this, and every later one: retrying forever would hide it.
            raise SinkError(f"sink.storage_options for {self.url}: {exc}") from exc
        except Exception as exc:  # OSError, and botocore/aiohttp errors fsspec does not translate
            code = _error_code(exc)
            if code in _TERMINAL_CODES:
                raise SinkError(f"sink {self.url}: {code}: {exc}") from exc
            raise TransientSinkError(f"sink {self.url}: {type(exc).__name__}: {exc}") from exc


def _with_retry_defaults(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """S3 options with the retry settings of the combined policy, where not given."""
    protocol, _ = fsspec.core.split_protocol(url)
    if protocol not in ("s3", "s3a"):
        return options
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("retries", dict(S3_BOTOCORE_RETRIES))
    return {**options, "config_kwargs": config}


def _protocols(fs: Any) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _error_code(exc: BaseException) -> str | None:
    for candidate in (exc, exc.__cause__, exc.__context__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if isinstance(code, str):
                return code
    return None


def _atomic_local_write(target: Path, data: bytes | memoryview | pa.Buffer) -> None:
    make_dirs(target.parent)
    # Hidden, and never ending in .parquet: readers globbing **/*.parquet cannot see it.
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
