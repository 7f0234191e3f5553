"""What a failure means for an account (STYLE rule 5).

AuthError          -> auth_error at once; stop; the user must pair again. Never retried: a
                      loop of rejected logins can lock the user's directory account.
UnsupportedServer  -> unsupported; stop.
TransientError     -> back off (exponential, jitter, `RateLimited.retry_after` honoured) and
                      retry; after `backoff_attempts_before_error` failures in a row the account
                      shows connect_error (and is still retried, at the slowest pace).
anything else      -> a bug: recorded on the account and raised.
"""

from __future__ import annotations

import random

from inboxlink.errors import RateLimited, TransientError


def backoff_seconds(
    failures: int, *, base: float = 1.0, cap: float = 300.0, exc: BaseException | None = None
) -> float:
    """Delay before attempt number `failures + 1` (failures >= 1)."""
    if isinstance(exc, RateLimited) and exc.retry_after is not None:
        return max(0.0, min(float(exc.retry_after), cap * 4))
    delay: float
    delay = min(cap, base * (2 ** max(0, failures - 1)))
    return delay * (0.5 + random.random() / 2)  # "equal jitter": never zero, never in lockstep


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientError)
