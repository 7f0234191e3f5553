"""A review of the TLS 1.3 hand-off (sync/tls13.py, `_Wire` in sync/push.py), test by test:

- known answers from RFC 8448 §3 (key schedule of the traffic keys, records both ways);
- the record layer against OpenSSL itself: the same crafted records (made with the server's real
  traffic secret from a real handshake) go to OpenSSL's client and to ours, and ours must accept
  nothing OpenSSL refuses, and return what it returns;
- the hand-off boundary for every split of a server flight followed at once by a ticket,
  0.5-RTT data and a KeyUpdate; the fallback to OpenSSL when the key log misses a line;
- many handshakes interleaved on one context and key log; `openssl s_server` variants (HelloRetry-
  Request, fragmented and padded records, a CertificateRequest); STARTTLS;
- what a handed-off connection still holds, and what a failed session still accepts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import ssl
import sys
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

from inboxlink.sync import push, tls13
from inboxlink.sync.push import _Dropped, _Wire
from inboxlink.sync.tls13 import SUITES, KeyLog, RecordLayer, TLSFailure, _Direction, _Suite, expand_label
from tests.support import FakeTransport, tls_server_context
from tests.test_tls13 import SServer, s_server  # noqa: F401 (s_server: a fixture)

pytestmark = pytest.mark.skipif(not KeyLog.available(), reason="needs memfd_create and /proc")

AD, HS, AL = b"\x17", b"\x16", b"\x15"


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# -- RFC 8448 §3 (simple 1-RTT handshake, TLS_AES_128_GCM_SHA256) -----------------------------------
C_AP = _hex("9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce 65 52 87 5a fa 0b 06 df 00 87 f7 92 eb b7 c1 75 04 a5")
S_AP = _hex("a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43")
NST_RECORD = _hex(  # {server} send handshake record (the NewSessionTicket): server record 0
    "17 03 03 00 de 3a 6b 8f 90 41 4a 97 d6 95 9c 34 87 68 0d e5 13 4a 2b 24"
    "0e 6c ff ac 11 6e 95 d4 1d 6a f8 f6 b5 80 dc f3 d1 1d 63 c7 58 db 28 9a"
    "01 59 40 25 2f 55 71 3e 06 1d c1 3e 07 88 91 a3 8e fb cf 57 53 ad 8e f1"
    "70 ad 3c 73 53 d1 6d 9d a7 73 b9 ca 7f 2b 9f a1 b6 c0 d4 a3 d0 3f 75 e0"
    "9c 30 ba 1e 62 97 2a c4 6f 75 f7 b9 81 be 63 43 9b 29 99 ce 13 06 46 15"
    "13 98 91 d5 e4 c5 b4 06 f1 6e 3f c1 81 a7 7c a4 75 84 00 25 db 2f 0a 77"
    "f8 1b 5a b0 5b 94 c0 13 46 75 5f 69 23 2c 86 51 9d 86 cb ee ac 87 aa c3"
    "47 d1 43 f9 60 5d 64 f6 50 db 4d 02 3e 70 e9 52 ca 49 fe 51 37 12 1c 74"
    "bc 26 97 68 7e 24 87 46 d6 df 35 30 05 f3 bc e1 86 96 12 9c 81 53 55 6b"
    "3b 6c 67 79 b3 7b f1 59 85 68 4f"
)
C_APP_RECORD = _hex(  # {client} send application_data record: client record 0
    "17 03 03 00 43 a2 3f 70 54 b6 2c 94 d0 af fa fe 82 28 ba 55 cb ef ac ea"
    "42 f9 14 aa 66 bc ab 3f 2b 98 19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b"
    "62 97 4e 1f 5a 62 92 a2 97 70 14 bd 1e 3d ea e6 3a ee bb 21 69 49 15 e4"
)
S_APP_RECORD = _hex(  # {server} send application_data record: server record 1
    "17 03 03 00 43 2e 93 7e 11 ef 4a c7 40 e5 38 ad 36 00 5f c4 a4 69 32 fc"
    "32 25 d0 5f 82 aa 1b 36 e3 0e fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8"
    "fc c4 9c 4b f2 e5 f0 a2 1c 00 47 c2 ab f3 32 54 0d d0 32 e1 67 c2 95 5d"
)
C_ALERT_RECORD = _hex("17 03 03 00 13 c9 87 27 60 65 56 66 b7 4d 7f f1 15 3e fd 6d b6 d0 b0 e3")
S_ALERT_RECORD = _hex("17 03 03 00 13 b5 8f d6 71 66 eb f5 99 d2 47 20 cf be 7e fa 7a 88 64 a9")


def test_rfc8448_traffic_keys() -> None:
    suite = SUITES["TLS_AES_128_GCM_SHA256"]
    assert expand_label(suite, S_AP, b"key", 16) == _hex("9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56")
    assert expand_label(suite, S_AP, b"iv", 12) == _hex("cf 78 2b 88 dd 83 54 9a ad f1 e9 84")
    assert expand_label(suite, C_AP, b"key", 16) == _hex("17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51")
    assert expand_label(suite, C_AP, b"iv", 12) == _hex("5b 78 92 3d ee 08 57 90 33 e5 23 d9")


def test_rfc8448_records_both_ways() -> None:
    """The server's ticket (record 0, skipped) and data (record 1), its close_notify (record 2);
    the client's data and close_notify byte for byte (records 0 and 1: nonce = iv XOR seq)."""
    layer = RecordLayer("TLS_AES_128_GCM_SHA256", C_AP, S_AP)
    payload = bytes(range(50))
    assert layer.seal(payload) == C_APP_RECORD
    assert layer.seal(b"\x01\x00", 21) == C_ALERT_RECORD
    whole = NST_RECORD + S_APP_RECORD
    for cut in range(len(whole) + 1):  # any two reads
        layer = RecordLayer("TLS_AES_128_GCM_SHA256", C_AP, S_AP)
        first, _ = layer.open(whole[:cut])
        second, _ = layer.open(whole[cut:])
        assert first + second == payload
    with pytest.raises(TLSFailure, match="closed the TLS session"):
        layer.open(S_ALERT_RECORD)


