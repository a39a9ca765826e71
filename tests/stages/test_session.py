"""connector.session in-process against a real websockets server on 127.0.0.1:0, scripted by
each test (it records everything the client sends; the test decides every reply), with a real
Intake on a real Spool and a real Coverage. Assertions are on what the server received and on
the spool's records (DATA, DEAD, LEDGER), never on the session's internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from connector import ledger
from connector.config import BatchConfig, SourceConfig, Subscription
from connector.coverage import Coverage
from connector.errors import ConnectorError, QueryError
from connector.gaps import Gap, Gaps
from connector.intake import Intake
from connector.secret import TokenSource
from connector.session import Session
from connector.spool import DATA, DEAD, Record, Spool
from connector.timeparse import format_us
from tests.stages.helpers import DEADLINE, data_message, events_of, ledger_events, until

TOKEN = "stage-token-0123456789"
TOKEN_ENV = "STAGES_GOTHAM_TOKEN"
AIR: dict[str, Any] = {}
SEA: dict[str, Any] = {
    "location": [
        {"longitude": -77.0597, "latitude": 38.9033},
        {"longitude": -77.0601, "latitude": 38.9051},
        {"longitude": -77.0628, "latitude": 38.9051},
        {"longitude": -77.0597, "latitude": 38.9033},
    ]
}
REFUSAL: list[dict[str, Any]] = [
    {
        "error": "InvalidQuery",
        "args": [{"name": "query.location", "value": "polygon must be counter-clockwise"}],
    }
]


class Gotham:
    """A scripted stand-in for the Gotham observation websocket."""

    def __init__(self) -> None:
        self.port = 0
        self.connections: list[ServerConnection] = []
        self.paths: list[str] = []
        self.protocols: list[str | None] = []
        self.received: list[tuple[int, dict[str, Any]]] = []  # (connection, message)
        self.granted: list[tuple[int, str]] = []  # (connection, subscription id)
        self.auto = False  # answer every subscribe at once with a fresh id
        self.on_unsubscribe: Callable[[ServerConnection, str], Awaitable[None]] | None = None
        self._next_id = 0

    async def handler(self, ws: ServerConnection) -> None:
        index = len(self.connections)
        self.connections.append(ws)
        self.paths.append(ws.request.path if ws.request else "")
        self.protocols.append(
            ws.request.headers.get("Sec-WebSocket-Protocol") if ws.request else None
        )
        try:
            async for raw in ws:
                message = json.loads(raw)
                self.received.append((index, message))
                if message["type"] == "subscribe" and self.auto:
                    await self.accept(index)
                elif message["type"] == "unsubscribe" and self.on_unsubscribe is not None:
                    await self.on_unsubscribe(ws, message["id"])
        except ConnectionClosed:
            pass

    # -- what the test sends ------------------------------------------------------------------
    async def send(self, message: dict[str, Any] | str, conn: int = -1) -> str:
        text = message if isinstance(message, str) else json.dumps(message)
        await self.connections[conn].send(text)
        return text

    async def accept(self, conn: int = -1) -> str:
        """Answer the oldest unanswered subscribe (replies go in order) with a new id."""
        self._next_id += 1
        sid = f"S{self._next_id}"
        index = conn if conn >= 0 else len(self.connections) + conn
        self.granted.append((index, sid))
        await self.send({"type": "subscribed", "id": sid, "errors": []}, conn)
        return sid

    async def refuse(self, errors: list[dict[str, Any]], conn: int = -1) -> None:
        await self.send({"type": "subscribed", "errors": errors}, conn)

    async def data(self, sid: str, count: int = 1, track: str = "t", conn: int = -1) -> str:
        return await self.send(data_message(sid, count, track), conn)

    # -- what the client sent -----------------------------------------------------------------
    def messages(self, kind: str, conn: int | None = None) -> list[dict[str, Any]]:
        return [m for c, m in self.received if m["type"] == kind and conn in (None, c)]

    def unsubscribed(self, conn: int | None = None) -> list[str]:
        return [m["id"] for m in self.messages("unsubscribe", conn)]

    def live(self, conn: int = -1) -> set[str]:
        """Subscriptions this server would still stream on a connection."""
        index = conn if conn >= 0 else len(self.connections) + conn
        granted = {sid for c, sid in self.granted if c == index}
        return granted - set(self.unsubscribed(index))

    async def wait(self, kind: str, count: int) -> list[dict[str, Any]]:
        await until(lambda: len(self.messages(kind)) >= count, what=f"{count} {kind} message(s)")
        return self.messages(kind)


@pytest.fixture
async def gotham() -> AsyncIterator[Gotham]:
    server = Gotham()
    async with serve(server.handler, "127.0.0.1", 0) as ws_server:
        server.port = next(iter(ws_server.sockets)).getsockname()[1]
        yield server


@dataclass
class Client:
    session: Session
    intake: Intake
    coverage: Coverage
    gaps: Gaps
    stopping: asyncio.Event
    task: asyncio.Task[None]
    failures: list[ConnectorError] = field(default_factory=list)
    saves: list[None] = field(default_factory=list)

    def records(self, kind: int) -> list[Record]:
        return [r for r in self.intake.spool.read(1, self.intake.last_seq) if r.kind == kind]

    def data(self) -> list[Record]:
        return self.records(DATA)

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        spool = self.intake.spool
        return ledger_events(spool) if event is None else events_of(spool, event)

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.wait_for(self.task, DEADLINE)

    async def reload(self, subscriptions: dict[str, dict[str, Any]]) -> None:
        await self.session.reload({n: Subscription(n, q) for n, q in subscriptions.items()})


Connect = Callable[..., Awaitable[Client]]


@pytest.fixture
async def connect(
    gotham: Gotham, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Connect]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    made: list[Client] = []

    async def start(
        subscriptions: dict[str, dict[str, Any]], reply_seconds: float = 30.0
    ) -> Client:
        source = SourceConfig(
            url=f"ws://127.0.0.1:{gotham.port}",
            observation_spec_id="baz",
            path="/{observation_spec_id}",
            token=TokenSource(env=TOKEN_ENV),
            open_timeout=DEADLINE,
            reconnect_min_seconds=0.05,
            reconnect_max_seconds=0.2,
        )
        gaps = Gaps({})
        spool = Spool(tmp_path / f"spool-{len(made)}", segment_bytes=1 << 20, max_bytes=1 << 30)
        coverages: list[Coverage] = []

        def on_gap(gap: Gap) -> None:
            coverages[0].gap(gap)

        intake = Intake(spool, BatchConfig(), 3600.0, gaps, on_gap)
        intake.recover(0)
        saves: list[None] = []
        coverage = Coverage(gaps, intake, lambda: saves.append(None))
        coverages.append(coverage)
        stopping = asyncio.Event()
        failures: list[ConnectorError] = []

        def fail(exc: ConnectorError) -> None:  # as the runner does
            failures.append(exc)
            stopping.set()

        subs = {n: Subscription(n, q) for n, q in subscriptions.items()}
        session = Session(
            source, subs, intake, coverage, stopping, fail, reply_seconds=reply_seconds
        )
        task = asyncio.get_running_loop().create_task(session.run())
        client = Client(session, intake, coverage, gaps, stopping, task, failures, saves)
        made.append(client)
        return client

    yield start
    for client in made:
        client.stopping.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(client.task, DEADLINE)
        await client.session.close()
        client.intake.close()


def started(name: str, sid: str) -> tuple[str, str, str]:
    return (ledger.STREAM_STARTED, name, sid)


def stream_events(client: Client) -> list[tuple[str, str, str]]:
    return [
        (e["event"], e["subscription"], e.get("id", ""))
        for e in client.events()
        if e["event"] in (ledger.STREAM_STARTED, ledger.STREAM_STOPPED)
    ]


# -- subscribing and reading ----------------------------------------------------------------------
async def test_replies_are_matched_by_order_and_data_is_spooled_under_its_subscription(
    gotham: Gotham, connect: Connect
) -> None:
    client = await connect({"air": AIR, "sea": SEA})
    subscribes = await gotham.wait("subscribe", 2)
    assert [m["query"] for m in subscribes] == [AIR, SEA]
    assert gotham.paths == ["/baz?preview=true"]
    assert gotham.protocols == [f"Bearer-{TOKEN}"]

    air, sea = await gotham.accept(), await gotham.accept()
    sent_sea = await gotham.data(sea, count=2, track="boat")
    sent_air = await gotham.data(air, count=1, track="plane")
    await until(lambda: len(client.data()) == 2)

    first, second = client.data()
    assert (first.meta.sub, first.meta.id, first.meta.n) == ("sea", sea, 2)
    assert (second.meta.sub, second.meta.id, second.meta.n) == ("air", air, 1)
    assert (first.payload, second.payload) == (sent_sea.encode(), sent_air.encode())
    counts = client.intake.counts
    assert (counts.frames, counts.observations, counts.malformed) == (2, 3, 0)
    assert stream_events(client) == [started("air", air), started("sea", sea)]
    assert len(client.saves) == 2  # each first accept is saved at once
    assert client.session.connected and client.failures == []


async def test_malformed_frames_are_dead_lettered_and_the_stream_goes_on(
    gotham: Gotham, connect: Connect
) -> None:
    gotham.auto = True
    client = await connect({"air": AIR})
    await until(lambda: bool(client.events(ledger.STREAM_STARTED)))
    [(_, sid)] = gotham.granted
    bad = [
        "{not json",
        json.dumps({"type": "data", "id": "nobody", "observations": []}),
        json.dumps({"type": "surprise"}),
        json.dumps({"type": "data", "id": sid}),
        json.dumps({"type": "subscribed", "id": "S99", "errors": []}),  # nothing pending
    ]
    for text in bad:
        await gotham.send(text)
    await gotham.send({"type": "error", "errors": REFUSAL})  # logged, not dead-lettered
    sent = await gotham.data(sid)
    await until(lambda: len(client.data()) == 1)

    dead = client.records(DEAD)
    assert [r.payload for r in dead] == [t.encode() for t in bad]
    reasons = [r.meta.reason or "" for r in dead]
    assert "not valid JSON" in reasons[0]
    assert "unknown subscription id nobody" in reasons[1]
    assert "unknown message type" in reasons[2]
    assert "without id or observations" in reasons[3]
    assert "without a pending subscribe" in reasons[4]
    assert client.intake.counts.malformed == 5
    assert [r.payload for r in client.data()] == [sent.encode()]
    # The unknown id and the server's error are also in the ledger (what was missed, and why).
    unknown = client.events(ledger.UNKNOWN_DATA)
    assert [e["id"] for e in unknown] == ["nobody"]
    errors = client.events(ledger.SERVER_ERROR)
    assert [e["errors"] for e in errors] == [REFUSAL]
    assert client.failures == [] and gotham.unsubscribed() == []


# -- reload -------------------------------------------------------------------------------------
async def test_reload_while_a_subscribe_is_pending_leaves_one_live_subscription(
    gotham: Gotham, connect: Connect
) -> None:
    client = await connect({"air": AIR})
    await gotham.wait("subscribe", 1)
    await client.reload({"air": SEA})  # the first subscribe has no reply yet
    subscribes = await gotham.wait("subscribe", 2)
    assert subscribes[1]["query"] == SEA

    old = await gotham.accept()  # the late reply to the superseded subscribe
    sent_old = await gotham.data(old, track="old")  # streamed before it saw our unsubscribe
    new = await gotham.accept()
    sent_new = await gotham.data(new, track="new")
    await until(lambda: gotham.unsubscribed() == [old], what="the superseded id unsubscribed")
    await until(lambda: len(client.data()) == 2)

    assert [m["type"] for _, m in gotham.received] == ["subscribe", "subscribe", "unsubscribe"]
    assert gotham.live() == {new}
    # The superseded id's frame keeps its own id: it is not counted under the new one.
    records = {r.payload: r.meta.id for r in client.data()}
    assert records == {sent_old.encode(): old, sent_new.encode(): new}
    assert stream_events(client) == [started("air", new)]
    assert client.failures == []


async def test_two_reloads_while_pending_leave_only_the_newest(
    gotham: Gotham, connect: Connect
) -> None:
    client = await connect({"air": AIR})
    await gotham.wait("subscribe", 1)
    await client.reload({"air": SEA})
    await client.reload({"air": {"location": SEA["location"][::-1]}})
    await gotham.wait("subscribe", 3)
    first, second, third = [await gotham.accept() for _ in range(3)]
    await until(lambda: sorted(gotham.unsubscribed()) == sorted([first, second]))
    await until(lambda: bool(client.events(ledger.STREAM_STARTED)))
    assert gotham.live() == {third}
    assert stream_events(client) == [started("air", third)]


async def test_reload_of_a_live_subscription_replaces_it(gotham: Gotham, connect: Connect) -> None:
    gotham.auto = True
    client = await connect({"air": AIR, "sea": SEA})
    await until(lambda: len(client.events(ledger.STREAM_STARTED)) == 2)
    (_, air), (_, sea) = gotham.granted
    await client.reload({"air": SEA, "sea": SEA})  # air re-queried, sea unchanged
    await until(lambda: len(client.events(ledger.STREAM_STARTED)) == 3)
    assert gotham.unsubscribed() == [air]
    [(_, replacement)] = gotham.granted[2:]
    assert gotham.live() == {sea, replacement}
    assert gotham.messages("subscribe")[-1]["query"] == SEA


async def test_a_subscription_removed_while_its_subscribe_is_pending_is_unsubscribed_on_reply(
    gotham: Gotham, connect: Connect
) -> None:
    client = await connect({"air": AIR, "sea": SEA})
    await gotham.wait("subscribe", 2)
    air = await gotham.accept()
    await until(lambda: bool(client.events(ledger.STREAM_STARTED)))

    await client.reload({"air": AIR})  # sea removed while its subscribe waits for a reply
    [ended] = client.events(ledger.SUBSCRIPTION_ENDED)
    assert ended["subscription"] == "sea"
    assert "sea" not in client.gaps.states

    sea = await gotham.accept()  # now the reply comes
    await until(lambda: gotham.unsubscribed() == [sea], what="the removed one unsubscribed")
    assert gotham.live() == {air}
    assert stream_events(client) == [started("air", air)]


async def test_a_refused_subscribe_added_by_reload_is_retried_with_backoff(
    gotham: Gotham, connect: Connect
) -> None:
    client = await connect({"air": AIR})
    await gotham.wait("subscribe", 1)
    await gotham.accept()
    await client.reload({"air": AIR, "sea": SEA})
    subscribes = await gotham.wait("subscribe", 2)
    assert subscribes[1]["query"] == SEA

    await gotham.refuse(REFUSAL)
    refused_at = time.monotonic()
    await until(lambda: bool(client.events(ledger.SUBSCRIBE_REJECTED)))
    [rejected] = client.events(ledger.SUBSCRIBE_REJECTED)
    assert (rejected["subscription"], rejected["errors"]) == ("sea", REFUSAL)

    subscribes = await gotham.wait("subscribe", 3)
    assert time.monotonic() - refused_at >= 1.0  # Backoff(2.0, ...): at least half of 2 s
    assert subscribes[2]["query"] == SEA
    sea = await gotham.accept()
    await until(lambda: len(client.events(ledger.STREAM_STARTED)) == 2)
    assert stream_events(client)[-1] == started("sea", sea)
    assert client.failures == [] and not client.stopping.is_set()


async def test_a_refused_subscribe_at_startup_fails_with_the_servers_error(
    gotham: Gotham, connect: Connect
) -> None:
    client = await connect({"air": AIR, "sea": SEA})
    await gotham.wait("subscribe", 2)
    air = await gotham.accept()
    await gotham.refuse(REFUSAL)
    await until(lambda: bool(client.failures), what="fail() called")
    [error] = client.failures
    assert isinstance(error, QueryError)
    assert (error.subscription, error.errors, error.exit_code) == ("sea", REFUSAL, 2)
    assert "InvalidQuery(query.location=polygon must be counter-clockwise)" in str(error)
    await asyncio.wait_for(client.task, DEADLINE)  # fail() set stopping: the session ends
    assert gotham.unsubscribed() == [air]


# -- stopping and losing the connection ------------------------------------------------------------
async def test_stop_unsubscribes_drains_what_was_sent_and_records_stream_stopped(
    gotham: Gotham, connect: Connect
) -> None:
    gotham.auto = True
    in_flight: list[str] = []

    async def stream_a_little_more(ws: ServerConnection, sid: str) -> None:
        # Frames the server had sent before it saw the unsubscribe.
        for i in range(2):
            text = json.dumps(data_message(sid, 1, track=f"late-{sid}", start=i))
            in_flight.append(text)
            await ws.send(text)

    gotham.on_unsubscribe = stream_a_little_more
    client = await connect({"air": AIR, "sea": SEA})
    await until(lambda: len(client.events(ledger.STREAM_STARTED)) == 2)
    (_, air), (_, sea) = gotham.granted
    await gotham.data(air)
    await gotham.data(sea)
    await until(lambda: len(client.data()) == 2)

    stop_from = time.time_ns() // 1000
    await client.stop()
    assert sorted(gotham.unsubscribed()) == sorted([air, sea])
    assert len(in_flight) == 4
    drained = {r.payload for r in client.data()[2:]}
    assert drained == {t.encode() for t in in_flight}
    by_id = {r.meta.id: r.meta.sub for r in client.data()}
    assert by_id == {air: "air", sea: "sea"}
    assert stream_events(client)[2:] == [
        (ledger.STREAM_STOPPED, "air", ""),
        (ledger.STREAM_STOPPED, "sea", ""),
    ]
    for name in ("air", "sea"):
        gap_from = client.gaps.states[name].gap_from_us
        assert gap_from is not None and gap_from >= stop_from
    assert client.events(ledger.GAP) == []
    assert gotham.connections[0].close_code == 1000
    assert not client.session.connected and client.failures == []


async def test_a_dropped_connection_records_a_disconnect_gap_on_the_next_subscribed(
    gotham: Gotham, connect: Connect
) -> None:
    gotham.auto = True
    client = await connect({"air": AIR})
    await until(lambda: bool(client.events(ledger.STREAM_STARTED)))
    [(_, first)] = gotham.granted
    await gotham.data(first)
    await until(lambda: len(client.data()) == 1)
    last_frame = client.data()[0].received_at_us

    gotham.connections[0].transport.abort()  # no close frame: the network went away
    await until(lambda: len(client.events(ledger.STREAM_STARTED)) == 2, what="resubscribed")

    assert len(gotham.connections) == 2
    assert [m["query"] for m in gotham.messages("subscribe", conn=1)] == [AIR]
    [(_, second)] = gotham.granted[1:]
    restarted = client.events(ledger.STREAM_STARTED)[1]
    assert restarted["id"] == second
    [gap] = client.events(ledger.GAP)
    assert gap["subscription"] == "air" and gap["reason"] == "disconnected"
    assert gap["gap_start"] == format_us(last_frame)  # the last frame read
    assert gap["gap_end"] == restarted["recorded_at"]  # the moment it was accepted again
    assert client.session.reconnects == 1
    assert client.failures == []


# -- found while writing these tests (see the reasons) ------------------------------------------
async def test_a_subscribe_answered_while_stopping_is_unsubscribed_and_its_stop_recorded(
    gotham: Gotham, connect: Connect
) -> None:
    pending: list[str] = []

    async def answer_the_pending_one(ws: ServerConnection, sid: str) -> None:
        # Our unsubscribe of sea proves the client is stopping; only now air's reply comes
        # (once: the client's later unsubscribe of air must not be answered again).
        if not pending:
            pending.append(await gotham.accept())

    gotham.on_unsubscribe = answer_the_pending_one
    client = await connect({"sea": SEA, "air": AIR})
    await gotham.wait("subscribe", 2)
    sea = await gotham.accept()  # air's subscribe stays unanswered for now
    await until(lambda: bool(client.events(ledger.STREAM_STARTED)))
    await client.stop()

    assert pending, "the server answered air's subscribe during the stop"
    [air] = pending
    starts = {e["subscription"] for e in client.events(ledger.STREAM_STARTED)}
    stops = {e["subscription"] for e in client.events(ledger.STREAM_STOPPED)}
    assert starts <= stops, f"started {starts}, stopped only {stops}"
    assert sorted(gotham.unsubscribed()) == sorted([sea, air])


async def test_a_drop_while_a_reloaded_subscribe_is_pending_still_records_a_gap(
    gotham: Gotham, connect: Connect
) -> None:
    gotham.auto = True
    client = await connect({"air": AIR})
    await until(lambda: bool(client.events(ledger.STREAM_STARTED)))
    [(_, first)] = gotham.granted
    await gotham.data(first)
    await until(lambda: len(client.data()) == 1)

    gotham.auto = False
    await client.reload({"air": SEA})  # first is unsubscribed; the new subscribe waits
    await until(lambda: gotham.unsubscribed() == [first] and len(gotham.messages("subscribe")) == 2)
    gotham.auto = True
    gotham.connections[0].transport.abort()
    await until(lambda: len(client.events(ledger.STREAM_STARTED)) == 2, what="resubscribed")

    assert [m["query"] for m in gotham.messages("subscribe", conn=1)] == [SEA]
    gaps = client.events(ledger.GAP)
    assert [g["subscription"] for g in gaps] == ["air"], "no gap for the time air streamed nothing"


# -- replies that cannot be matched by order --------------------------------------------------
async def test_an_error_frame_while_subscribes_wait_reconnects_and_matches_afresh(
    gotham: Gotham, connect: Connect
) -> None:
    """The reply carries no request id: an error frame while replies are due might answer any
    of them. Taking the next `subscribed` for the wrong name would stream one name's data
    under the other's; the session starts a fresh connection instead."""
    client = await connect({"air": AIR, "sea": SEA})
    await gotham.wait("subscribe", 2)
    await gotham.send({"type": "error", "errors": [{"error": "Malformed", "args": []}]})
    await until(lambda: len(gotham.connections) == 2, what="a second connection")
    await gotham.wait("subscribe", 4)  # the connection is seen before its subscribes arrive
    assert [m["query"] for m in gotham.messages("subscribe", 1)] == [AIR, SEA]
    air, sea = await gotham.accept(), await gotham.accept()
    await gotham.data(sea, track="boat")
    await until(lambda: len(client.data()) == 1)
    [record] = client.data()
    assert (record.meta.sub, record.meta.id) == ("sea", sea)
    assert [e["errors"] for e in client.events(ledger.SERVER_ERROR)] == [
        [{"error": "Malformed", "args": []}]
    ]
    assert stream_events(client) == [started("air", air), started("sea", sea)]
    assert client.failures == []


