"""Where a sync's CPU goes, stage by stage, in-process: the tool for deciding what to optimise.

    python bench/sync_stages.py [--messages 20000] [--runs 3] [--headers-only] [--profile FILE]

Builds the same mailbox as `sync_vs_mbsync.py` (testing/mailgen, seed 1) in a private Dovecot,
then runs `SyncEngine.sync` `--runs` times in this process, each on a fresh INBOXLINK_HOME under
/dev/shm. Every stage is wrapped with a timer of the *calling thread's* CPU time
(`time.thread_time`), which other load on the machine does not inflate, plus wall time. Stages:

    fetch      provider.fetch (socket reads, FETCH parsing)            fetch thread
    blobs      BlobStore.put_many                                       fetch thread
    prepare    prepare_batch (parse_many + row encoding)                main thread
    store      SyncEngine._store_chunk (whole transaction, commit too)  main thread
      write      mailstore.write_messages (messages + addresses)
      link       crm.linking.link_messages
      events     outbound.events.emit_many
      place      mailstore.put_placements

Also printed: the process CPU (`resource.getrusage`) and the wall time of each run, and the load
average before it (wall times only mean something when it is low; CPU seconds hold up better).
`--fetch-only` times `ImapProvider.fetch` alone over every message (thread CPU and wall per run).
`--profile FILE` writes a cProfile of the last run's main thread (pstats format, thread CPU time).
`--replay` serves every timed run's FETCH from what the warm-up run downloaded (kept in memory): no
Dovecot and no socket in the timed runs, so their wall time is this process's critical path alone.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import importlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import inboxlink  # noqa: F401
except ImportError:  # not installed: run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from inboxlink.config import Settings
from inboxlink.crm import linking
from inboxlink.domain import FetchParts
from inboxlink.outbound import events
from inboxlink.providers.imap import provider as imap_provider
from inboxlink.providers.imap.provider import ConnectOptions, ImapConfig
from inboxlink.runtime import Runtime
from inboxlink.store import blobs, mailstore
from inboxlink.sync import engine
from inboxlink.testing import mailgen
from inboxlink.testing.dovecot import Dovecot

SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
USER, PASSWORD = "bench@inboxlink.test", "bench-password-1"

_cpu: dict[str, float] = defaultdict(float)
_wall: dict[str, float] = defaultdict(float)
_lock = threading.Lock()


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        c0, w0 = time.thread_time(), time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            with _lock:
                _cpu[name] += time.thread_time() - c0
                _wall[name] += time.perf_counter() - w0

    return wrapper


def _timed_iter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A generator's time between the consumer's requests (the fetch itself, not the consumer)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        it = fn(*args, **kwargs)
        while True:
            c0, w0 = time.thread_time(), time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                with _lock:
                    _cpu[name] += time.thread_time() - c0
                    _wall[name] += time.perf_counter() - w0
            yield item

    return wrapper


_recorded: dict[tuple[str, str], Any] = {}
_replaying = False


def record_or_replay() -> None:
    real = imap_provider.ImapProvider.fetch

    def fetch(self: Any, refs: Any, parts: Any) -> Any:
        if not _replaying:
            for chunk in real(self, refs, parts):
                for m in chunk:
                    _recorded[(m.ref.folder, m.ref.remote_key)] = m
                yield chunk
            return
        ramp = (50, 100, 200, 400)
        i = 0
        n = 0
        while i < len(refs):
            want = ramp[min(n, 3)] * (4 if parts.name == "HEADERS" else 1)
            n += 1
            yield [_recorded[(r.folder, r.remote_key)] for r in refs[i : i + want]]
            i += want

    imap_provider.ImapProvider.fetch = fetch  # type: ignore[method-assign]


def instrument() -> None:
    imap_provider.ImapProvider.fetch = _timed_iter("fetch", imap_provider.ImapProvider.fetch)  # type: ignore[method-assign]
    blobs.BlobStore.put_many = _timed("blobs", blobs.BlobStore.put_many)  # type: ignore[method-assign]
    engine.prepare_batch = _timed("prepare", engine.prepare_batch)
    engine.SyncEngine._store_chunk = _timed("store", engine.SyncEngine._store_chunk)  # type: ignore[method-assign]
    mailstore.write_messages = _timed("  write", mailstore.write_messages)
    mailstore.put_placements = _timed("  place", mailstore.put_placements)
    linking.link_messages = _timed("  link", linking.link_messages)
    events.emit_many = _timed("  events", events.emit_many)
    # the run's bookkeeping outside the pipeline
    for name in ("header_only_refs", "restart_folders_with_headers_only", "count_messages"):
        if hasattr(mailstore, name):
            setattr(mailstore, name, _timed(f"end:{name}", getattr(mailstore, name)))


def fetch_only(config: ImapConfig, args: argparse.Namespace) -> int:
    parts = FetchParts.HEADERS if args.headers_only else FetchParts.FULL
    cpus: list[float] = []
    for run in range(args.runs + 1):
        provider = imap_provider.ImapProvider(config, PASSWORD, ConnectOptions(allow_private_hosts=True))
        provider.verify()
        refs = [ref for stream in provider.streams() for ref in provider.changes(stream, None, 10**9).upserts]
        c0, w0, count = time.thread_time(), time.perf_counter(), 0
        for chunk in provider.fetch(refs, parts):
            count += len(chunk)
        cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
        provider.close()
        label = "warm-up" if run == 0 else f"run {run}"
        print(f"{label}: {count} msgs, fetch thread CPU {cpu:.2f} s, wall {wall:.2f} s")
        if run:
            cpus.append(cpu)
    print(f"median fetch CPU {statistics.median(cpus):.2f} s ({min(cpus):.2f}–{max(cpus):.2f})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--headers-only", action="store_true")
    parser.add_argument("--profile", type=Path, help="cProfile of the last run's main thread")
    parser.add_argument("--replay", action="store_true", help="timed runs replay the warm-up's FETCH")
    parser.add_argument("--switch-interval", type=float, help="sys.setswitchinterval for the runs (s)")
    parser.add_argument(
        "--toggle",
        action="append",
        default=[],
        metavar="MODULE:NAME",
        help="A/B: flip this module-level boolean before every timed run (runs alternate A, B, ...)",
    )
    parser.add_argument("--fetch-only", action="store_true", help="time ImapProvider.fetch alone")
    parser.add_argument("--no-instrument", action="store_true", help="wall and process CPU only")
    args = parser.parse_args()
    global _replaying
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    if args.replay:
        record_or_replay()
    if not args.no_instrument:
        instrument()
    with Dovecot() as server:
        user = server.add_user(USER, PASSWORD)
        mailgen.build_maildir(server, user.email, args.messages, args.seed)
        config = ImapConfig(
            email=user.email, imap_host=user.host, imap_port=user.port, username=user.email, security="none"
        )
        if args.fetch_only:
            return fetch_only(config, args)
        walls: list[float] = []
        cpus: list[float] = []
        per_stage: dict[str, list[float]] = defaultdict(list)
        by_variant: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for run in range(args.runs + 1):  # run 0 warms Dovecot's index and cache files up, untimed
            home = Path(tempfile.mkdtemp(prefix="bench-stages-", dir=SCRATCH))
            try:
                rt = Runtime.open(Settings(home=home, allow_private_hosts=True))
                account = rt.accounts.pair_imap(config, PASSWORD).id
                _replaying = args.replay and run > 0
                variant = ""
                for spec in args.toggle:
                    module, _, name = spec.partition(":")
                    target = importlib.import_module(module)
                    setattr(target, name, not getattr(target, name))
                    variant += f" {name}={getattr(target, name)}"
                _cpu.clear()
                _wall.clear()
                load = os.getloadavg()[0]
                profiler = cProfile.Profile(time.thread_time) if args.profile and run == args.runs else None
                r0 = resource.getrusage(resource.RUSAGE_SELF)
                w0 = time.perf_counter()
                if profiler:
                    profiler.enable()
                report = rt.engine.sync(account, headers_only=args.headers_only)
                if profiler:
                    profiler.disable()
                    profiler.dump_stats(args.profile)
                wall = time.perf_counter() - w0
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
                rt.close()
            finally:
                shutil.rmtree(home, ignore_errors=True)
            assert report.status == "connected", report
            label = ("warm-up" if run == 0 else f"run {run}") + variant
            stages = "  ".join(f"{k.strip()} {_cpu[k]:.2f}/{_wall[k]:.2f}" for k in sorted(_cpu))
            print(
                f"{label}: {report.fetched} msgs, wall {wall:.2f} s, CPU {cpu:.2f} s, load {load:.2f}"
                f"  [cpu/wall] {stages}",
                flush=True,
            )
            if run:
                by_variant[variant].append((wall, cpu))
                walls.append(wall)
                cpus.append(cpu)
                for k in _cpu:
                    per_stage[k].append(_cpu[k])
        print(
            f"median wall {statistics.median(walls):.2f} s ({min(walls):.2f}–{max(walls):.2f}), "
            f"CPU {statistics.median(cpus):.2f} s ({min(cpus):.2f}–{max(cpus):.2f})"
        )
        if args.toggle:
            for variant, values in by_variant.items():
                w = sorted(v[0] for v in values)
                c = sorted(v[1] for v in values)
                print(
                    f" {variant}: wall min {w[0]:.2f} median {statistics.median(w):.2f}, "
                    f"CPU min {c[0]:.2f} median {statistics.median(c):.2f} ({len(w)} runs)"
                )
        for k in sorted(per_stage):
            print(f"  {k:<10} CPU median {statistics.median(per_stage[k]):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
