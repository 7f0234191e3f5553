"""The command line: decode arguments, call the services, print. Nothing else lives here.

The commands and their JSON outputs are a stable contract (acceptance checks use them):
`serve`, `watch`, `pair imap`, `sync ACCOUNT --once`, `accounts`, `account ACCOUNT`, `messages ACCOUNT`,
`unpair ACCOUNT`, and from `cli_crm`: `records add`, `timeline TYPE ID`, `send ACCOUNT`.
Errors are one line on stderr ("error: <what went wrong>") and a non-zero exit.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from inboxlink.errors import InboxlinkError, ValidationError
from inboxlink.runtime import Runtime, configure_logging

app = typer.Typer(
    help="inboxlink: your mailboxes, calendars and contacts in your CRM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
pair_app = typer.Typer(help="Pair a mailbox.", no_args_is_help=True)
app.add_typer(pair_app, name="pair")

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

EXIT_ERROR = 1
EXIT_NOT_SYNCED = 2


def _default(o: Any) -> Any:
    if isinstance(o, datetime):
        return o.isoformat()
    raise TypeError(type(o).__name__)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=_default, ensure_ascii=False) + "\n")
    sys.stdout.flush()


@contextmanager
def _runtime() -> Iterator[Runtime]:
    try:
        rt = Runtime.open()
    except InboxlinkError as exc:
        _fail(exc)
    try:
        yield rt
    except InboxlinkError as exc:
        _fail(exc)
    finally:
        rt.close()


def _fail(exc: InboxlinkError) -> None:
    err.print(f"error: {exc.message}", markup=False, soft_wrap=True)
    raise typer.Exit(EXIT_ERROR)


# -- serve ---------------------------------------------------------------------------------------
@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8025,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="run against a simulated Google with a demo mailbox (no Google account needed), "
            "in a throwaway data directory, and print the URL that starts pairing it",
        ),
    ] = False,
) -> None:
    """Run the API and keep every paired account in sync (embedded mode: one process)."""
    import uvicorn

    from inboxlink.api.app import create_app
    from inboxlink.config import get_settings

    settings = get_settings()
    configure_logging(settings.log_level)
    if demo:
        settings = _demo_settings(settings, host, port)
    try:
        application = create_app(settings, background_sync=True)
    except InboxlinkError as exc:
        _fail(exc)
    if settings.push_enabled:
        _with_push(application)
    uvicorn.run(application, host=host, port=port, log_config=None, access_log=False)


def _with_push(application: Any) -> None:
    """Run the IMAP IDLE watchers inside serve (DESIGN §1), beside the scheduler the API's lifespan
    starts. Wrapped around that lifespan, so the API module needs to know nothing of push."""
    from contextlib import asynccontextmanager

    from inboxlink.sync.push import PushWatcher
    from inboxlink.sync.scheduler import any_of

    inner = application.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with inner(app) as state:
            rt, scheduler = app.state.runtime, app.state.scheduler
            watcher = PushWatcher(rt.db, rt.box, rt.settings, scheduler.trigger)
            scheduler.pushed = any_of(scheduler.pushed, watcher.live)  # and Gmail's (create_app)
            watcher.start()
            try:
                yield state
            finally:
                watcher.stop()

    application.router.lifespan_context = lifespan


# -- watch ---------------------------------------------------------------------------------------
@app.command()
def watch(
    shard: Annotated[
        str,
        typer.Option(
            "--shard",
            help="K/N: hold only the accounts of shard K of N (0 <= K < N); run N watch processes, "
            "one per shard, to spread the connections",
        ),
    ] = "0/1",
) -> None:
    """Hold IMAP IDLE connections and sync what they report changed, as a process of its own
    (set INBOXLINK_PUSH_ENABLED=false for serve then). Stops on SIGINT / SIGTERM."""
    from inboxlink.config import get_settings
    from inboxlink.sync.push import PushWatcher
    from inboxlink.sync.scheduler import Scheduler

    index, sep, count = shard.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and int(index) < int(count)):
        _fail(ValidationError(f"--shard wants K/N with 0 <= K < N, not {shard!r}"))
    part = (int(index), int(count))
    configure_logging(get_settings().log_level)
    with _runtime() as rt:
        scheduler = Scheduler(rt.engine, interval=rt.settings.sync_interval_seconds)
        scheduler.poll = False  # serve polls; this process syncs what push reports
        watcher = PushWatcher(rt.db, rt.box, rt.settings, scheduler.trigger, shard=part)
        scheduler.start()
        try:
            watcher.run_until_signalled()
        finally:
            scheduler.stop()


DEMO_USER = "dana@inboxlink.test"


def _demo_settings(settings: Any, host: str, port: int) -> Any:
    """`serve --demo`: the Google simulator in this process (a demo mailbox, an OAuth client
    registered in it), a throwaway data directory, and the Google settings pointed at both; prints
    where to start. Stopped and removed when the process exits."""
    import atexit
    import secrets
    import shutil
    import signal
    import tempfile
    from pathlib import Path

    from pydantic import SecretStr

    from inboxlink_sim.google import GoogleSim

    client_secret = secrets.token_urlsafe(24)
    sim = GoogleSim(client_id="inboxlink-demo.apps.googleusercontent.com", client_secret=client_secret)
    sim.start()
    atexit.register(sim.stop)
    sim.add_user(DEMO_USER, "Dana Demo", messages=40, seed=7)
    sim.add_user("sam@inboxlink.test", "Sam Sample", messages=5, seed=8)
    home = Path(tempfile.mkdtemp(prefix="inboxlink-demo-"))
    atexit.register(shutil.rmtree, home, True)
    # uvicorn re-raises SIGTERM after its graceful shutdown; the default action would kill the
    # process before the atexit cleanups run, so the demo turns it into a normal exit.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    browser_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    public_url = f"http://{browser_host}:{port}"
    demo = settings.model_copy(
        update={
            "home": home,
            "database_url": None,
            "secret_key": None,
            "api_token": None,  # the browser opens /oauth/google/start itself
            "public_url": public_url,
            "google_client_id": sim.client_id,
            "google_client_secret": SecretStr(client_secret),
            "google_discovery_url": sim.base_url + "/.well-known/openid-configuration",
            "google_api_base": sim.base_url,
        }
    )
    out.print(
        f"inboxlink demo: a simulated Google at {sim.base_url} with the mailbox {DEMO_USER} "
        f"(no Google account needed); data in {home} (removed on exit)\n"
        f"  1. open {public_url}/oauth/google/start?features=read_mail,send_mail\n"
        f"  2. on the simulated consent page, keep Dana Demo and press Allow\n"
        f"  3. the account is paired and syncs; look at it with\n"
        f"     INBOXLINK_HOME={home} inboxlink accounts\n"
        f"     or {public_url}/api/v1/accounts (and /api/v1/accounts/ID/permissions)",
        markup=False,
        soft_wrap=True,
        highlight=False,
    )
    sys.stdout.flush()
    return demo


# -- pair ----------------------------------------------------------------------------------------
@pair_app.command("imap")
def pair_imap(
    email: Annotated[str, typer.Option(help="the mailbox's address")],
    imap_host: Annotated[str, typer.Option(help="IMAP server host")],
    username: Annotated[str, typer.Option(help="login name (often the address)")],
    imap_port: Annotated[int, typer.Option(help="IMAP port")] = 993,
    smtp_host: Annotated[str | None, typer.Option(help="SMTP server host")] = None,
    smtp_port: Annotated[int, typer.Option(help="SMTP port")] = 587,
    security: Annotated[str, typer.Option(help="tls | starttls | none")] = "tls",
    smtp_security: Annotated[
        str | None, typer.Option(help="tls | starttls | none (default: --security)")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from stdin")
    ] = False,
    account: Annotated[str | None, typer.Option(help="re-pair this existing account")] = None,
    headers_only: Annotated[bool, typer.Option("--headers-only", help="sync headers, not bodies")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Pair an IMAP/SMTP mailbox (or re-pair it: same mailbox, new password, nothing re-downloaded)."""
    from inboxlink.providers.imap.provider import ImapConfig

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True)
    with _runtime() as rt:
        config = ImapConfig(
            email=email,
            imap_host=imap_host,
            imap_port=imap_port,
            username=username,
            security=security,
            smtp_host=smtp_host,
            smtp_port=smtp_port if smtp_host else None,
            smtp_security=smtp_security,
        )
        view = rt.accounts.pair_imap(config, password, account_id=account, headers_only=headers_only)
    if as_json:
        _print_json(
            {
                "id": view.id,
                "status": view.status,
                "email": view.email,
                "smtp_error": (view.capabilities or {}).get("smtp_error"),
            }
        )
    else:
        out.print(view.id)
        smtp_error = (view.capabilities or {}).get("smtp_error")
        if smtp_error:
            err.print(f"warning: sending will not work: {smtp_error}", markup=False)


