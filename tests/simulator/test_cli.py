"""The simulator's command line: unusable arguments are an error message and exit 2, not a
traceback; usable ones become the options they ask for."""

from __future__ import annotations

import pytest

from connector.cli import build_parser, main
from connector.simulator.cli import options_from


def test_a_client_id_without_its_secret_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GOTHAM_CLIENT_SECRET", raising=False)
    assert main(["simulate", "--client-id", "edge"]) == 2
    err = capsys.readouterr().err
    assert "--client-id needs the client secret in $GOTHAM_CLIENT_SECRET" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tracks", "0"], "tracks and batch must be positive"),
        (["--rate", "-1"], "rate must be >= 0"),
        (["--drop-random", "2"], "drop_random must be within [0, 1]"),
    ],
)
def test_out_of_range_options_are_an_error_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_the_secret_comes_from_the_environment_not_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOTHAM_CLIENT_SECRET", "s3cret")
    args = build_parser().parse_args(["simulate", "--client-id", "edge", "--port", "0"])
    options = options_from(args)
    assert (options.client_id, options.client_secret, options.port) == ("edge", "s3cret", 0)
