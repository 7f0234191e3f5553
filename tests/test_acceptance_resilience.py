"""Acceptance, black-box: inboxlink under the conditions a self-hosted service meets — PostgreSQL
instead of SQLite, two processes on one account, `serve` killed with SIGKILL mid-sync and
mid-send, and `inboxlink watch --shard K/N` processes splitting the accounts. Mailboxes are built
with imaplib APPEND; everything runs through the real CLI and `serve` subprocesses.

What is asserted comes from README.md ("Pair and sync a mailbox", "Settings") and
docs/architecture.md: Processes (one process syncs an account at a time; a lease whose holder on
this machine is dead is taken over at once), Identity and idempotence (a kill -9 re-fetches at most
the chunk in flight), the state machine, Storage, the Outbox (a crash before DATA re-queues, after
it `uncertain`, never re-sent on its own) and the sharding rule of `watch --shard K/N`.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy

from inboxlink.testing.dovecot import Dovecot, MailUser
from tests.support import database_url, imap_session, server_state
from tests.test_acceptance_api import PUSH_BUDGET, SERVE, Served, serve
from tests.test_acceptance_cli import (
    append,
    assert_matches,
    create,
    message,
    pair,
    server_truth,
    stored,
    sync,
)
from tests.test_api import body_for
from tests.test_cli import CLI, env_for, run
from tests.test_send import Mailer, mailer  # noqa: F401  (the fixture, reused)

MB = 1_000_000


def big_body(n: int, size: int = MB) -> str:
    """About `size` bytes of 7-bit text lines, distinct per message."""
    line = f"message {n:04d} " + "x" * 60 + "\n"
    return line * (size // len(line))


def fill(user: MailUser, *, small: int = 0, big: int = 0, start: int = 0) -> None:
    """`big` ~1 MB messages and `small` short ones in INBOX, with imaplib APPEND."""
    imap = imap_session(user)
    try:
        for n in range(start, start + big):
            append(imap, "INBOX", message(n, body=big_body(n)))
        for n in range(start + big, start + big + small):
            append(imap, "INBOX", message(n), r"(\Seen)" if n % 3 == 0 else None)
    finally:
        imap.logout()


@contextmanager
def killed_serve(tmp_path: Path, **settings: str) -> Iterator[Served]:
    """`serve()` (home tmp_path/"serve") for a body that ends it with SIGKILL: the helper's
    clean-stop check must then fail, and only that way."""
    with pytest.raises(AssertionError, match=r"exited -9 on SIGTERM"), serve(tmp_path, **settings) as served:
        yield served


def rows(home: Path, url: str | None, sql: str) -> list[tuple[Any, ...]]:
    """Read the database directly (SQLite read-only under `home`, or PostgreSQL at `url`)."""
    if url is None:
        with sqlite3.connect(f"file:{home / 'inboxlink.db'}?mode=ro", uri=True, timeout=10) as conn:
            return conn.execute(sql).fetchall()
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sqlalchemy.text(sql))]
    finally:
        engine.dispose()


def blob_bytes(home: Path) -> int:
    """Raw MIME written so far (docs/architecture.md, Storage: append-only segment files)."""
    if not (home / "blobs").exists():
        return 0
    return sum(p.stat().st_size for p in (home / "blobs").glob("*.seg"))


# -- 1. the CLI contract on PostgreSQL equals SQLite's ---------------------------------------------------
def test_the_cli_contract_on_postgresql_gives_what_sqlite_gives(
    tmp_path: Path, mail_user: MailUser, postgres_url: str
) -> None:
    imap = imap_session(mail_user)
    try:
        create(imap, "Archive")
        for n in range(12):
            append(imap, "INBOX", message(n), r"(\Seen \Flagged)" if n % 4 == 0 else None)
        for n in range(12, 16):
            append(imap, "Archive", message(n), r"(\Seen)")
        append(imap, "Archive", message(3))  # a copy: one message, two placements
    finally:
        imap.logout()
    copies, _folders = server_truth(mail_user)
    results: dict[str, tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for backend, extra in {"sqlite": {}, "postgres": {"INBOXLINK_DATABASE_URL": postgres_url}}.items():
        env = env_for(tmp_path / backend, **extra)
        account = pair(mail_user, env)
        first = sync(env, account)
        second = sync(env, account)
        assert second["fetched_bytes"] == 0, (backend, second)
        assert (second["messages"], second["placements"]) == (first["messages"], first["placements"]), backend
        listing = json.loads(run(["accounts", "--json"], env).stdout)
        assert [a["id"] for a in listing] == [account], backend
        assert listing[0]["status"] == "connected" and listing[0]["messages"] == first["messages"], listing
        listed = stored(env, account)
        assert_matches(first, listed, copies)
        results[backend] = (first, second, listing, listed)
    assert not (tmp_path / "postgres" / "inboxlink.db").exists(), "INBOXLINK_DATABASE_URL was ignored"
    lite, pg = results["sqlite"], results["postgres"]
    assert (
        (pg[0]["messages"], pg[0]["placements"]) == (lite[0]["messages"], lite[0]["placements"]) == (16, 17)
    )
    assert pg[0]["fetched_bytes"] == lite[0]["fetched_bytes"]
    assert Counter(m["message_id"] for m in pg[3]) == Counter(m["message_id"] for m in lite[3])


# -- 2. two `sync --once` at once on one account ------------------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_syncs_at_once_one_syncs_and_nothing_is_stored_twice(
    tmp_path: Path, mail_user: MailUser, request: pytest.FixtureRequest, backend: str
) -> None:
    fill(mail_user, big=20, small=60)
    url = database_url(request)
    env = env_for(tmp_path / "home", **({"INBOXLINK_DATABASE_URL": url} if url else {}))
    account = pair(mail_user, env)
    procs = [
        subprocess.Popen(
            [*CLI, "sync", account, "--once", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    outcomes = [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]
    synced = [json.loads(out) for code, out, _err in outcomes if code == 0]
    refused = [err for code, _out, err in outcomes if code != 0]
    assert synced, f"neither sync finished: {outcomes}"
    for report in synced:
        assert report["status"] == "connected" and report["messages"] == 80, report
    for err in refused:  # the other one: busy, in one line
        assert err.count("\n") == 1 and "being synced by another process" in err, err
    total = sum(m.size for m in server_truth(mail_user)[0])
    fetched = sum(r["fetched_bytes"] for r in synced)
    assert total <= fetched < total * 1.05, (
        f"the mailbox was downloaded {fetched / total:.2f} times: {synced}"
    )
    again = sync(env, account)
    assert again["fetched_bytes"] == 0 and again["messages"] == 80 and again["placements"] == 80
    listed = stored(env, account)
    assert_matches(again, listed, server_truth(mail_user)[0])
    assert [a["status"] for a in json.loads(run(["accounts", "--json"], env).stdout)] == ["connected"]


# -- 3. serve killed mid first sync -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("backend", "resume"), [("sqlite", "serve"), ("postgres", "serve"), ("sqlite", "cli")]
)
def test_serve_killed_mid_first_sync_converges_after_restart_without_downloading_again(
    tmp_path: Path, mail_user: MailUser, request: pytest.FixtureRequest, backend: str, resume: str
) -> None:
    """Resumed by a restarted serve, or by `inboxlink sync --once` (the same lease rule)."""
    fill(mail_user, small=50, big=40)  # the first sync's first chunk is 50 messages (architecture)
    copies = server_truth(mail_user)[0]
    size_of = {c.message_id: c.size for c in copies}
    home = tmp_path / "serve"
    url = database_url(request)
    settings = {"INBOXLINK_DATABASE_URL": url} if url else {}
    stored_now = "select count(*) from messages"
    with killed_serve(tmp_path, **settings) as first:
        account = first.pair(mail_user)["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            blob_bytes(home) >= 15 * MB and rows(home, url, stored_now)[0][0] >= 50
        ):
            time.sleep(0.002)
        first.proc.kill()
        first.proc.wait()
    lease_of = f"select status, lease_owner from accounts where id = '{account}'"
    [(status, lease)] = rows(home, url, lease_of)
    kept = {r[0] for r in rows(home, url, "select message_id from messages where deleted_at is null")}
    assert 50 <= len(kept) < 90, f"killed with {len(kept)} of 90 stored: not in the middle"
    assert status == "syncing" and lease, (status, lease)
    written_before = blob_bytes(home)
    missing = sum(size for mid, size in size_of.items() if mid not in kept)
    if resume == "cli":
        report = sync(env_for(home, **settings), account)  # not "busy": the holder is dead
        assert report["messages"] == report["placements"] == 90, report
        assert report["fetched_bytes"] <= missing, (report, missing)
        assert rows(home, url, lease_of)[0] == ("connected", None), "the lease is given back"
        assert sorted(m["message_id"] for m in stored(env_for(home, **settings), account)) == sorted(size_of)
        return
    with serve(tmp_path, **settings) as second:  # same name: same home
        _shown, took = second.wait_account(
            account,
            lambda a: a["status"] == "connected" and a["message_count"] == 90,
            "the restarted serve takes the dead process's lease over and finishes",
            timeout=30,
        )
        listed = second.messages(account)
        assert sorted(m["message_id"] for m in listed) == sorted(size_of), "exactly the server's set"
        assert {mid for folder in server_state(mail_user).values() for mid in folder} == set(size_of)
        assert took < 15, "a dead holder's lease is taken over at once, not after 10 min"
        deadline = time.monotonic() + 10  # (a follow-up run, e.g. the watcher's first IDLE, may hold it)
        while rows(home, url, lease_of)[0] != ("connected", None) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rows(home, url, lease_of)[0] == ("connected", None), "the lease is given back"
        written_after = blob_bytes(home) - written_before
        assert written_after <= missing, (
            f"the restart downloaded {written_after} bytes; only {missing} were not stored at the kill"
        )


def children(pid: int) -> set[int]:
    """Processes whose parent is `pid` (from /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def test_serve_killed_with_a_prepare_worker_leaves_no_worker_behind(
    tmp_path: Path, mail_user: MailUser
) -> None:
    """Architecture, sync pipeline: the prepare worker "exits with its parent" (a watchdog thread
    ends it when its parent dies); it starts on a download of 1,000 messages or more."""
    imap = imap_session(mail_user)
    try:
        for n in range(1100):
            append(imap, "INBOX", message(n, body=big_body(n, 3000)))
    finally:
        imap.logout()
    with killed_serve(tmp_path, INBOXLINK_PREPARE_WORKERS="1") as first:
        account = first.pair(mail_user)["id"]
        deadline = time.monotonic() + 60
        workers: set[int] = set()
        while not workers and time.monotonic() < deadline:
            workers = children(first.proc.pid)
            time.sleep(0.005)
        assert workers, "no prepare worker started"
        first.proc.kill()
        first.proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.05)
    left = [w for w in workers if Path(f"/proc/{w}").exists()]
    for w in left:  # ours: started by the serve this test started
        os.kill(w, signal.SIGKILL)
    assert not left, f"the prepare worker outlived its killed serve by 10 s: {left}"
    with serve(tmp_path, INBOXLINK_PREPARE_WORKERS="1") as second:
        second.wait_account(
            account,
            lambda a: a["status"] == "connected" and a["message_count"] == 1100,
            "restart",
            timeout=60,
        )