# -- sync ----------------------------------------------------------------------------------------
@app.command()
def sync(
    account: Annotated[str, typer.Argument(help="account id")],
    once: Annotated[bool, typer.Option("--once", help="sync to completion, then exit")] = False,
    headers_only: Annotated[bool, typer.Option("--headers-only", help="fetch headers, not bodies")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Sync one account now."""
    if not once:
        err.print("error: only --once is supported here; `inboxlink serve` keeps accounts in sync")
        raise typer.Exit(EXIT_ERROR)
    with _runtime() as rt:
        rt.accounts.get(account)
        progress_cb, finish = _progress(enabled=not as_json and sys.stdout.isatty())
        try:
            report = rt.engine.sync(
                account,
                headers_only=True if headers_only else None,
                progress=progress_cb,
                attempts=rt.settings.backoff_attempts_before_error,
            )
        finally:
            finish()
    if as_json:
        _print_json(report.summary())
    else:
        out.print(
            f"{report.account}: {report.status} ({report.reason}); {report.messages} messages, "
            f"{report.fetched} fetched ({report.fetched_bytes / 1e6:.1f} MB) in {report.seconds:.2f}s",
            markup=False,
        )
    if report.status != "connected":
        raise typer.Exit(EXIT_NOT_SYNCED)


def _progress(enabled: bool) -> tuple[Callable[[str, int, int], None] | None, Callable[[], None]]:
    if not enabled:
        return None, lambda: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bar.start()
    tasks: dict[str, Any] = {}

    def update(stream: str, done: int, total: int) -> None:
        if stream not in tasks:
            tasks[stream] = bar.add_task(stream, total=total)
        bar.update(tasks[stream], completed=done, total=total)

    return update, bar.stop


# -- accounts ------------------------------------------------------------------------------------
@app.command("accounts")
def list_accounts(as_json: Annotated[bool, typer.Option("--json", help="print a JSON list")] = False) -> None:
    """Every account with its status, why, last sync and message count."""
    with _runtime() as rt:
        views = rt.accounts.all()
    if as_json:
        _print_json([_account_json(v) for v in views])
        return
    table = Table("id", "email", "provider", "status", "why", "last sync", "messages")
    for v in views:
        table.add_row(
            v.id,
            v.email,
            v.provider,
            v.status,
            v.status_reason or "",
            v.last_sync_at.isoformat(timespec="seconds") if v.last_sync_at else "never",
            str(v.message_count),
        )
    out.print(table)


def _account_json(v: Any) -> dict[str, Any]:
    return {
        "id": v.id,
        "email": v.email,
        "provider": v.provider,
        "status": v.status,
        "status_reason": v.status_reason,
        "last_sync_at": v.last_sync_at,
        "messages": v.message_count,
        "placements": v.placement_count,
        "last_error": v.last_error,
    }


@app.command("account")
def show_account(
    account: Annotated[str, typer.Argument(help="account id")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One account in detail, with its status history."""
    with _runtime() as rt:
        view = rt.accounts.get(account)
        history = rt.accounts.transitions(account)
    data = view.to_dict() | {
        "transitions": [
            {"from": t.from_status, "to": t.to_status, "reason": t.reason, "at": t.at} for t in history
        ]
    }
    if as_json:
        _print_json(data)
        return
    for key in ("id", "email", "provider", "status", "status_reason", "last_sync_at", "message_count"):
        out.print(f"{key}: {data[key]}", markup=False)
    for t in history:
        out.print(
            f"  {t.at:%Y-%m-%d %H:%M:%S} {t.from_status or '-'} -> {t.to_status}: {t.reason}", markup=False
        )


@app.command("messages")
def list_messages(
    account: Annotated[str, typer.Argument(help="account id")],
    folder: Annotated[str | None, typer.Option(help="only this folder (its key, as IMAP names it)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON list")] = False,
) -> None:
    """The account's messages, oldest first, with their folders and flags."""
    rows: list[dict[str, Any]] = []
    with _runtime() as rt:
        after: int | None = 0
        while after is not None:
            page, after = rt.accounts.messages(account, folder=folder, after=after, limit=1000)
            rows.extend(page)
    if as_json:
        _print_json(rows)
        return
    table = Table("id", "date", "from", "subject", "folders")
    for m in rows:
        sender = m["from"]
        table.add_row(
            str(m["id"]),
            (m["date"] or "")[:16],
            sender["email"] if sender else "",
            m["subject"] or "",
            " ".join(p["folder"] for p in m["placements"]),
        )
    out.print(table)


@app.command()
def unpair(
    account: Annotated[str, typer.Argument(help="account id")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Stop syncing an account and forget its credentials; the mail already synced stays."""
    with _runtime() as rt:
        view = rt.accounts.unpair(account)
    if as_json:
        _print_json(_account_json(view))
    else:
        out.print(f"{view.id}: {view.status}")


def main() -> None:
    from inboxlink.cli_crm import register

    register(app)
    app()


if __name__ == "__main__":
    main()
