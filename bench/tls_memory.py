"""What one idle TLS connection of the push watcher costs the client, and where that memory sits.

    python bench/tls_memory.py                         (every variant, 200 -> 1,000 connections)
    python bench/tls_memory.py --variants tls,plain --small 100 --large 500
    python bench/tls_memory.py --stages                 (also: C heap per stage of one connection)
    python bench/tls_memory.py --chain                  (the server sends a CA-issued RSA chain)

One private Dovecot (inboxlink.testing.dovecot) with one user; every variant runs in a fresh child
process, which opens connections from one asyncio loop in a thread (as `PushWatcher.start()` does)
with push.py's own wire code (`_Wire`, `_Session`: `SSLObject` over two `MemoryBIO`s, the context
`PushWatcher._context()` builds) and takes each one as far as a watch goes: implicit TLS
handshake, greeting, LOGIN, EXAMINE INBOX, NOTIFY SET, IDLE. Then, at `--small` and again at
`--large` open connections (after a 20-connection warm-up, so one-time costs such as OpenSSL's
algorithm fetches fall out), it records:

- RSS (VmRSS);
- glibc's `mallinfo2()` summed over all arenas: `uordblks` (bytes in use in the heap),
  `fordblks` (free bytes the heap keeps: fragmentation), `hblkhd` (bytes in mmap'd chunks);
- Python's own allocations (`tracemalloc`, in a second child of the same variant: tracing costs
  memory of its own and would skew the first figures).

Per connection = (large - small) / (large - small connections): RSS slope, C heap in use, heap
kept free, Python allocations. `uordblks` includes what Python allocates through malloc (objects
over 512 bytes, arenas of small ones), so OpenSSL's share is roughly in-use minus Python.

Variants (`--variants`, comma-separated; default all):

    plain         no TLS: the connection's own cost (socket, transport, _Wire, _Session, task)
    handoff       the watcher as it is: TLS 1.3 (default context, certificate verified) by OpenSSL,
                  then handed off to tls13.RecordLayer and OpenSSL's connection freed
    tls           OpenSSL keeping the session for the connection's life (push_tls_handoff off);
                  every variant below is this one with one thing changed
    trim          tls, then glibc malloc_trim(0) before each snapshot
    arena1        tls with MALLOC_ARENA_MAX=1 (every thread allocates in the main arena)
    mainthread    tls with the loop in the main thread (main arena, as `inboxlink watch`)
    noticket      tls with ssl.OP_NO_TICKET
    chacha        tls with TLS_CHACHA20_POLY1305_SHA256 as the only TLS 1.3 suite (ctypes into
                  libssl: CPython 3.11 has no setter for TLS 1.3 suites)
    aes128        the same with TLS_AES_128_GCM_SHA256
    noverify      certificate not verified (a data point only: never an option for the watcher)
    tls12         TLS 1.2 at most (a data point only)
    freebuf       tls, then OpenSSL SSL_free_buffers() on every connection (ctypes; what the
                  record buffers still hold when idle)
    handshake     tls, but stop after the handshake and greeting (no LOGIN/IDLE)

By default the server's certificate is the private Dovecot's own: one self-signed EC P-256
certificate (~450 bytes). `--chain` makes the server send what public IMAP servers send instead: an
RSA-2048 leaf and its RSA-2048 intermediate (~2 KB on the wire), issued by a private root the client
trusts. The client keeps the parsed chain for the life of the connection (SSL_SESSION).

`--stages` adds, per variant, a sequential pass of 50 connections that reads `uordblks` after
each step of one connection (SSL object made, handshake, greeting, LOGIN, EXAMINE, NOTIFY, IDLE)
and prints the median growth of each step. The ctypes pokes (chacha, aes128, freebuf, the
SSL_get_mode read-out) read the SSL_CTX / SSL pointer that CPython 3.11 keeps right after the
object header of `_ssl._SSLContext` / `_ssl._SSLSocket`: measurement only, never product code.

Prints a table and one JSON object (also written to bench/out/tls_memory.json). Memory figures do
not depend on CPU load; the script prints none of time.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import inboxlink  # noqa: F401
except ImportError:  # not installed (pip install -e .): run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"
SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
USER = "tlsmem@inboxlink.test"
PASSWORD = "bench-password-1"
VARIANTS = (
    "plain",
    "handoff",
    "tls",
    "trim",
    "arena1",
    "mainthread",
    "noticket",
    "chacha",
    "aes128",
    "noverify",
    "tls12",
    "freebuf",
    "handshake",
)
WARMUP = 20
_RSS = re.compile(r"VmRSS:\s+(\d+) kB")
_SSL_MODE_RELEASE_BUFFERS = 0x10
_SSL_CTRL_MODE = 33


# -- glibc and OpenSSL through ctypes (measurement only) ------------------------------------------
class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            *("arena", "ordblks", "smblks", "hblks", "hblkhd"),
            *("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"),
        )
    ]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def mallinfo() -> dict[str, int]:
    _libc.mallinfo2.restype = _Mallinfo2
    m = _libc.mallinfo2()
    return {"uordblks": m.uordblks, "fordblks": m.fordblks, "hblkhd": m.hblkhd, "arena": m.arena}


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        found = _RSS.search(f.read())
    return int(found.group(1)) if found else 0


def _libssl() -> ctypes.CDLL:
    import _ssl

    # the libssl _ssl is linked against is already loaded: dlopen by name finds the same one
    del _ssl
    lib = ctypes.CDLL("libssl.so.3")
    lib.SSL_ctrl.restype = ctypes.c_long
    lib.SSL_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.SSL_free_buffers.argtypes = [ctypes.c_void_p]
    return lib


def _pointer_after_header(obj: object, skip: int = 0) -> int:
    """The pointer CPython 3.11 keeps `skip` words after the object header (ob_refcnt, ob_type)."""
    return ctypes.c_void_p.from_address(id(obj) + 16 + 8 * skip).value or 0


def ssl_ctx_pointer(context: ssl.SSLContext) -> int:
    return _pointer_after_header(context)  # PySSLContext: { PyObject_HEAD; SSL_CTX *ctx; ... }


def ssl_pointer(obj: ssl.SSLObject) -> int:
    return _pointer_after_header(obj._sslobj, skip=1)  # PySSLSocket: { HEAD; Socket; SSL *ssl; ...}


# -- the child: one variant ------------------------------------------------------------------------
def build_context(variant: str, ca: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)  # as PushWatcher._context()
    if variant == "noticket":
        context.options |= ssl.OP_NO_TICKET
    elif variant == "noverify":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif variant == "tls12":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    elif variant in ("chacha", "aes128"):
        suite = b"TLS_CHACHA20_POLY1305_SHA256" if variant == "chacha" else b"TLS_AES_128_GCM_SHA256"
        if _libssl().SSL_CTX_set_ciphersuites(ssl_ctx_pointer(context), suite) != 1:
            raise SystemExit("SSL_CTX_set_ciphersuites failed")
    return context


def child(variant: str, port: int, ca: str, small: int, large: int, trace: bool, stages: bool) -> None:
    import tracemalloc

    from inboxlink.sync.push import _Session, _Wire
    from inboxlink.sync.tls13 import KeyLog

    tls = variant != "plain"
    stop_at_greeting = variant == "handshake"
    context = build_context(variant, ca) if tls else None
    keylog = KeyLog(context) if context is not None and variant == "handoff" else None
    wires: list[_Wire] = []
    sessions: list[_Session] = []
    lib = _libssl() if tls else None
    info: dict[str, Any] = {"variant": variant}

    async def one(loop: asyncio.AbstractEventLoop, scratch: memoryview, mark: Callable[[str], None]) -> None:
        deadline = loop.time() + 60
        _, wire = await loop.create_connection(lambda: _Wire(loop, scratch), "127.0.0.1", port)
        if context is not None:
            await wire.start_tls(context, "127.0.0.1", deadline, keylog)
            mark("handshake")
        session = _Session(wire, 60)
        greeting = await wire.readline(deadline)
        assert greeting.startswith(b"* OK"), greeting
        mark("greeting")
        wires.append(wire)
        sessions.append(session)
        if stop_at_greeting:
            return
        status, text = await session.login(USER, PASSWORD, True)
        assert status == b"OK", text
        mark("login")
        status, text = await session.command(b"EXAMINE INBOX")
        assert status == b"OK", text
        mark("examine")
        status, text = await session.command(
            b"NOTIFY SET (selected (MessageNew MessageExpunge FlagChange))"
            b" (personal (MessageNew MessageExpunge FlagChange MailboxName))"
        )
        assert status == b"OK", text
        mark("notify")
        session.send(b"IDLE")
        await session.continuation(on_untagged=lambda _line: None)
        mark("idle")

    def snapshot() -> dict[str, Any]:
        gc.collect()
        if variant == "trim":
            _libc.malloc_trim(0)
        if variant == "freebuf" and lib is not None:
            for w in wires:
                assert w._tls is not None
                lib.SSL_free_buffers(ssl_pointer(w._tls))
        snap: dict[str, Any] = {"rss_kb": rss_kb(), **mallinfo()}
        snap["python"] = tracemalloc.get_traced_memory()[0] if trace else None
        return snap

    async def run() -> None:
        loop = asyncio.get_running_loop()
        scratch = memoryview(bytearray(64 << 10))
        gate = asyncio.Semaphore(32)

        def no_mark(_stage: str) -> None:
            pass

        async def gated() -> None:
            async with gate:
                await one(loop, scratch, no_mark)

        async def open_until(n: int) -> None:
            await asyncio.gather(*(gated() for _ in range(n - len(wires))))
            await asyncio.sleep(1.0)  # let late server lines (and tickets) arrive

        await open_until(WARMUP)
        info["kept_by"] = wires[0].tls if wires else None
        if wires and wires[0]._tls is not None and lib is not None:
            tls_obj = wires[0]._tls
            info["protocol"] = tls_obj.version()
            info["cipher"] = (tls_obj.cipher() or ("?",))[0]
            info["release_buffers"] = bool(
                lib.SSL_ctrl(ssl_pointer(tls_obj), _SSL_CTRL_MODE, 0, None) & _SSL_MODE_RELEASE_BUFFERS
            )
        if trace:
            tracemalloc.start()
        info["small"] = {"n": small} | (await _after(open_until, small, snapshot))
        info["large"] = {"n": large} | (await _after(open_until, large, snapshot))
        if stages and not trace:
            info["stages"] = await staged(loop, scratch)

    async def staged(loop: asyncio.AbstractEventLoop, scratch: memoryview) -> dict[str, float]:
        """Sequentially: C heap growth of each step of one connection (median of 50)."""
        growth: dict[str, list[int]] = {}
        last = [0]

        def mark(stage: str) -> None:
            now = mallinfo()["uordblks"]
            growth.setdefault(stage, []).append(now - last[0])
            last[0] = now

        for _ in range(50):
            gc.collect()
            last[0] = mallinfo()["uordblks"]

            await one(loop, scratch, mark)
            await asyncio.sleep(0.05)
            gc.collect()
            mark("settled")
        return {k: round(statistics.median(v) / 1024, 2) for k, v in growth.items()}

    def main() -> None:
        asyncio.run(run())

    if variant == "mainthread":
        main()
    else:
        t = threading.Thread(target=main, name="push")
        t.start()
        t.join()
    print(json.dumps(info), flush=True)
    os._exit(0)  # the figures are taken; closing 1,000 connections politely proves nothing


async def _after(open_until: Callable[[int], Any], n: int, snapshot: Callable[[], Any]) -> Any:
    await open_until(n)
    return snapshot()


# -- the parent ------------------------------------------------------------------------------------
def write_chain(cert_path: Path, key_path: Path, root_path: Path, host: str) -> None:
    """RSA-2048 root -> intermediate -> leaf for `host`; cert_path gets leaf + intermediate (what
    the server sends), key_path the leaf's key, root_path the root (what the client trusts)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def issue(
        subject: str, key: rsa.RSAPrivateKey, issuer: x509.Certificate | None, signer: rsa.RSAPrivateKey
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer.subject if issuer is not None else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=90))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
            )
        )
        if subject == host:
            san = [x509.DNSName(host), x509.IPAddress(ipaddress.ip_address(host))]
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
            builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        return builder.sign(signer, hashes.SHA256())

    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]
    root = issue("inboxlink bench root", keys[0], None, keys[0])
    inter = issue("inboxlink bench intermediate", keys[1], root, keys[0])
    leaf = issue(host, keys[2], inter, keys[1])
    pem = serialization.Encoding.PEM
    cert_path.write_bytes(leaf.public_bytes(pem) + inter.public_bytes(pem))
    root_path.write_bytes(root.public_bytes(pem))
    key_path.write_bytes(
        keys[2].private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def dovecot_with_chain(max_connections: int) -> Any:
    """A private Dovecot whose IMAPS port sends `write_chain`'s leaf + intermediate."""
    from inboxlink.testing.dovecot import Dovecot

    class ChainDovecot(Dovecot):
        @property
        def trust_path(self) -> Path:
            return self.dir / "root.pem"

        def _prepare(self, root: Path) -> None:
            super()._prepare(root)  # writes the config that reads cert.pem and key.pem at start
            write_chain(self.ca_cert_path, root / "key.pem", self.trust_path, self.host)

    return ChainDovecot(root=SCRATCH, max_connections=max_connections)


def run_variant(
    variant: str, port: int, ca: str, small: int, large: int, trace: bool, stages: bool
) -> dict[str, Any]:
    env = dict(os.environ)
    if variant == "arena1":
        env["MALLOC_ARENA_MAX"] = "1"
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    args = [variant, str(port), ca, str(small), str(large), "1" if trace else "0", "1" if stages else "0"]
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env, timeout=900
    )
    if out.returncode != 0:
        raise SystemExit(f"child {variant} failed: {out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def per_connection(run: dict[str, Any], traced: dict[str, Any]) -> dict[str, Any]:
    a, b = run["small"], run["large"]
    span = b["n"] - a["n"]
    row = {
        k: round((b[k] - a[k]) / span / 1024, 2) for k in ("uordblks", "fordblks", "hblkhd")
    }  # bytes -> KB
    row["rss"] = round((b["rss_kb"] - a["rss_kb"]) / span, 2)
    row["python"] = round((traced["large"]["python"] - traced["small"]["python"]) / span / 1024, 2)
    for k in ("kept_by", "protocol", "cipher", "release_buffers", "stages"):
        if k in run:
            row[k] = run[k]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=1000)
    parser.add_argument("--stages", action="store_true", help="also the C heap per step of a connection")
    parser.add_argument("--chain", action="store_true", help="the server sends an RSA leaf + intermediate")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        variant, port, ca, small, large, trace, stages = args.child
        child(variant, int(port), ca, int(small), int(large), trace == "1", stages == "1")
        return

    from inboxlink.testing.dovecot import Dovecot, raise_inotify_instances

    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(sorted(unknown))}")
    raise_inotify_instances(args.large + 300)  # else Dovecot polls; the client's side is the same
    results: dict[str, Any] = {"small": args.small, "large": args.large, "chain": args.chain, "variants": {}}
    limit = args.large + WARMUP + 100
    server = dovecot_with_chain(limit) if args.chain else Dovecot(root=SCRATCH, max_connections=limit)
    with server as dovecot:
        dovecot.add_user(USER, PASSWORD)
        ca = str(dovecot.trust_path if args.chain else dovecot.ca_cert_path)
        for variant in variants:
            port = dovecot.imap_port if variant == "plain" else dovecot.imaps_port
            run = run_variant(variant, port, ca, args.small, args.large, False, args.stages)
            traced = run_variant(variant, port, ca, args.small, args.large, True, False)
            row = per_connection(run, traced)
            results["variants"][variant] = row
            print(
                f"{variant:11} RSS {row['rss']:6.2f}  C heap in use {row['uordblks']:6.2f}  "
                f"kept free {row['fordblks']:6.2f}  mmap {row['hblkhd']:5.2f}  Python {row['python']:5.2f}"
                f"  KB/connection  {row.get('protocol', '')} {row.get('cipher', '')}"
                + (f"  stages {row['stages']}" if "stages" in row else ""),
                file=sys.stderr,
                flush=True,
            )
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / ("tls_memory_chain.json" if args.chain else "tls_memory.json")).write_text(
        json.dumps(results, indent=2) + "\n"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