# -- 4. serve killed while sending ------------------------------------------------------------------------
def test_serve_killed_in_data_leaves_uncertain_and_before_data_requeues_never_twice(
    tmp_path: Path,
    mail_user: MailUser,
    mailer: tuple[Mailer, int],  # noqa: F811
) -> None:
    smtp, port = mailer
    fill(mail_user, small=2)
    in_data_release, rcpt_release = threading.Event(), threading.Event()
    rcpt_release.set()
    smtp.hold_data, smtp.hold_rcpt = in_data_release, rcpt_release
    answers: list[object] = []

    def post(client: httpx.Client, to: str, subject: str) -> None:
        try:
            answers.append(
                client.post(
                    "/api/v1/outbox",
                    json={"account_id": account, "to": [to], "subject": subject, "text": "Hello"},
                )
            )
        except httpx.TransportError as exc:
            answers.append(exc)

    with killed_serve(tmp_path) as first:
        created = first.client.post(
            "/api/v1/accounts",
            json=body_for(mail_user, smtp_host="127.0.0.1", smtp_port=port, smtp_security="none"),
        )
        assert created.status_code == 201 and created.json()["capabilities"]["can_send"], created.text
        account = created.json()["id"]
        first.wait_account(account, lambda a: a["status"] == "connected", "first sync")
        in_data = threading.Thread(target=post, args=(first.client, "data@client.example", "in DATA"))
        in_data.start()
        assert smtp.in_data.wait(30), "the first send never reached DATA"
        rcpt_release.clear()
        smtp.in_rcpt.clear()
        other = httpx.Client(base_url=first.url, timeout=60)
        before = threading.Thread(target=post, args=(other, "rcpt@client.example", "before DATA"))
        before.start()
        assert smtp.in_rcpt.wait(30), "the second send never reached RCPT"
        first.proc.kill()
        first.proc.wait()
        in_data.join(10)
        before.join(10)
        other.close()
    in_data_release.set()  # the server finishes what the killed client left it: DATA was complete
    rcpt_release.set()
    time.sleep(0.5)
    assert [to for _f, to, _raw in smtp.received] in ([], [["data@client.example"]]), smtp.received
    with serve(tmp_path) as second:
        deadline = time.monotonic() + 30
        rows: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            rows = {o["subject"]: o for o in second.client.get("/api/v1/outbox").json()}
            if (
                rows.get("in DATA", {}).get("status") == "uncertain"
                and rows["before DATA"]["status"] == "sent"
            ):
                break
            time.sleep(0.1)
        assert rows["in DATA"]["status"] == "uncertain", rows
        assert "may have been sent" in rows["in DATA"]["error"]["message"], rows
        assert rows["before DATA"]["status"] == "sent", rows
        time.sleep(1)  # nothing re-sends the uncertain one on its own
        again = second.client.get(f"/api/v1/outbox/{rows['in DATA']['id']}").json()
        assert again["status"] == "uncertain", again
    delivered = Counter(tuple(to) for _f, to, _raw in smtp.received)
    assert delivered[("rcpt@client.example",)] == 1, smtp.received  # re-queued, then sent once
    assert delivered[("data@client.example",)] <= 1 and len(delivered) <= 2, smtp.received  # never again


