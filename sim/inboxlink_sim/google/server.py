""":class:`GoogleSim`: the simulator in a background thread, for tests.

    with GoogleSim() as sim:
        sim.add_user("alice@example.com", messages=50, seed=1)
        tokens = sim.issue_tokens("alice@example.com", ["https://www.googleapis.com/auth/gmail.modify"])
        ... talk to sim.base_url ...
        sim.fail_next(2, status=429, retry_after=3)

uvicorn serves :func:`~inboxlink_sim.google.app.create_app` on 127.0.0.1 and a free port (a socket
bound before start, so ``base_url`` is known and never races); :meth:`stop` shuts it down and joins
the push worker.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import uvicorn

from . import control
from .app import create_app
from .discovery import discovery_for
from .oauth import issue_tokens, normalize_scopes
from .state import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    CallRecord,
    Client,
    Fault,
    Mailbox,
    PushRecord,
    SentRecord,
    SimState,
    TokenFault,
    User,
)


class GoogleSim:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str | None = DEFAULT_CLIENT_SECRET,
        redirect_uris: list[str] | None = None,
        access_token_ttl: int = 3600,
        validate_responses: bool = False,
        push_max_attempts: int = 5,
    ) -> None:
        self.host = host
        self.port = port
        self.state = SimState(
            seed=seed,
            access_token_ttl=access_token_ttl,
            validate_responses=validate_responses,
            push_max_attempts=push_max_attempts,
        )
        self.client_id = client_id
        self.client_secret = client_secret
        self.state.add_client(client_id, client_secret, redirect_uris)
        self.app = create_app(self.state)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if not self.state.base_url:
            raise RuntimeError("GoogleSim is not started")
        return self.state.base_url

    def start(self) -> GoogleSim:
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self._socket = sock
        self.port = sock.getsockname()[1]
        self.state.base_url = f"http://{self.host}:{self.port}"
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            loop="asyncio",
            http="h11",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="google-sim", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("GoogleSim failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None
        self._server = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self.state.close()

    def __enter__(self) -> GoogleSim:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- seeding ---------------------------------------------------------------------------

    def add_user(
        self, email: str, name: str | None = None, *, messages: int = 0, seed: int = 0, generator: str = "sim"
    ) -> User:
        """Add a user; ``messages`` > 0 seeds that many (``generator``: "sim" or "inboxlink")."""
        return control.seed_user(self.state, email, name, messages, seed, generator)

    def seed_messages(self, email: str, n: int, seed: int = 0, generator: str = "sim") -> list[str]:
        return control.seed_messages(self.state, email, n, seed, generator)

    def insert_raw(
        self,
        email: str,
        raw: bytes,
        label_ids: Iterable[str] = control.DEFAULT_INCOMING_LABELS,
        *,
        internal_date: int | None = None,
        record: bool = True,
    ) -> str:
        return control.insert_raw(
            self.state, email, raw, label_ids, internal_date=internal_date, record=record
        )

    def deliver(self, email: str, raw: bytes | None = None, **kwargs: Any) -> str:
        """Incoming mail (history + push). kwargs: sender, subject, body, label_ids, in_reply_to."""
        return control.deliver(self.state, email, raw, **kwargs)

    def mailbox(self, email: str) -> Mailbox:
        return self.state.mailbox(email)

    def register_client(
        self, client_id: str, client_secret: str | None, redirect_uris: list[str] | None = None
    ) -> Client:
        return self.state.add_client(client_id, client_secret, redirect_uris)

    def issue_tokens(
        self, email: str, scopes: Iterable[str], *, client_id: str | None = None, offline: bool = True
    ) -> dict[str, Any]:
        """A token response as if ``email`` had consented to ``scopes`` (no browser step)."""
        client_id = client_id or self.client_id
        with self.state.lock:
            user = self.state.user(email)
            if user is None:
                raise KeyError(f"no simulated user {email!r}")
            wanted = normalize_scopes(" ".join(scopes))
            key = (user.email.lower(), client_id)
            self.state.grants[key] = self.state.grants.get(key, set()) | set(wanted)
            return issue_tokens(self.state, user, client_id, wanted, refresh=offline)

    # --- faults ----------------------------------------------------------------------------

    def fail_next(
        self,
        count: int = 1,
        status: int = 429,
        reason: str | None = None,
        *,
        retry_after: int | None = None,
        message: str | None = None,
        methods: Iterable[str] | None = None,
        user: str | None = None,
    ) -> Fault:
        """The next ``count`` Gmail calls (optionally only these method ids / this user) fail.

        429 defaults to reason ``rateLimitExceeded`` and ``Retry-After: 1``; 403 to
        ``userRateLimitExceeded`` (pass ``reason="rateLimitExceeded"`` for the other one); 5xx to
        ``backendError``. Batch parts count one each; ``methods=["batch"]`` fails whole batches.
        """
        return control.add_fault(
            self.state,
            count,
            status,
            reason,
            retry_after=retry_after,
            message=message,
            methods=methods,
            user=user,
        )

    def fail_next_refresh(
        self,
        error: str = "invalid_grant",
        description: str = "Token has been expired or revoked.",
        *,
        count: int = 1,
        status: int = 400,
        user: str | None = None,
        grant_type: str | None = "refresh_token",
    ) -> TokenFault:
        return control.add_token_fault(
            self.state, error, description, count=count, status=status, user=user, grant_type=grant_type
        )

    def clear_faults(self) -> None:
        control.clear_faults(self.state)

    def expire_history(self, email: str) -> None:
        control.expire_history(self.state, email)

    def change_password(self, email: str) -> int:
        return control.change_password(self.state, email)

    def expire_access_tokens(self, email: str | None = None) -> int:
        return control.expire_access_tokens(self.state, email)

    def advance_clock(self, seconds: float) -> None:
        self.state.advance_clock(seconds)

    # --- push and observation --------------------------------------------------------------

    def set_push_endpoint(self, url: str | None, topic: str = "*") -> None:
        control.set_push_endpoint(self.state, url, topic)

    def wait_for_pushes(self, n: int = 1, timeout: float = 5.0) -> list[PushRecord]:
        """Block until ``n`` pushes were acknowledged (or failed for good); returns the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.state.lock:
                done = [r for r in self.state.push_log if r.done]
                if len(done) >= n:
                    return list(self.state.push_log)
            time.sleep(0.01)
        raise TimeoutError(f"fewer than {n} pushes completed in {timeout}s")

    @property
    def push_log(self) -> list[PushRecord]:
        with self.state.lock:
            return list(self.state.push_log)

    @property
    def outbox(self) -> list[SentRecord]:
        with self.state.lock:
            return list(self.state.outbox)

    @property
    def calls(self) -> list[CallRecord]:
        with self.state.lock:
            return list(self.state.calls)

    @property
    def schema_violations(self) -> list[str]:
        with self.state.lock:
            return list(self.state.schema_violations)

    def discovery_document(self) -> dict[str, Any]:
        """The Gmail discovery document re-rooted here (needs google-api-python-client)."""
        return discovery_for(self.base_url)

    @property
    def token_uri(self) -> str:
        return self.base_url + "/token"
