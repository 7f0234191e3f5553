"""Append-only blob files for raw message bytes.

Why not rows: the raw MIME of a mailbox is most of its volume; appending it to segment files and
keeping only a `segment:offset:length` reference in the database measured faster than BLOB rows
(docs/architecture.md), and keeps the SQLite file small.

Crash safety: `put_many` hands a batch to the OS (`writev`, no user-space buffer) before the engine
commits the rows
that point at them. A crash in between leaves unreferenced bytes at the end of a segment (harmless;
the idempotent upsert re-fetches and appends again) and never a row pointing at missing bytes.
Each writer (process) appends to a segment of its own, so processes never interleave writes.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

SEGMENT_LIMIT = 1 << 30  # start a new segment file past 1 GiB
_IOV_MAX = 1024  # Linux's limit of buffers per writev


def _writev_all(fd: int, items: list[bytes]) -> None:
    """`os.writev` until everything is written (a regular file may still take less at once)."""
    views = [memoryview(b) for b in items if b]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._name = ""
        self._offset = 0

    def _open_segment(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._name = f"{uuid.uuid4().hex[:16]}.seg"
        self._fd = os.open(self.root / self._name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._offset = 0

    def put_many(self, items: list[bytes]) -> list[str]:
        """Append `items` with one `writev` per batch (no user-space buffer: the bytes reach the OS
        at once, so a killed process loses nothing written, and they are copied once, not twice).
        Return a reference for each."""
        refs: list[str] = []
        with self._lock:
            if self._fd is None or self._offset > SEGMENT_LIMIT:
                self._close_writer()
                self._open_segment()
            fd = self._fd
            assert fd is not None
            for data in items:
                refs.append(f"{self._name}:{self._offset}:{len(data)}")
                self._offset += len(data)
            for start in range(0, len(items), _IOV_MAX):
                _writev_all(fd, items[start : start + _IOV_MAX])
        return refs

    def flush(self, *, durable: bool = False) -> None:
        """Writes already reach the OS in `put_many` (enough to survive a killed process);
        `durable` also fsyncs (to survive a power loss)."""
        with self._lock:
            if self._fd is not None and durable:
                os.fsync(self._fd)

    def get(self, ref: str) -> bytes:
        name, offset, length = ref.rsplit(":", 2)
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad blob reference {ref!r}")
        with open(self.root / name, "rb") as fh:
            fh.seek(int(offset))
            data = fh.read(int(length))
        if len(data) != int(length):
            raise OSError(f"blob {ref} is truncated")
        return data

    def get_many(self, refs: list[str]) -> list[bytes]:
        """Read several blobs, opening each segment once (used by the prepare worker, which reads
        what the fetch thread has just written instead of receiving it through a pipe)."""
        out: list[bytes] = []
        fds: dict[str, int] = {}
        try:
            for ref in refs:
                name, offset, length = ref.rsplit(":", 2)
                fd = fds.get(name)
                if fd is None:
                    if "/" in name or name.startswith("."):
                        raise ValueError(f"bad blob reference {ref!r}")
                    fd = fds[name] = os.open(self.root / name, os.O_RDONLY)
                data = os.pread(fd, int(length), int(offset))
                if len(data) != int(length):
                    raise OSError(f"blob {ref} is truncated")
                out.append(data)
        finally:
            for fd in fds.values():
                os.close(fd)
        return out

    def _close_writer(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        with self._lock:
            self._close_writer()
