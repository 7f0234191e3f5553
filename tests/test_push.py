"""Push (sync/push.py) against the real Dovecot: the watcher and the scheduler run as in `serve`,
with a poll interval of ~30 years, so whatever reaches the store after the first sync came by push.

Behaviour only: every wait has a generous deadline and nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from inboxlink.config import Settings
from inboxlink.providers.imap.provider import ImapConfig
from inboxlink.runtime import Runtime
from inboxlink.store.schema import accounts
from inboxlink.sync.push import _BIO_FEED, PushWatcher, WatchInfo, _Wire, shard_of
from inboxlink.sync.scheduler import Scheduler
from inboxlink.testing.dovecot import Dovecot, MailUser, write_self_signed_cert
from inboxlink.testing.mailgen import generate
from tests.support import (
    FakeTransport,
    imap_session,
    local_state,
    make_message,
    message_rows,
    server_state,
    tls_server_context,
)

NEVER = 1e9  # seconds: the poll interval, so polling never explains what the tests see
DEADLINE = 30.0


def wait_until(pred: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@dataclass
class Served:
    rt: Runtime
    scheduler: Scheduler
    watcher: PushWatcher

    def pair(self, user: MailUser, *, security: str = "none", port: int | None = None) -> str:
        config = ImapConfig(
            email=user.email,
            imap_host=user.host,
            imap_port=port or (user.imaps_port if security == "tls" else user.port),
            username=user.email,
            security=security,
        )
        account: str = self.rt.accounts.pair_imap(config, user.password).id
        self.watcher.rescan_now()
        return account

    def status(self, account: str) -> str:
        return str(self.rt.accounts.get(account).status)

    def watch(self, account: str) -> WatchInfo | None:
        return self.watcher.snapshot().get(account)

    def wait_watching(self, account: str, connects: int = 1) -> WatchInfo:
        def ready() -> WatchInfo | None:
            info = self.watch(account)
            ok = info is not None and info.state == "idle" and info.connects >= connects
            return info if ok else None

        info: WatchInfo = wait_until(ready, f"account {account} watched (connection {connects})")
        return info

    def wait_synced(self, account: str, message_ids: list[str]) -> None:
        wait_until(
            lambda: set(message_ids) <= set(message_rows(self.rt.db, account)),
            f"{message_ids} stored",
        )

    def wait_quiet(self, account: str) -> None:
        """Until no sync runs and none is coming (the first sync's own indexing makes Dovecot
        report one change, hence one more run)."""

        def quiet() -> bool:
            with self.rt.db.engine.connect() as conn:
                lease = conn.execute(select(accounts.c.lease_owner).where(accounts.c.id == account)).scalar()
            info = self.watch(account)
            return lease is None and self.status(account) == "connected" and info is not None

        for _ in range(3):  # three quiet looks in a row, a debounce and a scheduler tick apart
            wait_until(quiet, "no sync running")
            time.sleep(0.3)

    def wait_rescans(self, n: int) -> None:
        target = self.watcher.rescans + n
        for _ in range(n):
            self.watcher.rescan_now()
            time.sleep(0.05)
        wait_until(lambda: self.watcher.rescans >= target, f"{n} rescans")


@pytest.fixture
def serve(tmp_path: Path, dovecot: Dovecot) -> Iterator[Callable[..., Served]]:
    """Start the scheduler and the watcher as `serve` does; keyword arguments go to PushWatcher."""
    started: list[Served] = []

    def start(connect_timeout: float = 20.0, **watcher_options: Any) -> Served:
        settings = Settings(
            home=tmp_path / f"home{len(started)}",
            allow_private_hosts=True,
            sync_interval_seconds=NEVER,
            tls_ca_file=str(dovecot.ca_cert_path),
            backoff_max_seconds=2.0,
            connect_timeout_seconds=connect_timeout,
        )
        rt = Runtime.open(settings)
        scheduler = Scheduler(rt.engine, interval=settings.sync_interval_seconds, tick=0.2)
        options: dict[str, Any] = {"rescan": 0.2, "backoff_base": 0.1} | watcher_options
        watcher = PushWatcher(rt.db, rt.box, settings, scheduler.trigger, **options)
        scheduler.pushed = watcher.live
        scheduler.start()
        watcher.start()
        served = Served(rt, scheduler, watcher)
        started.append(served)
        return served

    yield start
    for s in started:
        s.watcher.stop()
        s.scheduler.stop()
        s.rt.close()


def mid(raw: bytes) -> str:
    found = re.search(rb"^Message-ID: <([^>]+)>", raw, re.M | re.I)
    assert found is not None
    return found.group(1).decode()


@pytest.mark.parametrize(
    ("mode", "security"),
    [("notify", "none"), ("idle", "none"), ("notify", "tls"), ("notify", "starttls"), ("idle", "tls")],
)
def test_new_mail_arrives_by_push(
    serve: Callable[..., Served], dovecot: Dovecot, mail_user: MailUser, mode: str, security: str
) -> None:
    s = serve(use_notify=mode == "notify")
    first = make_message(1)
    dovecot.write_messages(mail_user.email, "INBOX", [first])
    account = s.pair(mail_user, security=security)
    s.wait_synced(account, [mid(first)])
    info = s.wait_watching(account)
    assert info.mode == mode
    # over TLS (1.3, as Dovecot and OpenSSL 3 agree), the session is handed to tls13.RecordLayer
    assert info.tls == ("" if security == "none" else "records")
    for n in (2, 3):  # twice: the watch keeps going after the first change
        raw = make_message(n)
        dovecot.deliver_lmtp(mail_user.email, raw)
        s.wait_synced(account, [mid(raw)])
    wait_until(lambda: s.status(account) == "connected", "the run finished")


@pytest.mark.parametrize("mode", ["notify", "idle"])
def test_sent_changes_arrive_by_push(
    serve: Callable[..., Served], dovecot: Dovecot, mail_user: MailUser, mode: str
) -> None:
    # Without NOTIFY, Sent is looked at with STATUS every `status_interval` seconds.
    s = serve(use_notify=mode == "notify", status_interval=0.5)
    account = s.pair(mail_user)
    wait_until(lambda: s.status(account) == "connected", "first sync")
    s.wait_watching(account)
    sent = make_message(10, sender=mail_user.email, to="carol@customer.example")
    imap = imap_session(mail_user)  # a mail client saving its copy of a sent message
    try:
        imap.append("Sent", "(\\Seen)", imaplib.Time2Internaldate(time.time()), sent)
        wait_until(lambda: mid(sent) in local_state(s.rt.db, account).get("Sent", {}), "sent copy stored")
        imap.select("Sent")
        imap.store("1", "+FLAGS", "(\\Flagged)")
        wait_until(
            lambda: (
                local_state(s.rt.db, account).get("Sent", {}).get(mid(sent))
                == frozenset({"\\Seen", "\\Flagged"})
            ),
            "flag change in Sent stored",
        )
        imap.store("1", "+FLAGS", "(\\Deleted)")
        imap.expunge()
    finally:
        imap.logout()
    wait_until(lambda: local_state(s.rt.db, account) == server_state(mail_user), "expunge in Sent seen")


def _failed_logins(dovecot: Dovecot, user: MailUser) -> int:
    log = dovecot.log_path.read_text(errors="replace")
    return sum(1 for line in log.splitlines() if "auth failed" in line and f"user=<{user.email}>" in line)


def test_rejected_credentials_stop_the_watch_until_repaired(
    serve: Callable[..., Served], dovecot: Dovecot, mail_user: MailUser
) -> None:
    s = serve()
    account = s.pair(mail_user)
    s.wait_watching(account)
    s.wait_quiet(account)  # the kick below must hit the watch, not an engine run
    assert _failed_logins(dovecot, mail_user) == 0
    dovecot.set_password(mail_user.email, "a-new-password")
    dovecot.doveadm("kick", mail_user.email)  # the watch must log in again, and is refused
    wait_until(lambda: s.status(account) == "auth_error", "auth_error through the engine")
    history = s.rt.accounts.transitions(account)
    assert history[-1].to_status == "auth_error"
    # Stopped for good: the next looks at the accounts table do not start it again, and nobody
    # logs in with the rejected password again (one refusal for the watch, one for the engine).
    s.wait_rescans(5)
    assert s.watch(account) is None
    assert account not in s.watcher.live()
    assert _failed_logins(dovecot, mail_user) == 2

    # Re-pairing with the new password starts a fresh watch, and push works again.
    config = ImapConfig.from_dict(s.rt.accounts.get(account).config)
    s.rt.accounts.pair_imap(config, "a-new-password", account_id=account)
    s.watcher.rescan_now()
    s.wait_watching(account)
    raw = make_message(20)
    dovecot.deliver_lmtp(mail_user.email, raw)
    s.wait_synced(account, [mid(raw)])
    wait_until(lambda: s.status(account) == "connected", "connected again")
    assert _failed_logins(dovecot, mail_user) == 2


class Relay:
    """A TCP relay to Dovecot that can drop every connection (RST) or go silent on the ones it holds
    (a network that vanished without a FIN: only timeouts can tell)."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.silenced: set[int] = set()
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.pairs.append((client, upstream))
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if id(src) not in self.silenced:
                    dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)

    def drop_all(self) -> None:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def silence_all(self) -> None:
        with self.lock:
            for a, b in self.pairs:
                self.silenced.update((id(a), id(b)))

    def close(self) -> None:
        self.server.close()
        self.drop_all()


