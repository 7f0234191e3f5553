"""The CLI contract, run as a user runs it: subprocesses, JSON on stdout, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inboxlink.testing.dovecot import Dovecot, MailUser
from inboxlink.testing.mailgen import generate
from tests.support import make_message, server_state

CLI = [sys.executable, "-m", "inboxlink.cli"]


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXLINK_")}
    env.update(INBOXLINK_HOME=str(home), INBOXLINK_ALLOW_PRIVATE_HOSTS="1", **extra)
    return env


def run(
    args: list[str], env: dict[str, str], stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(CLI + args, input=stdin, capture_output=True, text=True, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}: {proc.stderr}")
    return proc


def pair_args(user: MailUser, port: int | None = None) -> list[str]:
    return [
        "pair",
        "imap",
        "--email",
        user.email,
        "--imap-host",
        user.host,
        "--imap-port",
        str(port or user.port),
        "--smtp-host",
        user.host,
        "--smtp-port",
        "2525",
        "--username",
        user.email,
        "--security",
        "none",
        "--password-stdin",
        "--json",
    ]


def test_pair_sync_accounts_contract(tmp_path: Path, dovecot: Dovecot, mail_user: MailUser) -> None:
    env = env_for(tmp_path / "home")
    dovecot.write_messages(mail_user.email, "INBOX", list(generate(60, seed=3)))
    paired = json.loads(run(pair_args(mail_user), env, stdin=mail_user.password + "\n").stdout)
    assert set(paired) >= {"id", "status"} and paired["status"] == "pending"
    account = paired["id"]
    synced = json.loads(run(["sync", account, "--once", "--json"], env).stdout)
    assert synced["account"] == account and synced["status"] == "connected"
    assert synced["messages"] == 60 and synced["fetched_bytes"] > 0 and synced["seconds"] >= 0
    listed = json.loads(run(["messages", account, "--json"], env).stdout)
    ours: dict[str, dict[str, frozenset[str]]] = {}
    for m in listed:
        for p in m["placements"]:
            ours.setdefault(p["folder"], {})[m["message_id"] or "?"] = frozenset(p["flags"])
    assert len(listed) == 60 and ours == {k: v for k, v in server_state(mail_user).items() if v}
    inbox = json.loads(run(["messages", account, "--folder", "INBOX", "--json"], env).stdout)
    assert [m["id"] for m in inbox] == [m["id"] for m in listed], "all 60 are in INBOX, oldest first"
    assert paired["smtp_error"] and "2525" in paired["smtp_error"]
    shown = json.loads(run(["account", account, "--json"], env).stdout)
    caps = shown["capabilities"]
    assert caps["qresync"] and caps["smtp_error"] == paired["smtp_error"] and caps["can_send"] is False, (
        "a sync refreshes the server's facts and keeps what pairing found about sending"
    )
    again = json.loads(run(["sync", account, "--once", "--json"], env).stdout)
    assert again["messages"] == 60 and again["fetched_bytes"] == 0
    listing = json.loads(run(["accounts", "--json"], env).stdout)
    assert [a["id"] for a in listing] == [account]
    assert listing[0]["status"] == "connected" and listing[0]["messages"] == 60
    assert listing[0]["status_reason"] == "Connected" and listing[0]["last_sync_at"]
    headers = json.loads(run(["sync", account, "--once", "--headers-only", "--json"], env).stdout)
    assert headers["status"] == "connected"
    # the password never reaches the database or the logs in plaintext
    blob = (tmp_path / "home" / "inboxlink.db").read_bytes()
    assert mail_user.password.encode() not in blob


def test_pair_errors_are_one_line_and_nonzero(tmp_path: Path, mail_user: MailUser) -> None:
    env = env_for(tmp_path / "home")
    wrong = run(pair_args(mail_user), env, stdin="not-the-password\n", check=False)
    assert wrong.returncode != 0 and wrong.stdout == ""
    assert wrong.stderr.count("\n") == 1 and "rejected the username or password" in wrong.stderr
    assert "not-the-password" not in wrong.stderr
    down = run(pair_args(mail_user, port=1), env, stdin="x\n", check=False)
    assert down.returncode != 0 and "cannot connect to IMAP server 127.0.0.1:1" in down.stderr
    assert down.stderr.count("\n") == 1
    strict = {k: v for k, v in env.items() if k != "INBOXLINK_ALLOW_PRIVATE_HOSTS"}
    refused = run(pair_args(mail_user), strict, stdin="x\n", check=False)
    assert refused.returncode != 0 and "loopback" in refused.stderr.lower()
    assert json.loads(run(["accounts", "--json"], env).stdout) == []


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("select count(*) from messages").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


@pytest.mark.parametrize("kill_at", [0, 200, 900, 1900])
def test_kill_9_mid_sync_then_resume_is_exact(
    tmp_path: Path, dovecot: Dovecot, mail_user: MailUser, kill_at: int
) -> None:
    """A sync killed at any point (before the first row; mid-folder; between folders) leaves a
    database from which the next run reaches exactly the server's set."""
    raws = list(generate(2400, seed=11))
    dovecot.write_messages(mail_user.email, "INBOX", raws[:1800])
    dovecot.create_folder(mail_user.email, "Archive")
    dovecot.write_messages(mail_user.email, "Archive", raws[1800:])
    home = tmp_path / "home"
    env = env_for(home)
    account = json.loads(run(pair_args(mail_user), env, stdin=mail_user.password + "\n").stdout)["id"]
    proc = subprocess.Popen(
        [*CLI, "sync", account, "--once", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while _count(home / "inboxlink.db") < kill_at and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    finished = json.loads(run(["sync", account, "--once", "--json"], env).stdout)
    assert finished["status"] == "connected"
    server = server_state(mail_user)
    distinct = {mid for folder in server.values() for mid in folder}
    assert finished["messages"] == len(distinct)
    with sqlite3.connect(home / "inboxlink.db") as conn:
        rows = conn.execute("select message_id from messages where deleted_at is null").fetchall()
        placements = conn.execute("select count(*) from placements").fetchone()[0]
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == len(distinct)
    assert placements == sum(len(f) for f in server.values()) == finished["placements"]


def test_serve_keeps_accounts_in_sync(tmp_path: Path, dovecot: Dovecot, mail_user: MailUser) -> None:
    import socket
    import urllib.request

    env = env_for(tmp_path / "home", INBOXLINK_SYNC_INTERVAL_SECONDS="0.5")
    dovecot.write_messages(mail_user.email, "INBOX", [make_message(i) for i in range(5)])
    account = json.loads(run(pair_args(mail_user), env, stdin=mail_user.password + "\n").stdout)["id"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([*CLI, "serve", "--port", str(port)], env=env, stdout=log, stderr=log)
    try:

        def account_json() -> dict[str, object]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/accounts/{account}", timeout=5) as r:
                return dict(json.load(r))

        def wait_for(pred: object, what: str) -> dict[str, object]:
            deadline = time.monotonic() + 30
            last: dict[str, object] = {}
            while time.monotonic() < deadline:
                try:
                    last = account_json()
                    if pred(last):  # type: ignore[operator]
                        return last
                except OSError:
                    pass
                time.sleep(0.1)
            raise AssertionError(f"{what}: {last}")

        wait_for(lambda a: a["status"] == "connected" and a["message_count"] == 5, "first sync")
        dovecot.deliver_lmtp(mail_user.email, make_message(99))
        wait_for(lambda a: a["message_count"] == 6, "new mail picked up")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
