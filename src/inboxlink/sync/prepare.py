"""Raw bytes -> ready-to-insert row values, in a worker process when the batch is large.

Why a process: a sync is CPU-bound and Python holds one core at a time (the GIL). Parsing MIME and
encoding the row values (JSON, timestamps) is the largest share of that work, needs nothing from
the database, so with `INBOXLINK_PREPARE_WORKERS` > 0 the engine hands it to worker processes,
which read the raw bytes from the blob files, and keeps fetching and writing in its own. With Dovecot
on the same two cores that measured no faster and costlier (docs/architecture.md), so 0 is the
default and the engine calls `prepare_batch` itself.

`prepare_batch` is a pure function of its arguments: the same rows whether it runs here or in the
worker, which the tests rely on.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from inboxlink.domain import Address
from inboxlink.mime.parse import parse_many
from inboxlink.providers.base import provider_id_for_message_id
from inboxlink.store.blobs import BlobStore
from inboxlink.store.mailstore import db_datetime

# One prepared message:
#   (provider_id, message_id, subject, from_email, from_name, date, snippet, text_body, has_html,
#    recipients_json, in_reply_to, references_json, headers_json, attachments_json, headers_only,
#    parse_note, [(role, email, name), ...], thread_root)
Prepared = tuple[Any, ...]

_EMPTY_LIST = "[]"


def _pairs(addrs: Sequence[Address]) -> list[list[str | None]]:
    return [[a.email, a.name] for a in addrs]


# json.dumps with its default settings, minus its per-call Python work (argument checks and building
# a C encoder on every call): ~2.1 -> ~0.9 µs per document, four documents per message.
_encoder = c_make_encoder(None, None, encode_basestring_ascii, None, ": ", ", ", False, False, True)


def _dumps(value: Any) -> str:
    return "".join(_encoder(value, 0))


def prepare_batch(raws: Sequence[bytes], headers_only: bool, sqlite: bool) -> list[Prepared]:
    dumps = _dumps
    gc_was = gc.isenabled()
    gc.disable()
    try:
        out: list[Prepared] = []
        for raw, p in zip(raws, parse_many(raws, headers_only=headers_only), strict=True):
            sender = p.from_[0] if p.from_ else None
            addresses = [
                (role, a.email.lower()[:320], a.name)
                for role, addrs in (("from", p.from_), ("to", p.to), ("cc", p.cc), ("bcc", p.bcc),
                                    ("reply_to", p.reply_to))
                for a in addrs
                if a.email
            ]  # fmt: skip
            out.append((
                provider_id_for_message_id(p.message_id, raw),
                p.message_id,
                p.subject,
                sender.email if sender else None,
                sender.name if sender else None,
                db_datetime(p.date, sqlite=sqlite),
                p.snippet,
                p.text,
                p.html is not None,
                dumps({"to": _pairs(p.to), "cc": _pairs(p.cc), "bcc": _pairs(p.bcc),
                       "reply_to": _pairs(p.reply_to)}),
                p.in_reply_to,
                dumps(p.references) if p.references else _EMPTY_LIST,
                dumps(p.headers),
                dumps([{"filename": a.filename, "content_type": a.content_type, "size": a.size,
                        "content_id": a.content_id, "inline": a.inline} for a in p.attachments])
                if p.attachments else _EMPTY_LIST,
                p.headers_only,
                p.parse_note,
                addresses,
                p.references[0] if p.references else p.in_reply_to,
            ))  # fmt: skip
        return out
    finally:
        if gc_was:
            gc.enable()


def prepare_from_blobs(root: str, refs: list[str], headers_only: bool, sqlite: bool) -> list[Prepared]:
    """`prepare_batch` on bytes the parent has already written to the blob store."""
    return prepare_batch(BlobStore(Path(root)).get_many(refs), headers_only, sqlite)


def _die_with_parent(parent: int) -> None:
    """Exit when the process that started this worker is gone (a kill -9 of a sync must not leave a
    worker behind, holding the sync's stdout open). A watchdog thread, not PR_SET_PDEATHSIG: that
    fires when the *thread* that spawned us ends, and the engine's fetch threads come and go."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _warm(parent: int) -> None:
    """Worker initializer: tie the worker's life to its parent, import everything once."""
    _die_with_parent(parent)
    parse_many([b"Subject: warm-up\r\n\r\nbody\r\n"])


class PreparePool:
    """Worker processes (one by default), started on first use (spawned: the parent has threads,
    so no fork)."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_warm,
                initargs=(os.getpid(),),
            )

    def submit(self, root: Path, refs: list[str], headers_only: bool, sqlite: bool) -> Future[list[Prepared]]:
        """Prepare blobs already written (and flushed) under `root`. Only their references cross
        the process boundary: pickling the raw bytes through a pipe measured 0.9 s per 20,000
        messages, more than it saved."""
        self.start()
        assert self._pool is not None
        return self._pool.submit(prepare_from_blobs, str(root), refs, headers_only, sqlite)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