# -- 5. watch --shard K/N ---------------------------------------------------------------------------------
def watch(served: Served, shard: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = env_for(served.home, INBOXLINK_PUSH_ENABLED="0")
    with (tmp_path / f"watch-{shard.replace('/', 'of')}.log").open("ab") as log:
        return subprocess.Popen([*SERVE, "watch", "--shard", shard], env=env, stdout=log, stderr=log)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("watch ignored SIGTERM") from None


def test_watch_shards_split_the_accounts_and_bring_new_mail(tmp_path: Path, dovecot: Dovecot) -> None:
    users = [
        dovecot.add_user(f"shard{n}.{time.time_ns()}@inboxlink.test", f"pw-{n}-secret") for n in range(8)
    ]
    with serve(tmp_path, INBOXLINK_PUSH_ENABLED="0", INBOXLINK_SYNC_INTERVAL_SECONDS="100000") as served:
        ids = [served.pair(u)["id"] for u in users]
        for account in ids:
            served.wait_account(account, lambda a: a["status"] == "connected", "first sync")

        def deliver_and_see(round_: int, budget: float) -> set[str]:
            for n, user in enumerate(users):
                dovecot.deliver_lmtp(user.email, message(1000 * round_ + n))
            want = {a: round_ + 1 for a in ids}  # one message more per round
            deadline = time.monotonic() + budget
            seen: set[str] = set()
            while time.monotonic() < deadline and seen != set(ids):
                seen = {a for a in ids if served.account(a)["message_count"] >= want[a]}
                time.sleep(0.1)
            return seen

        shard0 = watch(served, "0/2", tmp_path)
        try:
            time.sleep(2)  # connect, log in, IDLE
            by_0 = deliver_and_see(0, PUSH_BUDGET + 2)
        finally:
            stop(shard0)
        shard1 = watch(served, "1/2", tmp_path)
        shard0 = None
        try:
            time.sleep(2)  # its first IDLE syncs its accounts once: they catch up on round 0
            by_1 = deliver_and_see(1, PUSH_BUDGET + 2)
            assert by_0 and by_1 and not by_0 & by_1 and by_0 | by_1 == set(ids), (by_0, by_1)
            shard0 = watch(served, "0/2", tmp_path)
            time.sleep(2)
            assert deliver_and_see(2, PUSH_BUDGET + 5) == set(ids), "both shards together cover every account"
        finally:
            stop(shard1)
            if shard0 is not None:
                stop(shard0)
        for account, user in zip(ids, users, strict=True):
            listed = served.messages(account)
            assert sorted(m["message_id"] for m in listed) == sorted(
                mid for folder in server_state(user).values() for mid in folder
            )