# -- ours against OpenSSL, record by record ---------------------------------------------------------
class _Pair:
    """A finished handshake between Python's client and server over memory BIOs; the client's
    OpenSSL connection is kept, and a `RecordLayer` is built from the same key log lines, so the
    same bytes can go to both. `forge` is the server's sending direction: any record it makes is
    genuine to both."""

    def __init__(self, tmp: Path) -> None:
        server_context, cert = tls_server_context(tmp)
        client_context = ssl.create_default_context(cafile=str(cert))
        keylog = KeyLog(client_context)
        self.c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = client_context.wrap_bio(self.c_in, c_out, server_hostname="127.0.0.1")
        server = server_context.wrap_bio(s_in, s_out, server_side=True)
        secrets: dict[bytes, bytes] = {}
        for _ in range(4):
            try:
                self.client.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            secrets.update(keylog.take())
            s_in.write(c_out.read())
            with contextlib.suppress(ssl.SSLWantReadError):
                server.do_handshake()
            if done:
                break
            self.c_in.write(s_out.read())
        keylog.close()
        cipher = self.client.cipher()
        assert cipher is not None and self.client.version() == "TLSv1.3"
        self.suite = SUITES[cipher[0]]
        self.ours = RecordLayer(cipher[0], secrets[tls13._CLIENT], secrets[tls13._SERVER])
        self.forge = _Direction(self.suite, secrets[tls13._SERVER])

    def record(self, inner: bytes, header: bytes | None = None) -> bytes:
        if header is None:
            header = b"\x17\x03\x03" + (len(inner) + 16).to_bytes(2, "big")
        return header + self.suite.aead(self.forge.key).encrypt(self.forge.nonce(), inner, header)

    def openssl(self, data: bytes) -> tuple[bytes, str | None]:
        self.c_in.write(data)
        got = b""
        try:
            while chunk := self.client.read(1 << 15):
                got += chunk
            return got, "closed"
        except ssl.SSLWantReadError:
            return got, None
        except ssl.SSLZeroReturnError:
            return got, "closed"
        except ssl.SSLError as exc:
            return got, str(exc.reason)

    def mine(self, data: bytes) -> tuple[bytes, str | None]:
        try:
            plain, _ = self.ours.open(data)
        except TLSFailure as exc:
            return getattr(exc, "plain", b""), str(exc)
        return plain, None


