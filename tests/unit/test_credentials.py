"""OAuth2 client credentials, the pure parts: `[source.oauth2]` loading and its problems, the
client secret's lookup and redaction, the form body, the token answer, the refresh timing."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from connector.config import load_config
from connector.credentials import (
    OAuth2Config,
    UnusableToken,
    form_body,
    read_grant,
    refresh_after,
)
from connector.errors import ConfigError
from connector.secret import RedactFilter, Secret, TokenSource, scrub
from connector.tables import show_toml

BASE = """
[source]
url = "wss://gotham.example.com"
observation_spec_id = "baz"
{extra}

[[subscriptions]]
name = "all"
query = {{}}
"""
OAUTH = '[source.oauth2]\nclient_id = "svc-connector"\nclient_secret_env = "TEST_CLIENT_SECRET"'


def load(tmp_path: Path, extra: str, environ: dict[str, str] | None = None) -> OAuth2Config:
    path = tmp_path / "connector.toml"
    path.write_text(BASE.format(extra=extra))
    token = load_config(path, environ or {}).source.token
    assert isinstance(token, OAuth2Config)
    return token


def problems(tmp_path: Path, extra: str) -> dict[str, str]:
    path = tmp_path / "connector.toml"
    path.write_text(BASE.format(extra=extra))
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert info.value.exit_code == 2
    return dict(info.value.problems)


# -- [source.oauth2] ------------------------------------------------------------------------------
def test_oauth2_replaces_the_static_token_with_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[source.oauth2]\nclient_id = "svc-connector"')
    assert cfg == OAuth2Config("svc-connector", client_secret_env="GOTHAM_CLIENT_SECRET")
    # The token endpoint is derived from the REST base, which is derived from the url.
    assert cfg.url("https://gotham.example.com") == (
        "https://gotham.example.com/multipass/api/oauth2/token"
    )


def test_oauth2_with_every_key(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[source.oauth2]\nclient_id = "c"\nclient_secret_file = "secrets/cs"\n'
        'token_url = "https://auth.example.com/multipass/api/oauth2/token"\n'
        'scopes = ["api:read-data", "api:use-gotham"]',
    )
    assert cfg.client_secret_env is None and cfg.client_secret_file == Path("secrets/cs")
    assert cfg.url("https://ignored") == "https://auth.example.com/multipass/api/oauth2/token"
    assert cfg.scopes == ("api:read-data", "api:use-gotham")


def test_a_token_url_derives_from_rest_url_when_given(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(BASE.format(extra=f'rest_url = "https://rest.example.com:8443"\n{OAUTH}'))
    source = load_config(path, {}).source
    assert isinstance(source.token, OAuth2Config)
    assert source.token.url(source.rest_base) == (
        "https://rest.example.com:8443/multipass/api/oauth2/token"
    )


@pytest.mark.parametrize("key", ["token_env", "token_file"])
def test_oauth2_and_a_static_token_together_is_an_error_naming_both(
    tmp_path: Path, key: str
) -> None:
    found = problems(tmp_path, f'{key} = "X"\n{OAUTH}')
    assert list(found) == [f"source.{key}"]
    assert "[source.oauth2] replaces token_env and token_file" in found[f"source.{key}"]


def test_oauth2_problems_name_their_keys(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        '[source.oauth2]\nclient_secret_env = "A"\nclient_secret_file = "b"\n'
        'token_url = "ftp://x"\nscopes = ["ok", "two words"]\ncolour = 1',
    )
    assert found == {
        "source.oauth2.client_id": "is required",
        "source.oauth2.client_secret_file": (
            "give client_secret_env or client_secret_file, not both"
        ),
        "source.oauth2.token_url": "expected http(s)://host[:port]/path",
        "source.oauth2.scopes": "'two words' is not a scope (no spaces, quotes or backslashes)",
        "source.oauth2.colour": "unknown key",
    }
    assert problems(tmp_path, '[source.oauth2]\nclient_id = "c"\nscopes = "one"') == {
        "source.oauth2.scopes": "expected list of strings, got str 'one'"
    }
    assert problems(tmp_path, "oauth2 = 5") == {"source.oauth2": "expected table, got int 5"}


def test_cleartext_token_url_to_a_remote_host_is_refused(tmp_path: Path) -> None:
    remote = f'{OAUTH}\ntoken_url = "http://auth.example.com/t"'
    found = problems(tmp_path, remote)
    assert list(found) == ["source.oauth2.token_url"]
    assert "cleartext" in found["source.oauth2.token_url"]
    assert load(tmp_path, f'{OAUTH}\ntoken_url = "http://127.0.0.1:9/t"').token_url
    insecure = f"allow_insecure = true\n{remote}"
    assert load(tmp_path, insecure).token_url == "http://auth.example.com/t"


def test_oauth2_keys_come_from_the_environment_too(tmp_path: Path) -> None:
    env = {
        "GOTHAM_CONNECTOR__SOURCE__OAUTH2__CLIENT_ID": "from-env",
        "GOTHAM_CONNECTOR__SOURCE__OAUTH2__SCOPES": '["a", "b"]',
    }
    cfg = load(tmp_path, OAUTH, env)
    assert (cfg.client_id, cfg.scopes) == ("from-env", ("a", "b"))


def test_show_prints_oauth2_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(BASE.format(extra=f'{OAUTH}\nscopes = ["api:read-data"]'))
    cfg = load_config(path, {})
    shown = show_toml(cfg)
    assert tomllib.loads(shown)["source"]["oauth2"] == {
        "client_id": "svc-connector",
        "client_secret_env": "TEST_CLIENT_SECRET",
        "scopes": ["api:read-data"],
    }
    assert "token_env" not in shown  # it would make the shown file an error
    path.write_text(shown)
    assert load_config(path, {}) == cfg


# -- the client secret ----------------------------------------------------------------------------
def test_client_secret_from_env_and_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TEST_CLIENT_SECRET", "  env-secret-1  ")
    assert OAuth2Config("c", "TEST_CLIENT_SECRET").load_secret() == Secret("env-secret-1")
    path = tmp_path / "cs"
    path.write_text("file-secret-1\n")
    cfg = OAuth2Config("c", None, path)
    assert cfg.load_secret().reveal() == "file-secret-1"
    path.write_text("file-secret-2\n")  # rotated: read again on the next request
    assert cfg.load_secret().reveal() == "file-secret-2"


def test_missing_client_secret_names_its_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TEST_CLIENT_SECRET", raising=False)
    with pytest.raises(ConfigError) as info:
        OAuth2Config("c", "TEST_CLIENT_SECRET").load_secret()
    assert info.value.problems == [
        ("source.oauth2.client_secret_env", "environment variable TEST_CLIENT_SECRET is not set")
    ]
    with pytest.raises(ConfigError) as info:
        OAuth2Config("c", None, tmp_path / "nope").load_secret()
    assert info.value.problems[0][0] == "source.oauth2.client_secret_file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="the client secret is empty"):
        OAuth2Config("c", None, tmp_path / "empty").load_secret()


def test_client_secret_is_scrubbed_from_logs_in_every_spelling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = "s3cr3t/with+odd&chars="
    monkeypatch.setenv("TEST_CLIENT_SECRET", raw)
    secret = OAuth2Config("c", "TEST_CLIENT_SECRET").load_secret()
    body = form_body(OAuth2Config("c"), secret)
    assert raw not in repr(body) + str(body) + f"{secret}"
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 1, "body %s raw %s", (body.reveal(), raw), None
    )
    RedactFilter().filter(record)
    message = record.getMessage()
    assert raw not in message and "s3cr3t" not in message, message


# -- the request and the answer -------------------------------------------------------------------
def test_form_body_is_what_palantirs_sdks_send() -> None:
    body = form_body(OAuth2Config("svc"), Secret("pw"))
    assert body.reveal() == "grant_type=client_credentials&client_id=svc&client_secret=pw"
    scoped = form_body(OAuth2Config("svc id", scopes=("api:read", "offline")), Secret("a&b=c"))
    assert parse_qs(scoped.reveal(), strict_parsing=True) == {
        "grant_type": ["client_credentials"],
        "client_id": ["svc id"],
        "client_secret": ["a&b=c"],
        "scope": ["api:read offline"],  # space-separated, one parameter
    }
    assert "a&b=c" not in scoped.reveal()  # encoded, not spliced in


def test_read_grant() -> None:
    grant = read_grant({"access_token": "at-1", "token_type": "Bearer", "expires_in": 3599})
    assert (grant.token, grant.expires_in) == (Secret("at-1"), 3599.0)
    assert read_grant({"access_token": "at-2"}).expires_in == 3600.0  # none given: one hour
    assert read_grant({"access_token": "at-3", "expires_in": "120"}).expires_in == 120.0
    for body, problem in (
        ([], "not a JSON object"),
        ({"token_type": "bearer"}, "no access_token"),
        ({"access_token": "at-4", "expires_in": 0}, "expires_in"),
        ({"access_token": "at-5", "expires_in": True}, "expires_in"),
    ):
        with pytest.raises(ValueError, match=problem) as info:
            read_grant(body)
        assert not isinstance(info.value, UnusableToken)


@pytest.mark.parametrize(
    "body",
    [
        {"access_token": "bad tkn1,with/separatorz", "token_type": "bearer"},
        {"access_token": "mac-token-value", "token_type": "mac"},
    ],
)
def test_an_unusable_token_is_refused_without_printing_it(body: dict[str, str]) -> None:
    with pytest.raises(UnusableToken) as info:
        read_grant(body)
    for piece in body["access_token"].replace(",", " ").replace("/", " ").split():
        assert piece not in str(info.value)


def test_every_access_token_is_scrubbed_from_logs() -> None:
    read_grant({"access_token": "fresh-at-8c1f", "expires_in": 60})
    assert scrub("header Bearer fresh-at-8c1f") == "header Bearer ***"
    RedactFilter.forget("fresh-at-8c1f")  # what the token cache does with long-expired ones
    assert scrub("fresh-at-8c1f") == "fresh-at-8c1f"


# -- when to refresh ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expires_in", "after"),
    [
        (3600, 3540),  # Palantir's hour: 60 s before it expires
        (300, 240),  # where the two rules meet
        (100, 80),  # shorter lives: at 80%
        (5, 4),
        (0.5, 1.0),  # never a busy loop
    ],
)
def test_refresh_after(expires_in: float, after: float) -> None:
    assert refresh_after(expires_in) == pytest.approx(after)


def test_refresh_is_never_later_than_60s_or_20_percent_before_expiry() -> None:
    for lifetime in range(2, 20_000, 7):
        margin = lifetime - refresh_after(lifetime)
        assert margin == pytest.approx(min(60.0, 0.2 * lifetime))


def test_static_token_source_is_unchanged() -> None:
    assert TokenSource().env == "GOTHAM_TOKEN"
