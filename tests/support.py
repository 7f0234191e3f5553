"""Helpers shared by the sync tests: read the truth from the server (plain imaplib, nothing of
ours) and our copy from the database, in the same shape, so tests compare the two."""

from __future__ import annotations

import asyncio
import imaplib
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import select, update

from inboxlink.api.app import create_app
from inboxlink.config import Settings
from inboxlink.providers.imap.provider import ImapConfig
from inboxlink.runtime import Runtime
from inboxlink.store.db import Database
from inboxlink.store.schema import accounts, folders, messages, placements
from inboxlink.sync.scheduler import Scheduler
from inboxlink.testing.dovecot import MailUser, write_self_signed_cert

State = dict[str, dict[str, frozenset[str]]]  # folder -> {Message-ID: flags}

_MID = re.compile(rb"^message-id:\s*<?([^>\r\n]*)>?", re.I | re.M)


def make_message(
    n: int,
    *,
    subject: str | None = None,
    sender: str = "carol@customer.example",
    to: str = "me@example.com",
    body: str | None = None,
    msgid: str | None = None,
    in_reply_to: str | None = None,
) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject or f"Message number {n}"
    m["Date"] = format_datetime(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=n))
    m["Message-ID"] = msgid or make_msgid(f"t{n}", domain="customer.example")
    if in_reply_to:
        m["In-Reply-To"] = in_reply_to
        m["References"] = in_reply_to
    m.set_content(body or f"Hello, this is message {n}.\n")
    return bytes(m)


def server_state(user: MailUser) -> State:
    """What the server holds, per folder: Message-ID -> flags (without \\Recent)."""
    imap = imaplib.IMAP4(user.host, user.port)
    try:
        imap.login(user.email, user.password)
        _typ, listing = imap.list()
        state: State = {}
        for line in listing:
            assert isinstance(line, bytes)
            if b"\\Noselect" in line:
                continue
            name = (
                line.rsplit(b' "', 1)[-1].rstrip(b'"').decode()
                if line.endswith(b'"')
                else line.rsplit(b" ", 1)[-1].decode()
            )
            imap.select(f'"{name}"', readonly=True)
            _typ, data = imap.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            folder: dict[str, frozenset[str]] = {}
            for item in data:
                if not isinstance(item, tuple):
                    continue
                meta, header = item
                m = _MID.search(header)
                flags = re.search(rb"FLAGS \(([^)]*)\)", meta)
                mid = m.group(1).strip().decode() if m else "?"
                folder[mid] = frozenset(
                    f for f in (flags.group(1).decode().split() if flags else []) if f != "\\Recent"
                )
            state[name] = folder
        return state
    finally:
        imap.logout()


def local_state(db: Database, account_id: str) -> State:
    """Our copy, in the same shape (only folders that exist on the server)."""
    state: State = {}
    with db.engine.connect() as conn:
        for f in conn.execute(
            select(folders.c.id, folders.c.key).where(
                folders.c.account_id == account_id, folders.c.gone.is_(False)
            )
        ):
            state[f.key] = {}
        rows = conn.execute(
            select(folders.c.key, messages.c.message_id, placements.c.flags)
            .join(placements, placements.c.folder_id == folders.c.id)
            .join(messages, messages.c.id == placements.c.message_id)
            .where(folders.c.account_id == account_id)
        )
        for r in rows:
            state[r.key][r.message_id or "?"] = frozenset(r.flags.split())
    return state


def message_rows(db: Database, account_id: str) -> list[str]:
    """Message-IDs of the live message rows (duplicates would show twice)."""
    with db.engine.connect() as conn:
        return sorted(
            r[0] or "?"
            for r in conn.execute(
                select(messages.c.message_id).where(
                    messages.c.account_id == account_id, messages.c.deleted_at.is_(None)
                )
            )
        )


def imap_session(user: MailUser) -> imaplib.IMAP4:
    imap = imaplib.IMAP4(user.host, user.port)
    imap.login(user.email, user.password)
    return imap


