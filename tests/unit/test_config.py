"""Config loading: the contract TOML loads; every problem is reported at once with its key."""

from __future__ import annotations

import logging
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from connector.config import COMPRESSIONS, Config, load_config
from connector.errors import ConfigError
from connector.query import CLOCKWISE_NOTE
from connector.secret import RedactFilter, Secret, TokenSource
from connector.tables import show_toml

SEED_POLYGON = """[
  {longitude = -77.05974824713265, latitude = 38.903335277742656},
  {longitude = -77.06011742685993, latitude = 38.905195387105344},
  {longitude = -77.0628268311872, latitude = 38.905175909773085},
  {longitude = -77.06130631105295, latitude = 38.90278989613124},
  {longitude = -77.05974824713265, latitude = 38.903335277742656},
]"""

VALID = f"""
[source]
url = "wss://gotham.example.com"
observation_spec_id = "baz"
path = "/api/ws/gotham/v1/observations/{{observation_spec_id}}"
token_env = "GOTHAM_TOKEN"

[[subscriptions]]
name = "dc"
query = {{ location = {SEED_POLYGON} }}

[batch]
max_rows = 50000
max_bytes = 67108864
max_seconds = 60.0

[sink]
url = "./landing"
storage_options = {{ }}
compression = "zstd"

[state]
dir = "./state"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "connector.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), environ or {})


def problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, environ)
    assert info.value.exit_code == 2
    return dict(info.value.problems)


def test_contract_config_loads(tmp_path: Path) -> None:
    cfg = load(tmp_path, VALID)
    assert cfg.source.url == "wss://gotham.example.com"
    assert cfg.source.observation_spec_id == "baz"
    assert cfg.source.ws_url == (
        "wss://gotham.example.com/api/ws/gotham/v1/observations/baz?preview=true"
    )
    assert cfg.source.rest_base == "https://gotham.example.com"
    assert cfg.source.token == TokenSource(env="GOTHAM_TOKEN")
    [sub] = cfg.subscriptions
    assert sub.name == "dc"
    assert len(sub.query["location"]) == 5
    assert sub.query["location"][0] == {
        "longitude": -77.05974824713265,
        "latitude": 38.903335277742656,
    }
    assert (cfg.batch.max_rows, cfg.batch.max_bytes, cfg.batch.max_seconds) == (
        50000,
        67108864,
        60.0,
    )
    assert cfg.sink.url == "./landing"
    assert dict(cfg.sink.storage_options) == {}
    assert cfg.sink.compression == "zstd"
    assert cfg.state.dir == Path("state")


def test_every_problem_is_reported_at_once_with_its_key(tmp_path: Path) -> None:
    text = """
[source]
url = "https://not-a-websocket.example.com"
colour = "blue"
ping_interval = "often"

[[subscriptions]]
name = "has space"
query = {}

[[subscriptions]]
name = "ok"
query = {}

[[subscriptions]]
name = "ok"
query = {}

[batch]
max_rows = 0
max_bytes = "lots"

[sink]
compression = "lz5"

