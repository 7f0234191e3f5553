"""The Gmail API v1 wire: authenticated JSON calls, batches, media uploads, quota, retries.

Every Google error is translated here, at the boundary, into our own (`raise ... from exc`):

    401                         ask the TokenSource again with force_refresh=True, once; then AuthError
    403 rate limits, 429        retried here (Retry-After honoured, else exponential backoff with
                                jitter) a few times; then RateLimited(retry_after)
    403 otherwise               AuthError (missing scope, delegation denied: only re-pairing helps)
    5xx                         retried like rate limits; then TransientError
    network, timeouts           TransientError at once (the engine backs off and retries the run)
    404                         GmailNotFound: the caller decides (a vanished message is skipped,
                                an expired history id becomes CursorExpired)
    400 and other 4xx           GmailRequestError with Google's reason: the caller decides

Batches (`/batch/gmail/v1`, multipart/mixed of application/http parts, at most 50 calls, as
Google advises) apply the same rules per part: only the parts that failed are sent again.

Quota: Gmail meters units per user (messages.get 5, list 5, history 2, send 100, modify 5,
batchModify 50). `QuotaBudget` spends them from a token bucket before each call, so a long sync
stays under the per-user rate instead of learning it from 429s.
"""

from __future__ import annotations

import email.utils
import json
import random
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from inboxlink.errors import AuthError, ProviderError, RateLimited, TransientError
from inboxlink.providers.base import TokenSource

MAX_BATCH = 50  # Google allows 100 calls per batch and advises at most 50
_RATE_REASONS = frozenset({"userRateLimitExceeded", "rateLimitExceeded", "quotaExceeded"})


class GmailNotFound(ProviderError):
    """404 from Gmail: the id (message, draft, label) or the history id is unknown."""

    code = "not_found"


class GmailRequestError(ProviderError):
    """Gmail refused the request itself (400, 409 ...); `reason` is Google's machine word."""

    def __init__(self, message: str, *, status: int, reason: str | None) -> None:
        super().__init__(message, status=status, reason=reason)
        self.status = status
        self.reason = reason