def _ku(value: int) -> bytes:
    return b"\x18\x00\x00\x01" + bytes([value])


_TICKET = (
    b"\x04\x00\x00\x0e" + b"\x00\x00\x0e\x10" + b"\x01\x02\x03\x04" + b"\x00" + b"\x00\x01T" + b"\x00\x00"
)
# name -> the records, from the pair (each case its own fresh handshake)
_CASES: dict[str, Callable[[_Pair], bytes]] = {
    "data": lambda p: p.record(b"* OK\r\n" + AD),
    "zero-length data": lambda p: p.record(AD) + p.record(b"x" + AD),
    "padding": lambda p: p.record(b"hi" + AD + bytes(300)),
    "2^14 of data, padded": lambda p: p.record(b"a" * (1 << 14) + AD + bytes(200)),
    "2^14 + 1 of data": lambda p: p.record(b"a" * ((1 << 14) + 1) + AD),
    "ciphertext over 2^14 + 256": lambda p: b"\x17\x03\x03\x41\x01" + bytes((1 << 14) + 257),
    "empty record": lambda p: b"\x17\x03\x03\x00\x00",
    "tag only": lambda p: p.record(b""),
    "only padding": lambda p: p.record(bytes(5)),
    "legacy version 0x0301": lambda p: p.record(b"hi" + AD, b"\x17\x03\x01\x00\x13"),
    "legacy version 0x0304": lambda p: p.record(b"hi" + AD, b"\x17\x03\x04\x00\x13"),
    "outer type handshake": lambda p: p.record(b"hi" + AD, b"\x16\x03\x03\x00\x13"),
    "plaintext change_cipher_spec": lambda p: b"\x14\x03\x03\x00\x01\x01",
    "inner type change_cipher_spec": lambda p: p.record(b"\x01\x14"),
    "inner type 25": lambda p: p.record(b"x\x19"),
    "a record sent twice": lambda p: (lambda r: r + r)(p.record(b"one" + AD)),
    "two records swapped": lambda p: (lambda a, b: b + a)(p.record(b"one" + AD), p.record(b"two" + AD)),
    "a flipped tag bit": lambda p: (lambda r: r[:-1] + bytes([r[-1] ^ 1]))(p.record(b"x" + AD)),
    "data then close_notify": lambda p: p.record(b"* BYE\r\n" + AD) + p.record(b"\x01\x00" + AL),
    "close_notify then data": lambda p: p.record(b"\x01\x00" + AL) + p.record(b"late" + AD),
    "fatal alert": lambda p: p.record(b"\x02\x28" + AL),
    "empty alert": lambda p: p.record(AL),
    "ticket": lambda p: p.record(_TICKET + HS) + p.record(b"x" + AD),
    "ticket across records": lambda p: p.record(_TICKET[:3] + HS) + p.record(_TICKET[3:] + HS),
    "ticket cut by data": lambda p: p.record(_TICKET[:6] + HS) + p.record(b"x" + AD),
    "ticket header then data": lambda p: p.record(_TICKET[:2] + HS) + p.record(b"x" + AD),
    "empty handshake record": lambda p: p.record(HS) + p.record(b"x" + AD),
    "KeyUpdate": lambda p: p.record(_ku(0) + HS),
    "KeyUpdate, ticket in its record": lambda p: p.record(_ku(0) + _TICKET + HS),
    "KeyUpdate, part of a ticket after it": lambda p: p.record(_ku(0) + _TICKET[:5] + HS),
    "ticket, KeyUpdate in one record": lambda p: p.record(_TICKET + _ku(0) + HS),
    "KeyUpdate across records": lambda p: p.record(_ku(1)[:2] + HS) + p.record(_ku(1)[2:] + HS),
    "KeyUpdate value 2": lambda p: p.record(_ku(2) + HS),
    "KeyUpdate of 2 bytes": lambda p: p.record(b"\x18\x00\x00\x02\x00\x00" + HS),
    "HelloRequest": lambda p: p.record(b"\x00\x00\x00\x00" + HS),
    "CertificateRequest": lambda p: p.record(b"\x0d\x00\x00\x00" + HS),
    "Finished again": lambda p: p.record(b"\x14\x00\x00\x20" + bytes(32) + HS),
}
# Known differences, left as they are (see the review report): ours drops the connection on a
# user_canceled warning alert (OpenSSL reads on: stricter, and the watch reconnects); OpenSSL
# refuses the 33rd empty record in a row (a CPU guard; ours reads them, each costing an AEAD
# check like any record) and parses tickets (ours skips them unread, so a malformed one passes).


