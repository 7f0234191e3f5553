"""inboxlink's IMAP sync against mbsync and raw imaplib, on a private Dovecot with a realistic mailbox.

    python bench/sync_vs_mbsync.py [--messages 20000] [--runs 3] [--seed 1]
    python bench/sync_vs_mbsync.py --rss-only --messages 100000

What it does:

1. starts a private Dovecot (inboxlink.testing.dovecot) and writes `--messages` generated messages
   (inboxlink.testing.mailgen: INBOX 70 %, Sent 15 %, Archive 15 %) into one user's Maildir;
2. warms the server up, untimed, with mbsync and the imaplib full fetch (Dovecot builds its index
   and cache files on first access);
3. `--runs` times, interleaved, each in a fresh child process after a settle pause (sync(2), 1 s):
   wall time measured here, CPU seconds of the child from os.wait4, peak RSS of the child from its
   VmHWM (os.wait4's ru_maxrss alone would include this script's RSS: see `run_child`):
     mbsync               downloads everything into a fresh Maildir on /dev/shm (plaintext port,
                          SSLType None, AuthMechs LOGIN: the same transport inboxlink uses here)
     inboxlink sync       `inboxlink pair imap ... --security none` (not timed), then
                          `inboxlink sync ACCOUNT --once --json` (timed), INBOXLINK_HOME fresh on /dev/shm
     inboxlink headers    the same with `--headers-only`
     imaplib full         UID FETCH (UID FLAGS INTERNALDATE BODY.PEEK[]) over every folder
     imaplib headers      UID FETCH (UID BODY.PEEK[HEADER]) over every folder
   (imaplib fetches 2,000 UIDs per command, --imaplib-chunk; 0 fetches 1:* at once). The imaplib
   children time themselves in-process too (interpreter start excluded), as inboxlink's JSON does.
4. prints a table (median seconds, in-process seconds, msg/s, CPU s, peak RSS) and the ratios
   inboxlink/mbsync (full sync, wall time) and inboxlink/imaplib (headers-only rate, in-process
   times of both), and writes bench/out/sync_vs_mbsync.json.

`--rss-only` builds the mailbox, warms the server up with mbsync, then runs one mbsync (for
reference) and one full inboxlink sync to report peak RSS; results go to
bench/out/sync_vs_mbsync_rss.json.

The script warns when the CPUs were busy before measuring (another test run or benchmark on a
2-core machine doubles every number here); results are only comparable on an idle machine.

Until the inboxlink CLI exists (or when `inboxlink sync --help` fails) its rows say
"inboxlink CLI not available" and the rest is measured as usual.
"""

from __future__ import annotations

import argparse
import imaplib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:
    import inboxlink  # noqa: F401
except ImportError:  # not installed (pip install -e .): run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from inboxlink.testing import mailgen
from inboxlink.testing.dovecot import Dovecot, MailUser, free_ports
from inboxlink.testing.dovecot import is_available as dovecot_available

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"
SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
USER = "bench@inboxlink.test"
PASSWORD = "bench-password-1"
CHILD_TIMEOUT = 3600.0
UNAVAILABLE = "inboxlink CLI not available"
_VMHWM = re.compile(rb"VmHWM:\s+(\d+) kB")


@dataclass
class Run:
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float  # the child's user + system CPU (the server's is not included)
    messages: int | None = None
    inner_seconds: float | None = None  # as measured by the child itself
    fetched_bytes: int | None = None


