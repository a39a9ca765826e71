"""Command-line front end: `gotham-connector simulate` and `python -m connector.simulator`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from connector.simulator.options import DROP_MODES, SimulatorOptions

log = logging.getLogger("connector.simulator")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SimulatorOptions()
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument(
        "--token",
        default=None,
        help="bearer token clients must present (default: $GOTHAM_TOKEN, else sim-token)",
    )
    parser.add_argument(
        "--spec", action="append", default=None, help="observation spec id (repeatable)"
    )
    parser.add_argument("--tracks", type=int, default=defaults.tracks)
    parser.add_argument(
        "--rate", type=float, default=defaults.rate, help="observations/s in total, 0 = max"
    )
    parser.add_argument("--batch", type=int, default=defaults.batch, help="max per data message")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--late-fraction", type=float, default=defaults.late_fraction)
    parser.add_argument("--drop-every", type=int, default=defaults.drop_every)
    parser.add_argument("--drop-mode", choices=DROP_MODES, default=defaults.drop_mode)
    parser.add_argument("--drop-random", type=float, default=defaults.drop_random)
    parser.add_argument("--refuse-seconds", type=float, default=defaults.refuse_seconds)
    parser.add_argument("--no-compression", action="store_true")
    parser.add_argument(
        "--client-id",
        default=None,
        help="serve the OAuth2 token endpoint for this client id (secret: $GOTHAM_CLIENT_SECRET)",
    )
    parser.add_argument(
        "--token-expires-in", type=float, default=defaults.token_expires_in, help="seconds"
    )


def options_from(args: argparse.Namespace) -> SimulatorOptions:
    """The options the arguments ask for; ValueError says what is wrong with them."""
    token = args.token or os.environ.get("GOTHAM_TOKEN") or "sim-token"
    if args.client_id and not os.environ.get("GOTHAM_CLIENT_SECRET"):
        raise ValueError("--client-id needs the client secret in $GOTHAM_CLIENT_SECRET")
    return SimulatorOptions(
        host=args.host,
        port=args.port,
        token=token,
        spec_ids=tuple(args.spec or ("baz",)),
        tracks=args.tracks,
        rate=args.rate,
        batch=args.batch,
        seed=args.seed,
        late_fraction=args.late_fraction,
        drop_every=args.drop_every,
        drop_mode=args.drop_mode,
        drop_random=args.drop_random,
        refuse_seconds=args.refuse_seconds,
        compression=not args.no_compression,
        # The secret from the environment, not argv: `ps` shows every argument.
        client_id=args.client_id,
        client_secret=os.environ.get("GOTHAM_CLIENT_SECRET") if args.client_id else None,
        token_expires_in=args.token_expires_in,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; 0 on a clean stop, 2 for unusable arguments."""
    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(options))
    return 0


async def _serve(options: SimulatorOptions) -> None:
    from connector.simulator.server import Simulator  # aiohttp: only when serving

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with Simulator(options) as sim:
        specs = ",".join(options.spec_ids)
        log.info(
            "simulator listening: websocket %s/api/ws/gotham/v1/observations/{spec}?preview=true "
            "rest %s specs=%s rate=%s/s",
            sim.ws_url,
            sim.rest_url,
            specs,
            options.rate,
        )
        await stop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m connector.simulator", description=__doc__)
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return run(parser.parse_args())
