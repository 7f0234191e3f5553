"""The least CPU a client storing what inboxlink stores must spend, against issue 2's speed budgets.

    python bench/floors.py [--messages 20000] [--runs 3] [--seed 1]

`sync_vs_mbsync.py` says how far inboxlink is from its targets (full sync wall <= 1.5x mbsync's,
headers-only rate >= 0.5x raw imaplib's). This script asks a different question: how much of each
budget is already spent before any of our Python runs, by the work no client can skip, each part
measured on the same mailbox (testing/mailgen, seed 1) in the same private Dovecot:

    Dovecot          CPU the server spends serving the FETCH (its process tree's CPU around a raw
                     imaplib fetch: live processes' utime+stime, plus the master's reaped children)
    wire             raw imaplib's own CPU for that FETCH (socket reads and literal framing; a child
                     process, interpreter start excluded): the cheapest Python read of the bytes
    blob appends     one os.writev per 400 messages of the raw bytes to a file in the same
                     directory inboxlink writes to (the raw MIME must be kept; full sync only)
    parser           full: fast-mail-parser's parse_many (lazy mode, as the sync calls it) alone over
                     the messages, nothing read from its results; headers-only: the cheaper of that
                     over the header blocks and one C regular expression splitting each block into
                     (name, value) lines, nothing decoded (cheaper than any header parser we know)
    SQLite           replaying the rows an inboxlink sync of this mailbox stored (messages, their
                     addresses, placements) into a fresh database with the project's schema and
                     pragmas, through sqlite3's executemany, a commit per batch: the database work
                     alone, none of our Python around it
    interpreter      a Python process importing just sqlite3, socket and fast_mail_parser

Their sum is a CPU floor; divided by the machine's cores it is a wall-time floor that assumes
perfect parallelism (no GIL, no hand-off cost). What is left of the budget, times the cores, over
the messages, is what every message's own Python may cost (FETCH item parsing, header decoding,
row building, the transaction around it) if the target is to be met at all. The last column is
inboxlink's own in-process sync of the same mailbox (engine only, no CLI start), for scale, and
beside it the barest per-message Python there is: the header lines split by one regex, indexed by
name and six of them looked up, nothing decoded (no addresses, dates, encoded words, FETCH items
or rows), to set against what is left.

Results go to bench/out/floors.json. Run it on an idle machine: the peers' wall times (mbsync,
imaplib) set the budgets.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import inboxlink  # noqa: F401
except ImportError:  # not installed: run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import fast_mail_parser as fmp
import sync_vs_mbsync as peers

from inboxlink.config import Settings
from inboxlink.providers.imap.provider import ImapConfig
from inboxlink.runtime import Runtime
from inboxlink.testing import mailgen
from inboxlink.testing.dovecot import Dovecot

SCRATCH = peers.SCRATCH
USER, PASSWORD = "bench@inboxlink.test", "bench-password-1"
BATCH = {"full": 400, "headers": 1600}  # the engine's largest batches (sync/engine.py ramps up to them)
OUT = Path(__file__).resolve().parent / "out" / "floors.json"
_TICK = os.sysconf("SC_CLK_TCK")


def dovecot_cpu(master: int) -> float:
    """CPU seconds of Dovecot so far: every live process of its tree, plus what its master reaped."""
    total = 0.0
    for pid in peers._tree(master):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the ")": state is fields[0]; utime, stime, cutime, cstime are stat fields 14-17
        total += int(fields[11]) + int(fields[12])
        if pid == master:
            total += int(fields[13]) + int(fields[14])
    return total / _TICK


def peer_runs(server: Dovecot, user: Any, runs: int) -> dict[str, Any]:
    """mbsync wall; raw imaplib (full and headers) in-process wall, own CPU and Dovecot's CPU."""
    mbsync = peers.Mbsync(user)
    out: dict[str, Any] = {"mbsync": [], "imaplib full": [], "imaplib headers": []}
    mbsync.run()  # warm-up: Dovecot builds its index and cache files
    for _ in range(runs):
        peers.settle(1.0)
        out["mbsync"].append({"wall": mbsync.run().seconds})
        for mode in ("full", "headers"):
            peers.settle(1.0)
            before = dovecot_cpu(server.pid or 0)
            run = peers.ImaplibBaseline(user, mode, 2000).run()
            out[f"imaplib {mode}"].append(
                {
                    "wall": run.inner_seconds,
                    "cpu": run.cpu_seconds,
                    "dovecot_cpu": dovecot_cpu(server.pid or 0) - before,
                }
            )
    return {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in out.items()}


