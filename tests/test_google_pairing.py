"""The Google pairing contract, as an operator and a user meet it: `python -m inboxlink_sim google`
and `inboxlink serve` as subprocesses, the settings through the environment only, the browser played
by hand with httpx (consent page fetched, form posted), then the CLI's JSON.

    INBOXLINK_GOOGLE_CLIENT_ID / _CLIENT_SECRET / _DISCOVERY_URL / _API_BASE  point at the simulator
    GET /oauth/google/start?features=...     302 to the consent page, asking only for those scopes
    consent (allow)                          302 to /oauth/google/callback -> the account exists
    inboxlink accounts --json / sync ACCOUNT --once --json    as for IMAP

Keep this contract stable: other checks drive the product the same way.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from inboxlink_sim.google import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

CLI = [sys.executable, "-m", "inboxlink.cli"]
AUTH = "https://www.googleapis.com/auth/"
IDENTITY = ["openid", "email", "profile"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_up(url: str, proc: subprocess.Popen[Any], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up: {log.read_text()}")


def stop(proc: subprocess.Popen[Any], log: IO[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    log.close()


@dataclass
class Stack:
    sim_url: str
    url: str
    env: dict[str, str]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*CLI, *args], capture_output=True, text=True, env=self.env, timeout=120, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} exited {proc.returncode}: {proc.stderr}")
        return proc

    def sim_admin(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.post(f"{self.sim_url}/_sim{path}", json=body or {}, timeout=10)
        assert response.status_code in (200, 201), response.text
        return response.json() if response.content else None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("google-pairing")
    sim_port, port = free_port(), free_port()
    sim_url, url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{port}"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXLINK_")}
    sim_log_path = tmp / "sim.log"
    sim_log = sim_log_path.open("wb")
    users = ["--user", "ana@example.com", "--user", "ben@example.com", "--user", "cy@example.com"]
    mailboxes = ["--messages", "5", "--seed", "4", "--log-level", "warning"]
    sim = subprocess.Popen(
        [sys.executable, "-m", "inboxlink_sim", "google", "--port", str(sim_port), *users, *mailboxes],
        env=base_env,
        stdout=sim_log,
        stderr=sim_log,
    )
    env = base_env | {
        "INBOXLINK_HOME": str(tmp / "home"),
        "INBOXLINK_PUBLIC_URL": url,
        "INBOXLINK_GOOGLE_CLIENT_ID": DEFAULT_CLIENT_ID,
        "INBOXLINK_GOOGLE_CLIENT_SECRET": DEFAULT_CLIENT_SECRET,
        "INBOXLINK_GOOGLE_DISCOVERY_URL": f"{sim_url}/.well-known/openid-configuration",
        "INBOXLINK_GOOGLE_API_BASE": sim_url,
        "INBOXLINK_SYNC_INTERVAL_SECONDS": "3600",  # only the sync a pairing triggers runs in serve
    }
    serve_log_path = tmp / "serve.log"
    serve_log = serve_log_path.open("wb")
    serve = subprocess.Popen(
        [*CLI, "serve", "--port", str(port)], env=env, stdout=serve_log, stderr=serve_log
    )
    try:
        wait_until_up(f"{sim_url}/.well-known/openid-configuration", sim, sim_log_path)
        wait_until_up(f"{url}/api/v1/health", serve, serve_log_path)
        yield Stack(sim_url, url, env)
    finally:
        stop(serve, serve_log)
        stop(sim, sim_log)
    assert b"ya29." not in serve_log_path.read_bytes(), "an access token reached serve's log"


def start(stack: Stack, features: str) -> tuple[str, dict[str, str]]:
    response = httpx.get(f"{stack.url}/oauth/google/start", params={"features": features}, timeout=10)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(f"{stack.sim_url}/o/oauth2/v2/auth?")
    return location, dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def consent(location: str, user: str, decision: str) -> tuple[str, list[str]]:
    """Fetch the consent page, post its form; (callback URL, the scopes the page listed)."""
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        page = browser.get(location)
        assert page.status_code == 200, page.text
        form = re.search(r'<form id="consent" method="post" action="([^"]+)"', page.text)
        request_id = re.search(r'name="request_id" value="([^"]+)"', page.text)
        assert form and request_id, page.text
        listed = re.findall(r"<li[^>]*>(.*?)</li>", page.text, re.S)
        answer = browser.post(
            urllib.parse.urljoin(location, form.group(1)),
            data={"request_id": request_id.group(1), "user": user, "decision": decision},
        )
        assert answer.status_code == 302, answer.text
        return answer.headers["location"], listed


def finish(stack: Stack, callback_url: str) -> httpx.Response:
    assert callback_url.startswith(f"{stack.url}/oauth/google/callback?")
    return httpx.get(callback_url, timeout=30)


def account_json(stack: Stack, account_id: str) -> dict[str, Any]:
    listed = json.loads(stack.cli("accounts", "--json").stdout)
    found = [a for a in listed if a["id"] == account_id]
    assert len(found) == 1, listed
    return dict(found[0])


def wait_for_background_sync(stack: Stack, account_id: str) -> None:
    """The callback hands the new account to serve's scheduler: let that run end first (the
    account is synced by one process at a time)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = httpx.get(f"{stack.url}/api/v1/accounts/{account_id}", timeout=10).json()["status"]
        if status not in ("pending", "syncing"):
            return
        time.sleep(0.1)
    raise AssertionError("serve's first sync did not finish")