@dataclass
class Result:
    name: str
    runs: list[Run] = field(default_factory=list)
    error: str | None = None

    @property
    def median_seconds(self) -> float | None:
        return statistics.median(r.seconds for r in self.runs) if self.runs else None

    @property
    def median_inner_seconds(self) -> float | None:
        inner = [r.inner_seconds for r in self.runs if r.inner_seconds is not None]
        return statistics.median(inner) if inner else None

    @property
    def peak_rss_mb(self) -> float | None:
        return max(r.peak_rss_mb for r in self.runs) if self.runs else None

    def messages(self, default: int) -> int:
        counted = [r.messages for r in self.runs if r.messages is not None]
        return counted[-1] if counted else default

    def summary(self, expected: int) -> dict[str, Any]:
        median = self.median_seconds
        inner = self.median_inner_seconds
        count = self.messages(expected)
        return {
            "error": self.error,
            "runs": [asdict(r) for r in self.runs],
            "median_seconds": median,
            "median_inner_seconds": inner,
            "messages": count,
            "msg_per_s": count / median if median else None,
            "msg_per_s_inner": count / inner if inner else None,
            "peak_rss_mb": self.peak_rss_mb,
            "median_cpu_seconds": statistics.median(r.cpu_seconds for r in self.runs) if self.runs else None,
        }


# --------------------------------------------------------------------------- child processes


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
    return out


