"""Push: one lean IMAP connection per watched account turns server news into incremental syncs.

    PushWatcher: one asyncio loop (a thread of `inboxlink serve`, the main thread of `inboxlink watch`)
      every `rescan` seconds (and on `rescan_now()`): the accounts to watch are IMAP accounts that
      may sync (pending, syncing, connected, connect_error), hold credentials, and whose server
      advertised IDLE. A new one gets a watch; one that left the set (unpaired, auth_error, deleted,
      IDLE gone) loses it; one whose config or credentials changed (re-paired) gets a fresh one.

    one watch = one task, one socket, this state machine:

      CONNECT ──(tls: handshake)──> GREETING ──(starttls: STARTTLS, handshake)──> LOGIN
         ^                                                                         │
         │         NO / BAD, not [UNAVAILABLE] ──> REJECTED: trigger one sync, so the engine's
         │                                         normal path records auth_error; the watch stops
         │                                         and is never retried with the same credentials
         │                                                                         │ OK
         │                                                            EXAMINE INBOX
         │                 server offers NOTIFY ── yes ──> NOTIFY SET (selected (...)) (personal (...))
         │                       └──────────────── no ───> (STATUS of Sent, periodic)
         │                                                                         v
         │     first IDLE of a connection: trigger one sync (what changed while    IDLE <────────────┐
         │     nobody watched is unknown)                                            │               │
         │        * n EXISTS | EXPUNGE | FETCH, * STATUS, * VANISHED, * LIST ──> changed(): a      │
         │          debounced `trigger(account_id)`; the scheduler coalesces and follows up      │
         │        refresh due (<= 29 min, RFC 2177) or, without NOTIFY, STATUS Sent due          │
         │          ──> DONE ──> [STATUS Sent: changed() when its numbers moved] ────────────────┘
         │
         └── BACKOFF (exponential, equal jitter, capped) <── EOF, * BYE, reset, timeout, TLS error,
                                                             an unexpected NO / BAD

Why NOTIFY (RFC 5465) when offered: Dovecot 2.3 offers it, and `personal (MessageNew
MessageExpunge FlagChange MailboxName)` reports changes in *every* folder (Sent included) as
`* STATUS` lines during IDLE, on one connection. Two connections (INBOX + Sent) would cost the
server ~1.6 MB per account (~795 KB per IDLE session, measured) and the client twice; IDLE on INBOX
plus a periodic STATUS of Sent (the fallback here, for servers without NOTIFY) sees Sent only every
`status_interval` seconds. Why INBOX is also selected: Dovecot 2.3.19 stops telling a `personal`
watcher about a mailbox once that mailbox's transaction log rotates (>= 32 KB and >= 5 min old),
and its 30 s `mailbox_idle_check_interval` poll then finds the changes; a selected mailbox keeps
being watched (measured, docs/architecture.md "Push"). So INBOX rides the selected-mailbox watch
(`* n EXISTS`), the other folders `personal`, at ~50 KB more per session on the server than
NOTIFY alone (553 against 505 KB PSS, over 1,000 sessions).

Why not aioimaplib: 2.0.3 recurses per response line and hangs past ~1,000 lines, and holds ~19.5 KB
per idle connection. Why not asyncio's own TLS either: `create_connection(ssl=...)` and
`start_tls` put asyncio's SSLProtocol under the socket, which allocates a 256 KiB read buffer per
connection (CPython 3.11 `SSLProtocol.max_size`). `_Wire` is a bare `asyncio.BufferedProtocol` that does
TLS itself with an `ssl.SSLObject` over two `MemoryBIO`s: what OpenSSL needs and nothing more, and
STARTTLS is the same code path. Once a TLS 1.3 handshake is done, the session goes to
`tls13.RecordLayer` and OpenSSL's connection is freed: ~0.6 KB instead of ~21 KB per idle watch
(tls13.py says how). No task per connection besides the watch itself: timeouts are
`call_later` handles on the one future a watch may wait on.

The IMAP wire code lives here rather than behind the provider seam (`watch()` in DESIGN §3) because
only IMAP needs a held connection today; when EWS streaming arrives, the seam grows `watch()` and
this module keeps the loop, the reconcile and the debounce.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import ipaddress
import json
import logging
import re
import signal
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from inboxlink.auth.netguard import check_host
from inboxlink.auth.secrets import SecretBox, register_secret
from inboxlink.config import Settings
from inboxlink.domain import AccountStatus
from inboxlink.errors import InboxlinkError, TransientError
from inboxlink.store.db import Database
from inboxlink.store.schema import accounts, folders
from inboxlink.sync.policy import backoff_seconds
from inboxlink.sync.state import SYNCABLE, now
from inboxlink.sync.tls13 import KeyLog, RecordLayer, TLSFailure, hand_off

log = logging.getLogger(__name__)

IDLE_REFRESH_MAX = 29 * 60.0  # RFC 2177: servers may log out a client idle for 30 minutes
_BUFFER_LIMIT = 256 << 10  # a server line (or literal) longer than this is a broken server
_TLS_READ = 16 << 10  # one TLS record at most per SSLObject.read()
_SCRATCH = 64 << 10  # the loop's one socket read buffer (see _Wire)
# Bytes handed to a connection's incoming MemoryBIO at a time, OpenSSL draining it in between: the
# BIO's buffer never shrinks (see _Wire._received).
_BIO_FEED = 512
_TLS_RECORD_TYPES = frozenset({20, 21, 22, 23})  # change_cipher_spec, alert, handshake, application_data
_MAX_TLS_RECORD = (1 << 14) + 2048  # RFC 8446 §5.1/§5.2 and RFC 5246 §6.2.3: what a record may carry
_STABLE_SECONDS = 60.0  # a connection that lasted this long resets the backoff
_CHANGE_WORDS = frozenset({b"EXISTS", b"EXPUNGE", b"FETCH", b"STATUS", b"VANISHED", b"LIST"})
_LITERAL = re.compile(rb"\{(\d+)\+?\}\r?\n$")
_CODE = re.compile(rb"\[([A-Z-]+)")
# INBOX selected (EXAMINE) and watched as such, every other folder through `personal`: see the
# module docstring for why INBOX must not rely on `personal` alone.
_NOTIFY = (
    b"NOTIFY SET (selected (MessageNew MessageExpunge FlagChange))"
    b" (personal (MessageNew MessageExpunge FlagChange MailboxName))"
)

Trigger = Callable[[str], None]


class _Dropped(Exception):
    """The connection is gone or unusable: back off and reconnect."""


class _Rejected(Exception):
    """The server refused the credentials: stop, let the engine record auth_error."""


class _Unwatchable(Exception):
    """This account cannot be watched as configured (no IDLE, host refused): stop, keep polling."""


def shard_of(account_id: str, count: int) -> int:
    """Which of `count` watch processes holds an account: a stable hash of its id, the same in every
    process and every run (Python's own `hash` of a str is salted per process)."""
    return int.from_bytes(hashlib.blake2b(account_id.encode(), digest_size=8).digest(), "big") % count


# -- the wire --------------------------------------------------------------------------------------
def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Wire(asyncio.BufferedProtocol):
    """Bytes in, lines out, over a bare transport; TLS done here (see the module docstring).

    A BufferedProtocol: the transport reads into `scratch`, one buffer shared by every connection
    of the watcher's loop (single-threaded: each read is copied out before the next one). With a
    plain Protocol, asyncio reads each time with `recv(256 KiB)` and shrinks the result (not
    measured to change the RSS of an idle watch; it spares a 256 KiB allocation per read).
    """

    __slots__ = (
        "_buf",
        "_handshaking",
        "_in",
        "_keylog",
        "_loop",
        "_lost",
        "_out",
        "_raw",
        "_records",
        "_scratch",
        "_secrets",
        "_tls",
        "_transport",
        "_waiter",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, scratch: memoryview) -> None:
        self._loop = loop
        self._scratch = scratch
        self._transport: asyncio.Transport | None = None
        self._buf = b""  # bytes, not bytearray: an idle connection then holds the shared b""
        self._waiter: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None
        self._tls: ssl.SSLObject | None = None
        self._in: ssl.MemoryBIO | None = None
        self._out: ssl.MemoryBIO | None = None
        self._handshaking = False
        # TLS 1.3 hand-off (tls13.py): the key log, the secrets it gave this handshake, the bytes
        # of a record not yet whole during the handshake, and the record layer once handed off
        self._keylog: KeyLog | None = None
        self._secrets: dict[bytes, bytes] = {}
        self._raw = b""
        self._records: RecordLayer | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        self._received(bytes(self._scratch[:nbytes]))

    def _received(self, data: bytes) -> None:
        if self._records is not None:
            try:
                plain, reply = self._records.open(data)
            except TLSFailure as exc:
                self._buf += exc.plain  # what came before stays readable, as from OpenSSL
                self._fail(_Dropped(str(exc)))
            else:
                self._buf += plain
                if reply and self._transport is not None:
                    self._transport.write(reply)
        elif self._tls is not None and self._handshaking and self._keylog is not None:
            self._handshake_records(data)
        elif self._tls is not None:
            # A MemoryBIO (OpenSSL's BIO_s_mem) keeps a buffer of ~4/3 of the most bytes ever
            # pending in it, for the life of the connection: written whole, the server's
            # certificate flight (~1-4 KB) or one 16 KB read of a burst would stay pinned per
            # connection. Fed _BIO_FEED bytes at a time and drained into OpenSSL's record buffer
            # (freed once a record is consumed: SSL_MODE_RELEASE_BUFFERS, which CPython sets) in
            # between, it holds <= ~0.7 KB: measured over 1,000 idle connections, 0.4 KB less C
            # heap per connection with a self-signed EC certificate, 2.2 KB with an RSA leaf +
            # intermediate, and no burst pins 22 KB for good (bench/tls_memory.py;
            # docs/architecture.md "TLS memory").
            assert self._in is not None
            view = memoryview(data)
            for start in range(0, len(view), _BIO_FEED):
                self._in.write(view[start : start + _BIO_FEED])
                if self._handshaking:
                    self._handshake()
                else:
                    self._pump()
                if self._lost is not None:
                    break
        else:
            self._buf += data
        if len(self._buf) > _BUFFER_LIMIT:
            self._fail(_Dropped(f"the server sent more than {_BUFFER_LIMIT} bytes without a line end"))
        self._wake()

    def eof_received(self) -> bool | None:
        self._fail(_Dropped("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is None:
            self._lost = exc or _Dropped("connection closed")
        self._wake()

    # helpers
    def _fail(self, exc: BaseException) -> None:
        if self._lost is None:
            self._lost = exc
        if self._transport is not None:
            self._transport.abort()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter)

    def _pump(self) -> None:
        """Decrypt what the BIO holds into the line buffer."""
        assert self._tls is not None
        try:
            while True:
                chunk = self._tls.read(_TLS_READ)
                if not chunk:
                    raise ssl.SSLZeroReturnError
                self._buf += chunk
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self._fail(_Dropped("the server closed the TLS session"))
        except ssl.SSLError as exc:
            self._fail(exc)
        self._flush()  # TLS 1.3 key updates and the like want to answer

    def _flush(self) -> None:
        if self._out is not None and self._transport is not None:
            data = self._out.read()
            if data:
                self._transport.write(data)

    async def _wait(self, deadline: float) -> None:
        """Until data arrives, the connection goes, or `deadline` (loop time): TimeoutError then."""
        timeout = deadline - self._loop.time()
        if timeout <= 0:
            raise TimeoutError
        fut: asyncio.Future[None] = self._loop.create_future()
        self._waiter = fut
        handle = self._loop.call_later(timeout, _resolve, fut)
        try:
            await fut
        finally:
            handle.cancel()
            self._waiter = None

    def _check(self) -> None:
        if self._lost is not None:
            raise _Dropped(str(self._lost) or type(self._lost).__name__) from self._lost

    # what the session uses
    def write(self, data: bytes) -> None:
        self._check()
        assert self._transport is not None
        if self._records is not None:
            self._transport.write(self._records.seal(data))
        elif self._tls is not None:
            self._tls.write(data)
            self._flush()
        else:
            self._transport.write(data)

    async def readline(self, deadline: float) -> bytes:
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line, self._buf = self._buf[: i + 1], self._buf[i + 1 :]
                return line
            self._check()
            await self._wait(deadline)

    async def readexactly(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            self._check()
            await self._wait(deadline)
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    async def start_tls(
        self, context: ssl.SSLContext, server_hostname: str, deadline: float, keylog: KeyLog | None = None
    ) -> None:
        """The handshake; with `keylog` (the context's), a TLS 1.3 session is then handed off to a
        `RecordLayer` and OpenSSL's state freed (tls13.py)."""
        if self._buf:
            # bytes that arrived before the handshake cannot be trusted (STARTTLS injection)
            raise _Dropped("the server sent data before the TLS handshake")
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_hostname=server_hostname)
        self._keylog = keylog
        self._handshaking = True
        self._handshake()  # the ClientHello; the server's flights drive the rest (_received)
        while self._handshaking:
            if isinstance(self._lost, ssl.SSLError):
                raise self._lost  # certificate refused, protocol error: as do_handshake raised it
            self._check()
            await self._wait(deadline)

    def _handshake(self, pump: bool = True) -> None:
        """One step of the handshake with what the incoming BIO holds."""
        assert self._tls is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._fail(exc)
            return
        finally:
            if self._keylog is not None:  # what this step logged is this connection's
                self._secrets.update(self._keylog.take())
        self._handshaking = False
        self._flush()
        if pump:
            self._pump()  # application data that came with the last handshake flight

    def _handshake_records(self, data: bytes) -> None:
        """The handshake fed whole records, one at a time (in _BIO_FEED pieces), so that it ends
        where the record holding the server's Finished ends: OpenSSL has then read nothing of the
        application traffic, and the rest can go to a RecordLayer from its first record on."""
        assert self._in is not None and self._tls is not None
        raw = self._raw + data
        while self._handshaking and self._lost is None and len(raw) >= 5:
            if raw[0] not in _TLS_RECORD_TYPES or raw[1] != 3:
                # not TLS at all (a plaintext server on a TLS port): OpenSSL says so at once, where
                # waiting for a "record" of the length these bytes happen to spell would stall
                self._in.write(raw)  # (whole: the connection ends here, its BIO with it)
                self._handshake(pump=False)
                if self._handshaking and self._lost is None:
                    self._fail(_Dropped("the server does not speak TLS"))
                return
            end = 5 + int.from_bytes(raw[3:5], "big")
            if end > 5 + _MAX_TLS_RECORD:
                self._fail(_Dropped("the server sent an oversized TLS record"))
                return
            if len(raw) < end:
                break
            for start in range(0, end, _BIO_FEED):
                self._in.write(raw[start : min(start + _BIO_FEED, end)])
                self._handshake(pump=False)
                if not self._handshaking and start + _BIO_FEED < end:
                    self._fail(_Dropped("the TLS handshake ended inside a record"))
                    return
            raw = raw[end:]
        self._raw = raw if self._handshaking else b""
        if self._handshaking or self._lost is not None:
            return
        secrets, self._secrets, self._keylog = self._secrets, {}, None
        cipher = self._tls.cipher()
        self._records = hand_off(cipher[0] if cipher else "", self._tls.version(), secrets)
        if self._records is not None:
            self._tls = self._in = self._out = None  # OpenSSL's connection is freed here
        if raw:
            self._received(raw)
        elif self._tls is not None:
            self._pump()

    @property
    def tls(self) -> str:
        """Who keeps the TLS session: "" (none), "openssl", or "records" (handed off)."""
        return "records" if self._records is not None else "openssl" if self._tls is not None else ""

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()  # nothing to flush: IMAP needs no goodbye, and no lingering
            self._transport = None
        self._tls = self._in = self._out = None
        self._records = None
        self._secrets, self._raw, self._keylog = {}, b"", None  # a handshake cut short keeps nothing


# -- one watch ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Target:
    """What a connection needs, read from the database at each (re)connect."""

    host: str
    address: str
    port: int
    security: str
    username: str
    password: str


class _Watch:
    """One watched account: its task and a few counters (what `snapshot()` reports)."""

    __slots__ = (
        "account_id",
        "changes",
        "connects",
        "fingerprint",
        "logins",
        "mode",
        "pending",
        "sent_status",
        "state",
        "task",
        "tls",
    )

    def __init__(self, account_id: str, fingerprint: str) -> None:
        self.account_id = account_id
        self.fingerprint = fingerprint
        self.task: asyncio.Task[None] | None = None
        self.state = "connecting"
        self.mode = ""
        self.tls = ""  # "", or who keeps the TLS session: "openssl" | "records" (see _Wire.tls)
        self.connects = 0  # connections that reached IDLE
        self.logins = 0  # LOGIN commands sent
        self.changes = 0  # triggers fired
        self.pending: asyncio.TimerHandle | None = None  # debounce timer
        self.sent_status = 0  # digest of the last STATUS of Sent (fallback mode)


@dataclass(frozen=True)
class WatchInfo:
    """A watch as seen from outside (tests, logs): state is connecting | idle | backoff | stopped."""

    state: str
    mode: str
    tls: str
    connects: int
    logins: int
    changes: int


class PushWatcher:
    """Holds the watches; see the module docstring. `trigger(account_id)` must be thread-safe."""

    def __init__(
        self,
        db: Database,
        box: SecretBox,
        settings: Settings,
        trigger: Trigger,
        *,
        idle_refresh: float | None = None,
        rescan: float = 5.0,
        debounce: float = 0.005,
        status_interval: float = 60.0,
        use_notify: bool = True,
        sync_on_connect: bool = True,
        backoff_base: float = 1.0,
        connect_concurrency: int = 32,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.db = db
        self.box = box
        self.settings = settings
        self.trigger = trigger
        self.idle_refresh = min(idle_refresh or settings.push_idle_refresh_seconds, IDLE_REFRESH_MAX)
        self.rescan = rescan
        self.debounce = debounce
        self.status_interval = status_interval
        self.use_notify = use_notify
        self.sync_on_connect = sync_on_connect
        self.backoff_base = backoff_base
        self.timeout = settings.connect_timeout_seconds
        self.connect_concurrency = connect_concurrency
        index, count = shard
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard {index}/{count}: want 0 <= index < count")
        self.shard = shard  # (index, count): this watcher holds the accounts shard_of() puts there
        self._watches: dict[str, _Watch] = {}
        # account id -> (fingerprint, when): stopped for good with these credentials (see _apply)
        self._parked: dict[str, tuple[str, datetime]] = {}
        self._live: set[str] = set()  # accounts in IDLE now; read by the scheduler's thread
        self._live_lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self._keylog: KeyLog | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._gate: asyncio.Semaphore | None = None
        self._scratch = memoryview(bytearray(_SCRATCH))  # every read of every connection lands here
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.rescans = 0  # completed looks at the accounts table (tests wait on it)

    # -- running ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Watch until `stop()`; cancels every watch on the way out."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._gate = asyncio.Semaphore(self.connect_concurrency)
        self._ready.set()
        try:
            while not self._stopping:
                try:
                    rows = await asyncio.to_thread(self._candidates)
                    self._apply(rows)
                    self.rescans += 1
                except Exception:
                    log.exception("push: reading the accounts to watch failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.rescan)
                self._wake.clear()
        finally:
            watches = list(self._watches.values())
            self._watches.clear()
            for w in watches:
                self._cancel(w)
            await asyncio.gather(*(w.task for w in watches if w.task is not None), return_exceptions=True)
            with self._live_lock:
                self._live.clear()
            if self._keylog is not None:
                self._keylog.close()
                self._keylog, self._tls = None, None

    def start(self) -> None:
        """Run in a thread of its own (serve): an event loop for the watches only, so a burst of
        connects never delays the API."""
        self._thread = threading.Thread(target=lambda: asyncio.run(self.run()), name="push", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._request_stop)
        if self._thread is not None:
            self._thread.join(timeout)

    def run_until_signalled(self) -> None:
        """`inboxlink watch`: run in this thread until SIGINT or SIGTERM."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._request_stop)
            await self.run()

        asyncio.run(main())

    def _request_stop(self) -> None:
        self._stopping = True
        if self._wake is not None:
            self._wake.set()

    def rescan_now(self) -> None:
        """Look at the accounts table now (pairing, unpairing) instead of at the next rescan."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def live(self) -> frozenset[str]:
        """Accounts whose watch is in IDLE now: their changes arrive by push (any thread)."""
        with self._live_lock:
            return frozenset(self._live)

    def snapshot(self, timeout: float = 10.0) -> dict[str, WatchInfo]:
        """Every watch and its counters, from any thread but the watcher's own."""
        if self._loop is None:
            return {}

        async def take() -> dict[str, WatchInfo]:
            return {
                k: WatchInfo(w.state, w.mode, w.tls, w.connects, w.logins, w.changes)
                for k, w in self._watches.items()
            }

        return asyncio.run_coroutine_threadsafe(take(), self._loop).result(timeout)

    # -- which accounts ----------------------------------------------------------------------------
    def _candidates(self) -> list[tuple[str, str, str, datetime]]:
        """(id, fingerprint, status, status_at) of every account that may be watched."""
        out = []
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(
                    accounts.c.id,
                    accounts.c.provider,
                    accounts.c.status,
                    accounts.c.status_at,
                    accounts.c.config,
                    accounts.c.secret,
                    accounts.c.capabilities,
                )
            ).all()
        index, count = self.shard
        for r in rows:
            if r.provider != "imap" or r.secret is None or AccountStatus(r.status) not in SYNCABLE:
                continue
            if count > 1 and shard_of(r.id, count) != index:
                continue  # another `inboxlink watch --shard` holds it
            if not (r.capabilities or {}).get("idle"):
                continue  # this server never offered IDLE: the scheduler polls it
            digest = hashlib.blake2b(digest_size=8)
            digest.update(json.dumps(r.config, sort_keys=True).encode())
            digest.update(r.secret.encode())  # a re-pair writes a new token: a fresh watch
            out.append((r.id, digest.hexdigest(), r.status, r.status_at))
        return out

    def _apply(self, rows: list[tuple[str, str, str, datetime]]) -> None:
        wanted: dict[str, str] = {}
        for account_id, fingerprint, status, status_at in rows:
            parked = self._parked.get(account_id)
            if parked is not None:
                # Stopped after a rejected login (or an unwatchable server): only new credentials,
                # or the engine connecting since with the same ones, may start it again. One login
                # per re-pair at most, never a loop of them.
                engine_connected_since = status == AccountStatus.CONNECTED and _aware(status_at) > parked[1]
                if parked[0] == fingerprint and not engine_connected_since:
                    continue
                del self._parked[account_id]
            wanted[account_id] = fingerprint
        for account_id, w in list(self._watches.items()):
            if wanted.get(account_id) != w.fingerprint:
                del self._watches[account_id]
                self._cancel(w)
                log.info("push: stopped watching account %s", account_id)
        for account_id, fingerprint in wanted.items():
            if account_id not in self._watches:
                w = _Watch(account_id, fingerprint)
                self._watches[account_id] = w
                w.task = asyncio.get_running_loop().create_task(self._watch(w), name=f"push-{account_id}")

    def _cancel(self, w: _Watch) -> None:
        if w.pending is not None:
            w.pending.cancel()
            w.pending = None
        if w.task is not None:
            w.task.cancel()
        self._set_live(w, False)

    def _park(self, w: _Watch) -> None:
        self._parked[w.account_id] = (w.fingerprint, now())
        w.state = "stopped"
        if self._watches.get(w.account_id) is w:
            del self._watches[w.account_id]

    def _set_live(self, w: _Watch, live: bool) -> None:
        with self._live_lock:
            if live:
                self._live.add(w.account_id)
            else:
                self._live.discard(w.account_id)

    # -- change signals ------------------------------------------------------------------------------
    def _changed(self, w: _Watch) -> None:
        """Debounced: the lines of one event (EXISTS, RECENT, FETCH; a STATUS per folder) make one
        trigger. The scheduler coalesces further and runs one follow-up after a running sync."""
        if w.pending is None:
            assert self._loop is not None
            w.pending = self._loop.call_later(self.debounce, self._fire, w)

    def _fire(self, w: _Watch) -> None:
        w.pending = None
        w.changes += 1
        try:
            self.trigger(w.account_id)
        except Exception:
            log.exception("push: trigger for account %s failed", w.account_id)

    # -- the watch's life ----------------------------------------------------------------------------
    async def _watch(self, w: _Watch) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            wire: _Wire | None = None
            try:
                assert self._gate is not None
                async with self._gate:  # a thousand accounts do not all log in at the same instant
                    target = await self._target(w.account_id)
                    if target is None:
                        self._park(w)
                        return
                    wire, session = await self._open(w, target)
                    del target  # the password lives no longer than the login
                await self._idle(w, wire, session)
            except _Rejected as exc:
                log.warning("push: account %s: %s; stopped watching, syncing once", w.account_id, exc)
                self._park(w)
                self._fire(w)  # the engine's own login fails the same way: auth_error, its way
                return
            except _Unwatchable as exc:
                log.warning("push: account %s cannot be watched (%s); it keeps polling", w.account_id, exc)
                self._park(w)
                return
            except (_Dropped, OSError, TimeoutError, ssl.SSLError, TransientError) as exc:
                if loop.time() - started >= _STABLE_SECONDS:
                    failures = 0
                failures += 1
                delay = backoff_seconds(
                    failures, base=self.backoff_base, cap=self.settings.backoff_max_seconds
                )
                log.info("push: account %s: %s; reconnecting in %.1fs", w.account_id, _why(exc), delay)
                w.state = "backoff"
                self._set_live(w, False)
                if wire is not None:
                    wire.close()
                    wire = None
                await asyncio.sleep(delay)
            finally:
                if wire is not None:
                    wire.close()
                self._set_live(w, False)

    async def _target(self, account_id: str) -> _Target | None:
        """Config and password from the database, and the address to connect to.

        The one-row read and the decryption run here on the loop (well under a millisecond on
        SQLite): through `to_thread` they cost ~3 KB more RSS per watch (~12 KB instead of 8-9,
        measured over 1,000 watches), what executor threads leave behind in the C heap. Names
        are resolved in a thread all the same (DNS may take seconds); IP literals need none."""
        with self.db.engine.connect() as conn:
            row = conn.execute(
                select(accounts.c.config, accounts.c.secret).where(accounts.c.id == account_id)
            ).one_or_none()
        if row is None or row.secret is None:
            return None
        password = str(self.box.decrypt_json(row.secret).get("password") or "")
        if password:
            register_secret(password)  # never in a log line
        config: dict[str, Any] = dict(row.config or {})
        host, port = str(config["imap_host"]), int(config["imap_port"])
        check = functools.partial(check_host, host, port, allow_private=self.settings.allow_private_hosts)
        try:
            addresses = check() if _is_ip_literal(host) else await asyncio.to_thread(check)
        except TransientError:
            raise
        except InboxlinkError as exc:
            raise _Unwatchable(exc.message) from exc
        return _Target(
            host=host,
            address=addresses[0],  # connect to what was checked, never resolve again
            port=port,
            security=str(config.get("security") or "tls"),
            username=str(config["username"]),
            password=password,
        )

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:  # one context for every connection: its CA store is shared
            ca = self.settings.tls_ca_file
            self._tls = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
            if self.settings.push_tls_handoff and KeyLog.available():
                try:
                    self._keylog = KeyLog(self._tls)
                except OSError as exc:  # out of descriptors, say: OpenSSL keeps every session
                    log.warning("push: TLS sessions stay with OpenSSL (no key log: %s)", exc)
        return self._tls

    async def _open(self, w: _Watch, target: _Target) -> tuple[_Wire, _Session]:
        """CONNECT → GREETING → [STARTTLS] → LOGIN → NOTIFY SET or EXAMINE INBOX."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        w.state = "connecting"
        transport, wire = await asyncio.wait_for(
            loop.create_connection(lambda: _Wire(loop, self._scratch), target.address, target.port),
            self.timeout,
        )
        try:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                _keepalive(sock)
            if target.security == "tls":
                await wire.start_tls(self._context(), target.host, deadline, self._keylog)
            session = _Session(wire, self.timeout)
            greeting = await wire.readline(deadline)
            if greeting.startswith(b"* BYE"):
                raise _Dropped(f"the server said {_text(greeting)}")
            if not greeting.startswith((b"* OK", b"* PREAUTH")):
                raise _Dropped(f"unexpected greeting {_text(greeting)}")
            caps = _capabilities(greeting)
            if target.security == "starttls":
                status, text = await session.command(b"STARTTLS")
                if status != b"OK":
                    raise _Dropped(f"STARTTLS refused: {_text(text)}")
                await wire.start_tls(self._context(), target.host, deadline, self._keylog)
                caps = frozenset()  # what was said in plaintext no longer counts
            if not greeting.startswith(b"* PREAUTH"):
                w.logins += 1
                status, text = await session.login(target.username, target.password, b"LITERAL+" in caps)
                if status != b"OK":
                    if b"[UNAVAILABLE]" in text.upper():
                        raise _Dropped(f"server unavailable: {_text(text)}")
                    raise _Rejected(f"the server rejected the login ({_text(text)})")
                caps = _capabilities(text)
            if not caps:
                caps = await session.capabilities()
            session.condstore = b"CONDSTORE" in caps or b"QRESYNC" in caps
            if b"IDLE" not in caps:
                raise _Unwatchable("the server no longer offers IDLE")
            status, text = await session.command(b"EXAMINE INBOX")  # read-only: \Seen never changes
            if status != b"OK":
                raise _Dropped(f"EXAMINE INBOX failed: {_text(text)}")
            w.mode = "idle"
            w.tls = wire.tls
            if self.use_notify and b"NOTIFY" in caps:
                status, _ = await session.command(_NOTIFY, on_untagged=lambda _line: self._changed(w))
                if status == b"OK":
                    w.mode = "notify"
            return wire, session
        except BaseException:
            wire.close()
            raise

    async def _idle(self, w: _Watch, wire: _Wire, session: _Session) -> None:
        loop = asyncio.get_running_loop()
        first = True
        sent: str | None = None
        status_due = loop.time() if w.mode == "idle" else float("inf")
        while True:
            if loop.time() >= status_due:
                if sent is None:
                    # Read until known: a watch may begin before the first sync recorded the folders.
                    sent = self._sent_folder(w.account_id)  # one row, on the loop: see _target
                    if sent:
                        # A first look on connect is covered by the connect's sync; a later one is not.
                        await self._status_of_sent(w, session, sent, initial=first and self.sync_on_connect)
                else:
                    await self._status_of_sent(w, session, sent, initial=False)
                status_due = loop.time() + self.status_interval
            tag = session.send(b"IDLE")
            await session.continuation(on_untagged=lambda line: self._untagged(w, line))
            w.state = "idle"
            self._set_live(w, True)
            if first:
                first = False
                w.connects += 1
                if self.sync_on_connect:
                    self._changed(w)
            until = min(loop.time() + self.idle_refresh, status_due)
            ended = False
            while not ended:
                try:
                    line = await wire.readline(until)
                except TimeoutError:
                    break
                if line.startswith(b"* "):
                    self._untagged(w, line)
                elif line.startswith(tag + b" "):
                    ended = True  # the server ended IDLE itself; just issue a new one
                    if not line[len(tag) + 1 :].upper().startswith(b"OK"):
                        raise _Dropped(f"IDLE ended: {_text(line)}")
            if not ended:
                wire.write(b"DONE\r\n")
                status, text = await session.wait(tag, on_untagged=lambda line: self._untagged(w, line))
                if status != b"OK":
                    raise _Dropped(f"IDLE failed: {_text(text)}")

    def _untagged(self, w: _Watch, line: bytes) -> None:
        parts = line.split(b" ", 3)
        if len(parts) < 2:
            return
        word = parts[2] if parts[1].isdigit() and len(parts) > 2 else parts[1]
        word = word.rstrip(b"\r\n").upper()
        if word in _CHANGE_WORDS:
            self._changed(w)
        elif word == b"BYE":
            raise _Dropped(f"the server said {_text(line)}")

    def _sent_folder(self, account_id: str) -> str | None:
        with self.db.engine.connect() as conn:
            row = conn.execute(
                select(folders.c.key).where(
                    folders.c.account_id == account_id, folders.c.role == "sent", folders.c.gone.is_(False)
                )
            ).first()
        return str(row.key) if row is not None else None

    async def _status_of_sent(self, w: _Watch, session: _Session, sent: str, *, initial: bool) -> None:
        """Fallback without NOTIFY: has Sent moved since the last look? (a digest, not the numbers)"""
        from imapclient.imap_utf7 import encode as mutf7

        seen: list[bytes] = []

        def on_line(line: bytes) -> None:
            if line[2:9].upper() == b"STATUS ":
                seen.append(line[line.rfind(b"(") :])
            else:
                self._untagged(w, line)

        status, _ = await session.command(
            b"STATUS "
            + _quote_bytes(mutf7(sent))
            + b" (MESSAGES UIDNEXT UIDVALIDITY UNSEEN"
            + (b" HIGHESTMODSEQ)" if session.condstore else b")"),
            on_untagged=on_line,
        )
        if status != b"OK" or not seen:
            return  # Sent renamed or gone: the next sync records it, the next connect re-reads it
        digest = int.from_bytes(hashlib.blake2b(seen[-1], digest_size=8).digest(), "big")
        if not initial and digest != w.sent_status:
            self._changed(w)
        w.sent_status = digest


class _Session:
    """Tagged commands over a `_Wire`; untagged lines go to a callback, not into lists."""

    __slots__ = ("_n", "condstore", "timeout", "wire")

    def __init__(self, wire: _Wire, timeout: float) -> None:
        self.wire = wire
        self.timeout = timeout
        self.condstore = False  # HIGHESTMODSEQ in STATUS: flag changes move it
        self._n = 0

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.timeout

    def _tag(self) -> bytes:
        self._n += 1
        return b"w%d" % self._n

    def send(self, command: bytes) -> bytes:
        tag = self._tag()
        self.wire.write(tag + b" " + command + b"\r\n")
        return tag

    async def command(
        self, command: bytes, on_untagged: Callable[[bytes], None] | None = None
    ) -> tuple[bytes, bytes]:
        return await self.wait(self.send(command), on_untagged)

    async def wait(
        self, tag: bytes, on_untagged: Callable[[bytes], None] | None = None
    ) -> tuple[bytes, bytes]:
        """Read until the tagged answer to `tag`: (status, the rest of its line)."""
        deadline = self._deadline()
        prefix = tag + b" "
        while True:
            line = await self.read_response(deadline)
            if line.startswith(prefix):
                status, _, text = line[len(prefix) :].partition(b" ")
                return status.upper(), text.rstrip(b"\r\n")
            if line.startswith(b"* ") and on_untagged is not None:
                on_untagged(line)
            elif line.startswith(b"* BYE"):
                raise _Dropped(f"the server said {_text(line)}")

    async def continuation(self, on_untagged: Callable[[bytes], None]) -> None:
        deadline = self._deadline()
        while True:
            line = await self.read_response(deadline)
            if line.startswith(b"+"):
                return
            if line.startswith(b"* "):
                on_untagged(line)
            else:
                raise _Dropped(f"expected a continuation, got {_text(line)}")

    async def read_response(self, deadline: float) -> bytes:
        """One response line, literals included (`{n}` then n bytes), as one bytes object."""
        line = await self.wire.readline(deadline)
        while True:
            m = _LITERAL.search(line)
            if m is None:
                return line
            size = int(m.group(1))
            if size > _BUFFER_LIMIT:
                raise _Dropped(f"a {size}-byte literal in a response to a watcher")
            line += await self.wire.readexactly(size, deadline)
            line += await self.wire.readline(deadline)

    async def capabilities(self) -> frozenset[bytes]:
        found: list[bytes] = []
        status, text = await self.command(b"CAPABILITY", on_untagged=found.append)
        if status != b"OK":
            raise _Dropped(f"CAPABILITY failed: {_text(text)}")
        words: set[bytes] = set()
        for line in found:
            if line[2:13].upper() == b"CAPABILITY ":
                words.update(line[13:].rstrip(b"\r\n").upper().split())
        return frozenset(words)

    async def login(self, username: str, password: str, literal_plus: bool) -> tuple[bytes, bytes]:
        """LOGIN with quoted strings, or literals for what a quoted string cannot carry."""
        tag = self._tag()
        pending = tag + b" LOGIN"
        for value in (username, password):
            raw = value.encode("utf-8")
            if all(0x20 <= b < 0x7F for b in raw):
                pending += b" " + _quote_bytes(raw)
                continue
            pending += b" {%d%s}\r\n" % (len(raw), b"+" if literal_plus else b"")
            self.wire.write(pending)
            if not literal_plus:
                await self.continuation(on_untagged=lambda _line: None)
            pending = raw
        self.wire.write(pending + b"\r\n")
        return await self.wait(tag)


# -- small helpers -----------------------------------------------------------------------------------
def _capabilities(line: bytes) -> frozenset[bytes]:
    """The words of a `[CAPABILITY ...]` response code, if the line carries one."""
    start = line.upper().find(b"[CAPABILITY ")
    if start < 0:
        return frozenset()
    end = line.find(b"]", start)
    return frozenset(line[start + 12 : end if end > 0 else None].upper().split())


def _quote_bytes(raw: bytes) -> bytes:
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _keepalive(sock: socket.socket) -> None:
    """A peer that vanished without a FIN or RST (NAT timeout, pulled cable) is noticed within
    about 4 minutes, not at the next IDLE refresh."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 120)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)


def _text(line: bytes) -> str:
    return line.rstrip(b"\r\n").decode("utf-8", "replace")[:200]


def _why(exc: BaseException) -> str:
    if isinstance(exc, InboxlinkError):
        return exc.message
    return (str(exc) or type(exc).__name__)[:200]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