def synced_home(config: ImapConfig, headers_only: bool) -> tuple[Path, float, float]:
    """Sync the mailbox in-process into a fresh home; return it with the sync's wall and CPU."""
    home = Path(tempfile.mkdtemp(prefix="bench-floors-", dir=SCRATCH))
    rt = Runtime.open(Settings(home=home, allow_private_hosts=True))
    try:
        account = rt.accounts.pair_imap(config, PASSWORD).id
        w0, c0 = time.perf_counter(), time.process_time()
        report = rt.engine.sync(account, headers_only=headers_only)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        assert report.status == "connected", report
    finally:
        rt.close()
    return home, wall, cpu


def raws_of(home: Path) -> list[bytes]:
    """The stored raw messages (or header blocks), in storage order."""
    with sqlite3.connect(home / "inboxlink.db") as db:
        refs = [r[0] for r in db.execute("SELECT blob FROM messages ORDER BY id")]
    out, files = [], {}
    for ref in refs:
        name, offset, length = ref.rsplit(":", 2)
        fh = files.get(name) or files.setdefault(name, open(home / "blobs" / name, "rb"))  # noqa: SIM115
        fh.seek(int(offset))
        out.append(fh.read(int(length)))
    for fh in files.values():
        fh.close()
    return out


def sqlite_floor(home: Path, batch: int, *, indexes: bool = True) -> float:
    """Thread CPU of inserting the rows a sync stored into a fresh database of the same schema
    (`indexes=False`: without the secondary indexes of those three tables, for comparison)."""
    with sqlite3.connect(home / "inboxlink.db") as src:
        columns = [r[1] for r in src.execute("PRAGMA table_info(messages)") if r[1] != "id"]
        names = ", ".join(f'"{c}"' for c in columns)
        rows = src.execute(f"SELECT id, {names} FROM messages ORDER BY id").fetchall()
        addresses = src.execute(
            "SELECT message_id, role, email, name FROM message_addresses ORDER BY message_id"
        ).fetchall()
        places = src.execute(
            "SELECT message_id, folder_id, remote_key, flags FROM placements ORDER BY id"
        ).fetchall()
        accounts = src.execute("SELECT * FROM accounts").fetchall()
        folders = src.execute("SELECT * FROM folders").fetchall()
    fresh = Path(tempfile.mkdtemp(prefix="bench-floors-db-", dir=SCRATCH))
    try:
        Runtime.open(Settings(home=fresh)).close()  # the project's schema (migrations)
        db = sqlite3.connect(fresh / "inboxlink.db", isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "cache_size=-4096"):
            db.execute(f"PRAGMA {pragma}")
        if not indexes:
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                "AND tbl_name IN ('messages', 'message_addresses', 'placements')"
            ).fetchall():
                db.execute(f'DROP INDEX "{name}"')
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO accounts VALUES ({', '.join('?' * len(accounts[0]))})", accounts)
        db.executemany(f"INSERT INTO folders VALUES ({', '.join('?' * len(folders[0]))})", folders)
        db.execute("COMMIT")
        insert = f"INSERT INTO messages ({names}) VALUES ({', '.join('?' * len(columns))})"
        place = (
            "INSERT INTO placements (message_id, folder_id, remote_key, flags) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (folder_id, remote_key) DO UPDATE SET message_id = excluded.message_id, "
            "flags = excluded.flags"
        )
        # the batches, cut before timing: message rows, their address rows, their placements
        batches, a, p = [], 0, 0
        for start in range(0, len(rows), batch):
            part = rows[start : start + batch]
            last = part[-1][0]
            a2 = a
            while a2 < len(addresses) and addresses[a2][0] <= last:
                a2 += 1
            p2 = p
            while p2 < len(places) and places[p2][0] <= last:
                p2 += 1
            batches.append(([r[1:] for r in part], addresses[a:a2], places[p:p2]))
            a, p = a2, p2
        t0 = time.thread_time()
        for message_rows, address_rows, place_rows in batches:
            db.execute("BEGIN")
            db.executemany(insert, message_rows)
            db.executemany("INSERT INTO message_addresses VALUES (?, ?, ?, ?)", address_rows)
            db.executemany(place, place_rows)
            db.execute("COMMIT")
        spent = time.thread_time() - t0
        db.close()
        return spent
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def parser_floor(raws: list[bytes], batch: int) -> float:
    """Process CPU (fast-mail-parser parses a batch on several threads) of its lazy mode, as the
    sync calls it; nothing else runs in this process meanwhile."""
    t0 = time.process_time()
    for start in range(0, len(raws), batch):
        fmp.parse_many(raws[start : start + batch], mode="lazy")
    return time.process_time() - t0


