"""Gap ledger events: what was streamed, what was missed, what backfill recovered. Pure.

Events travel through the spool like data (kind LEDGER) and land with the cut that carries them
as `_ledger/<cut>.jsonl`: they are as durable and exactly-once as the rows they describe.
"""

from __future__ import annotations

from typing import Any

from connector.timeparse import format_us

STREAM_STARTED = "stream_started"
STREAM_STOPPED = "stream_stopped"
GAP = "gap"
BACKFILL = "backfill"
SUBSCRIBE_REJECTED = "subscribe_rejected"
SUBSCRIPTION_ENDED = "subscription_ended"
UNKNOWN_DATA = "unknown_subscription_data"  # data for an id this connection never had
SERVER_ERROR = "server_error"  # a {"type": "error"} message from the server
SPOOL_DAMAGED = "spool_damaged"  # records the spool could not give back (seq_first, seq_last)


# Names chosen to need no quoting in SQL (`at`, `start` and `end` are keywords in DuckDB).
_TIMES = ("gap_start", "gap_end", "window_start", "window_end")


def event(kind: str, subscription: str, at_us: int, **fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "event": kind,
        "subscription": subscription,
        "recorded_at": format_us(at_us),
    }
    for key, value in fields.items():
        item[key] = format_us(value) if key in _TIMES and isinstance(value, int) else value
    return item
