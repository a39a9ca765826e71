"""Ledger events and the error hierarchy's contract (exit codes, server error rendering)."""

from __future__ import annotations

from connector import ledger
from connector.errors import (
    AuthError,
    ConfigError,
    ConnectorError,
    QueryError,
    SinkError,
    Terminal,
    Transient,
    TransientSinkError,
    describe,
)


def test_gap_event_formats_its_times() -> None:
    item = ledger.event(
        ledger.GAP,
        "dc",
        1_719_248_401_500_000,
        gap_start=1_719_248_400_000_000,
        gap_end=1_719_248_401_500_000,
        reason="disconnected",
    )
    assert item == {
        "event": "gap",
        "subscription": "dc",
        "recorded_at": "2024-06-24T17:00:01.5Z",
        "gap_start": "2024-06-24T17:00:00Z",
        "gap_end": "2024-06-24T17:00:01.5Z",
        "reason": "disconnected",
    }


def test_ledger_keeps_other_fields_verbatim() -> None:
    item = ledger.event(ledger.BACKFILL, "dc", 0, rows=5, gap_start="already text", id=7)
    assert item["rows"] == 5 and item["gap_start"] == "already text" and item["id"] == 7
    assert item["recorded_at"] == "1970-01-01T00:00:00Z"


def test_exit_codes() -> None:
    assert ConnectorError().exit_code == 1
    assert ConfigError.single("k", "m").exit_code == 2
    assert QueryError("dc", []).exit_code == 2
    assert AuthError("no").exit_code == 3
    assert SinkError("gone").exit_code == 4
    assert isinstance(SinkError("x"), Terminal)
    assert isinstance(TransientSinkError("x"), Transient)
    assert not isinstance(TransientSinkError("x"), Terminal)


def test_config_error_lists_every_problem() -> None:
    err = ConfigError([("a.b", "is required"), ("c", "unknown key")])
    assert str(err) == "a.b: is required; c: unknown key"
    assert err.problems == [("a.b", "is required"), ("c", "unknown key")]


def test_query_error_carries_the_server_errors() -> None:
    errors: list[dict[str, object]] = [
        {"error": "InvalidQuery", "args": [{"name": "query.location", "value": "clockwise"}]},
        {"error": "TooBroad"},
        {"args": "junk"},
    ]
    err = QueryError("dc", errors)
    assert err.errors is errors and err.subscription == "dc"
    assert str(err) == (
        "subscription 'dc' refused by the server: "
        "InvalidQuery(query.location=clockwise); TooBroad(); UnknownError()"
    )
    assert describe([]) == "no error detail"