_HEADER_LINE = re.compile(rb"^([!-9;-~]+):[ \t]*(.*(?:\r?\n[ \t].*)*)", re.M)


def split_floor(raws: list[bytes]) -> float:
    """CPU of splitting each header block into (name, value) lines with one C regex: a lower bound
    of reading headers at all (no unfolding, no RFC 2047, no addresses, no dates)."""
    t0 = time.process_time()
    for raw in raws:
        _HEADER_LINE.findall(raw)
    return time.process_time() - t0


def barest_python(raws: list[bytes]) -> float:
    """CPU of the least a Python client does per message beyond the libraries: the header lines
    split (as `split_floor`), indexed by lower-cased name, six values looked up, nothing decoded
    (no addresses, dates, RFC 2047, FETCH items, rows). Whole messages are cut at their header end."""
    t0 = time.process_time()
    for raw in raws:
        end = raw.find(b"\r\n\r\n")
        fields: dict[bytes, bytes] = {}
        for name, value in _HEADER_LINE.findall(raw[: end + 4] if end >= 0 else raw):
            fields.setdefault(name.lower(), value)
        get = fields.get
        (get(b"message-id"), get(b"subject"), get(b"from"), get(b"to"), get(b"cc"), get(b"date"))
    return time.process_time() - t0


