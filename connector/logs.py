"""Logging set-up: text for terminals, JSON lines for containers, the token scrubbed from both."""

from __future__ import annotations

import logging
import sys
import time

import msgspec

from connector.secret import RedactFilter, scrub


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # The filter scrubs the message; this also covers traceback text rendered here.
        return scrub(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        item: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        stats = getattr(record, "stats", None)  # the heartbeat's numbers, for log pipelines
        if isinstance(stats, dict):
            item["stats"] = stats
        if record.exc_info:
            item["exception"] = self.formatException(record.exc_info)
        return scrub(msgspec.json.encode(item).decode())


def setup(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter at INFO (each ping, each connection) is not lifecycle.
    for noisy in ("websockets", "aiohttp.access", "botocore", "s3fs", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
