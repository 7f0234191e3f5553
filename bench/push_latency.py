"""Push: how soon new mail reaches the timeline, and what a watched account costs.

    python bench/push_latency.py [--messages 200] [--accounts 1000] [--small 100] [--via both]
    python bench/push_latency.py --skip-memory          (latency only)
    python bench/push_latency.py --skip-latency         (memory only)
    python bench/push_latency.py --via idle             (latency of one path: idle | dovecot-hook)

(a) delivery -> timeline latency. A private Dovecot (inboxlink.testing.dovecot) with one user
    holding 200 realistic messages; `inboxlink pair imap` (plaintext on loopback, as the other
    benchmarks), a person record for the sender of the mail to come, then `inboxlink serve` as a
    child process with INBOXLINK_SYNC_INTERVAL_SECONDS=1e9: after the first sync, only push brings
    mail in. `--messages` messages are delivered one at a time through LMTP (as an MTA delivers),
    a random 0.5-1.5 x `--pause` seconds apart (a fixed gap phase-locks with the server's timer).
    Latency = from `deliver_lmtp` returning to the message being linked to the person: a row of
    `links` joined to `messages` by Message-ID, which the engine commits in the same transaction
    as the message (what the person's timeline shows). This process polls that with its own
    SQLite connection every millisecond (WAL: it never blocks the writer). At the end
    `crm.timeline.timeline()` must list every delivered message. A second, raw connection of the
    same user in NOTIFY + IDLE (`NotifyProbe`) records when the server tells a client, which
    splits the median into the server's part and inboxlink's. Reported: p50, p90, p99, max.
    That is the IMAP watchers' path (sync/push.py; `--via idle`, JSON key "latency").

    `--via dovecot-hook` (JSON key "latency_dovecot_hook") measures Dovecot's delivery hook
    (api/routes_push_dovecot.py) the same way, with the same delivery -> linked definition: the
    private Dovecot runs with `push_url` (push_notification plugin, OX driver) pointed at serve's
    PUT /push/dovecot with the token serve derives from its key (what GET /push/dovecot shows), the
    user is registered (`register_push`), and serve runs with INBOXLINK_PUSH_ENABLED=0: no watcher,
    so the hook alone brings mail in (no NotifyProbe; the server's-share keys are null). Dovecot
    sends the hook inside the delivery, before LMTP answers, so a sync may already be under way
    when `deliver_lmtp` returns: hence also `from_delivery_start_p50_ms` (from before the LMTP
    call) and `lmtp_delivery_p50_ms`/`_p99_ms` (how long LMTP took; reported for both paths, it
    shows what waiting for the hook's answer costs a delivery). `--via both` (the default) runs
    the watchers' path, then the hook's, each with its own Dovecot and home.

(b) client memory per watched account. `--accounts` Dovecot users, each paired (`pair_imap`,
    plaintext); Dovecot sized for them (`max_connections`), the kernel's inotify limit raised
    (`raise_inotify_instances`, root only). A child process opens the runtime, then runs a
    PushWatcher (no scheduler: its trigger only counts) until every account is in IDLE, and reports
    its RSS (VmRSS) and, in a second child, tracemalloc's count of Python allocations, each before
    the watcher started and once all accounts idle. Run twice, with `--small` accounts (a copy of the
    database with the others deleted) and with all: per account = the difference of the two deltas
    over the difference in accounts, so the watcher's fixed costs (thread, loop, executor, TLS
    context) drop out. The same with TLS (`--tls`, port 993-style implicit TLS) as a second pair of
    runs. Dovecot's side is reported too: PSS of its imap processes per session.

Figures print as JSON (also written to bench/out/push_latency.json) and as one human line each.
Client and Dovecot share the same two cores; the script reports the CPU load seen before measuring.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

try:
    import inboxlink  # noqa: F401
except ImportError:  # not installed (pip install -e .): run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from inboxlink.testing import mailgen
from inboxlink.testing.dovecot import Dovecot, free_ports, raise_inotify_instances

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"
SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
CLI = [sys.executable, "-m", "inboxlink.cli"]
SENDER = "dana.customer@customer.example"
PASSWORD = "bench-password-1"


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over `seconds` (/proc/stat): is someone else using the machine?"""

    def sample() -> list[int]:
        with open("/proc/stat") as stat:
            return [int(x) for x in stat.readline().split()[1:]]

    before = sample()
    time.sleep(seconds)
    delta = [b - a for a, b in zip(before, sample(), strict=False)]
    total = sum(delta)
    idle = delta[3] + (delta[4] if len(delta) > 4 else 0)
    return 1.0 - idle / total if total else 0.0


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXLINK_")}
    env.update(INBOXLINK_HOME=str(home), INBOXLINK_ALLOW_PRIVATE_HOSTS="1", INBOXLINK_LOG_LEVEL="WARNING")
    env.update(extra)
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def message(n: int, to: str) -> tuple[bytes, str]:
    m = EmailMessage()
    m["From"] = f"Dana Customer <{SENDER}>"
    m["To"] = to
    m["Subject"] = f"Push latency probe {n}"
    m["Date"] = format_datetime(datetime.now(UTC))
    mid = make_msgid(f"push{n}", domain="customer.example")
    m["Message-ID"] = mid
    m.set_content(f"Hello again, this is probe {n}.\n")
    return bytes(m), mid.strip("<>")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# -- (a) latency -----------------------------------------------------------------------------------
