"""Command line: ``python -m inboxlink_sim google --port P [options]``.

Runs a simulator in the foreground until interrupted. Example::

    python -m inboxlink_sim google --port 8765 --user alice@example.com --messages 200 --seed 7 \\
        --client-id my-client --client-secret s3cret --push-endpoint http://127.0.0.1:9000/push
"""

from __future__ import annotations

import argparse
import sys

import uvicorn


def _google(args: argparse.Namespace) -> int:
    from .google import control
    from .google.app import create_app
    from .google.state import SimState

    state = SimState(
        seed=args.seed, base_url=f"http://{args.host}:{args.port}", access_token_ttl=args.token_ttl
    )
    state.add_client(args.client_id, args.client_secret or None, args.redirect_uri or None)
    for email in args.user or []:
        control.seed_user(state, email, messages=args.messages, seed=args.seed, generator=args.mailgen)
    if args.push_endpoint:
        control.set_push_endpoint(state, args.push_endpoint)
    app = create_app(state)
    users = ", ".join(args.user or []) or "-"
    print(
        f"google simulator on {state.base_url} (client_id={args.client_id}, users={users})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, ws="none", lifespan="on")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .google.state import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

    parser = argparse.ArgumentParser(
        prog="python -m inboxlink_sim", description="inboxlink provider simulators"
    )
    sub = parser.add_subparsers(dest="sim", required=True)
    g = sub.add_parser("google", help="Google OAuth 2.0/OIDC + Gmail API v1")
    g.add_argument("--port", type=int, required=True)
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--user", action="append", metavar="EMAIL", help="seed this user (repeatable)")
    g.add_argument("--messages", type=int, default=0, help="messages to generate per user")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--mailgen",
        choices=["sim", "inboxlink"],
        default="sim",
        help="message generator: the simulator's own, or inboxlink.testing.mailgen",
    )
    g.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    g.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET, help="empty: a public client")
    g.add_argument("--redirect-uri", action="append", help="allowed redirect URI (repeatable; default: any)")
    g.add_argument("--push-endpoint", help="URL receiving Pub/Sub push messages for every topic")
    g.add_argument("--token-ttl", type=int, default=3600, help="access token lifetime, seconds")
    g.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if args.sim == "google":
        return _google(args)
    parser.error(f"unknown simulator {args.sim}")
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
