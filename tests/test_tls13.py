"""The TLS 1.3 hand-off of idle watches (sync/tls13.py, `_Wire`): after OpenSSL's handshake, our
record layer must read and write what OpenSSL would, follow key updates, and drop the connection
on anything else. Checked against OpenSSL itself twice over: `openssl s_server` (a separate
process, whose stdin is sent to us and which prints what we send) and Python's own TLS server
over memory BIOs (to tamper with records and close sessions at will)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inboxlink.sync.push import _Wire
from inboxlink.sync.tls13 import KeyLog, RecordLayer, TLSFailure
from inboxlink.testing.dovecot import write_self_signed_cert
from tests.support import FakeTransport, tls_server_context

pytestmark = pytest.mark.skipif(not KeyLog.available(), reason="needs memfd_create and /proc")


class SServer:
    """`openssl s_server` for one connection: `say(line)` sends a line (or a command: "k" sends a
    KeyUpdate, "K" one that asks for ours), `heard(text)` waits for what it printed."""

    def __init__(self, tmp: Path, *options: str) -> None:
        self.cert, key = tmp / "server.pem", tmp / "server-key.pem"
        write_self_signed_cert(self.cert, key, "127.0.0.1")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.out = tmp / "s_server.out"
        with self.out.open("wb") as out:
            command = ["stdbuf", "-oL", "openssl", "s_server", "-accept", f"127.0.0.1:{self.port}"]
            command += ["-naccept", "1", "-ign_eof", "-cert", str(self.cert), "-key", str(key), *options]
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while b"ACCEPT" not in self.out.read_bytes():
            assert time.monotonic() < deadline and self.proc.poll() is None, self.out.read_text()
            time.sleep(0.02)

    def say(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    async def heard(self, text: bytes, times: int = 1) -> None:
        deadline = time.monotonic() + 10
        while self.out.read_bytes().count(text) < times:
            assert time.monotonic() < deadline, self.out.read_text(errors="replace")
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        assert self.proc.stdin is not None
        self.proc.stdin.close()


@pytest.fixture
def s_server(tmp_path: Path) -> Iterator[Callable[..., SServer]]:
    if shutil.which("openssl") is None or shutil.which("stdbuf") is None:
        pytest.skip("needs the openssl command (and coreutils' stdbuf: s_server's output unbuffered)")
    started: list[SServer] = []

    def start(*options: str) -> SServer:
        started.append(SServer(tmp_path, *options))
        return started[-1]

    yield start
    for server in started:
        server.close()


async def _connect(server: SServer, handoff: bool = True) -> _Wire:
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context(cafile=str(server.cert))
    keylog = KeyLog(context) if handoff else None
    _, wire = await loop.create_connection(
        lambda: _Wire(loop, memoryview(bytearray(64 << 10))), "127.0.0.1", server.port
    )
    await wire.start_tls(context, "127.0.0.1", loop.time() + 10, keylog)
    if keylog is not None:
        keylog.close()
    return wire


def _secrets(wire: _Wire) -> tuple[bytes, bytes]:
    layer = wire._records
    assert layer is not None
    return layer._send.secret, layer._recv.secret


@pytest.mark.parametrize(
    "suite", ["TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"]
)
def test_records_and_key_updates_against_openssl(s_server: Callable[..., SServer], suite: str) -> None:
    server = s_server("-ciphersuites", suite)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        wire = await _connect(server)
        assert wire.tls == "records" and wire._tls is None  # OpenSSL's connection is gone
        server.say(b"* OK first line")
        assert await wire.readline(loop.time() + 10) == b"* OK first line\n"
        wire.write(b"a1 NOOP\r\n")
        await server.heard(b"a1 NOOP")

        sent, received = _secrets(wire)
        server.say(b"k")  # the server moves to its next key; ours stays
        await server.heard(b"SSL_do_handshake -> 1")  # (one line per read: a command must be alone)
        server.say(b"* after k")
        assert await wire.readline(loop.time() + 10) == b"* after k\n"
        assert _secrets(wire)[0] == sent and _secrets(wire)[1] != received

        sent, received = _secrets(wire)
        server.say(b"K")  # ...and asks us to move too: our KeyUpdate goes out, then our new key
        await server.heard(b"SSL_do_handshake -> 1", times=2)
        server.say(b"* after K")
        assert await wire.readline(loop.time() + 10) == b"* after K\n"
        assert _secrets(wire)[0] != sent and _secrets(wire)[1] != received
        big = b"a2 " + b"x" * 40_000  # three records
        wire.write(big + b"\r\n")
        await server.heard(big)  # the server read it with the key it expects from us now
        wire.close()

    asyncio.run(scenario())


def test_tls_1_2_stays_with_openssl(s_server: Callable[..., SServer]) -> None:
    server = s_server("-tls1_2")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        wire = await _connect(server)
        assert wire.tls == "openssl"
        server.say(b"* OK over 1.2")
        assert await wire.readline(loop.time() + 10) == b"* OK over 1.2\n"
        wire.write(b"a1 NOOP\r\n")
        await server.heard(b"a1 NOOP")
        wire.close()

    asyncio.run(scenario())


class _Memory:
    """A wire handed off from a handshake with Python's TLS server over memory BIOs."""

    def __init__(self, tmp: Path) -> None:
        server_context, cert = tls_server_context(tmp)
        self.client_context = ssl.create_default_context(cafile=str(cert))
        self.keylog = KeyLog(self.client_context)
        self.s_in, self.s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.server = server_context.wrap_bio(self.s_in, self.s_out, server_side=True)
        self.transport = FakeTransport()

    async def connect(self, feed: Callable[[_Wire, bytes], None] | None = None) -> _Wire:
        loop = asyncio.get_running_loop()
        wire = _Wire(loop, memoryview(bytearray(64 << 10)))
        wire.connection_made(self.transport)  # type: ignore[arg-type]
        handshake = asyncio.ensure_future(
            wire.start_tls(self.client_context, "127.0.0.1", loop.time() + 10, self.keylog)
        )
        await asyncio.sleep(0)
        for _ in range(10):
            self.s_in.write(self.transport.take())
            with contextlib.suppress(ssl.SSLWantReadError):
                self.server.do_handshake()
            flight = self.s_out.read()
            if flight:
                (feed or _Wire._received)(wire, flight)
            await asyncio.sleep(0)
            if handshake.done():
                break
        await handshake
        self.s_in.write(self.transport.take())  # the client's Finished
        self.server.do_handshake()
        return wire

    def send(self, data: bytes) -> bytes:
        self.server.write(data)
        return self.s_out.read()