@pytest.mark.parametrize("failure", ["reset", "silence", "server-kick"])
def test_a_dropped_connection_reconnects(
    serve: Callable[..., Served], dovecot: Dovecot, mail_user: MailUser, failure: str
) -> None:
    # A short IDLE refresh and timeout, so that a silent network is noticed in seconds. No sync on
    # connect: the mail below can only arrive through the new connection's push (and no sync runs
    # while the relay breaks connections).
    s = serve(connect_timeout=2.0, idle_refresh=1.0, sync_on_connect=False)
    relay = Relay(mail_user.port)
    try:
        account = s.pair(mail_user, port=relay.port)
        s.wait_watching(account)
        s.wait_quiet(account)  # breaking a running sync is another test's business
        if failure == "reset":
            relay.drop_all()
        elif failure == "silence":
            relay.silence_all()
        else:
            dovecot.doveadm("kick", mail_user.email)
        s.wait_watching(account, connects=2)
        raw = make_message(30)
        dovecot.deliver_lmtp(mail_user.email, raw)
        s.wait_synced(account, [mid(raw)])
        s.wait_quiet(account)
    finally:
        relay.close()


def _sessions(dovecot: Dovecot, user: MailUser) -> int:
    out = dovecot.doveadm("who", "-1", user.email, check=False)
    return sum(1 for line in out.splitlines() if line.startswith(user.email))