[surprise]
x = 1
"""
    found = problems(tmp_path, text)
    assert found["source.url"].startswith("expected ws://host[:port] or wss://")
    assert found["source.observation_spec_id"] == "is required"
    assert found["source.colour"] == "unknown key"
    assert found["source.ping_interval"] == "expected positive number, got str 'often'"
    assert found["subscriptions[0] (has space).name"] == "'has space' must match [A-Za-z0-9_-]+"
    assert found["subscriptions[2] (ok).name"] == "'ok' is used twice"
    assert found["batch.max_rows"] == "expected positive integer, got int 0"
    assert found["batch.max_bytes"] == "expected positive integer, got str 'lots'"
    assert found["sink.compression"] == (f"expected one of {', '.join(COMPRESSIONS)}, got 'lz5'")
    assert found["sink.compression"].startswith("expected one of zstd, snappy, gzip, none")
    assert found["surprise"].startswith("unknown section")
    assert len(found) == 10


def test_the_message_names_every_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, VALID.replace('compression = "zstd"', 'compression = "brotli"'))
    assert "sink.compression: expected one of zstd, snappy, gzip, none" in str(info.value)


def test_missing_everything(tmp_path: Path) -> None:
    found = problems(tmp_path, "")
    assert found == {
        "source.url": "is required",
        "source.observation_spec_id": "is required",
        "subscriptions": "at least one [[subscriptions]] entry is required",
    }


def test_subscription_needs_name_and_query(tmp_path: Path) -> None:
    text = VALID + "\n[[subscriptions]]\nextra = 1\n"
    found = problems(tmp_path, text)
    assert found["subscriptions[1].name"] == "is required"
    assert found["subscriptions[1].query"] == "is required"
    assert found["subscriptions[1].extra"] == "unknown key"


def sub_problems(tmp_path: Path, query: str) -> list[str]:
    text = VALID.replace(f"query = {{ location = {SEED_POLYGON} }}", f"query = {query}")
    assert text != VALID
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    keys = {key for key, _ in info.value.problems}
    assert keys == {"subscriptions[0] (dc).query"}
    return [msg for _, msg in info.value.problems]


def poly(*points: tuple[float, float]) -> str:
    inner = ", ".join(f"{{longitude = {lon}, latitude = {lat}}}" for lon, lat in points)
    return f"{{ location = [{inner}] }}"


CCW = [(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)]


def test_query_polygon_not_closed(tmp_path: Path) -> None:
    assert sub_problems(tmp_path, poly(*CCW[:-1], (0, 0.5))) == [
        "location polygon is not closed (first point must equal last point)"
    ]


def test_query_polygon_too_few_points(tmp_path: Path) -> None:
    assert sub_problems(tmp_path, poly((0, 0), (1, 0), (0, 0))) == [
        "location needs at least 4 points including the closing one, got 3"
    ]


def test_query_polygon_zero_area(tmp_path: Path) -> None:
    assert sub_problems(tmp_path, poly((0, 0), (1, 1), (2, 2), (0, 0))) == [
        "location polygon has zero area"
    ]


def with_query(query: str) -> str:
    text = VALID.replace(f"query = {{ location = {SEED_POLYGON} }}", f"query = {query}")
    assert text != VALID
    return text


def test_query_polygon_clockwise_is_loaded_reversed(tmp_path: Path) -> None:
    [sub] = load(tmp_path, with_query(poly(*reversed(CCW)))).subscriptions
    assert sub.query == {"location": [{"longitude": x, "latitude": y} for x, y in CCW]}
    assert sub.notes == (CLOCKWISE_NOTE,)
    [sub] = load(tmp_path, with_query(poly(*CCW))).subscriptions
    assert sub.notes == ()


def test_query_seed_polygon_verbatim_is_clockwise_and_loads_as_its_reverse(tmp_path: Path) -> None:
    seed = (
        (-77.05974824713265, 38.903335277742656),
        (-77.06130631105295, 38.90278989613124),
        (-77.0628268311872, 38.905175909773085),
        (-77.06011742685993, 38.905195387105344),
        (-77.05974824713265, 38.903335277742656),
    )
    verbatim = load(tmp_path, with_query(poly(*seed)))
    listed_ccw = load(tmp_path, VALID)  # SEED_POLYGON: the same ring, listed the other way
    assert verbatim == listed_ccw  # what is sent (and backfilled with) is the same
    assert verbatim.subscriptions[0].notes == (CLOCKWISE_NOTE,)
    assert listed_ccw.subscriptions[0].notes == ()


def test_query_coordinates_out_of_range(tmp_path: Path) -> None:
    found = sub_problems(tmp_path, poly((0, 0), (181, 0), (1, 91), (0, 0)))
    assert found == [
        "location[1].longitude 181.0 is outside [-180, 180]",
        "location[2].latitude 91.0 is outside [-90, 90]",
    ]


def test_query_time_start_after_end(tmp_path: Path) -> None:
    query = '{ time = { start = "2024-06-25T00:00:00Z", end = "2024-06-24T00:00:00Z" } }'
    assert sub_problems(tmp_path, query) == ["time.start is after time.end"]


def test_query_time_not_iso(tmp_path: Path) -> None:
    query = '{ time = { start = "yesterday", end = "2024-06-24T00:00:00" } }'
    assert sub_problems(tmp_path, query) == [
        "time.start 'yesterday' is not an ISO-8601 UTC timestamp (…Z)",
        "time.end '2024-06-24T00:00:00' is not an ISO-8601 UTC timestamp (…Z)",
    ]


def test_query_property_without_name_or_values(tmp_path: Path) -> None:
    assert sub_problems(tmp_path, "{ property = { values = [] } }") == [
        "property.property must be a non-empty string",
        "property.values must be a non-empty list",
    ]


def test_query_unknown_key(tmp_path: Path) -> None:
    assert sub_problems(tmp_path, "{ bbox = 1 }") == [
        "unknown key 'bbox' (expected time, location, property)"
    ]


def test_reconnect_bounds_must_be_ordered(tmp_path: Path) -> None:
    text = VALID.replace(
        'token_env = "GOTHAM_TOKEN"',
        'token_env = "GOTHAM_TOKEN"\nreconnect_min_seconds = 60\nreconnect_max_seconds = 5',
    )
    assert problems(tmp_path, text) == {
        "source.reconnect_max_seconds": "must be at least source.reconnect_min_seconds"
    }


def test_a_spool_smaller_than_two_segments_is_refused(tmp_path: Path) -> None:
    """Such a spool could never release a segment: it would drop every frame for good."""
    text = VALID.replace(
        'dir = "./state"', 'dir = "./state"\nmax_spool_bytes = 1000\nsegment_bytes = 800'
    )
    found = problems(tmp_path, text)
    assert list(found) == ["state.max_spool_bytes"]
    assert "1000" in found["state.max_spool_bytes"] and "800" in found["state.max_spool_bytes"]
    fits = VALID.replace(
        'dir = "./state"', 'dir = "./state"\nmax_spool_bytes = 1600\nsegment_bytes = 800'
    )
    assert load(tmp_path, fits).state.max_spool_bytes == 1600


def test_cleartext_token_to_a_remote_host_is_refused(tmp_path: Path) -> None:
    remote = VALID.replace('url = "wss://gotham.example.com"', 'url = "ws://gotham.example.com"')
    found = problems(tmp_path, remote)
    assert list(found) == ["source.url"]
    assert "cleartext" in found["source.url"] and "gotham.example.com" in found["source.url"]
    rest = VALID.replace(
        'token_env = "GOTHAM_TOKEN"', 'token_env = "GOTHAM_TOKEN"\nrest_url = "http://10.0.0.7"'
    )
    assert list(problems(tmp_path, rest)) == ["source.rest_url"]
    allowed = remote.replace(
        'token_env = "GOTHAM_TOKEN"', 'token_env = "GOTHAM_TOKEN"\nallow_insecure = true'
    )
    assert load(tmp_path, allowed).source.allow_insecure is True
    for host in ("127.0.0.1", "localhost", "[::1]", "127.3.2.1:9000"):
        local = VALID.replace('url = "wss://gotham.example.com"', f'url = "ws://{host}"')
        assert load(tmp_path, local).source.url == f"ws://{host}"


def test_env_overrides_a_key(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        VALID,
        {
            "GOTHAM_CONNECTOR__SINK__URL": "s3://bucket/landing",
            "GOTHAM_CONNECTOR__BATCH__MAX_ROWS": "10",
            "GOTHAM_CONNECTOR__SINK__STORAGE_OPTIONS": "{ anon = true }",
            "UNRELATED__SINK__URL": "ignored",
        },
    )
    assert cfg.sink.url == "s3://bucket/landing"
    assert cfg.batch.max_rows == 10
    assert dict(cfg.sink.storage_options) == {"anon": True}


def test_env_override_is_checked_like_the_file(tmp_path: Path) -> None:
    found = problems(tmp_path, VALID, {"GOTHAM_CONNECTOR__SINK__COMPRESSION": "lz5"})
    assert found == {"sink.compression": "expected one of zstd, snappy, gzip, none, got 'lz5'"}


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.toml", {})
    assert [k for k, _ in info.value.problems] == ["config"]
    assert problems(tmp_path, "[source\n").keys() == {"config"}


# -- validate --show ----------------------------------------------------------------------------
# A config that sets every key, none to its default: --show must carry each one.
FULL = f"""
[source]
url = "wss://gotham.example.com:8443"
observation_spec_id = "spec with spaces/ü"
path = "/api/gotham/ws/v1/observations/{{observation_spec_id}}"
token_file = "secrets/token"
ca_file = "{{ca_file}}"
rest_url = "https://rest.example.com"
permessage_deflate = false
max_message_bytes = 1000
open_timeout = 1.5
ping_interval = 2
ping_timeout = 3.25
reconnect_min_seconds = 0.1
reconnect_max_seconds = 9
auth_retry_seconds = 60
allow_insecure = true

