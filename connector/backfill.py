"""Closes gaps: pages the REST history search for each gap and lands what the stream missed.

One gap at a time (so dedupe sees every earlier backfill landed): fetch the gap window (with a
small overlap) using the subscription's query, keep the points that match the subscription's own
filter (the REST query selects tracks, not points), wait until everything received so far is
landed, drop identities already landed or spooled, and ingest the rest through the spool with
origin = backfill. Every outcome goes to the ledger; a gap leaves the checkpoint only once
that record and its rows are landed (so a power loss cannot take the gap with them).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from connector import ledger
from connector.config import Config, Subscription
from connector.errors import AuthError, Transient
from connector.gaps import Gap
from connector.identity import Identity, identity
from connector.intake import now_us
from connector.oauth2 import Tokens, TokenUnavailable, tokens_for
from connector.query import matches
from connector.secret import Secret
from connector.spool import RecordMeta
from connector.timeparse import format_us, parse_timestamp_us

# aiohttp is imported where it is used, once there is a gap: most runs never have one, and it
# costs the receiving process ~0.3 CPU-s and 12 MiB to import.
if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

CHUNK = 200  # observations per spooled backfill record: small, to fit a nearly full spool
SLICE_US = 600_000_000  # REST history is paged ten minutes at a time
RETRY_SECONDS = 30.0
SPOOL_WAIT_SECONDS = 60.0


class RestRefused(Exception):
    """401/403/4xx from the REST API: retrying will not help."""


class RestUnavailable(Transient):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RestUnauthorized(RestUnavailable):
    """401: the token expired in flight, or a rotation is under way; retried like a 503."""


# Failures after which the gap is retried later (and aiohttp.ClientError). AuthError: the token
# endpoint refused the client (the session decides whether that ends the run).
_TRY_LATER = (RestUnavailable, TimeoutError, TokenUnavailable, AuthError)


@dataclass
class BackfillPort:
    """All backfill may see and do of the rest of the connector."""

    subscriptions: Callable[[], Mapping[str, Subscription]]
    stopping: asyncio.Event
    ingest: Callable[[RecordMeta, bytes, int], bool]  # spool a chunk; False when it is full
    record: Callable[[dict[str, Any]], None]  # a ledger event
    barrier: Callable[[], Awaitable[None]]  # everything spooled so far is landed
    gate: asyncio.Lock  # held: no file becomes visible
    # What is spooled and not landed, and the last seq looked at.
    spooled_identities: Callable[[str], Awaitable[tuple[set[Identity], int]]]
    # Streamed frames spooled after a seq (read on the loop: a small, recent window).
    identities_since: Callable[[str, int], tuple[set[Identity], int]]
    landed_identities: Callable[[str, int, int], Awaitable[set[Identity]]]
    settle: Callable[[Gap], None]  # done with a gap (healed, refused or unrecoverable)
    counted: Callable[[str, int], None]  # rows backfilled (subscription, rows)


class Backfiller:
    def __init__(self, cfg: Config, port: BackfillPort, tokens: Tokens | None = None) -> None:
        self.cfg = cfg
        self.port = port
        self._tokens = tokens or tokens_for(cfg.source)
        self._queue: asyncio.Queue[Gap] = asyncio.Queue()

    def on_gap(self, gap: Gap) -> None:
        self._queue.put_nowait(gap)

    async def run(self) -> None:
        """One gap at a time, until cancelled at shutdown (pending gaps stay in the checkpoint)."""
        gap = await self._queue.get()
        import aiohttp

        ssl_context: ssl.SSLContext | bool = False
        if self.cfg.source.rest_base.startswith("https"):
            ca = self.cfg.source.ca_file
            ssl_context = ssl.create_default_context(cafile=str(ca) if ca else None)
        connector = aiohttp.TCPConnector(ssl=ssl_context)
        async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
            while not self.port.stopping.is_set():
                try:
                    done = await self._heal(session, gap)
                except Exception:
                    log.exception("backfill of %s failed unexpectedly", gap.subscription)
                    self._record(gap, gap.start_us, gap.end_us, "failed", error="internal error")
                    done = False
                if done:
                    # Settling removes the gap from the checkpoint (fsynced at once), while the
                    # rows that healed it and its ledger record sit unsynced in the spool: a
                    # power loss then would lose both and never retry the gap. Landed first.
                    await self.port.barrier()
                if self.port.stopping.is_set():
                    return  # the gap stays pending in the checkpoint for the next start
                if done:
                    self.port.settle(gap)
                else:
                    # Transient failure: try again later; max_window turns it unrecoverable.
                    asyncio.get_running_loop().call_later(RETRY_SECONDS, self.on_gap, gap)
                gap = await self._queue.get()

    async def _heal(self, session: aiohttp.ClientSession, gap: Gap) -> bool:
        """True when the gap is settled (healed, refused or unrecoverable); False to retry."""
        import aiohttp

        bf = self.cfg.backfill
        sub = self.port.subscriptions().get(gap.subscription)
        if sub is None:
            return True
        overlap = int(bf.overlap_seconds * 1_000_000)
        start, end = gap.start_us - overlap, gap.end_us + overlap
        oldest = now_us() - int(bf.max_window * 1_000_000)
        if end <= oldest:
            self._record(gap, start, end, "unrecoverable", error="older than backfill.max_window")
            return True
        covered = "ok"  # only a window covering the whole gap may say "ok": readers read "healed"
        if start < oldest:
            too_old = "older than backfill.max_window"
            self._record(gap, start, oldest, "unrecoverable", error=too_old)
            start, covered = oldest, "partial"
        query = dict(sub.query) if bf.tracks == "subscription" else {}
        counts = {"fetched": 0, "matched": 0, "rows": 0}
        # Slices keep memory bounded by a few minutes of data, whatever the gap's length.
        for lo in range(start, end + 1, SLICE_US):
            hi = min(lo + SLICE_US - 1, end)
            try:
                fetched = await self._fetch(session, query, lo, hi)
            except RestRefused as exc:
                self._record(gap, start, end, "refused", error=str(exc), **counts)
                return True
            except (*_TRY_LATER, aiohttp.ClientError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                self._record(gap, start, end, "failed", error=error, **counts)
                return False
            wanted = await asyncio.to_thread(_select, fetched, dict(sub.query), lo, hi)
            fresh = await self._spool_fresh(gap.subscription, wanted, lo, hi)
            if fresh is None:
                error = "spool full during backfill"
                self._record(gap, start, end, "failed", error=error, **counts)
                return False
            counts["fetched"] += len(fetched)
            counts["matched"] += len(wanted)
            counts["rows"] += fresh
            self.port.counted(gap.subscription, fresh)
        log.info(
            "backfilled %s %s..%s: %d fetched, %d matched, %d new",
            gap.subscription,
            format_us(start),
            format_us(end),
            counts["fetched"],
            counts["matched"],
            counts["rows"],
        )
        self._record(gap, start, end, covered, **counts)
        return True

    async def _spool_fresh(self, name: str, wanted: list[Any], lo: int, hi: int) -> int | None:
        """Spool what is not landed or spooled yet; how many, or None when the spool stays
        full. Frames streamed after the snapshot are checked again right before spooling, with
        no await between the check and the spooling: none can slip in between and duplicate."""
        await self.port.barrier()
        # No file becomes visible while we look: landed + spooled is everything we have.
        async with self.port.gate:
            have, upto = await self.port.spooled_identities(name)
            have |= await self.port.landed_identities(name, lo, hi)
        fresh = await asyncio.to_thread(_fresh, wanted, have)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SPOOL_WAIT_SECONDS
        spooled = 0
        while fresh:
            newer, upto = self.port.identities_since(name, upto)
            if newer:
                fresh = [o for o in fresh if identity(o) not in newer]
            while fresh:
                chunk = fresh[:CHUNK]
                payload = msgspec.json.encode({"observations": chunk})
                meta = RecordMeta(sub=name, origin="backfill", n=len(chunk))
                if not self.port.ingest(meta, payload, len(chunk)):
                    break
                spooled += len(chunk)
                fresh = fresh[CHUNK:]
            if fresh:  # the spool is full: let committed cuts free it, then check again
                if loop.time() > deadline or self.port.stopping.is_set():
                    return None
                await self.port.barrier()
                await asyncio.sleep(0.2)
        return spooled

    def _record(self, gap: Gap, start: int, end: int, outcome: str, **fields: Any) -> None:
        if outcome not in ("ok", "partial"):
            log.warning("backfill of %s: %s (%s)", gap.subscription, outcome, fields.get("error"))
        self.port.record(
            ledger.event(
                ledger.BACKFILL,
                gap.subscription,
                now_us(),
                window_start=start,
                window_end=end,
                gap_start=gap.start_us,
                gap_end=gap.end_us,
                outcome=outcome,
                **fields,
            )
        )

    async def _fetch(
        self, session: aiohttp.ClientSession, query: dict[str, Any], start: int, end: int
    ) -> list[Any]:
        src = self.cfg.source
        url = (
            f"{src.rest_base}/api/gotham/v1/observations/history/"
            f"{src.observation_spec_id}/search?preview=true"
        )
        body: dict[str, Any] = {
            "query": query,
            "historyWindow": {"start": format_us(start), "end": format_us(end)},
            "pageSize": self.cfg.backfill.page_size,
        }
        out: list[Any] = []
        while True:
            page = await self._page(session, url, body)
            for item in page.get("data") or []:
                if isinstance(item, dict):
                    out.extend(item.get("observations") or [])
            token = page.get("nextPageToken")
            if not token:
                return out
            body["pageToken"] = token

    async def _page(self, session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
        import aiohttp

        async for attempt in AsyncRetrying(
            stop=stop_after_delay(120),
            wait=_RetryAfter(),
            retry=retry_if_exception_type((RestUnavailable, aiohttp.ClientConnectionError)),
            reraise=True,
        ):
            with attempt:
                token = await self._tokens.get()
                try:
                    return await _post(session, url, body, token)
                except RestUnauthorized:
                    # Expired in flight: one try with a fresh token before it counts.
                    if not await self._tokens.refused(token):
                        raise
                return await _post(session, url, body, await self._tokens.get())
        raise AssertionError("unreachable")


async def _post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], token: Secret
) -> Any:
    import aiohttp

    headers = {"Authorization": f"Bearer {token.reveal()}"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with session.post(url, json=body, headers=headers, timeout=timeout) as resp:
        if resp.status in (429, 500, 502, 503, 504):
            raise RestUnavailable(f"HTTP {resp.status} from history search", _retry_after(resp))
        if resp.status == 401:
            raise RestUnauthorized(f"HTTP 401: {await _error_name(resp)}")
        if resp.status == 403:
            # Possibly a rotation in progress: the gap is retried later, not dropped.
            raise RestUnavailable(f"HTTP 403: {await _error_name(resp)}")
        if resp.status >= 400:
            raise RestRefused(f"HTTP {resp.status}: {await _error_name(resp)}")
        return await resp.json(loads=msgspec.json.decode)


def _select(fetched: list[Any], query: dict[str, Any], start: int, end: int) -> list[Any]:
    """Points in the window that match the subscription's own filter."""
    return [
        o
        for o in fetched
        if isinstance(o, dict) and _in_window(o, start, end) and matches(query, o)
    ]


