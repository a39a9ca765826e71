"""The sans-I/O protocol, driven by literal JSON strings and the golden frames."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connector.protocol import (
    Data,
    Malformed,
    Protocol,
    ServerError,
    Subscribed,
    SubscribeFailed,
    UnknownData,
)

CASES = Path(__file__).resolve().parents[1] / "cases"
SEED_ID = "3255ebeb-a897-437c-ae7b-99c5d64d17cf"


def golden(name: str) -> bytes:
    path = CASES / name
    if not path.is_file():
        pytest.skip(f"golden frame {name} not present yet")
    return path.read_bytes()


def ok(sid: str) -> str:
    return json.dumps({"type": "subscribed", "id": sid, "errors": []})


def data(sid: str, n: int) -> str:
    return json.dumps(
        {"type": "data", "id": sid, "observations": [{"trackId": i} for i in range(n)]}
    )


def test_subscribe_message_is_the_wire_format() -> None:
    p = Protocol()
    assert json.loads(p.subscribe("all", {})) == json.loads(golden("subscribe_everything.json"))
    polygon = json.loads(golden("subscribe_polygon.json"))
    assert json.loads(p.subscribe("dc", polygon["query"])) == polygon
    assert p.pending("all") and p.pending("dc")
    assert not p.pending("other")


def test_replies_are_matched_to_subscribes_in_order() -> None:
    p = Protocol()
    p.subscribe("first", {})
    p.subscribe("second", {"time": {"start": "2024-01-01T00:00:00Z"}})
    assert p.receive(ok("id-1")) == Subscribed("first", "id-1")
    assert not p.pending("first") and p.pending("second")
    assert p.receive(ok("id-2")) == Subscribed("second", "id-2")
    assert not p.pending("first") and not p.pending("second")
    assert p.ids == {"first": "id-1", "second": "id-2"}


def test_golden_subscribed_ok() -> None:
    p = Protocol()
    p.subscribe("dc", {})
    assert p.receive(golden("subscribed_ok.json")) == Subscribed("dc", SEED_ID)


def test_failed_subscribe_keeps_the_server_errors_and_the_order() -> None:
    p = Protocol()
    p.subscribe("bad", {"location": []})
    p.subscribe("good", {})
    event = p.receive(golden("subscribed_error.json"))
    assert event == SubscribeFailed(
        "bad",
        [
            {
                "error": "InvalidQuery",
                "args": [{"name": "query.location", "value": "polygon must be counter-clockwise"}],
            }
        ],
    )
    assert p.receive(ok("id-g")) == Subscribed("good", "id-g")
    assert p.ids == {"good": "id-g"}


def test_reply_without_id_or_errors_is_a_failure() -> None:
    p = Protocol()
    p.subscribe("x", {})
    event = p.receive('{"type":"subscribed"}')
    assert event == SubscribeFailed("x", [{"error": "NoSubscriptionId"}])


def test_malformed_reply_still_consumes_its_subscribe() -> None:
    """A reply of the wrong shape is still the reply to the oldest subscribe: if it were not
    consumed, every later reply (and so all data) would be attributed to the wrong name."""
    p = Protocol()
    p.subscribe("a", {})
    p.subscribe("b", {})
    event = p.receive('{"type":"subscribed","id":"id-a","errors":"oops"}')
    assert isinstance(event, SubscribeFailed)
    assert event.name == "a"
    assert event.errors[0]["error"] == "MalformedReply"
    assert p.receive(ok("id-b")) == Subscribed("b", "id-b")
    routed = p.receive(data("id-b", 1))
    assert isinstance(routed, Data)
    assert routed.name == "b"


def test_reply_with_nothing_pending_is_malformed() -> None:
    event = Protocol().receive(ok("id-1"))
    assert isinstance(event, Malformed)
    assert "without a pending subscribe" in event.reason


def test_data_is_routed_by_id_with_the_raw_bytes() -> None:
    p = Protocol()
    p.subscribe("a", {})
    p.subscribe("b", {})
    p.receive(ok("id-a"))
    p.receive(ok("id-b"))
    frame_b = data("id-b", 3)
    assert p.receive(frame_b) == Data("b", "id-b", 3, frame_b.encode())
    frame_a = data("id-a", 0).encode()
    assert p.receive(frame_a) == Data("a", "id-a", 0, frame_a)


@pytest.mark.parametrize(("name", "count"), [("data_seed_example.json", 1), ("data_rich.json", 3)])
def test_golden_data_frames(name: str, count: int) -> None:
    p = Protocol()
    p.subscribe("dc", {})
    p.receive(golden("subscribed_ok.json"))
    raw = golden(name)
    assert p.receive(raw) == Data("dc", SEED_ID, count, raw)


def test_data_for_unknown_id_is_its_own_event() -> None:
    p = Protocol()
    p.subscribe("a", {})
    p.receive(ok("id-a"))
    raw = data("someone-else", 1)
    assert p.receive(raw) == UnknownData("someone-else", raw.encode())


def test_data_after_unsubscribe_is_still_routed() -> None:
    p = Protocol()
    p.subscribe("dc", {})
    p.receive(golden("subscribed_ok.json"))
    message = p.unsubscribe("dc")
    assert message is not None
    assert json.loads(message) == json.loads(golden("unsubscribe.json"))
    assert p.ids == {}
    assert p.unsubscribe("dc") is None
    raw = golden("data_seed_example.json")
    assert p.receive(raw) == Data("dc", SEED_ID, 1, raw)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('{"type": "subscribe", "query": {}}}', "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "unexpected message shape"),
        ('"data"', "unexpected message shape"),
        ("42", "unexpected message shape"),
        ('{"id": "x"}', "unexpected message shape"),  # no type
        ('{"type": 7}', "unexpected message shape"),
        ('{"type": "data", "id": "x", "observations": {}}', "unexpected message shape"),
        ('{"type": "data", "id": "x"}', "without id or observations"),
        ('{"type": "data", "observations": []}', "without id or observations"),
        ('{"type": "hello"}', "unknown message type 'hello'"),
    ],
)
def test_unusable_frames_are_malformed_and_kept(frame: str, reason: str) -> None:
    p = Protocol()
    p.subscribe("keep", {})
    event = p.receive(frame)
    assert isinstance(event, Malformed)
    assert reason in event.reason
    assert event.raw == frame.encode()
    assert p.pending("keep")  # not a reply: the subscribe still waits for its own
    assert p.receive(ok("id-k")) == Subscribed("keep", "id-k")
    assert not p.pending("keep")


def test_seed_stray_brace_subscribe_is_malformed_json() -> None:
    raw = golden("malformed_seed_subscribe.txt")
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    event = Protocol().receive(raw)
    assert isinstance(event, Malformed)
    assert event.reason.startswith("not valid JSON")
    assert event.raw == raw


def test_server_error_frame() -> None:
    event = Protocol().receive(golden("error_malformed.json"))
    assert isinstance(event, ServerError)
    [error] = event.errors
    assert error["error"] == "MalformedMessage"
    assert error["args"][0]["name"] == "message"
    assert Protocol().receive('{"type":"error"}') == ServerError([])


def test_unknown_fields_are_tolerated() -> None:
    p = Protocol()
    p.subscribe("a", {})
    assert p.receive('{"type":"subscribed","id":"i","errors":[],"v":2}') == Subscribed("a", "i")


def test_replies_carry_the_token_of_the_subscribe_they_answer() -> None:
    """Each subscribe's token comes back on its own reply (by order), success or failure."""
    p = Protocol()
    p.subscribe("a", {}, token=3)
    p.subscribe("a", {"time": {"start": "2024-01-01T00:00:00Z"}}, token=4)
    p.subscribe("b", {})  # no token given
    assert p.pending("a") and p.pending("b")
    assert p.receive(ok("id-a3")) == Subscribed("a", "id-a3", 3)
    assert p.pending("a")  # the second subscribe of "a" still waits
    failed = p.receive('{"type":"subscribed","errors":[{"error":"InvalidQuery"}]}')
    assert failed == SubscribeFailed("a", [{"error": "InvalidQuery"}], 4)
    assert not p.pending("a")
    assert p.receive(ok("id-b")) == Subscribed("b", "id-b", 0)
    assert not p.pending("b")


def test_a_malformed_reply_carries_its_token() -> None:
    p = Protocol()
    p.subscribe("a", {}, token=7)
    event = p.receive('{"type":"subscribed","id":"id-a","errors":"oops"}')
    assert isinstance(event, SubscribeFailed)
    assert (event.name, event.token, event.errors[0]["error"]) == ("a", 7, "MalformedReply")


def test_unsubscribe_id_retires_an_id_that_is_still_routed() -> None:
    """A superseded reply's id is unsubscribed by id; data already on its way is still ours."""
    p = Protocol()
    p.subscribe("dc", {}, token=1)
    p.receive(golden("subscribed_ok.json"))
    message = p.unsubscribe_id(SEED_ID)
    assert json.loads(message) == json.loads(golden("unsubscribe.json"))
    assert p.ids == {}
    assert p.unsubscribe("dc") is None  # nothing left to unsubscribe by name
    raw = golden("data_seed_example.json")
    assert p.receive(raw) == Data("dc", SEED_ID, 1, raw)
    # An id that was never adopted gets its unsubscribe message all the same.
    assert json.loads(p.unsubscribe_id("never-seen")) == {"type": "unsubscribe", "id": "never-seen"}
    assert isinstance(p.receive(data("never-seen", 1)), UnknownData)