def test_pairing_through_serve_then_the_cli_syncs_it(stack: Stack) -> None:
    location, q = start(stack, "read_mail,send_mail")
    assert q["scope"].split() == [*IDENTITY, AUTH + "gmail.readonly", AUTH + "gmail.send"]
    assert q["code_challenge_method"] == "S256" and q["state"] and q["nonce"]
    callback_url, listed = consent(location, "ana@example.com", "allow")
    assert len(listed) == 5  # openid, email, profile, gmail.readonly, gmail.send
    response = finish(stack, callback_url)
    assert response.status_code == 201, response.text
    account_id = response.json()["account"]["id"]

    account = account_json(stack, account_id)
    assert (account["email"], account["provider"]) == ("ana@example.com", "gmail")
    wait_for_background_sync(stack, account_id)
    stack.sim_admin("/users/ana@example.com/deliver", {"subject": "new since pairing"})
    report = json.loads(stack.cli("sync", account_id, "--once", "--json").stdout)
    assert (report["status"], report["messages"]) == ("connected", 6), report
    assert account_json(stack, account_id)["messages"] == 6

    # Google revokes the grant (password change): the next sync says so and keeps the mail
    stack.sim_admin("/users/ana@example.com/change-password")
    stack.sim_admin("/users/ana@example.com/expire-access-tokens")
    failed = stack.cli("sync", account_id, "--once", "--json", check=False)
    assert failed.returncode == 2, failed.stderr
    assert json.loads(failed.stdout)["status"] == "auth_error"
    account = account_json(stack, account_id)
    assert account["status"] == "auth_error" and "invalid_grant" in account["status_reason"]
    assert account["messages"] == 6


def test_reduced_feature_set_asks_only_for_its_scopes(stack: Stack) -> None:
    location, q = start(stack, "metadata_only")
    assert q["scope"].split() == [*IDENTITY, AUTH + "gmail.metadata"]
    callback_url, listed = consent(location, "ben@example.com", "allow")
    assert len(listed) == 4 and any("metadata" in item for item in listed), listed
    response = finish(stack, callback_url)
    assert response.status_code == 201, response.text
    account_id = response.json()["account"]["id"]
    permissions = httpx.get(f"{stack.url}/api/v1/accounts/{account_id}/permissions", timeout=10).json()
    assert sorted(s["scope"] for s in permissions["scopes"]) == sorted(
        ["openid", AUTH + "userinfo.email", AUTH + "userinfo.profile", AUTH + "gmail.metadata"]
    )
    features = {f["id"]: f for f in permissions["features"]}
    assert features["metadata_only"]["works"] and not features["read_mail"]["works"]
    wait_for_background_sync(stack, account_id)
    report = json.loads(stack.cli("sync", account_id, "--once", "--json").stdout)
    assert (report["status"], report["messages"]) == ("connected", 5), report


def test_denying_on_the_consent_page_pairs_nothing(stack: Stack) -> None:
    before = json.loads(stack.cli("accounts", "--json").stdout)
    location, _ = start(stack, "read_mail")
    callback_url, _ = consent(location, "cy@example.com", "deny")
    assert "error=access_denied" in callback_url
    response = finish(stack, callback_url)
    assert response.status_code == 403 and response.json()["error"]["code"] == "access_denied"
    assert json.loads(stack.cli("accounts", "--json").stdout) == before


def test_serve_demo_walks_a_newcomer_through_google_pairing(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INBOXLINK_")}
    env["INBOXLINK_HOME"] = str(tmp_path / "real-home")  # the demo must not touch it
    log = (tmp_path / "demo.err").open("wb")
    proc = subprocess.Popen(
        [*CLI, "serve", "--demo", "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=log, text=True
    )
    home: Path | None = None
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(6)]
        banner = "".join(lines)
        start_url = re.search(r"open (http://\S+/oauth/google/start\S*)", banner)
        home_match = re.search(r"INBOXLINK_HOME=(\S+) inboxlink accounts", banner)
        assert start_url and home_match, banner
        home = Path(home_match.group(1))
        wait_until_up(f"http://127.0.0.1:{port}/api/v1/health", proc, tmp_path / "demo.err")
        with httpx.Client(follow_redirects=False, timeout=10) as browser:
            redirect = browser.get(start_url.group(1))
            assert redirect.status_code == 302, redirect.text
        callback_url, listed = consent(redirect.headers["location"], "dana@inboxlink.test", "allow")
        assert listed
        response = httpx.get(callback_url, timeout=30)
        assert response.status_code == 201, response.text
        assert response.json()["account"]["email"] == "dana@inboxlink.test"
        listed_accounts = subprocess.run(
            [*CLI, "accounts", "--json"],
            env=env | {"INBOXLINK_HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert [a["email"] for a in json.loads(listed_accounts.stdout)] == ["dana@inboxlink.test"]
        assert not (tmp_path / "real-home").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
        if proc.stdout is not None:
            proc.stdout.close()
    assert home is not None and not home.exists(), "the demo's data directory outlives it"