@contextmanager
def serving(settings_for: Callable[[str], Settings]) -> Iterator[tuple[str, Runtime, FastAPI]]:
    """The API app as `serve` runs it (scheduler and task consumer; no IMAP watchers: those are
    `cli._with_push`'s), on a real uvicorn server in a thread. `settings_for` gets the base URL
    first (the app must know its public URL); yields (url, runtime, app)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = settings_for(url)
    rt = Runtime.open(settings)
    app = create_app(settings, background_sync=True, runtime=rt)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", loop="asyncio")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise AssertionError("the server did not start")
            time.sleep(0.02)
        yield url, rt, app
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        rt.close()


def polled(
    rt: Runtime,
    account_id: str,
    *,
    last_sync: timedelta,
    pushed: Callable[[], Collection[str]] | None,
    interval: float = 60.0,
) -> bool:
    """Whether a scheduler polling every `interval` s and told `pushed` finds the account due, its
    last sync set `last_sync` ago: asked of `Scheduler._due()` directly (that scheduler is never
    started), so no test waits for an interval to pass."""
    with rt.db.engine.begin() as conn:
        conn.execute(
            update(accounts)
            .where(accounts.c.id == account_id)
            .values(last_sync_at=datetime.now(UTC) - last_sync, next_attempt_at=None)
        )
    scheduler = Scheduler(rt.engine, interval=interval)  # its pool and thread start only when used
    scheduler.pushed = pushed
    due, _poked = scheduler._due()
    return account_id in due


def sync_idle(rt: Runtime, account_id: str) -> bool:
    """No sync of the account holds its lease (the engine writes `last_sync_at` before it lets go)."""
    with rt.db.engine.connect() as conn:
        holder = conn.execute(select(accounts.c.lease_owner).where(accounts.c.id == account_id)).scalar()
    return holder is None


def config_for(user: MailUser, **kw: object) -> ImapConfig:
    """The IMAP settings of a test mailbox on the private Dovecot (plaintext, loopback)."""
    base: dict[str, object] = dict(
        email=user.email, imap_host=user.host, imap_port=user.port, username=user.email, security="none"
    )
    base.update(kw)
    return ImapConfig(**base)  # type: ignore[arg-type]


def pair(rt: Runtime, user: MailUser, password: str | None = None) -> str:
    return rt.accounts.pair_imap(config_for(user), password or user.password).id


def offer_only(monkeypatch: pytest.MonkeyPatch, extensions: str) -> None:
    """Make the IMAP provider see the server as offering QRESYNC ("qresync": as it is), CONDSTORE
    only ("condstore-only"), or neither ("plain": the UID and flags diff)."""
    from inboxlink.providers.imap import provider as imap_provider

    if extensions == "qresync":
        return
    hidden = {"QRESYNC"} if extensions == "condstore-only" else {"QRESYNC", "CONDSTORE"}
    real_connect = imap_provider.ImapProvider._connect

    def connect_hiding(self: imap_provider.ImapProvider) -> object:
        client = real_connect(self)
        self._caps = self._caps - hidden
        return client

    monkeypatch.setattr(imap_provider.ImapProvider, "_connect", connect_hiding)


def backend_runtime(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Runtime]:
    """The body of an `rt` fixture for a test parametrized with `backend` (see `database_url`)."""
    runtime = Runtime.open(
        Settings(home=tmp_path / "home", allow_private_hosts=True, database_url=database_url(request))
    )
    yield runtime
    runtime.close()


class FakeTransport(asyncio.Transport):
    """Under a `_Wire` driven by hand: what it writes is kept (`take()`), an abort only noted."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = bytearray()
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data

    def abort(self) -> None:
        self.aborted = True

    def take(self) -> bytes:
        data, self.sent = bytes(self.sent), bytearray()
        return data


def tls_server_context(tmp: Path) -> tuple[ssl.SSLContext, Path]:
    """A TLS server context for 127.0.0.1 with a self-signed certificate kept in `tmp` (made on the
    first call), and that certificate's path, for the client to trust."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    if not cert.exists():
        write_self_signed_cert(cert, key, "127.0.0.1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


def database_url(request: pytest.FixtureRequest) -> str | None:
    """For a test parametrized with `backend`: PostgreSQL's URL (the session server) or None
    (SQLite)."""
    if request.node.callspec.params["backend"] != "postgres":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url