class NotifyProbe(threading.Thread):
    """A second connection of the same user, raw sockets, in NOTIFY + IDLE: when the server tells a
    client about new INBOX mail. Splits the latency into the server's part and inboxlink's."""

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection((host, port))
        self.times: list[float] = []
        self.buf = b""
        self._until(b"* OK")
        for tag, command in (
            (b"p1", f'LOGIN "{user}" "{password}"'.encode()),
            (b"p2", b"NOTIFY SET (personal (MessageNew))"),
        ):
            self.sock.sendall(tag + b" " + command + b"\r\n")
            self._until(tag + b" OK")
        self.sock.sendall(b"p3 IDLE\r\n")
        self._until(b"+")

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _until(self, prefix: bytes) -> None:
        while not self._line().startswith(prefix):
            pass

    def run(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            while True:
                if self._line().startswith(b"* STATUS INBOX"):
                    self.times.append(time.perf_counter())

    def told_after(self, t0: float) -> float | None:
        return next((t for t in self.times if t >= t0), None)


def measure_latency(count: int, pause: float, warmup: int, via: str = "idle") -> dict[str, Any]:
    """(a) for one path: `idle` (serve's IMAP watchers) or `dovecot-hook` (Dovecot's OX driver to
    PUT /push/dovecot, serve without watchers)."""
    from inboxlink.api.routes_push_dovecot import dovecot_push_token
    from inboxlink.config import Settings
    from inboxlink.crm.access import SYSTEM
    from inboxlink.crm.records import RecordInput, RecordService
    from inboxlink.crm.timeline import timeline
    from inboxlink.runtime import Runtime

    hook = via == "dovecot-hook"
    home = Path(tempfile.mkdtemp(prefix="inboxlink-push-bench-", dir=SCRATCH))
    port = free_ports(1)[0]
    base_url = f"http://127.0.0.1:{port}"
    env = env_for(home, INBOXLINK_SYNC_INTERVAL_SECONDS="1e9", INBOXLINK_PUBLIC_URL=base_url)
    push_url = None
    if hook:
        env["INBOXLINK_PUSH_ENABLED"] = "0"  # no IMAP watchers: only the hook brings mail
        # the URL GET /push/dovecot shows the operator (the same key: serve will use this home)
        rt0 = Runtime.open(Settings(home=home, allow_private_hosts=True))
        push_url = f"{base_url}/push/dovecot?token={dovecot_push_token(rt0.settings, rt0.box)}"
        rt0.close()
    with Dovecot(root=SCRATCH, push_url=push_url) as dovecot:
        user = dovecot.add_user("bench@inboxlink.test", PASSWORD)
        if hook:
            dovecot.register_push(user.email)
        dovecot.write_messages(user.email, "INBOX", list(mailgen.generate(200, seed=1, owner=user.email)))
        pair_args = ["pair", "imap", "--email", user.email, "--imap-host", user.host]
        pair_args += ["--imap-port", str(user.port), "--username", user.email, "--security", "none"]
        pair = subprocess.run(
            [*CLI, *pair_args, "--password-stdin", "--json"],
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        account = json.loads(pair.stdout)["id"]
        rt = Runtime.open(Settings(home=home, allow_private_hosts=True))
        person = RecordService(rt.db).create("person", RecordInput(name="Dana Customer", emails=[SENDER])).id
        log = (home / "serve.log").open("wb")
        serve = subprocess.Popen([*CLI, "serve", "--port", str(port)], env=env, stdout=log, stderr=log)
        db = sqlite3.connect(f"file:{home / 'inboxlink.db'}?mode=ro", uri=True, isolation_level=None)
        try:

            def linked(mid: str) -> bool:
                row = db.execute(
                    "select 1 from links join messages on messages.id = links.message_id "
                    "where messages.message_id = ? and links.record_id = ?",
                    (mid, person),
                ).fetchone()
                return row is not None

            def wait(pred: Any, what: str, timeout: float = 60.0) -> None:
                deadline = time.monotonic() + timeout
                while not pred():
                    if serve.poll() is not None:
                        raise SystemExit(f"serve exited: {(home / 'serve.log').read_text()[-2000:]}")
                    if time.monotonic() > deadline:
                        raise SystemExit(f"timed out: {what}")
                    time.sleep(0.05)

            def status() -> str:
                return str(db.execute("select status from accounts where id = ?", (account,)).fetchone()[0])

            def watched() -> bool:
                if hook:
                    return True  # nothing to wait for: Dovecot calls serve
                out = dovecot.doveadm("who", "-1", user.email, check=False)
                return any(line.startswith(user.email) for line in out.splitlines())

            wait(lambda: status() == "connected" and watched(), "first sync and watch")
            probe = None if hook else NotifyProbe(user.host, user.port, user.email, PASSWORD)
            if probe is not None:
                probe.start()
            latencies: list[float] = []
            from_start: list[float] = []  # from the start of the LMTP delivery instead
            deliveries: list[float] = []  # how long LMTP took (Dovecot waits for the hook's answer)
            server: list[float] = []
            slow: list[dict[str, Any]] = []  # deliveries over 1 s: whose fault?
            rng = random.Random(1)
            for n in range(warmup + count):
                raw, mid = message(n, user.email)
                # Random gaps: a fixed one phase-locks with the server's notification timer
                # (Dovecot 2.3 reports a change 500 ms after it happens) and measures the lock.
                time.sleep(pause * (0.5 + rng.random()))
                started = time.perf_counter()
                dovecot.deliver_lmtp(user.email, raw)
                t0 = time.perf_counter()
                deadline = t0 + 30.0
                while not linked(mid):
                    if time.perf_counter() > deadline:
                        raise SystemExit(f"message {n} never reached the timeline")
                    time.sleep(0.001)
                t1 = time.perf_counter()
                if n >= warmup:
                    latencies.append(t1 - t0)
                    from_start.append(t1 - started)
                    deliveries.append(t0 - started)
                    told = probe.told_after(t0) if probe is not None else None
                    if told is not None and told <= t1:
                        server.append(told - t0)
                    if t1 - t0 > 1.0:
                        slow.append(
                            {
                                "n": n,
                                "ms": round((t1 - t0) * 1000),
                                "server_told_ms": round((told - t0) * 1000) if told is not None else None,
                            }
                        )
            with rt.db.engine.connect() as conn:
                shown = timeline(conn, SYSTEM, "person", person, limit=500)
            assert shown["total"] >= warmup + count, shown["total"]
            if probe is not None:
                probe.sock.close()
        finally:
            serve.terminate()
            serve.wait(30)
            log.close()
            db.close()
            rt.close()
            shutil.rmtree(home, ignore_errors=True)
    ms = [x * 1000 for x in latencies]
    server_ms = [x * 1000 for x in server]
    return {
        "via": via,
        "server_notify_p50_ms": round(percentile(server_ms, 0.5), 1) if server_ms else None,
        "inboxlink_share_p50_ms": round(percentile(ms, 0.5) - percentile(server_ms, 0.5), 1)
        if server_ms
        else None,
        "messages": count,
        "pause_s": pause,
        "p50_ms": round(percentile(ms, 0.50), 1),
        "p90_ms": round(percentile(ms, 0.90), 1),
        "p99_ms": round(percentile(ms, 0.99), 1),
        "max_ms": round(max(ms), 1),
        "over_1s": slow,
        "mean_ms": round(statistics.fmean(ms), 1),
        "from_delivery_start_p50_ms": round(percentile([x * 1000 for x in from_start], 0.5), 1),
        "lmtp_delivery_p50_ms": round(percentile([x * 1000 for x in deliveries], 0.5), 1),
        "lmtp_delivery_p99_ms": round(percentile([x * 1000 for x in deliveries], 0.99), 1),
        "target": "p50 <= 200 ms, p99 <= 1000 ms",
        "met": percentile(ms, 0.5) <= 200 and percentile(ms, 0.99) <= 1000,
    }


# -- (b) memory -------------------------------------------------------------------------------------
_RSS = re.compile(r"VmRSS:\s+(\d+) kB")


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        found = _RSS.search(f.read())
    return int(found.group(1)) if found else 0


def memory_child(home: str, expect: int, trace: bool) -> None:
    """Child: run a watcher over every account in `home`; print one JSON line."""
    import gc
    import tracemalloc

    from inboxlink.config import Settings
    from inboxlink.runtime import Runtime
    from inboxlink.sync.push import PushWatcher

    settings = Settings(home=Path(home), allow_private_hosts=True, tls_ca_file=os.environ.get("BENCH_CA"))
    rt = Runtime.open(settings)
    triggers = [0]

    def count(_account: str) -> None:
        triggers[0] += 1

    watcher = PushWatcher(rt.db, rt.box, settings, count, sync_on_connect=False, rescan=3600)
    rt.db.engine.dispose()  # SQLite page caches are the database's, not the watches' (see below)
    gc.collect()
    if trace:
        tracemalloc.start()
    rss0, heap0 = _rss_kb(), tracemalloc.get_traced_memory()[0] if trace else 0
    started = time.monotonic()
    watcher.start()
    while len(watcher.live()) < expect:
        if time.monotonic() - started > 600:
            raise SystemExit(f"only {len(watcher.live())} of {expect} accounts reached IDLE")
        time.sleep(0.2)
    ready = time.monotonic() - started
    time.sleep(2.0)  # let connects' transient objects (executor jobs, handshakes) go
    gc.collect()
    rss_with_db = _rss_kb()
    rt.db.engine.dispose()
    gc.collect()
    rss1, heap1 = _rss_kb(), tracemalloc.get_traced_memory()[0] if trace else 0
    modes = {info.mode for info in watcher.snapshot().values()}
    print(
        json.dumps(
            {
                "accounts": expect,
                "rss_delta_kb": rss1 - rss0,
                "rss_delta_with_db_caches_kb": rss_with_db - rss0,
                "heap_delta_kb": round((heap1 - heap0) / 1024, 1) if trace else None,
                "seconds_to_all_idle": round(ready, 2),
                "modes": sorted(modes),
            }
        ),
        flush=True,
    )
    os._exit(0)  # the measurement is taken; tearing down 1,000 connections politely proves nothing


def _run_child(home: Path, expect: int, trace: bool, ca: str | None) -> dict[str, Any]:
    env = env_for(home, **({"BENCH_CA": ca} if ca else {}))
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(home), str(expect), "1" if trace else "0"],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"memory child failed: {out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _dovecot_pss_kb(dovecot: Dovecot) -> tuple[int, int]:
    """(sessions, summed PSS in kB) of the instance's imap processes."""
    marker = f"dovecot-inboxlink-{dovecot.dir.name}/imap ["
    total = sessions = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path("/proc", entry, "cmdline").read_bytes().decode(errors="replace")
            if marker not in cmd:
                continue
            rollup = Path("/proc", entry, "smaps_rollup").read_text()
        except OSError:
            continue
        found = re.search(r"Pss:\s+(\d+) kB", rollup)
        if found:
            total += int(found.group(1))
            sessions += 1
    return sessions, total


def _subset(home: Path, keep: int, dest: Path) -> None:
    """A copy of the home whose database holds only the first `keep` accounts."""
    shutil.copytree(home, dest)
    db = sqlite3.connect(dest / "inboxlink.db")
    db.execute("pragma foreign_keys=on")
    ids = [r[0] for r in db.execute("select id from accounts order by created_at, id")]
    db.executemany("delete from accounts where id = ?", [(i,) for i in ids[keep:]])
    db.commit()
    db.close()


def _use_tls(home: Path, port: int) -> None:
    db = sqlite3.connect(home / "inboxlink.db")
    rows = db.execute("select id, config from accounts").fetchall()
    for account_id, config in rows:
        c = json.loads(config)
        c.update(imap_port=port, security="tls")
        db.execute("update accounts set config = ? where id = ?", (json.dumps(c), account_id))
    db.commit()
    db.close()


def measure_memory(accounts: int, small: int, variants: list[str]) -> dict[str, Any]:
    from inboxlink.config import Settings
    from inboxlink.providers.imap.provider import ImapConfig
    from inboxlink.runtime import Runtime

    inotify_ok = raise_inotify_instances(accounts + 300)
    base = Path(tempfile.mkdtemp(prefix="inboxlink-push-mem-", dir=SCRATCH))
    results: dict[str, Any] = {"accounts": accounts, "small": small, "inotify_raised": inotify_ok}
    with Dovecot(root=SCRATCH, max_connections=accounts + 100) as dovecot:
        home = base / "all"
        rt = Runtime.open(Settings(home=home, allow_private_hosts=True))
        started = time.monotonic()
        for i in range(accounts):
            user = dovecot.add_user(f"idle{i:05d}@inboxlink.test", PASSWORD)
            config = ImapConfig(user.email, user.host, user.port, user.email, "none")
            rt.accounts.pair_imap(config, PASSWORD)
        rt.close()
        results["pairing_seconds"] = round(time.monotonic() - started, 1)
        for label, ca in (("plain", None), ("tls", str(dovecot.ca_cert_path))):
            if label not in variants:
                continue
            homes = {}
            for n in (small, accounts):
                h = base / f"{label}-{n}"
                _subset(home, n, h)
                if ca:
                    _use_tls(h, dovecot.imaps_port)
                homes[n] = h
            runs: dict[str, Any] = {}
            for n, h in homes.items():
                runs[f"rss_{n}"] = _run_child(h, n, trace=False, ca=ca)
                runs[f"heap_{n}"] = _run_child(h, n, trace=True, ca=ca)
            span = accounts - small
            rss = (runs[f"rss_{accounts}"]["rss_delta_kb"] - runs[f"rss_{small}"]["rss_delta_kb"]) / span
            heap = (runs[f"heap_{accounts}"]["heap_delta_kb"] - runs[f"heap_{small}"]["heap_delta_kb"]) / span
            db = (
                runs[f"rss_{accounts}"]["rss_delta_with_db_caches_kb"]
                - runs[f"rss_{small}"]["rss_delta_with_db_caches_kb"]
            )
            results[label] = {
                "per_account_rss_kb": round(rss, 2),
                "per_account_rss_kb_with_db_caches": round(db / span, 2),
                "per_account_tracemalloc_kb": round(heap, 2),
                "per_account_rss_kb_incl_fixed": round(runs[f"rss_{accounts}"]["rss_delta_kb"] / accounts, 2),
                "runs": runs,
            }
        # Dovecot's side, with every account idle on plaintext (one more child, kept alive meanwhile)
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD.format(home=str(base / f"plain-{accounts}"), n=accounts)],
            env=env_for(base), stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            proc.stdout.readline()  # "ready"
            time.sleep(2.0)
            sessions, pss = _dovecot_pss_kb(dovecot)
            results["dovecot_imap_sessions"] = sessions
            results["dovecot_pss_kb_per_session"] = round(pss / max(sessions, 1), 1)
        finally:
            proc.kill()
            proc.wait()
    shutil.rmtree(base, ignore_errors=True)
    results["target"] = "<= 10 KB per watched account (client)"
    for label in variants:
        m = results[label]
        m["met"] = m["per_account_rss_kb"] <= 10 and m["per_account_tracemalloc_kb"] <= 10
    return results