class QuotaBudget:
    """A token bucket of Gmail quota units: `spend(n)` waits until n units are available.

    Defaults follow Google's per-user limit (15,000 units per minute, i.e. 250 per second) with a
    burst of ten seconds' worth, so short runs go at full speed and long ones settle at the rate."""

    def __init__(
        self,
        units_per_second: float = 250.0,
        burst: float = 2500.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = units_per_second
        self.capacity = burst
        self._available = burst
        self._clock = clock
        self._sleep = sleep
        self._at = clock()
        self._lock = threading.Lock()
        self.spent = 0  # units spent in all, for measurements and tests
        self.waited = 0.0  # seconds spent waiting for the bucket

    def spend(self, units: int) -> None:
        with self._lock:
            now = self._clock()
            self._available = min(self.capacity, self._available + (now - self._at) * self.rate)
            self._at = now
            self._available -= units
            self.spent += units
            wait = -self._available / self.rate if self._available < 0 else 0.0
            self.waited += wait
        if wait > 0:
            self._sleep(wait)


@dataclass(frozen=True)
class Call:
    """One Gmail method call: `path` is below `/gmail/v1/users/me/` (e.g. "messages/abc")."""

    method: str
    path: str
    params: Sequence[tuple[str, str]] = ()
    body: Any = None
    units: int = 5


@dataclass(frozen=True)
class Reply:
    """A call's outcome in a batch: `data` on success; `error` (GmailNotFound, GmailRequestError)
    for answers the caller must judge. Auth, rate and server failures never get here: they are
    retried and then raised."""

    status: int
    data: Any = None
    error: ProviderError | None = None


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class GmailClient:
    def __init__(
        self,
        base_url: str,
        tokens: TokenSource,
        *,
        timeout: float = 30.0,
        max_attempts: int = 5,
        max_wait: float = 60.0,
        budget: QuotaBudget | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.max_attempts = max_attempts
        self.max_wait = max_wait  # a Retry-After longer than this is the engine's to wait out
        self.budget = budget or QuotaBudget()
        self._sleep = sleep
        self._timeout = timeout
        self._transport = transport
        self._http: httpx.Client | None = None  # opened on first use, again after close()
        self._host = urllib.parse.urlsplit(self.base_url).netloc or self.base_url
        self.calls = 0  # HTTP requests sent (a batch counts once), for measurements and tests

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _session(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                timeout=self._timeout, transport=self._transport, follow_redirects=False
            )
        return self._http

    # -- public -----------------------------------------------------------------------------------
    def call(self, call: Call) -> Any:
        """One call; returns the parsed JSON (None for an empty answer). Raises our errors."""
        return self._single(call)

    def batch(self, calls: Sequence[Call]) -> list[Reply]:
        """Run calls in batches of at most `MAX_BATCH`; replies in the order of `calls`."""
        out: list[Reply] = []
        for i in range(0, len(calls), MAX_BATCH):
            out.extend(self._batch(calls[i : i + MAX_BATCH]))
        return out

    def upload(self, path: str, metadata: dict[str, Any], raw: bytes, *, units: int) -> Any:
        """A media upload (`uploadType=multipart`): JSON metadata plus a message/rfc822 part, the
        way to send or store messages up to Gmail's 35 MB (a JSON `raw` field is limited)."""
        boundary = "inboxlink_" + secrets.token_hex(12)
        body = b"".join(
            [
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
                json.dumps(metadata).encode(),
                f"\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n".encode(),
                raw,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        url = f"{self.base_url}/upload/gmail/v1/users/me/{path}"
        answer = self._send_retrying(
            "POST",
            url,
            [("uploadType", "multipart")],
            body,
            f"multipart/related; boundary={boundary}",
            units,
            what=path,
        )
        return _json_of(answer)

    # -- plain calls ----------------------------------------------------------------------------
    def _single(self, call: Call) -> Any:
        body = json.dumps(call.body).encode() if call.body is not None else None
        answer = self._send_retrying(
            call.method,
            f"{self.base_url}/gmail/v1/users/me/{call.path}",
            list(call.params),
            body,
            "application/json" if body is not None else None,
            call.units,
            what=call.path,
        )
        return _json_of(answer)

    def _send_retrying(
        self,
        method: str,
        url: str,
        params: list[tuple[str, str]],
        body: bytes | None,
        content_type: str | None,
        units: int,
        *,
        what: str,
        force_refresh: bool = False,
    ) -> _Answer:
        refreshed = force = force_refresh
        attempt = 0
        while True:
            attempt += 1
            self.budget.spend(units)
            answer = self._send(method, url, params, body, content_type, force_refresh=force, what=what)
            force = False
            if answer.status == 401:
                if refreshed:
                    raise AuthError(f"Google rejected the refreshed access token ({self._host}, {what})")
                refreshed = force = True  # ask the token source for a new token, once
                continue
            if answer.status < 400:
                return answer
            error = _translate(answer, what, self._host)
            if isinstance(error, TransientError):
                self._wait_or_raise(error, attempt)
                continue
            raise error

    def _send(
        self,
        method: str,
        url: str,
        params: list[tuple[str, str]],
        body: bytes | None,
        content_type: str | None,
        *,
        force_refresh: bool,
        what: str,
    ) -> _Answer:
        token = self.tokens.access_token(force_refresh=force_refresh)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        self.calls += 1
        try:
            resp = self._session().request(method, url, params=tuple(params), content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TransientError(f"Gmail API at {self._host} timed out during {what}") from exc
        except httpx.TransportError as exc:
            raise TransientError(
                f"cannot reach the Gmail API at {self._host} ({type(exc).__name__}: {exc})"
            ) from exc
        return _Answer(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content)

    def _wait_or_raise(self, error: TransientError, attempt: int) -> None:
        """Back off before another attempt, or give up and let the engine schedule the retry."""
        retry_after = error.retry_after if isinstance(error, RateLimited) else None
        if attempt >= self.max_attempts or (retry_after is not None and retry_after > self.max_wait):
            raise error
        if retry_after is not None:
            delay = retry_after + random.uniform(0, 0.1 * max(retry_after, 1.0))
        else:
            # exponential backoff with "equal jitter": at least half of the step, spread above it
            step = min(32.0, 0.5 * 2 ** (attempt - 1))
            delay = step / 2 + random.uniform(0, step / 2)
        self._sleep(delay)

    # -- batches --------------------------------------------------------------------------------
    def _batch(self, calls: Sequence[Call]) -> list[Reply]:
        replies: list[Reply | None] = [None] * len(calls)
        pending = list(range(len(calls)))
        refreshed = force = False
        attempt = 0
        while pending:
            attempt += 1
            if len(pending) == 1:
                # a batch of one is a plain call: one part less to wrap and unwrap
                i = pending[0]
                try:
                    replies[i] = Reply(200, self._single(calls[i]))
                except (GmailNotFound, GmailRequestError) as exc:
                    replies[i] = Reply(exc.status if isinstance(exc, GmailRequestError) else 404, error=exc)
                break
            self.budget.spend(sum(calls[i].units for i in pending))
            answers = self._send_batch([calls[i] for i in pending], force_refresh=force)
            force = False
            unauthorized: list[int] = []
            retry: list[int] = []
            worst: TransientError | None = None
            for i, answer in zip(pending, answers, strict=True):
                if answer.status == 401:
                    unauthorized.append(i)
                    continue
                if answer.status < 400:
                    replies[i] = Reply(answer.status, _json_of(answer))
                    continue
                error = _translate(answer, calls[i].path, self._host)
                if isinstance(error, TransientError):
                    retry.append(i)
                    worst = _longer_wait(worst, error)
                elif isinstance(error, (GmailNotFound, GmailRequestError)):
                    replies[i] = Reply(answer.status, error=error)
                else:
                    raise error
            if unauthorized:
                if refreshed:
                    raise AuthError(f"Google rejected the refreshed access token ({self._host}, batch)")
                refreshed = force = True
                attempt -= 1  # a token refresh is not a failed attempt
            if retry and worst is not None:
                self._wait_or_raise(worst, attempt)
            pending = sorted(unauthorized + retry)
        return [r if r is not None else Reply(0) for r in replies]

    def _send_batch(self, calls: Sequence[Call], *, force_refresh: bool) -> list[_Answer]:
        boundary = "batch_" + secrets.token_hex(12)
        parts = []
        for n, call in enumerate(calls):
            query = urllib.parse.urlencode(list(call.params))
            target = f"/gmail/v1/users/me/{call.path}" + (f"?{query}" if query else "")
            inner = f"{call.method} {target} HTTP/1.1\r\n"
            payload = b""
            if call.body is not None:
                payload = json.dumps(call.body).encode()
                inner += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            parts.append(
                (
                    f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <item-{n}>\r\n\r\n"
                    f"{inner}\r\n"
                ).encode()
                + payload
                + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        # The envelope goes through the same rules as a plain call (it can be rate limited or
        # fail as a whole); its parts inherit its Authorization header. Units were spent per part.
        answer = self._send_retrying(
            "POST",
            f"{self.base_url}/batch/gmail/v1",
            [],
            body,
            f"multipart/mixed; boundary={boundary}",
            0,
            what="batch",
            force_refresh=force_refresh,
        )
        return _split_batch_reply(answer, len(calls), self._host)


# -- helpers ------------------------------------------------------------------------------------
def _json_of(answer: _Answer) -> Any:
    if not answer.body.strip():
        return None
    try:
        return json.loads(answer.body)
    except ValueError as exc:
        raise TransientError(f"Gmail answered {answer.status} with a body that is not JSON") from exc


def _google_error(body: bytes) -> tuple[str, str | None]:
    """(message, reason) of Google's error JSON; tolerant of anything else."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace"), None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return str(error or "")[:200], None
    reasons = [e.get("reason") for e in error.get("errors") or () if isinstance(e, dict)]
    return str(error.get("message") or ""), (str(reasons[0]) if reasons and reasons[0] else None)


def _retry_after(headers: dict[str, str]) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _translate(answer: _Answer, what: str, host: str) -> ProviderError:
    status = answer.status
    message, reason = _google_error(answer.body)
    if status == 429 or (status == 403 and reason in _RATE_REASONS):
        return RateLimited(
            f"Gmail rate limit ({reason or status}) during {what}",
            retry_after=_retry_after(answer.headers),
        )
    if status == 401:
        return AuthError(f"Google rejected the access token ({host}, {what})")
    if status == 403:
        return AuthError(f"Google refused {what}: {message} ({reason or 'forbidden'})", reason=reason)
    if status == 404:
        return GmailNotFound(f"Gmail does not know {what}", status=404)
    if status >= 500:
        return TransientError(f"Gmail server error {status} during {what}: {message}"[:300])
    return GmailRequestError(f"Gmail refused {what}: {message}"[:300], status=status, reason=reason)


def _longer_wait(a: TransientError | None, b: TransientError) -> TransientError:
    wait_a = a.retry_after if isinstance(a, RateLimited) and a.retry_after is not None else -1.0
    wait_b = b.retry_after if isinstance(b, RateLimited) and b.retry_after is not None else -1.0
    return b if a is None or wait_b > wait_a else a


def _split_batch_reply(answer: _Answer, expected: int, host: str) -> list[_Answer]:
    """The parts of a multipart/mixed batch answer, in request order (by Content-ID)."""
    content_type = answer.headers.get("content-type", "")
    boundary = None
    for piece in content_type.split(";"):
        key, _, value = piece.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        raise TransientError(f"Gmail batch answer from {host} is not multipart ({content_type[:60]})")
    delimiter = b"--" + boundary.encode()
    found: dict[int, _Answer] = {}
    in_order: list[_Answer] = []
    for chunk in answer.body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        outer_head, _, rest = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        outer = _headers(outer_head)
        status_line, _, rest = rest.partition(b"\r\n")
        inner_head, _, body = rest.partition(b"\r\n\r\n")
        inner = _headers(inner_head)
        length = inner.get("content-length", "")
        body = body[: int(length)] if length.isdigit() else body.removesuffix(b"\r\n")
        try:
            status = int(status_line.split()[1])
        except (IndexError, ValueError) as exc:
            raise TransientError(f"malformed part in a Gmail batch answer from {host}") from exc
        part = _Answer(status, inner, body)
        in_order.append(part)
        content_id = outer.get("content-id", "").strip("<>")
        if content_id.startswith("response-item-") and content_id[14:].isdigit():
            found[int(content_id[14:])] = part
    if len(found) == expected:
        return [found[i] for i in range(expected)]
    if len(in_order) == expected:
        return in_order
    raise TransientError(f"Gmail batch answer from {host} has {len(in_order)} parts, expected {expected}")


def _headers(block: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out