[[subscriptions]]
name = "dc"
query = {{ location = {SEED_POLYGON} }}

[[subscriptions]]
name = "cw"
query = {poly(*reversed(CCW))}

[[subscriptions]]
name = "ships"
query = {{ time = {{ start = "2024-06-24T17:00:00.5Z" }}, property = {{ property = "crew", \
values = [12, "12", true, 1.5] }} }}

[[subscriptions]]
name = "everything"
query = {{}}

[batch]
max_rows = 7
max_bytes = 8
max_seconds = 0.25

[sink]
url = "memory://lake/x"
storage_options = {{ anon = true, client_kwargs = {{ region_name = "eu" }} }}
compression = "gzip"
compression_level = 3
row_group_rows = 9
max_attempts = 2

[state]
dir = "somewhere/state"
writer_id = "w2"
fsync_seconds = 0
max_spool_bytes = 200
segment_bytes = 100

[backfill]
enabled = false
max_window = "6h"
page_size = 50
overlap_seconds = 0
tracks = "subscription"

[log]
level = "debug"
format = "json"
heartbeat_seconds = 5

[metrics]
enabled = true
host = "0.0.0.0"
port = 0

[iceberg]
enabled = true
table = "lake.gotham"
catalog_name = "lake"
catalog = {{ type = "sql", uri = "sqlite:///state/lake.db", credential_file = "/run/secrets/lake" }}
"""


def full(tmp_path: Path) -> str:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked offline beyond existing")
    return FULL.replace("{ca_file}", str(ca))


def test_show_loads_back_into_the_same_config(tmp_path: Path) -> None:
    env = {"GOTHAM_CONNECTOR__BATCH__MAX_ROWS": "11", "GOTHAM_CONNECTOR__LOG__LEVEL": "warning"}
    cfg = load(tmp_path, full(tmp_path), env)
    for name in (f.name for f in fields(cfg) if f.name != "subscriptions"):
        section = getattr(cfg, name)
        required = {"url": "ws://x", "observation_spec_id": "x"} if name == "source" else {}
        default = type(section)(**required)
        unset = [
            f.name for f in fields(section) if getattr(section, f.name) == getattr(default, f.name)
        ]
        assert unset == [], f"full() leaves {type(section).__name__} keys at their default"
    shown = show_toml(cfg)
    assert (cfg.batch.max_rows, cfg.log.level) == (11, "warning")  # the environment counts
    again = load_config(write(tmp_path, shown), {})
    assert again == cfg
    # The clockwise ring is shown as sent: loading it back needs no reversal.
    assert [s.notes for s in cfg.subscriptions] == [(), (CLOCKWISE_NOTE,), (), ()]
    assert [s.notes for s in again.subscriptions] == [(), (), (), ()]


def test_show_includes_defaults(tmp_path: Path) -> None:
    shown = show_toml(load(tmp_path, VALID))
    for line in ("max_message_bytes = 268435456", 'tracks = "all"', 'token_env = "GOTHAM_TOKEN"'):
        assert line in shown.splitlines()
    assert load_config(write(tmp_path, shown), {}) == load(tmp_path, VALID)


def test_show_redacts_credentials(tmp_path: Path) -> None:
    text = VALID.replace(
        "storage_options = { }",
        'storage_options = { key = "AKIAEXAMPLEID", secret = "s3-secret-value", token = "sess-tok",'
        ' endpoint_url = "http://minio:pw-in-url@minio:9000", client_kwargs = {'
        ' aws_secret_access_key = "nested-secret", region_name = "eu-west-1" },'
        ' password = "pw-value", account_key = "az-key", use_ssl = false }',
    ).replace('url = "./landing"', 'url = "ftp://lake:ftp-password@ftp.example.com/landing"')
    cfg = load(tmp_path, text, {"GOTHAM_CONNECTOR__SINK__STORAGE_OPTIONS__SAS_TOKEN": "sas-val"})
    shown = show_toml(cfg)
    for secret in (
        "AKIAEXAMPLEID", "s3-secret-value", "sess-tok", "pw-in-url", "nested-secret", "pw-value",
        "az-key", "ftp-password", "sas-val",
    ):  # fmt: skip
        assert secret not in shown
    options = tomllib.loads(shown)["sink"]["storage_options"]
    assert options == {
        "key": "***",
        "secret": "***",
        "token": "***",
        "endpoint_url": "http://minio:***@minio:9000",
        "client_kwargs": {"aws_secret_access_key": "***", "region_name": "eu-west-1"},
        "password": "***",
        "account_key": "***",
        "use_ssl": False,
        "sas_token": "***",
    }
    assert tomllib.loads(shown)["sink"]["url"] == "ftp://lake:***@ftp.example.com/landing"


# -- the token ------------------------------------------------------------------------------------
def test_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_GOTHAM_TOKEN", "  abc.DEF-123_x  ")
    secret = TokenSource(env="TEST_GOTHAM_TOKEN").load()
    assert secret.reveal() == "abc.DEF-123_x"


def test_token_from_file_is_reread_on_each_load(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n", encoding="utf-8")
    source = TokenSource(env=None, file=path)
    assert source.load().reveal() == "first"
    path.write_text("rotated\n", encoding="utf-8")
    assert source.load().reveal() == "rotated"


def test_token_file_from_config_is_relative_and_exclusive(tmp_path: Path) -> None:
    text = VALID.replace('token_env = "GOTHAM_TOKEN"', 'token_file = "/run/secrets/t"')
    assert load(tmp_path, text).source.token == TokenSource(env=None, file=Path("/run/secrets/t"))
    both = VALID.replace('token_env = "GOTHAM_TOKEN"', 'token_env = "X"\ntoken_file = "t"')
    assert problems(tmp_path, both) == {
        "source.token_file": "give token_env or token_file, not both"
    }


def test_missing_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TEST_GOTHAM_TOKEN", raising=False)
    with pytest.raises(ConfigError) as info:
        TokenSource(env="TEST_GOTHAM_TOKEN").load()
    assert info.value.problems[0][0] == "source.token_env"
    with pytest.raises(ConfigError) as info:
        TokenSource(env=None, file=tmp_path / "nope").load()
    assert info.value.problems[0][0] == "source.token_file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="the token is empty"):
        TokenSource(env=None, file=tmp_path / "empty").load()


@pytest.mark.parametrize(
    "token", ["secret with-space", "sécretÜ", "tab\tinside", "abcd,efgh", "wxyz/qrst"]
)
def test_unusable_token_is_refused_without_leaking_it(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_GOTHAM_TOKEN", token)
    with pytest.raises(ConfigError) as info:
        TokenSource(env="TEST_GOTHAM_TOKEN").load()
    message = str(info.value)
    assert "subprotocol" in message
    assert token not in message
    for piece in token.replace("\t", " ").replace(",", " ").replace("/", " ").split():
        assert piece not in message


def test_secret_never_shows_its_value() -> None:
    secret = Secret("hunter2-token")
    percent = "%s" % (secret,)  # noqa: UP031 (logging formats with %, so check it too)
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", percent):
        assert "hunter2" not in shown
    assert "hunter2" not in repr([secret, {"t": secret}])
    assert secret.reveal() == "hunter2-token"
    assert secret == Secret("hunter2-token") != Secret("other")


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("t", logging.INFO, __file__, 1, msg, args, None)


def test_redact_filter_scrubs_a_log_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_GOTHAM_TOKEN", "tok-7f3a9c")
    TokenSource(env="TEST_GOTHAM_TOKEN").load()  # loading registers the token
    rec = record("sending header Bearer-%s to %s", "tok-7f3a9c", "host")
    assert RedactFilter().filter(rec) is True
    assert rec.getMessage() == "sending header Bearer-*** to host"
    plain = record("nothing %s here", "secret-free")
    RedactFilter().filter(plain)
    assert plain.getMessage() == "nothing secret-free here"


def test_redact_filter_survives_a_bad_format(monkeypatch: pytest.MonkeyPatch) -> None:
    # A filter is not guarded by logging: raising here would crash the logging call, and
    # logging's own error report would print the args (the token) unscrubbed.
    monkeypatch.setenv("TEST_GOTHAM_TOKEN", "tok-bad-fmt-1")
    TokenSource(env="TEST_GOTHAM_TOKEN").load()
    rec = record("%d items for %s", "tok-bad-fmt-1")
    assert RedactFilter().filter(rec) is True
    assert "tok-bad-fmt-1" not in rec.getMessage()
    assert "***" in rec.getMessage()


def test_tracebacks_are_scrubbed_too() -> None:
    import logging as _logging

    from connector.secret import RedactFilter

    token = "traceback-token-4242"
    RedactFilter.register(token)
    root = _logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        _check_scrubbed_tracebacks(token)
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def _check_scrubbed_tracebacks(token: str) -> None:
    import io
    import logging as _logging

    from connector import logs

    for fmt in ("text", "json"):
        logs.setup("INFO", fmt)
        stream = io.StringIO()
        root = _logging.getLogger()
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        try:
            raise RuntimeError(f"boom {token}")
        except RuntimeError:
            _logging.getLogger("t").exception("failed")
        out = stream.getvalue()
        assert "boom ***" in out and token not in out, out
