"""Append-only blob files for raw message bytes.

Why not rows: the raw MIME of a mailbox is most of its volume; appending it to segment files and
keeping only a `segment:offset:length` reference in the database measured faster than BLOB rows
(docs/architecture.md), and keeps the SQLite file small.

Crash safety: the engine writes a batch's blobs and `flush()`es them *before* committing the rows
that point at them. A crash in between leaves unreferenced bytes at the end of a segment (harmless;
the idempotent upsert re-fetches and appends again) and never a row pointing at missing bytes.
Each writer (process) appends to a segment of its own, so processes never interleave writes.
"""

from __future__ import annotations

import io
import os
import threading
import uuid
from pathlib import Path

SEGMENT_LIMIT = 1 << 30  # start a new segment file past 1 GiB


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._fh: io.BufferedWriter | None = None
        self._name = ""
        self._offset = 0
        self._readers: dict[str, int] = {}

    def _open_segment(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._name = f"{uuid.uuid4().hex[:16]}.seg"
        fd = os.open(self.root / self._name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fh = io.BufferedWriter(io.FileIO(fd, "ab"), buffer_size=1 << 20)
        self._offset = 0

    def put_many(self, items: list[bytes]) -> list[str]:
        """Append `items`; return a reference for each. Call `flush()` before committing them."""
        refs: list[str] = []
        with self._lock:
            if self._fh is None or self._offset > SEGMENT_LIMIT:
                self._close_writer()
                self._open_segment()
            fh = self._fh
            assert fh is not None
            for data in items:
                fh.write(data)
                refs.append(f"{self._name}:{self._offset}:{len(data)}")
                self._offset += len(data)
        return refs

    def flush(self, *, durable: bool = False) -> None:
        """Hand written bytes to the OS (enough to survive a killed process); `durable` also
        fsyncs (to survive a power loss)."""
        with self._lock:
            if self._fh is not None:
                self._fh.flush()
                if durable:
                    os.fsync(self._fh.fileno())

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
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        with self._lock:
            self._close_writer()