def test_unpair_stops_watching(serve: Callable[..., Served], dovecot: Dovecot, mail_user: MailUser) -> None:
    s = serve()
    account = s.pair(mail_user)
    s.wait_watching(account)
    wait_until(lambda: s.status(account) == "connected", "first sync")
    assert _sessions(dovecot, mail_user) == 1
    s.rt.accounts.unpair(account)
    s.watcher.rescan_now()
    wait_until(lambda: s.watch(account) is None, "watch stopped")
    wait_until(lambda: _sessions(dovecot, mail_user) == 0, "IMAP session closed")
    s.wait_rescans(3)
    assert s.watch(account) is None and _sessions(dovecot, mail_user) == 0


def test_a_change_during_a_sync_gets_a_follow_up_run(
    serve: Callable[..., Served], dovecot: Dovecot, mail_user: MailUser
) -> None:
    """Mail delivered after a running sync listed INBOX is not in that run; the push that
    reports it arrives mid-run and must turn into one more run, not be lost."""
    corpus = list(generate(3000, seed=3))
    dovecot.write_messages(mail_user.email, "INBOX", corpus)
    s = serve()
    account = s.pair(mail_user)
    s.wait_watching(account)
    wait_until(lambda: len(message_rows(s.rt.db, account)) > 0, "the first sync has begun storing")
    raw = make_message(40)
    dovecot.deliver_lmtp(mail_user.email, raw)
    wait_until(lambda: mid(raw) in message_rows(s.rt.db, account), "mail delivered mid-sync stored", 120)


