"""Who holds a lease: "host:pid:nonce" names one process. Sync leases (accounts), outbox claims and
webhook delivery leases all use it, so a holder killed on this machine (kill -9) is recognised at
once instead of waiting out its lease."""

from __future__ import annotations

import os
import socket
import uuid


def new_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_is_dead(owner: str) -> bool:
    """True when `owner` names a process of this machine that no longer runs. Holders on other
    machines are left to their lease expiry."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
