"""The simulator's knobs, shared by the server, the thread wrapper and the CLI."""

from __future__ import annotations

from dataclasses import dataclass

DROP_MODES = ("clean", "reset")


@dataclass
class SimulatorOptions:
    host: str = "127.0.0.1"
    port: int = 0
    token: str = "sim-token"  # noqa: S105 - a well-known test credential, not a secret
    spec_ids: tuple[str, ...] = ("baz",)
    tracks: int = 50
    # Observations per second across all tracks; 0 means as fast as consumers can take them.
    rate: float = 200.0
    batch: int = 100
    seed: int = 0
    late_fraction: float = 0.0
    history_seconds: float = 3600.0
    history_max: int = 2_000_000
    drop_every: int = 0
    drop_mode: str = "clean"
    drop_random: float = 0.0
    refuse_seconds: float = 0.0
    compression: bool = True
    # OAuth2 client credentials (connector.simulator.oauth): the token endpoint is served when
    # client_id is set; the static `token` is accepted beside the issued ones.
    client_id: str | None = None
    client_secret: str | None = None
    token_expires_in: float = 3600.0
    token_failures: int = 0  # the first N token requests are answered 503

    def __post_init__(self) -> None:
        if self.drop_mode not in DROP_MODES:
            raise ValueError(f"drop_mode must be one of {DROP_MODES}, got {self.drop_mode!r}")
        if not self.spec_ids:
            raise ValueError("at least one spec id is needed")
        if self.tracks < 1 or self.batch < 1:
            raise ValueError("tracks and batch must be positive")
        if self.rate < 0 or not 0.0 <= self.late_fraction <= 1.0:
            raise ValueError("rate must be >= 0 and late_fraction within [0, 1]")
        if not 0.0 <= self.drop_random <= 1.0:
            raise ValueError("drop_random must be within [0, 1]")
        if self.client_id is not None and not self.client_secret:
            raise ValueError("client_id needs a client_secret")
        if self.token_expires_in <= 0 or self.token_failures < 0:
            raise ValueError("token_expires_in must be > 0 and token_failures >= 0")