def _one_byte_at_a_time(wire: _Wire, data: bytes) -> None:
    for i in range(len(data)):
        wire._received(data[i : i + 1])


def test_records_arrive_in_any_pieces(tmp_path: Path) -> None:
    """Handshake and traffic fed one byte at a time: the hand-off happens on the record boundary
    after the server's Finished whatever the reads, and nothing is lost or doubled (session
    tickets ride in front of the first line)."""
    memory = _Memory(tmp_path)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        wire = await memory.connect(_one_byte_at_a_time)
        assert wire.tls == "records"
        lines = b"".join(b"* %d EXISTS\r\n" % i for i in range(2000))
        _one_byte_at_a_time(wire, memory.send(lines[:7]))
        _one_byte_at_a_time(wire, memory.send(lines[7:]))
        got = [await wire.readline(loop.time() + 5) for _ in range(2000)]
        assert b"".join(got) == lines
        wire.write(b"DONE\r\n")
        memory.s_in.write(memory.transport.take())
        assert memory.server.read(100) == b"DONE\r\n"

    asyncio.run(scenario())


def test_a_forged_record_drops_the_connection(tmp_path: Path) -> None:
    memory = _Memory(tmp_path)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        wire = await memory.connect()
        record = bytearray(memory.send(b"* 1 EXISTS\r\n"))
        record[-3] ^= 1  # inside the authentication tag of the last record
        wire._received(bytes(record))
        with pytest.raises(Exception, match="integrity check"):
            await wire.readline(loop.time() + 5)
        assert memory.transport.aborted

    asyncio.run(scenario())