def _fresh(wanted: list[Any], have: set[Identity]) -> list[dict[str, Any]]:
    fresh = []
    for obs in wanted:
        ident = identity(obs)
        if ident is not None and ident not in have:
            have.add(ident)
            fresh.append(obs)
    return fresh


def _in_window(obs: dict[str, Any], start: int, end: int) -> bool:
    ts = obs.get("timestamp")
    at = parse_timestamp_us(ts) if isinstance(ts, str) else None
    return at is not None and start <= at <= end


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    try:
        return float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None


async def _error_name(resp: aiohttp.ClientResponse) -> str:
    """Only Gotham's error name/code: a body could echo our request (and its token) back."""
    import aiohttp

    try:
        body = await resp.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return "no error name"
    if isinstance(body, dict):
        name = body.get("errorName") or body.get("errorCode")
        if isinstance(name, str):
            return name[:120]
    return "no error name"


class _RetryAfter(wait_random_exponential):
    """Exponential backoff with jitter, but never shorter than the server's Retry-After."""

    def __init__(self) -> None:
        super().__init__(multiplier=0.5, max=30.0)

    def __call__(self, retry_state: Any) -> float:
        base: float = super().__call__(retry_state)
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, RestUnavailable) and exc.retry_after is not None:
            return max(base, exc.retry_after)
        return base