@pytest.mark.parametrize("case", list(_CASES))
def test_nothing_openssl_refuses(tmp_path: Path, case: str) -> None:
    """Each case's bytes to OpenSSL's client and to ours: if OpenSSL refuses, so do we; the data
    returned (before any refusal) is the same."""
    pair = _Pair(tmp_path)
    data = _CASES[case](pair)
    theirs, their_error = pair.openssl(data)
    mine, my_error = pair.mine(data)
    if their_error is not None:
        assert my_error is not None, f"OpenSSL refused ({their_error}), ours accepted {mine!r}"
    if my_error is None:
        assert their_error is None, f"ours refused what OpenSSL read: {my_error}"
    assert mine == theirs


def test_a_failed_session_reads_nothing_more(tmp_path: Path) -> None:
    """After a close_notify (or any failure) the layer refuses everything, as OpenSSL's
    SSL_read keeps answering 'closed': the next genuine records are not read."""
    pair = _Pair(tmp_path)
    with pytest.raises(TLSFailure, match="closed"):
        pair.ours.open(pair.record(b"\x01\x00" + AL))
    with pytest.raises(TLSFailure, match="closed"):
        pair.ours.open(pair.record(b"late" + AD))


def test_a_key_update_moves_only_at_its_record_end() -> None:
    """Mirrored layers in each suite: KeyUpdate with update_requested, our answer under the old
    key, both ends on the next keys; one secret chain as long as many updates."""
    for name in SUITES:
        size = SUITES[name].hash.digest_size
        client_secret, server_secret = os.urandom(size), os.urandom(size)
        client = RecordLayer(name, client_secret, server_secret)
        server = RecordLayer(name, server_secret, client_secret)
        for round_ in range(5):
            plain, answer = client.open(server.seal(b"before\r\n") + server.seal(_ku(1), 22))
            assert plain == b"before\r\n" and answer
            server._send = server._send.updated(server._suite)
            # the server still reads our old key until our KeyUpdate, then the next one
            line = b"after %d\r\n" % round_
            assert server.open(answer + client.seal(line)) == (line, b"")
            assert client.open(server.seal(b"x")) == (b"x", b"")


# -- the hand-off boundary ---------------------------------------------------------------------------
class _Server:
    """Python's TLS server over memory BIOs whose key log gives the server's traffic secret as soon
    as its Finished is written: what it sends right after (a ticket, 0.5-RTT data, a KeyUpdate) is
    made with that secret, in the same bytes as the flight, as some servers do."""

    def __init__(self, tmp: Path) -> None:
        self.context, cert = tls_server_context(tmp)
        self.keylog = KeyLog(self.context)
        self.client_context = ssl.create_default_context(cafile=str(cert))
        self.client_keylog = KeyLog(self.client_context)

    def close(self) -> None:
        self.keylog.close()
        self.client_keylog.close()


class _Probe:
    """What `hand_off` saw: the bytes left in OpenSSL's incoming BIO, OpenSSL's connection (weakly),
    and how many bytes the server sent in its flight and after it."""

    def __init__(self) -> None:
        self.pending: list[int] = []
        self.connection: list[weakref.ref[ssl.SSLObject]] = []
        self.sent = 0