def test_close_notify_ends_the_session(tmp_path: Path) -> None:
    memory = _Memory(tmp_path)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        wire = await memory.connect()
        wire._received(memory.send(b"* BYE soon\r\n"))
        with contextlib.suppress(ssl.SSLWantReadError):
            memory.server.unwrap()
        wire._received(memory.s_out.read())
        assert await wire.readline(loop.time() + 5) == b"* BYE soon\r\n"  # what came before stays
        with pytest.raises(Exception, match="closed the TLS session"):
            await wire.readline(loop.time() + 5)

    asyncio.run(scenario())


def test_the_key_log_keeps_nothing(tmp_path: Path) -> None:
    """The secrets are read once and the in-memory file is emptied: nothing piles up, and a second
    read finds nothing."""
    memory = _Memory(tmp_path)

    async def scenario() -> None:
        await memory.connect()

    asyncio.run(scenario())
    assert os.fstat(memory.keylog._fd).st_size == 0
    assert memory.keylog.take() == {}
    memory.keylog.close()


def test_post_handshake_messages_split_across_records() -> None:
    """A ticket, then a KeyUpdate asking for ours cut across two records: the client's key for
    reading moves after the second record, its answer goes out under its old key, and both ends
    then talk with their next keys. `server` is the same layer with the secrets swapped."""
    client_secret, server_secret = os.urandom(32), os.urandom(32)
    client = RecordLayer("TLS_CHACHA20_POLY1305_SHA256", client_secret, server_secret)
    server = RecordLayer("TLS_CHACHA20_POLY1305_SHA256", server_secret, client_secret)
    ticket = b"\x04\x00\x00\x05" + b"12345"
    key_update = b"\x18\x00\x00\x01\x01"  # update_requested
    plain, answer = client.open(server.seal(ticket + key_update[:2], 22) + server.seal(key_update[2:], 22))
    assert plain == b"" and answer
    server._send = server._send.updated(server._suite)  # what a server does after sending its own
    assert server.open(answer) == (b"", b"")  # our KeyUpdate, not asking back: its reading key moves
    assert client.open(server.seal(b"* 2 EXISTS\r\n")) == (b"* 2 EXISTS\r\n", b"")
    assert server.open(client.seal(b"DONE\r\n")) == (b"DONE\r\n", b"")
    with pytest.raises(TLSFailure, match="handshake message 13"):
        client.open(server.seal(b"\x0d\x00\x00\x00", 22))  # CertificateRequest: never offered


@pytest.mark.parametrize("greeting", [b"220 smtp.example ESMTP ready\r\n", b"* OK IMAP4rev1 ready\r\n"])
def test_a_plaintext_server_on_a_tls_port_fails_at_once(tmp_path: Path, greeting: bytes) -> None:
    """Bytes that are no TLS record go to OpenSSL as they come, which refuses them at once; read as
    a record header, "220 s..." would spell an 8 KB record and the handshake would wait for it."""
    cert = tmp_path / "cert.pem"
    write_self_signed_cert(cert, tmp_path / "key.pem", "127.0.0.1")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        served: asyncio.Future[None] = loop.create_future()

        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(greeting)
                await writer.drain()
                with contextlib.suppress(ConnectionError):
                    await reader.read()  # until the client goes
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
            finally:
                served.set_result(None)

        server = await asyncio.start_server(greet, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        context = ssl.create_default_context(cafile=str(cert))
        keylog = KeyLog(context)
        _, wire = await loop.create_connection(
            lambda: _Wire(loop, memoryview(bytearray(64 << 10))), "127.0.0.1", port
        )
        started = time.monotonic()
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await wire.start_tls(context, "127.0.0.1", loop.time() + 10, keylog)
        assert time.monotonic() - started < 2
        wire.close()
        keylog.close()
        await asyncio.wait_for(served, 5)
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