def run_child(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    cwd: Path | None = None,
) -> tuple[int, float, float, float, bytes, bytes]:
    """Run one child; return (exit code, wall s, peak RSS MB, CPU s of that child, stdout, stderr).

    Peak RSS is the sum of the VmHWM of the child and of its descendants, polled from /proc while it
    runs (each the high-water mark of its own address space, so only growth in the last poll
    interval could be missed). wait4's ru_maxrss is not usable alone: the kernel folds the pre-exec
    address space into it, and a vfork/fork child's pre-exec address space is this (large)
    process's, so every child would report at least our RSS.
    We keep ru_maxrss as a fallback when /proc cannot be read.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as inp:
        if stdin is not None:
            inp.write(stdin)
            inp.seek(0)
        started = time.perf_counter()
        process = subprocess.Popen(list(argv), stdin=inp, stdout=out, stderr=err, env=env, cwd=cwd)
        deadline = started + CHILD_TIMEOUT
        peaks: dict[int, int] = {}  # pid -> VmHWM kB, for the child and every descendant (workers)
        while True:
            for pid_ in _tree(process.pid):
                try:
                    with open(f"/proc/{pid_}/status", "rb") as status_file:
                        match = _VMHWM.search(status_file.read())
                    if match:
                        peaks[pid_] = max(peaks.get(pid_, 0), int(match[1]))
                except OSError:
                    pass
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.003)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
        out.seek(0)
        err.seek(0)
        # The sum of each process's own peak: an upper bound of the tree's peak (they may not peak
        # together), so a sync that hands work to a worker process is charged for the worker too.
        rss_kb = sum(peaks.values()) or usage.ru_maxrss
        cpu = usage.ru_utime + usage.ru_stime
        return process.returncode, seconds, rss_kb / 1024.0, cpu, out.read(), err.read()


def imaplib_child(mode: str, host: str, port: int, user: str, password: str, chunk: int) -> dict[str, Any]:
    """Body of the imaplib child process: fetch every folder, time it in-process, return counts."""
    items = "(UID BODY.PEEK[HEADER])" if mode == "headers" else "(UID FLAGS INTERNALDATE BODY.PEEK[])"
    started = time.perf_counter()
    messages = fetched = 0
    with imaplib.IMAP4(host, port) as client:
        client.login(user, password)
        typ, listing = client.list()
        folders = []
        for line in listing:
            if not isinstance(line, bytes):
                continue
            match = re.match(rb'\((?P<flags>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)$', line)
            if match and b"\\Noselect" not in match["flags"]:
                folders.append(match["name"].decode())
        for folder in folders:
            typ, data = client.select(folder, readonly=True)
            if typ != "OK" or data[0] == b"0":
                continue
            if chunk <= 0:
                ranges = ["1:*"]
            else:
                typ, found = client.uid("SEARCH", "ALL")
                uids = [int(u) for u in found[0].split()]
                ranges = [
                    f"{uids[i]}:{uids[min(i + chunk, len(uids)) - 1]}" for i in range(0, len(uids), chunk)
                ]
            for uid_range in ranges:
                typ, data = client.uid("FETCH", uid_range, items)
                for item in data:
                    if isinstance(item, tuple):
                        messages += 1
                        fetched += len(item[1])
                del data
    return {"messages": messages, "fetched_bytes": fetched, "seconds": time.perf_counter() - started}


# --------------------------------------------------------------------------- clients


class Mbsync:
    def __init__(self, user: MailUser) -> None:
        self.user = user
        self.binary = shutil.which("mbsync")

    def version(self) -> str | None:
        if self.binary is None:
            return None
        return subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()

    def run(self) -> Run:
        if self.binary is None:
            raise RuntimeError("mbsync not installed (apt-get install isync)")
        work = Path(tempfile.mkdtemp(prefix="bench-mbsync-", dir=SCRATCH))
        try:
            local = work / "mail"
            local.mkdir()
            config = work / "mbsyncrc"
            config.write_text(
                f"IMAPAccount bench\nHost {self.user.host}\nPort {self.user.port}\nUser {self.user.email}\n"
                f'Pass "{self.user.password}"\nSSLType None\nAuthMechs LOGIN\n\n'
                "IMAPStore remote\nAccount bench\n\n"
                f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
                "Channel bench\nFar :remote:\nNear :local:\nPatterns *\nCreate Near\nSync Pull\nSyncState *\n"
            )
            config.chmod(0o600)
            code, seconds, rss, cpu, _, err = run_child([self.binary, "-c", str(config), "-q", "-a"])
            if code != 0:
                raise RuntimeError(f"mbsync exited {code}: {err.decode(errors='replace')[-2000:]}")
            count = sum(
                len(os.listdir(d)) for d in local.rglob("*") if d.is_dir() and d.name in {"cur", "new"}
            )
            return Run(seconds=seconds, peak_rss_mb=rss, cpu_seconds=cpu, messages=count)
        finally:
            shutil.rmtree(work, ignore_errors=True)


class ImaplibBaseline:
    def __init__(self, user: MailUser, mode: str, chunk: int) -> None:
        self.user, self.mode, self.chunk = user, mode, chunk

    def run(self) -> Run:
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--imaplib-child",
            self.mode,
            "--child-port",
            str(self.user.port),
            "--child-user",
            self.user.email,
            "--imaplib-chunk",
            str(self.chunk),
        ]
        code, seconds, rss, cpu, out, err = run_child(argv, stdin=self.user.password.encode())
        if code != 0:
            raise RuntimeError(f"imaplib child exited {code}: {err.decode(errors='replace')[-2000:]}")
        report = json.loads(out)
        return Run(
            seconds=seconds,
            peak_rss_mb=rss,
            cpu_seconds=cpu,
            messages=report["messages"],
            inner_seconds=report["seconds"],
            fetched_bytes=report["fetched_bytes"],
        )


class Inboxlink:
    """The inboxlink CLI as a child process: pair (untimed), then one timed sync."""

    def __init__(self, user: MailUser, command: Sequence[str] | None) -> None:
        self.user = user
        self.command = list(command) if command else self._default_command()
        self.error: str | None = None
        self.smtp_port = free_ports(1)[0]  # nothing listens: pairing an IMAP account does not send mail

    @staticmethod
    def _default_command() -> list[str]:
        script = Path(sys.executable).with_name("inboxlink")
        if script.exists():
            return [str(script)]
        found = shutil.which("inboxlink")
        if found:
            return [found]
        return [sys.executable, "-c", "import sys; from inboxlink.cli import main; sys.exit(main())"]

    def _env(self, home: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(INBOXLINK_HOME=str(home), INBOXLINK_ALLOW_PRIVATE_HOSTS="1")
        src = str(HERE.parent / "src")
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def available(self) -> bool:
        """True when `inboxlink pair imap --help` and `inboxlink sync --help` both succeed."""
        home = Path(tempfile.mkdtemp(prefix="bench-inboxlink-probe-", dir=SCRATCH))
        try:
            for sub in (["pair", "imap", "--help"], ["sync", "--help"]):
                try:
                    result = subprocess.run(
                        [*self.command, *sub],
                        env=self._env(home),
                        capture_output=True,
                        timeout=60,
                        check=False,
                    )
                except (OSError, subprocess.TimeoutExpired) as exc:
                    self.error = f"{UNAVAILABLE}: {exc}"
                    return False
                if result.returncode != 0:
                    detail = result.stderr.decode(errors="replace").strip().splitlines()
                    why = detail[-1] if detail else f"exit {result.returncode}"
                    self.error = f"{UNAVAILABLE} (`{' '.join(sub)}` failed: {why})"
                    return False
            if (
                b"--headers-only"
                not in subprocess.run(
                    [*self.command, "sync", "--help"], env=self._env(home), capture_output=True, check=False
                ).stdout
            ):
                self.error = "inboxlink sync has no --headers-only option"
            return True
        finally:
            shutil.rmtree(home, ignore_errors=True)

    def run(self, headers_only: bool) -> Run:
        home = Path(tempfile.mkdtemp(prefix="bench-inboxlink-", dir=SCRATCH))
        try:
            env = self._env(home)
            pair = [
                *self.command,
                "pair",
                "imap",
                "--email",
                self.user.email,
                "--imap-host",
                self.user.host,
                "--imap-port",
                str(self.user.port),
                "--smtp-host",
                self.user.host,
                "--smtp-port",
                str(self.smtp_port),
                "--username",
                self.user.email,
                "--security",
                "none",
                "--password-stdin",
                "--json",
            ]
            code, _, _, _, out, err = run_child(
                pair, env=env, stdin=(self.user.password + "\n").encode(), cwd=home
            )
            if code != 0:
                raise RuntimeError(f"inboxlink pair exited {code}: {err.decode(errors='replace')[-2000:]}")
            paired = json.loads(out)
            account = str(paired.get("id") or paired.get("account") or self.user.email)
            sync = [
                *self.command,
                "sync",
                account,
                "--once",
                "--json",
                *(["--headers-only"] if headers_only else []),
            ]
            code, seconds, rss, cpu, out, err = run_child(sync, env=env, cwd=home)
            if code != 0:
                raise RuntimeError(f"inboxlink sync exited {code}: {err.decode(errors='replace')[-2000:]}")
            report = _last_json(out)
            return Run(
                seconds=seconds,
                peak_rss_mb=rss,
                cpu_seconds=cpu,
                messages=report.get("messages"),
                inner_seconds=report.get("seconds"),
                fetched_bytes=report.get("fetched_bytes"),
            )
        finally:
            shutil.rmtree(home, ignore_errors=True)


def _last_json(out: bytes) -> dict[str, Any]:
    """The sync's JSON report (the last line that parses as a JSON object)."""
    for line in reversed(out.decode(errors="replace").strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    try:
        value = json.loads(out)
    except ValueError as exc:
        raise RuntimeError(f"inboxlink sync printed no JSON: {out[-500:]!r}") from exc
    if not isinstance(value, dict):
        raise RuntimeError(f"inboxlink sync printed {type(value).__name__}, not an object")
    return value


# --------------------------------------------------------------------------- reporting


def _fmt(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "—"


def print_table(results: dict[str, Result], expected: int) -> None:
    print()
    print(
        f"{'client':<30} {'median s':>9} {'in-proc s':>9} {'msg/s':>9} {'CPU s':>7} {'peak RSS MB':>12}  runs"
    )
    for result in results.values():
        s = result.summary(expected)
        if result.error and not result.runs:
            print(f"{result.name:<30} {result.error}")
            continue
        runs = " ".join(f"{r.seconds:.2f}" for r in result.runs)
        median, inner = _fmt(s["median_seconds"], "9.2f"), _fmt(s["median_inner_seconds"], "9.2f")
        rate, rss = _fmt(s["msg_per_s"], "9,.0f"), _fmt(s["peak_rss_mb"], "12.1f")
        cpu = _fmt(s["median_cpu_seconds"], "7.2f")
        print(f"{result.name:<30} {median} {inner} {rate} {cpu} {rss}  {runs}")
        if result.error:
            print(f"{'':<30} error: {result.error}")


def ratios(results: dict[str, Result], expected: int) -> dict[str, float | None]:
    def rate(name: str, inner: bool = False) -> float | None:
        result = results.get(name)
        if result is None or not result.runs:
            return None
        value = result.summary(expected)["msg_per_s_inner" if inner else "msg_per_s"]
        return float(value) if value is not None else None

    mbsync = results.get("mbsync")
    full = results.get("inboxlink sync")
    wall = (
        full.median_seconds / mbsync.median_seconds
        if full and mbsync and full.median_seconds and mbsync.median_seconds
        else None
    )
    headers = rate("inboxlink sync --headers-only", inner=True)
    baseline = rate("imaplib header FETCH", inner=True)
    return {
        "inboxlink_over_mbsync_wall": wall,
        "headers_only_rate_inboxlink_over_imaplib": headers / baseline if headers and baseline else None,
    }


def settle(seconds: float) -> None:
    """Let the previous client's writes and frees (hundreds of MB on /dev/shm) finish first."""
    os.sync()
    time.sleep(seconds)


def busy_fraction(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over `seconds` (from /proc/stat): is someone else using the machine?"""

    def sample() -> list[int]:
        with open("/proc/stat") as stat:
            return [int(x) for x in stat.readline().split()[1:]]

    before = sample()
    time.sleep(seconds)
    delta = [b - a for a, b in zip(before, sample(), strict=False)]
    total = sum(delta)
    idle = delta[3] + (delta[4] if len(delta) > 4 else 0)
    return 1.0 - idle / total if total else 0.0


def mailbox_bytes(user: MailUser) -> int:
    return sum(
        f.stat().st_size for f in user.maildir.rglob("*") if f.is_file() and f.parent.name in {"cur", "new"}
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rss-only", action="store_true", help="one full inboxlink sync: peak RSS")
    parser.add_argument("--inboxlink", help="command to run the CLI (default: the venv's inboxlink)")
    parser.add_argument("--imaplib-chunk", type=int, default=2000, help="UIDs per imaplib FETCH (0: 1:*)")
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds to idle (after sync(2)) before each measurement"
    )
    parser.add_argument("--server-root", help="parent directory of Dovecot's temp dir (default: system temp)")
    parser.add_argument("--out", type=Path, help="JSON output (default: bench/out/sync_vs_mbsync[_rss].json)")
    parser.add_argument("--imaplib-child", choices=["headers", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--child-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-user", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.imaplib_child:
        password = sys.stdin.readline().rstrip("\n")
        report = imaplib_child(
            args.imaplib_child, "127.0.0.1", args.child_port, args.child_user, password, args.imaplib_chunk
        )
        print(json.dumps(report))
        return 0
    if not dovecot_available():
        print("dovecot not installed (apt-get install dovecot-imapd dovecot-lmtpd)", file=sys.stderr)
        return 2

    out_path = args.out or OUT_DIR / ("sync_vs_mbsync_rss.json" if args.rss_only else "sync_vs_mbsync.json")
    with Dovecot(root=args.server_root) as server:
        user = server.add_user(USER, PASSWORD)
        print(
            f"Dovecot on 127.0.0.1:{server.imap_port}; "
            f"building {args.messages:,} messages (seed {args.seed})...",
            flush=True,
        )
        started = time.perf_counter()
        counts = mailgen.build_maildir(server, user.email, args.messages, args.seed)
        build_seconds = time.perf_counter() - started
        size = mailbox_bytes(user)
        print(
            f"  {counts} in {build_seconds:.1f} s, {size / 1e6:,.0f} MB ({size / 2**20:,.0f} MiB), "
            f"mean {size / max(args.messages, 1) / 1024:.1f} KiB",
            flush=True,
        )

        mbsync = Mbsync(user)
        inboxlink = Inboxlink(user, args.inboxlink.split() if args.inboxlink else None)
        has_inboxlink = inboxlink.available()
        if not has_inboxlink:
            print(f"  {inboxlink.error}", flush=True)

        clients: dict[str, Any] = {"mbsync": mbsync.run}
        if not args.rss_only:
            clients["imaplib full FETCH"] = ImaplibBaseline(user, "full", args.imaplib_chunk).run
            clients["imaplib header FETCH"] = ImaplibBaseline(user, "headers", args.imaplib_chunk).run
        clients["inboxlink sync"] = lambda: inboxlink.run(headers_only=False)
        if not args.rss_only:
            clients["inboxlink sync --headers-only"] = lambda: inboxlink.run(headers_only=True)
        results = {name: Result(name) for name in clients}
        for name in clients:
            if name.startswith("inboxlink") and not has_inboxlink:
                results[name].error = inboxlink.error

        busy = busy_fraction()
        if busy > 0.15:
            print(
                f"  WARNING: {busy:.0%} of the CPUs were busy before measuring: numbers will be noisy",
                flush=True,
            )
        runs = 1 if args.rss_only else args.runs
        warmups = ["mbsync"] if args.rss_only else ["mbsync", "imaplib full FETCH"]
        for name in warmups:  # Dovecot builds its index and cache files on first access
            print(f"  warm-up: {name}", flush=True)
            clients[name]()
        for number in range(1, runs + 1):
            for name, run in clients.items():
                if results[name].error and not results[name].runs:
                    continue
                settle(args.settle)
                try:
                    measured = run()
                except Exception as exc:  # report and go on with the other clients
                    results[name].error = str(exc)
                    print(f"  run {number} {name}: FAILED {exc}", flush=True)
                    continue
                results[name].runs.append(measured)
                print(
                    f"  run {number} {name}: {measured.seconds:.2f} s, {measured.messages} messages, "
                    f"peak RSS {measured.peak_rss_mb:.0f} MB",
                    flush=True,
                )

    print_table(results, args.messages)
    ratio = ratios(results, args.messages)
    print()
    wall_ratio = _fmt(ratio["inboxlink_over_mbsync_wall"], ".2f")
    print(f"inboxlink / mbsync wall time (full sync):           {wall_ratio}")
    if not args.rss_only:
        print(
            "headers-only rate inboxlink / imaplib (in-process): "
            f"{_fmt(ratio['headers_only_rate_inboxlink_over_imaplib'], '.2f')}"
        )
    if not has_inboxlink:
        print(f"({inboxlink.error})")

    report = {
        "benchmark": "sync_vs_mbsync" + ("_rss" if args.rss_only else ""),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "messages": args.messages,
        "seed": args.seed,
        "runs": runs,
        "folders": counts,
        "mailbox_bytes": size,
        "mailbox_mb": round(size / 1e6, 1),
        "build_seconds": round(build_seconds, 2),
        "imaplib_chunk": args.imaplib_chunk,
        "cpu_busy_before_measuring": round(busy, 3),
        "inboxlink_available": has_inboxlink,
        "inboxlink_error": inboxlink.error,
        "inboxlink_command": inboxlink.command,
        "mbsync_version": mbsync.version(),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "transport": "IMAP plaintext on 127.0.0.1 "
        "(mbsync SSLType None, AuthMechs LOGIN; inboxlink --security none)",
        "results": {name: result.summary(args.messages) for name, result in results.items()},
        "ratios": ratio,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