_HOLD = """
import time, sys
from pathlib import Path
from inboxlink.config import Settings
from inboxlink.runtime import Runtime
from inboxlink.sync.push import PushWatcher
s = Settings(home=Path({home!r}), allow_private_hosts=True)
rt = Runtime.open(s)
w = PushWatcher(rt.db, rt.box, s, lambda a: None, sync_on_connect=False, rescan=3600)
w.start()
while len(w.live()) < {n}:
    time.sleep(0.2)
print("ready", flush=True)
time.sleep(3600)
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=200, help="deliveries timed in (a)")
    parser.add_argument("--warmup", type=int, default=5, help="deliveries before timing")
    parser.add_argument("--pause", type=float, default=1.0, help="mean seconds between deliveries (random)")
    parser.add_argument(
        "--via",
        choices=("idle", "dovecot-hook", "both"),
        default="both",
        help="(a) through serve's IMAP watchers, Dovecot's delivery hook, or each in turn",
    )
    parser.add_argument("--accounts", type=int, default=1000, help="idle accounts in (b)")
    parser.add_argument("--small", type=int, default=100, help="the smaller run of (b)")
    parser.add_argument("--variants", default="plain,tls", help="memory runs: plain, tls or both")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", nargs=3, metavar=("HOME", "N", "TRACE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        home, n, trace = args.memory_child
        memory_child(home, int(n), trace == "1")
        return

    busy = cpu_busy()
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "cpu_busy_before": round(busy, 2),
    }
    if busy > 0.15:
        print(f"warning: CPUs {busy:.0%} busy before measuring; figures are inflated", file=sys.stderr)
    if not args.skip_latency and args.via in ("idle", "both"):
        lat = measure_latency(args.messages, args.pause, args.warmup, "idle")
        report["latency"] = lat
        print(
            f"delivery -> timeline over {lat['messages']} messages (IMAP IDLE/NOTIFY): "
            f"p50 {lat['p50_ms']} ms, p90 {lat['p90_ms']} ms, p99 {lat['p99_ms']} ms, "
            f"max {lat['max_ms']} ms; of the median, "
            f"the server's notification {lat['server_notify_p50_ms']} ms, "
            f"inboxlink {lat['inboxlink_share_p50_ms']} ms "
            f"(target p50 <= 200, p99 <= 1000: {'met' if lat['met'] else 'NOT met'})",
            file=sys.stderr,
        )
    if not args.skip_latency and args.via in ("dovecot-hook", "both"):
        lat = measure_latency(args.messages, args.pause, args.warmup, "dovecot-hook")
        report["latency_dovecot_hook"] = lat
        print(
            f"delivery -> timeline over {lat['messages']} messages (Dovecot's delivery hook): "
            f"p50 {lat['p50_ms']} ms, p90 {lat['p90_ms']} ms, p99 {lat['p99_ms']} ms, "
            f"max {lat['max_ms']} ms; from the start of the delivery p50 "
            f"{lat['from_delivery_start_p50_ms']} ms; LMTP delivery p50 {lat['lmtp_delivery_p50_ms']} ms "
            f"(target p50 <= 200, p99 <= 1000: {'met' if lat['met'] else 'NOT met'})",
            file=sys.stderr,
        )
    if not args.skip_memory:
        variants = args.variants.split(",")
        mem = measure_memory(args.accounts, args.small, variants)
        report["memory"] = mem
        for label in variants:
            m = mem[label]
            print(
                f"memory per watched account ({label}, {args.accounts} idle accounts): "
                f"RSS {m['per_account_rss_kb']} KB, Python heap {m['per_account_tracemalloc_kb']} KB "
                f"(target <= 10 KB); Dovecot {mem['dovecot_pss_kb_per_session']} KB PSS per session",
                file=sys.stderr,
            )
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "push_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