def test_watch_runs_as_its_own_process(tmp_path: Path, dovecot: Dovecot, mail_user: MailUser) -> None:
    """`inboxlink watch`: the watcher and a scheduler that syncs only what push reports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXLINK_")}
    env.update(INBOXLINK_HOME=str(tmp_path / "home"), INBOXLINK_ALLOW_PRIVATE_HOSTS="1")
    cli = [sys.executable, "-m", "inboxlink.cli"]
    args = ["pair", "imap", "--email", mail_user.email, "--imap-host", mail_user.host, "--imap-port"]
    args += [str(mail_user.port), "--username", mail_user.email, "--security", "none", "--password-stdin"]
    paired = subprocess.run(
        [*cli, *args, "--json"], input=mail_user.password + "\n", capture_output=True, text=True, env=env
    )
    assert paired.returncode == 0, paired.stderr
    account = json.loads(paired.stdout)["id"]
    log = (tmp_path / "watch.log").open("wb")
    proc = subprocess.Popen([*cli, "watch"], env=env, stdout=log, stderr=log)
    rt = Runtime.open(Settings(home=tmp_path / "home", allow_private_hosts=True))
    try:
        # the watch's first IDLE triggers the first sync: nothing here polls
        wait_until(lambda: rt.accounts.get(account).status == "connected", "first sync by the watch process")
        raw = make_message(50)
        dovecot.deliver_lmtp(mail_user.email, raw)
        wait_until(
            lambda: mid(raw) in message_rows(rt.db, account), "pushed mail stored by the watch process"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        log.close()
        rt.close()
    assert code == 0, (tmp_path / "watch.log").read_text()


def test_an_account_whose_server_has_no_idle_is_not_watched(
    serve: Callable[..., Served], dovecot: Dovecot, mail_user: MailUser
) -> None:
    s = serve()
    account = s.pair(mail_user)
    s.wait_watching(account)
    s.wait_quiet(account)  # a running sync would record the real server's IDLE again
    # What pairing and every sync record for a server that does not advertise IDLE (the session's
    # Dovecot cannot stop offering it for one test): the watch goes, the account is polled instead.
    with s.rt.db.engine.begin() as conn:
        caps = dict(
            conn.execute(select(accounts.c.capabilities).where(accounts.c.id == account)).scalar_one()
        )
        conn.execute(
            update(accounts).where(accounts.c.id == account).values(capabilities=caps | {"idle": False})
        )
    s.watcher.rescan_now()
    wait_until(lambda: s.watch(account) is None, "watch stopped")
    wait_until(lambda: _sessions(dovecot, mail_user) == 0, "IMAP session closed")
    s.wait_rescans(3)
    assert s.watch(account) is None and account not in s.watcher.live()


# -- the wire's TLS, in process: an SSLObject server over memory BIOs, no Dovecot -------------------
class _WatchedBIO:
    """Stands in for the wire's incoming MemoryBIO: what was pending in it after each write."""

    def __init__(self, bio: ssl.MemoryBIO) -> None:
        self.bio = bio
        self.most_pending = 0
        self.writes = 0

    def write(self, data: bytes | memoryview) -> int:
        n = self.bio.write(data)
        self.writes += 1
        self.most_pending = max(self.most_pending, self.bio.pending)
        return n


