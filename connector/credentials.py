"""OAuth2 client credentials (Palantir multipass), the pure parts: the `[source.oauth2]` settings,
where the client secret is read, the token request's form body, the token endpoint's answer and
when to fetch the next token. The HTTP side is `connector.oauth2`.

The client secret and every access token are registered with the log scrubber the moment they
are read, and travel as `Secret`s: they print as `***` wherever they end up.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus, urlencode, urlsplit

from connector.errors import ConfigError
from connector.secret import RedactFilter, Secret, subprotocol_safe
from connector.tables import Reader, loopback

TOKEN_PATH = "/multipass/api/oauth2/token"  # noqa: S105 - a URL path, not a secret
DEFAULT_SECRET_ENV = "GOTHAM_CLIENT_SECRET"  # noqa: S105 - a variable name, not its value
# Palantir documents service-user tokens as living about one hour; used when the answer has no
# expires_in (RFC 6749 only recommends it). A shorter real life is caught by the 401 retry.
DEFAULT_LIFETIME = 3600.0
REFRESH_MARGIN = 60.0
MIN_REFRESH_SECONDS = 1.0
# RFC 6749 3.3: a scope token is visible ASCII without space, '"' and '\'.
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+\Z")


@dataclass(frozen=True)
class OAuth2Config:
    """`[source.oauth2]`: names where the client secret lives, never the secret itself."""

    client_id: str
    client_secret_env: str | None = DEFAULT_SECRET_ENV
    client_secret_file: Path | None = None
    token_url: str | None = None  # default: {rest base}/multipass/api/oauth2/token
    scopes: tuple[str, ...] = ()

    def url(self, rest_base: str) -> str:
        return self.token_url or rest_base.rstrip("/") + TOKEN_PATH

    def load_secret(self) -> Secret:
        """Read on every token request: a rotated client secret needs no restart."""
        if self.client_secret_file is not None:
            key = "source.oauth2.client_secret_file"
            try:
                value = self.client_secret_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                where = self.client_secret_file
                raise ConfigError.single(key, f"cannot read {where}: {exc.strerror}") from None
        else:
            key = "source.oauth2.client_secret_env"
            value = os.environ.get(self.client_secret_env or "", "").strip()
            if not value:
                message = f"environment variable {self.client_secret_env} is not set"
                raise ConfigError.single(key, message)
        if not value:
            raise ConfigError.single(key, "the client secret is empty")
        # Also its URL-encoded spellings: the form body carries it that way.
        for spelling in {value, quote_plus(value), quote(value, safe="")}:
            RedactFilter.register(spelling)
        return Secret(value)


@dataclass(frozen=True)
class Grant:
    """One access token from the token endpoint."""

    token: Secret
    expires_in: float

    @property
    def refresh_after(self) -> float:
        return refresh_after(self.expires_in)


class UnusableToken(ValueError):
    """The endpoint answered a token that cannot be sent: asking again will not change that."""


def read_oauth2(r: Reader, insecure: bool) -> OAuth2Config | None:
    """`[source.oauth2]` from the `[source]` table's reader; problems are recorded on it."""
    table = r.get("oauth2", "table", None)
    if table is None:
        return None
    for key in ("token_env", "token_file"):
        if key in r.table:
            r.fail(key, "[source.oauth2] replaces token_env and token_file: give one of them")
    o = Reader(table, r.key("oauth2"), r.problems)
    client_id = o.get("client_id", "string", None, required=True)
    env = o.get("client_secret_env", "string", None)
    file = o.get("client_secret_file", "string", None)
    if env and file:
        o.fail("client_secret_file", "give client_secret_env or client_secret_file, not both")
    url = o.get("token_url", "string", None)
    parts = urlsplit(url) if url is not None else None
    if parts is not None and (parts.scheme not in ("http", "https") or not parts.hostname):
        o.fail("token_url", "expected http(s)://host[:port]/path")
    elif (
        parts is not None and parts.scheme == "http" and not (insecure or loopback(parts.hostname))
    ):
        o.fail(
            "token_url",
            f"http:// would send the client secret in cleartext to {parts.hostname}; "
            "use https:// or set source.allow_insecure = true",
        )
    scopes: tuple[str, ...] = o.get("scopes", "list of strings", ())
    for scope in scopes:
        if not _SCOPE.match(scope):
            o.fail("scopes", f"{scope!r} is not a scope (no spaces, quotes or backslashes)")
    o.unknown()
    if client_id is None:
        return None
    return OAuth2Config(
        client_id=client_id,
        client_secret_env=None if file else (env or DEFAULT_SECRET_ENV),
        client_secret_file=Path(file).expanduser() if file else None,
        token_url=url,
        scopes=scopes,
    )


def form_body(cfg: OAuth2Config, secret: Secret) -> Secret:
    """The request body exactly as Palantir's SDKs send it (a Secret: it holds the secret)."""
    fields = [
        ("grant_type", "client_credentials"),
        ("client_id", cfg.client_id),
        ("client_secret", secret.reveal()),
    ]
    if cfg.scopes:
        fields.append(("scope", " ".join(cfg.scopes)))
    return Secret(urlencode(fields))


def refresh_after(expires_in: float) -> float:
    """Seconds after the request to fetch the next token: 60 s before it expires, or at 80% of
    its life when that leaves less than 60 s (tokens under five minutes; a 5 s token is renewed
    after 4 s). Never sooner than a second: a server answering tiny lifetimes must not make
    this a busy loop."""
    return max(MIN_REFRESH_SECONDS, expires_in - min(REFRESH_MARGIN, 0.2 * expires_in))


def read_grant(body: object) -> Grant:
    """The token endpoint's JSON answer. Errors say what is wrong, never a value from it."""
    if not isinstance(body, dict):
        raise ValueError("the answer is not a JSON object")
    token = body.get("access_token")
    if not isinstance(token, str) or not token.strip():
        raise ValueError("the answer has no access_token")
    token = token.strip()
    RedactFilter.register(token)  # before anything else could mention it
    kind = body.get("token_type", "bearer")
    if not isinstance(kind, str) or kind.lower() != "bearer":
        raise UnusableToken("token_type is not bearer")
    if not subprotocol_safe(token):
        raise UnusableToken(
            "the access token has characters that cannot travel in the websocket subprotocol"
        )
    expires = body.get("expires_in", DEFAULT_LIFETIME)
    if isinstance(expires, str) and expires.strip().isdigit():
        expires = int(expires)  # some servers send the number as a string
    if isinstance(expires, bool) or not isinstance(expires, int | float) or expires <= 0:
        raise ValueError("expires_in is not a positive number")
    return Grant(Secret(token), float(expires))