async def test_an_error_frame_with_no_subscribe_waiting_keeps_the_connection(
    gotham: Gotham, connect: Connect
) -> None:
    gotham.auto = True
    client = await connect({"air": AIR})
    await until(lambda: bool(client.events(ledger.STREAM_STARTED)))
    await gotham.send({"type": "error", "errors": [{"error": "Unrelated", "args": []}]})
    [(_, sid)] = gotham.granted
    await gotham.data(sid)
    await until(lambda: len(client.data()) == 1)
    assert len(gotham.connections) == 1
    assert len(client.events(ledger.SERVER_ERROR)) == 1


async def test_a_subscribe_never_answered_is_sent_again_on_a_new_connection(
    gotham: Gotham, connect: Connect
) -> None:
    """A reply lost on the way would otherwise leave the name unsubscribed for good."""
    client = await connect({"air": AIR}, reply_seconds=0.5)
    await gotham.wait("subscribe", 1)  # never answered
    await until(lambda: len(gotham.messages("subscribe", 1)) == 1, what="a resubscribe")
    sid = await gotham.accept()
    await gotham.data(sid)
    await until(lambda: len(client.data()) == 1)
    assert [e["id"] for e in client.events(ledger.STREAM_STARTED)] == [sid]
    assert client.failures == []