class _Pair:
    """A `_Wire` starting TLS against an in-memory server (`s_in`/`s_out` are the server's BIOs)."""

    def __init__(self, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        self.wire = _Wire(loop, memoryview(bytearray(64 << 10)))
        self.transport = FakeTransport()
        self.wire.connection_made(self.transport)
        self.s_in, self.s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.server = server_context.wrap_bio(self.s_in, self.s_out, server_side=True)
        self.handshake = asyncio.ensure_future(
            self.wire.start_tls(client_context, "127.0.0.1", loop.time() + 10)
        )


def test_tls_bytes_reach_openssl_in_small_pieces(tmp_path: Path) -> None:
    """A MemoryBIO's buffer never shrinks: the wire feeds it _BIO_FEED bytes at a time and lets
    OpenSSL drain it in between, so neither the certificate flight nor a 40 KB burst stays pinned
    in it (bench/tls_memory.py). The handshake and every byte of the burst still come through."""
    server_context, cert = tls_server_context(tmp_path)
    burst = b"".join(b"* %d EXISTS\r\n" % i for i in range(3000))

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pair = _Pair(server_context, ssl.create_default_context(cafile=str(cert)))
        wire, transport, s_in, s_out, server, handshake = (
            pair.wire, pair.transport, pair.s_in, pair.s_out, pair.server, pair.handshake
        )  # fmt: skip
        await asyncio.sleep(0)  # the ClientHello is out
        assert wire._in is not None
        watched = _WatchedBIO(wire._in)
        wire._in = watched  # type: ignore[assignment]
        for _ in range(10):
            s_in.write(transport.take())
            with contextlib.suppress(ssl.SSLWantReadError):
                server.do_handshake()
            flight = s_out.read()
            if flight:
                wire._received(flight)  # a whole flight in one read, as a socket may deliver it
            await asyncio.sleep(0)
            if handshake.done():
                break
        await handshake
        s_in.write(transport.take())  # the client's Finished
        server.do_handshake()
        server.write(burst)
        wire._received(s_out.read())  # session tickets and 40 KB of lines in one read
        got = [await wire.readline(loop.time() + 5) for _ in range(3000)]
        assert b"".join(got) == burst
        assert watched.writes > len(burst) // _BIO_FEED
        assert watched.most_pending <= _BIO_FEED

    asyncio.run(scenario())


def test_a_refused_certificate_fails_the_handshake(tmp_path: Path) -> None:
    server_context, _ = tls_server_context(tmp_path)
    other = tmp_path / "other.pem"
    write_self_signed_cert(other, tmp_path / "other-key.pem", "127.0.0.1")

    async def scenario() -> None:
        pair = _Pair(server_context, ssl.create_default_context(cafile=str(other)))  # trusts another
        await asyncio.sleep(0)
        pair.s_in.write(pair.transport.take())
        with contextlib.suppress(ssl.SSLWantReadError):
            pair.server.do_handshake()
        pair.wire._received(pair.s_out.read())
        with pytest.raises(ssl.SSLCertVerificationError):
            await pair.handshake

    asyncio.run(scenario())


def test_watch_processes_share_the_accounts_by_shard(tmp_path: Path, dovecot: Dovecot) -> None:
    """`inboxlink watch --shard K/N`: every account that may be watched is held by exactly one of
    the N watchers, the same one in every process (a stable hash of its id)."""
    rt = Runtime.open(Settings(home=tmp_path / "home", allow_private_hosts=True))
    try:
        ids = set()
        for n in range(12):
            user = dovecot.add_user(f"shard{n}@inboxlink.test", f"password-{n}")
            config = ImapConfig(
                email=user.email,
                imap_host=user.host,
                imap_port=user.port,
                username=user.email,
                security="none",
            )
            ids.add(rt.accounts.pair_imap(config, user.password).id)
        held = [
            {
                row[0]
                for row in PushWatcher(
                    rt.db, rt.box, rt.settings, lambda _a: None, shard=(k, 3)
                )._candidates()
            }
            for k in range(3)
        ]
        assert set().union(*held) == ids and sum(len(h) for h in held) == len(ids)
        # every shard gets accounts (fixed ids: random ones would leave one empty now and then)
        assert {shard_of(f"account-{n}", 3) for n in range(12)} == {0, 1, 2}
        assert held[1] == {a for a in ids if shard_of(a, 3) == 1}
        with pytest.raises(ValueError, match="shard 3/3"):
            PushWatcher(rt.db, rt.box, rt.settings, lambda _a: None, shard=(3, 3))
    finally:
        rt.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXLINK_")}
    env.update(INBOXLINK_HOME=str(tmp_path / "home"))
    bad = subprocess.run(
        [sys.executable, "-m", "inboxlink.cli", "watch", "--shard", "2/2"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode != 0 and "--shard wants K/N" in bad.stderr