async def _handoff(
    server: _Server,
    feed: Callable[[_Wire, bytes], None],
    after: Callable[[_Direction, _Suite], bytes],
    wire: _Wire | None = None,
) -> tuple[_Wire, FakeTransport, RecordLayer, _Probe]:
    """A wire's handshake (a new wire's, or `wire`'s: STARTTLS) with `server`, the flight and
    `after(direction, suite)` fed by `feed`; returns the wire, its transport, the server's side of the
    records (for what the wire sends and anything more) and the probe."""
    loop = asyncio.get_running_loop()
    if wire is None:
        wire = _Wire(loop, memoryview(bytearray(64 << 10)))
        wire.connection_made(FakeTransport())
    transport = wire._transport
    assert isinstance(transport, FakeTransport)
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = server.context.wrap_bio(s_in, s_out, server_side=True)
    probe = _Probe()
    real = push.hand_off

    def spy(cipher: str, version: str | None, secrets: dict[bytes, bytes]) -> RecordLayer | None:
        assert wire._in is not None and wire._tls is not None
        probe.pending.append(wire._in.pending)
        probe.connection.append(weakref.ref(wire._tls))
        return real(cipher, version, secrets)

    push.hand_off = spy  # type: ignore[assignment]
    try:
        handshake = asyncio.ensure_future(
            wire.start_tls(server.client_context, "127.0.0.1", loop.time() + 10, server.client_keylog)
        )
        await asyncio.sleep(0)
        s_in.write(transport.take())
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        secrets = server.keylog.take()
        cipher = tls.cipher()
        assert cipher is not None
        send = _Direction(SUITES[cipher[0]], secrets[tls13._SERVER])
        flight = s_out.read() + after(send, SUITES[cipher[0]])
        probe.sent = len(flight)
        feed(wire, flight)
        await asyncio.wait_for(handshake, 5)
    finally:
        push.hand_off = real
    sent, pos = transport.take(), 0
    while sent[pos] != 23:  # the client's Finished is its first encrypted record; what follows
        pos += 5 + int.from_bytes(sent[pos + 3 : pos + 5], "big")  # (a KeyUpdate) is the peer's
    pos += 5 + int.from_bytes(sent[pos + 3 : pos + 5], "big")
    s_in.write(sent[:pos])
    transport.sent += sent[pos:]
    tls.do_handshake()
    secrets.update(server.keylog.take())
    peer = RecordLayer(cipher[0], secrets[tls13._SERVER], secrets[tls13._CLIENT])
    peer._send = send
    return wire, transport, peer, probe


def _after_finished(send: _Direction, suite: _Suite) -> bytes:
    """A ticket, a greeting (0.5-RTT) and a KeyUpdate asking for ours, right after the Finished."""
    layer = RecordLayer.__new__(RecordLayer)
    layer._suite, layer._send = suite, send
    out = layer.seal(_TICKET, 22) + layer.seal(b"* OK ready\r\n") + layer.seal(_ku(1), 22)
    send_next = send.updated(layer._suite)
    send.key, send.iv, send.secret, send.seq = send_next.key, send_next.iv, send_next.secret, 0
    return out + layer.seal(b"* 1 EXISTS\r\n")


def test_hand_off_at_the_finished_whatever_the_reads(tmp_path: Path) -> None:
    """The flight and what follows it cut in two at every byte: OpenSSL has read exactly the
    records up to the Finished (its BIO empty at the hand-off), ours reads the rest from record 0,
    answers the KeyUpdate, and the server reads what the wire sends next."""
    server = _Server(tmp_path)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        cut, total = 0, 1
        while cut <= total:

            def two_reads(wire: _Wire, data: bytes, at: int = cut) -> None:
                wire._received(data[:at])
                wire._received(data[at:])

            wire, transport, peer, probe = await _handoff(server, two_reads, _after_finished)
            assert wire.tls == "records" and probe.pending == [0], cut
            assert await wire.readline(loop.time() + 1) == b"* OK ready\r\n"
            assert await wire.readline(loop.time() + 1) == b"* 1 EXISTS\r\n"
            wire.write(b"a1 NOOP\r\n")
            assert peer.open(transport.take()) == (b"a1 NOOP\r\n", b"")  # our KeyUpdate, our next key
            wire.close()
            total = probe.sent
            cut += 1
        assert cut > 600  # every byte of a flight (~0.7 KB with an EC certificate) and what follows

    asyncio.run(asyncio.wait_for(scenario(), 60))
    server.close()


