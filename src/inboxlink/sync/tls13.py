"""TLS 1.3 records after the handshake, for connections that mostly wait: the push watches.

OpenSSL authenticates the server and agrees the keys (the handshake: certificate, hostname,
everything `ssl` checks). What an idle TLS 1.3 connection needs after that is small: for each
direction a traffic secret, the key and IV derived from it, and a record counter (RFC 8446 §5,
§7.3). OpenSSL keeps ~21 KB per connection for it instead (its SSL object, the peer certificate,
the session, the cipher contexts: measured in docs/architecture.md "TLS memory"), which is what an
idle watch costs over TLS. `RecordLayer` is that small state, and the wire hands a connection to it
once the handshake is done, freeing OpenSSL's; Linux's kernel TLS takes over connections the same
way. The AEADs are `cryptography`'s (OpenSSL underneath), one short-lived object per record.

The two secrets come from OpenSSL's key log (`SSLContext.keylog_filename`, the SSLKEYLOGFILE
format): `KeyLog` points it at an anonymous in-memory file (memfd) and empties it at every read,
so they never touch a disk, nor a log. They are read after each handshake step of a connection;
one event loop drives all handshakes of a context, so what a step logged belongs to its connection.

After the hand-off the layer reads application data, skips NewSessionTicket (no resumption is
kept), follows KeyUpdate (and answers one when asked, §4.6.3), and turns a close_notify or any
other alert, a record that fails authentication, or anything unexpected into `TLSFailure`, which
drops the connection (a watch reconnects).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

_APPLICATION_DATA, _HANDSHAKE, _ALERT = 23, 22, 21
_NEW_SESSION_TICKET, _KEY_UPDATE = 4, 24
_MAX_CIPHERTEXT = (1 << 14) + 256  # RFC 8446 §5.2
_MAX_PLAINTEXT = 1 << 14
_TAG = 16  # all three AEADs of TLS 1.3's suites
_CLIENT, _SERVER = b"CLIENT_TRAFFIC_SECRET_0", b"SERVER_TRAFFIC_SECRET_0"


class TLSFailure(Exception):
    """The TLS session cannot go on: the peer closed it, sent an alert or a record that is not
    genuine, or broke the protocol. `plain`: the application data of the records before the one
    that ended it, in the same `open()` (what OpenSSL would have returned before the error)."""

    plain: bytes = b""


@dataclass(frozen=True)
class _Suite:
    aead: type[AESGCM] | type[ChaCha20Poly1305]
    hash: hashes.HashAlgorithm
    key_length: int


SUITES = {
    "TLS_AES_128_GCM_SHA256": _Suite(AESGCM, hashes.SHA256(), 16),
    "TLS_AES_256_GCM_SHA384": _Suite(AESGCM, hashes.SHA384(), 32),
    "TLS_CHACHA20_POLY1305_SHA256": _Suite(ChaCha20Poly1305, hashes.SHA256(), 32),
}


def expand_label(suite: _Suite, secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-Label with an empty context (RFC 8446 §7.1)."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(suite.hash, length, info).derive(secret)


class _Direction:
    """One direction's traffic secret, the key and IV derived from it, and its record counter."""

    __slots__ = ("iv", "key", "secret", "seq")

    def __init__(self, suite: _Suite, secret: bytes) -> None:
        self.secret = secret
        self.key = expand_label(suite, secret, b"key", suite.key_length)
        self.iv = int.from_bytes(expand_label(suite, secret, b"iv", 12), "big")
        self.seq = 0

    def nonce(self) -> bytes:
        nonce = (self.iv ^ self.seq).to_bytes(12, "big")  # §5.3
        self.seq += 1
        return nonce

    def updated(self, suite: _Suite) -> _Direction:
        return _Direction(suite, expand_label(suite, self.secret, b"traffic upd", suite.hash.digest_size))