def blob_floor(raws: list[bytes], batch: int) -> float:
    path = Path(tempfile.mkdtemp(prefix="bench-floors-blobs-", dir=SCRATCH))
    try:
        fd = os.open(path / "segment", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        t0 = time.thread_time()
        for start in range(0, len(raws), batch):
            items = raws[start : start + batch]
            for i in range(0, len(items), 1024):  # IOV_MAX
                os.writev(fd, items[i : i + 1024])
        spent = time.thread_time() - t0
        os.close(fd)
        return spent
    finally:
        shutil.rmtree(path, ignore_errors=True)


def interpreter_floor() -> float:
    code = "import sqlite3, socket, fast_mail_parser"
    cpus = []
    for _ in range(3):
        *_, cpu, _out, _err = peers.run_child([sys.executable, "-c", code])
        cpus.append(cpu)
    return statistics.median(cpus)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("mbsync") is None:
        print("mbsync not installed (apt-get install isync)", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    busy = peers.busy_fraction()
    if busy > 0.2:
        print(
            f"warning: the CPUs were {busy:.0%} busy before measuring; budgets will be off", file=sys.stderr
        )
    with Dovecot() as server:
        user = server.add_user(USER, PASSWORD)
        mailgen.build_maildir(server, user.email, args.messages, args.seed)
        config = ImapConfig(
            email=user.email, imap_host=user.host, imap_port=user.port, username=user.email, security="none"
        )
        peer = peer_runs(server, user, args.runs)
        interpreter = interpreter_floor()
        result: dict[str, Any] = {"messages": args.messages, "cores": cores, "peers": peer, "modes": {}}
        for mode in ("full", "headers"):
            floors: dict[str, list[float]] = {
                "sqlite": [],
                "bare": [],
                "parser": [],
                "blobs": [],
                "python": [],
            }
            ours_wall, ours_cpu = [], []
            for _ in range(args.runs):
                home, wall, cpu = synced_home(config, mode == "headers")
                try:
                    ours_wall.append(wall)
                    ours_cpu.append(cpu)
                    raws = raws_of(home)
                    floors["sqlite"].append(sqlite_floor(home, BATCH[mode]))
                    floors["bare"].append(sqlite_floor(home, BATCH[mode], indexes=False))
                    parsed = parser_floor(raws, BATCH[mode])
                    floors["parser"].append(parsed if mode == "full" else min(parsed, split_floor(raws)))
                    floors["python"].append(barest_python(raws))
                    floors["blobs"].append(blob_floor(raws, BATCH[mode]) if mode == "full" else 0.0)
                    del raws
                finally:
                    shutil.rmtree(home, ignore_errors=True)
            imaplib = peer[f"imaplib {mode}"]
            parts = {
                "Dovecot serving the FETCH": imaplib["dovecot_cpu"],
                "wire (raw imaplib's CPU)": imaplib["cpu"] - interpreter,
                "blob appends": statistics.median(floors["blobs"]),
                "parser (library or regex alone)": statistics.median(floors["parser"]),
                "SQLite (the stored rows alone)": statistics.median(floors["sqlite"]),
                "interpreter and native libraries": interpreter,
            }
            floor_cpu = sum(parts.values())
            if mode == "full":
                budget, basis = 1.5 * peer["mbsync"]["wall"], f"1.5 x mbsync's {peer['mbsync']['wall']:.2f} s"
            else:
                budget, basis = 2.0 * imaplib["wall"], f"2 x raw imaplib's {imaplib['wall']:.2f} s in-process"
            left = (budget - floor_cpu / cores) * cores
            result["modes"][mode] = {
                "parts_cpu_s": parts,
                "floor_cpu_s": floor_cpu,
                "floor_wall_s": floor_cpu / cores,
                "budget_s": budget,
                "budget_basis": basis,
                "left_for_python_cpu_s": left,
                "left_per_message_us": left / args.messages * 1e6,
                "sqlite_without_secondary_indexes_cpu_s": statistics.median(floors["bare"]),
                "barest_python_per_message_us": statistics.median(floors["python"]) / args.messages * 1e6,
                "inboxlink_in_process_wall_s": statistics.median(ours_wall),
                "inboxlink_in_process_cpu_s": statistics.median(ours_cpu),
            }
    for mode, m in result["modes"].items():
        print(f"\n{mode} sync, {args.messages} messages, {cores} cores")
        for name, value in m["parts_cpu_s"].items():
            print(f"  {name:36s} {value:6.2f} CPU s")
        print(
            f"  {'floor (sum)':36s} {m['floor_cpu_s']:6.2f} CPU s -> {m['floor_wall_s']:.2f} s wall at best"
        )
        print(f"  {'budget':36s} {m['budget_s']:6.2f} s ({m['budget_basis']})")
        print(
            f"  left for all per-message Python: {m['left_for_python_cpu_s']:.2f} CPU s, "
            f"{m['left_per_message_us']:.0f} us a message, with perfect use of every core"
        )
        bare = m["sqlite_without_secondary_indexes_cpu_s"]
        sqlite_cpu = m["parts_cpu_s"]["SQLite (the stored rows alone)"]
        left_bare = (m["left_for_python_cpu_s"] + sqlite_cpu - bare) / args.messages * 1e6
        print(
            f"  (SQLite without its secondary indexes: {bare:.2f} CPU s; left: {left_bare:.0f} us a message)"
        )
        print(
            f"  the barest Python a message (headers split, indexed, six looked up, nothing decoded): "
            f"{m['barest_python_per_message_us']:.1f} us"
        )
        print(
            f"  inboxlink now (engine in-process): {m['inboxlink_in_process_wall_s']:.2f} s wall, "
            f"{m['inboxlink_in_process_cpu_s']:.2f} CPU s"
        )
    OUT.parent.mkdir(exist_ok=True)
    result["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
    result["load_before"] = busy
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