def test_a_missing_key_log_line_leaves_the_session_to_openssl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key log misses the server's secret: the wire keeps OpenSSL, which reads what came
    with the Finished (ticket, greeting, KeyUpdate) as before the hand-off existed."""
    server = _Server(tmp_path)
    take = KeyLog.take

    def lossy(self: KeyLog) -> dict[bytes, bytes]:
        found = take(self)
        if self is server.client_keylog:
            found.pop(tls13._SERVER, None)
        return found

    monkeypatch.setattr(KeyLog, "take", lossy)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        for cut in (1, 100, 700, 10_000):

            def two_reads(wire: _Wire, data: bytes, at: int = cut) -> None:
                wire._received(data[:at])
                wire._received(data[at:])

            wire, transport, peer, _ = await _handoff(server, two_reads, _after_finished)
            assert wire.tls == "openssl" and wire._secrets == {}
            assert await wire.readline(loop.time() + 1) == b"* OK ready\r\n"
            assert await wire.readline(loop.time() + 1) == b"* 1 EXISTS\r\n"
            wire.write(b"a1 NOOP\r\n")
            assert peer.open(transport.take()) == (b"a1 NOOP\r\n", b"")
            wire.close()

    asyncio.run(scenario())
    server.close()


def test_what_a_handed_off_connection_holds(tmp_path: Path) -> None:
    """OpenSSL's connection is freed at the hand-off (not left to the cycle collector), no secret
    stays anywhere but in the two directions, and the key logs are empty."""
    server = _Server(tmp_path)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        wire, _, peer, probe = await _handoff(server, _Wire._received, lambda _send, _suite: b"")
        assert probe.connection and probe.connection[0]() is None  # freed on the spot
        assert wire._tls is None and wire._in is None and wire._out is None and wire._keylog is None
        assert wire._secrets == {} and wire._raw == b"" and wire._buf == b""
        layer = wire._records
        assert layer is not None and layer._pending == b"" and layer._handshake == b""
        held = sys.getsizeof(layer) + sum(
            sys.getsizeof(x) for d in (layer._send, layer._recv) for x in (d, d.key, d.iv, d.secret, d.seq)
        )
        assert held < 700, held
        wire._received(peer.seal(b"* 1 EXISTS\r\n"))
        assert await wire.readline(loop.time() + 1) == b"* 1 EXISTS\r\n"
        assert wire._buf == b"" and layer._pending == b""
        wire.close()
        assert wire._records is None

    asyncio.run(scenario())
    assert os.fstat(server.client_keylog._fd).st_size == 0
    server.close()


def test_starttls_hands_off_too(tmp_path: Path) -> None:
    """STARTTLS: the plaintext greeting and OK, then the same hand-off (greeting sent 0.5-RTT); and
    plaintext riding behind the OK is refused before any TLS (the injection of CVE-2011-0411)."""
    server = _Server(tmp_path)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        wire = _Wire(loop, memoryview(bytearray(64 << 10)))
        wire.connection_made(FakeTransport())
        wire._received(b"* OK IMAP4rev1\r\n")
        assert await wire.readline(loop.time() + 1) == b"* OK IMAP4rev1\r\n"
        wire.write(b"a1 STARTTLS\r\n")
        wire._received(b"a1 OK Begin TLS\r\n")
        assert await wire.readline(loop.time() + 1) == b"a1 OK Begin TLS\r\n"
        wire._transport.take()  # type: ignore[union-attr]
        wire, transport, peer, probe = await _handoff(server, _Wire._received, _after_finished, wire)
        assert wire.tls == "records" and probe.pending == [0]
        assert await wire.readline(loop.time() + 1) == b"* OK ready\r\n"
        assert await wire.readline(loop.time() + 1) == b"* 1 EXISTS\r\n"
        wire.write(b"a2 LOGIN\r\n")
        assert peer.open(transport.take()) == (b"a2 LOGIN\r\n", b"")

        wire = _Wire(loop, memoryview(bytearray(64 << 10)))
        wire.connection_made(FakeTransport())
        wire._received(b"a1 OK Begin TLS\r\n* 1 EXISTS\r\n")
        assert await wire.readline(loop.time() + 1) == b"a1 OK Begin TLS\r\n"
        with pytest.raises(_Dropped, match="before the TLS handshake"):
            await wire.start_tls(server.client_context, "127.0.0.1", loop.time() + 1, server.client_keylog)

    asyncio.run(scenario())
    server.close()


def test_what_came_before_a_close_notify_is_read(tmp_path: Path) -> None:
    """A server's last line and its close_notify in one read: the line is read (as OpenSSL gave
    it), then the connection is over; nothing after the close_notify is read."""
    server = _Server(tmp_path)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        wire, transport, peer, _ = await _handoff(server, _Wire._received, lambda _send, _suite: b"")
        wire._received(peer.seal(b"* BYE shutting down\r\n") + peer.seal(b"\x01\x00", 21))
        assert transport.aborted
        wire._received(peer.seal(b"* 9 EXISTS\r\n"))  # were the socket still read
        assert await wire.readline(loop.time() + 1) == b"* BYE shutting down\r\n"
        with pytest.raises(_Dropped, match="closed the TLS session"):
            await wire.readline(loop.time() + 1)

    asyncio.run(scenario())
    server.close()


def test_interleaved_handshakes_get_their_own_secrets(tmp_path: Path) -> None:
    """Twelve handshakes on one context and one key log, their flights cut at random and fed in a
    random order: every wire is handed off with its own connection's secrets (each reads its
    server and its server reads it), and the key log ends empty."""
    server = _Server(tmp_path)
    rng = random.Random(8446)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        conns = []
        for _ in range(12):
            transport = FakeTransport()
            wire = _Wire(loop, memoryview(bytearray(64 << 10)))
            wire.connection_made(transport)
            s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = server.context.wrap_bio(s_in, s_out, server_side=True)
            task = asyncio.ensure_future(
                wire.start_tls(server.client_context, "127.0.0.1", loop.time() + 10, server.client_keylog)
            )
            conns.append((wire, transport, s_in, s_out, tls, task, bytearray()))
        await asyncio.sleep(0)
        while not all(c[5].done() for c in conns):
            wire, transport, s_in, s_out, tls, task, queue = rng.choice(conns)
            s_in.write(transport.take())
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.do_handshake()
            queue += s_out.read()
            if queue:
                n = rng.randint(1, len(queue))
                wire._received(bytes(queue[:n]))
                del queue[:n]
            await asyncio.sleep(0)
        for i, (wire, transport, s_in, s_out, tls, task, queue) in enumerate(conns):
            await task
            assert wire.tls == "records"
            s_in.write(transport.take())
            tls.do_handshake()
            tls.write(b"* %d EXISTS\r\n" % i)
            wire._received(bytes(queue) + s_out.read())  # the rest of its tickets, the line
            assert await wire.readline(loop.time() + 1) == b"* %d EXISTS\r\n" % i
            wire.write(b"a%d NOOP\r\n" % i)
            s_in.write(transport.take())
            assert tls.read(100) == b"a%d NOOP\r\n" % i

    asyncio.run(scenario())
    assert os.fstat(server.client_keylog._fd).st_size == 0
    server.close()


def test_tls_1_2_and_unknown_suites_stay_with_openssl(tmp_path: Path) -> None:
    server = _Server(tmp_path)
    server.context.maximum_version = ssl.TLSVersion.TLSv1_2

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        transport = FakeTransport()
        wire = _Wire(loop, memoryview(bytearray(64 << 10)))
        wire.connection_made(transport)
        s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = server.context.wrap_bio(s_in, s_out, server_side=True)
        handshake = asyncio.ensure_future(
            wire.start_tls(server.client_context, "127.0.0.1", loop.time() + 10, server.client_keylog)
        )
        for _ in range(6):
            await asyncio.sleep(0)
            s_in.write(transport.take())
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.do_handshake()
            _one_byte_at_a_time(wire, s_out.read())
        await handshake
        assert wire.tls == "openssl" and wire._secrets == {} and wire._keylog is None
        tls.write(b"* OK over 1.2\r\n")
        wire._received(s_out.read())
        assert await wire.readline(loop.time() + 1) == b"* OK over 1.2\r\n"

    asyncio.run(scenario())
    assert os.fstat(server.client_keylog._fd).st_size == 0
    server.close()
    secrets = {tls13._CLIENT: bytes(32), tls13._SERVER: bytes(32)}
    assert tls13.hand_off("TLS_AES_128_CCM_SHA256", "TLSv1.3", secrets) is None
    assert tls13.hand_off("TLS_AES_128_CCM_8_SHA256", "TLSv1.3", secrets) is None
    assert tls13.hand_off("TLS_AES_128_GCM_SHA256", "TLSv1.2", secrets) is None
    assert tls13.hand_off("TLS_AES_128_GCM_SHA256", "TLSv1.3", {tls13._CLIENT: bytes(32)}) is None


def _one_byte_at_a_time(wire: _Wire, data: bytes) -> None:
    for i in range(len(data)):
        wire._received(data[i : i + 1])


def test_no_memfd_means_no_key_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """memfd_create present but refused (old kernel, seccomp): not available, so the watcher's
    context gets no key log and OpenSSL keeps every session; a key log that cannot be installed
    leaves no descriptor behind."""

    class Refusing:
        @property
        def keylog_filename(self) -> str:
            return ""

        @keylog_filename.setter
        def keylog_filename(self, value: str) -> None:
            raise OSError("no /proc")

    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="no /proc"):
        KeyLog(Refusing())  # type: ignore[arg-type]
    assert len(os.listdir("/proc/self/fd")) == before

    def refuse(name: str, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "memfd_create", refuse)
    assert not KeyLog.available()


@pytest.mark.parametrize(
    "options",
    [
        ("-groups", "secp384r1", "-trace"),  # a HelloRetryRequest first: the client's key share is X25519
        ("-max_send_frag", "512", "-record_padding", "1024"),  # handshake and data in small padded records
        ("-verify", "1"),  # a CertificateRequest in the handshake (no certificate sent)
        ("-num_tickets", "0"),
    ],
)
def test_openssl_server_variants(s_server: Callable[..., SServer], options: tuple[str, ...]) -> None:  # noqa: F811
    server = s_server(*options)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context(cafile=str(server.cert))
        keylog = KeyLog(context)
        _, wire = await loop.create_connection(
            lambda: _Wire(loop, memoryview(bytearray(64 << 10))), "127.0.0.1", server.port
        )
        await wire.start_tls(context, "127.0.0.1", loop.time() + 10, keylog)
        keylog.close()
        assert wire.tls == "records"
        if "-trace" in options:
            assert server.out.read_bytes().count(b"ServerHello, Length") == 2  # HRR, then ServerHello
        server.say(b"* OK first")
        assert await wire.readline(loop.time() + 10) == b"* OK first\n"
        server.say(b"K")
        await server.heard(b"SSL_do_handshake -> 1")
        server.say(b"* " + b"y" * 3000)
        assert await wire.readline(loop.time() + 10) == b"* " + b"y" * 3000 + b"\n"
        big = b"a1 " + b"x" * (100 if "-trace" in options else 40_000)  # (traces cut what is printed)
        wire.write(big + b"\r\n")
        await server.heard(big)
        wire.close()

    asyncio.run(scenario())