class RecordLayer:
    """A client's TLS 1.3 application traffic, from the first record after the server's Finished."""

    __slots__ = ("_failure", "_handshake", "_pending", "_recv", "_send", "_suite")

    def __init__(self, cipher: str, client_secret: bytes, server_secret: bytes) -> None:
        suite = SUITES.get(cipher)
        if suite is None:
            raise ValueError(f"no record layer for {cipher}")
        self._suite = suite
        self._send = _Direction(suite, client_secret)
        self._recv = _Direction(suite, server_secret)
        self._pending = b""  # the start of a record not yet whole
        self._handshake = b""  # the start of a post-handshake message not yet whole
        self._failure: str | None = None  # why the session ended: nothing is read after that

    def seal(self, data: bytes, kind: int = _APPLICATION_DATA) -> bytes:
        """`data` as records, ready for the socket."""
        out = []
        for start in range(0, max(len(data), 1), _MAX_PLAINTEXT):
            inner = data[start : start + _MAX_PLAINTEXT] + bytes([kind])
            header = b"\x17\x03\x03" + (len(inner) + _TAG).to_bytes(2, "big")
            out.append(header + self._suite.aead(self._send.key).encrypt(self._send.nonce(), inner, header))
        return b"".join(out)

    def open(self, data: bytes) -> tuple[bytes, bytes]:
        """Bytes from the socket in; (application data, bytes to send back) out, either maybe b"".
        Raises TLSFailure when the session is over (see the module docstring), and again at every
        later call."""
        if self._failure is not None:
            raise TLSFailure(self._failure)
        plain: list[bytes] = []
        try:
            return self._open(data, plain)
        except TLSFailure as exc:
            self._failure = str(exc)
            self._pending = self._handshake = b""
            exc.plain = b"".join(plain)
            raise

    def _open(self, data: bytes, plain: list[bytes]) -> tuple[bytes, bytes]:
        buf = self._pending + data if self._pending else data
        reply: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 5:
            length = int.from_bytes(buf[pos + 3 : pos + 5], "big")
            # legacy_record_version is 0x0303 in every TLS 1.3 record (§5.1): OpenSSL checks it
            if buf[pos : pos + 3] != b"\x17\x03\x03" or length > _MAX_CIPHERTEXT:
                raise TLSFailure("the server sent a record that is not TLS 1.3 application traffic")
            end = pos + 5 + length
            if end > len(buf):
                break
            header, body = buf[pos : pos + 5], buf[pos + 5 : end]
            pos = end
            try:
                inner = self._suite.aead(self._recv.key).decrypt(self._recv.nonce(), body, header)
            except InvalidTag:
                raise TLSFailure("a TLS record failed its integrity check") from None
            inner = inner.rstrip(b"\x00")  # §5.4 padding
            if not inner:
                raise TLSFailure("the server sent a TLS record without a content type")
            kind, content = inner[-1], inner[:-1]
            if len(content) > _MAX_PLAINTEXT:  # §5.2 record_overflow (OpenSSL: after the padding)
                raise TLSFailure("the server sent an oversized TLS record")
            if self._handshake and kind != _HANDSHAKE:  # §5.1: no records inside a message
                raise TLSFailure("the server interleaved a handshake message with other records")
            if kind == _APPLICATION_DATA:
                plain.append(content)
            elif kind == _HANDSHAKE:
                if not content:  # §5.1: no zero-length handshake fragments
                    raise TLSFailure("the server sent an empty handshake record")
                reply.append(self._post_handshake(content))
            elif kind == _ALERT:
                if content[-1:] == b"\x00":
                    raise TLSFailure("the server closed the TLS session")
                raise TLSFailure(f"the server sent TLS alert {content[-1] if content else '?'}")
            else:
                raise TLSFailure(f"the server sent a TLS record of type {kind}")
        self._pending = buf[pos:]
        return b"".join(plain), b"".join(reply)

    def _post_handshake(self, content: bytes) -> bytes:
        """NewSessionTicket: skipped. KeyUpdate: the next records use the next key (§4.6.3)."""
        buf = self._handshake + content
        reply = b""
        while len(buf) >= 4:
            length = int.from_bytes(buf[1:4], "big")
            if len(buf) < 4 + length:
                break
            kind, body, buf = buf[0], buf[4 : 4 + length], buf[4 + length :]
            if kind == _KEY_UPDATE:
                if length != 1 or body[0] > 1:
                    raise TLSFailure("the server sent a malformed KeyUpdate")
                if buf:  # §5.1: a key change ends a record
                    raise TLSFailure("the server's KeyUpdate did not end its record")
                self._recv = self._recv.updated(self._suite)
                if body[0] == 1:  # update_requested: ours goes out under the current key
                    reply += self.seal(b"\x18\x00\x00\x01\x00", _HANDSHAKE)
                    self._send = self._send.updated(self._suite)
            elif kind != _NEW_SESSION_TICKET:
                raise TLSFailure(f"the server sent handshake message {kind} after the handshake")
        if len(buf) > _MAX_PLAINTEXT:
            raise TLSFailure("the server sent an oversized handshake message")
        self._handshake = buf
        return reply


class KeyLog:
    """OpenSSL's key log of one `SSLContext`, in an anonymous memory file emptied at every `take()`."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._fd = os.memfd_create("inboxlink-tls-keys", os.MFD_CLOEXEC)
        try:
            context.keylog_filename = f"/proc/self/fd/{self._fd}"
        except BaseException:
            os.close(self._fd)
            raise

    @staticmethod
    def available() -> bool:
        """Whether a memfd can be made here (the call may exist and still fail: an old kernel, a
        seccomp filter) and /proc is there for OpenSSL to open it by."""
        if not hasattr(os, "memfd_create") or not Path("/proc/self/fd").is_dir():
            return False
        try:
            fd = os.memfd_create("inboxlink-tls-probe", os.MFD_CLOEXEC)
        except OSError:
            return False
        os.close(fd)
        return True

    def take(self) -> dict[bytes, bytes]:
        """The application traffic secrets logged since the last call, by label."""
        size = os.fstat(self._fd).st_size
        if not size:
            return {}
        data = os.pread(self._fd, size, 0)
        os.ftruncate(self._fd, 0)  # OpenSSL appends (O_APPEND): its next line starts the file again
        found: dict[bytes, bytes] = {}
        for line in data.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] in (_CLIENT, _SERVER):
                found[parts[0]] = bytes.fromhex(parts[2].decode("ascii"))
        return found

    def close(self) -> None:
        os.close(self._fd)


def hand_off(cipher: str, version: str | None, secrets: dict[bytes, bytes]) -> RecordLayer | None:
    """A record layer for a finished handshake, or None when this one cannot take it over."""
    if version != "TLSv1.3" or cipher not in SUITES or _CLIENT not in secrets or _SERVER not in secrets:
        return None
    return RecordLayer(cipher, secrets[_CLIENT], secrets[_SERVER])
