"""IMAP + SMTP behind the provider seam.

Sync strategy per folder (one stream each), chosen from what the server offers:

    cursor None / UIDVALIDITY changed / a full pass pending
        -> full pass: UID SEARCH for the current UIDs (also the `present` set, which sweeps
           placements that are gone), then the UIDs in ascending order, checkpointed as
           {"full": {"through": uid}} so a killed sync resumes where it stopped.
           A changed UIDVALIDITY also sets `reset`: every UID is void, the engine re-attaches
           messages by Message-ID (identify) and downloads nothing it already has.
    same UIDVALIDITY
        new mail:     UID SEARCH UID <uidnext>:*            (UIDs >= the cursor's UIDNEXT)
        QRESYNC:      UID FETCH 1:n (FLAGS) (CHANGEDSINCE m VANISHED)   flags + expunges
        CONDSTORE:    UID FETCH 1:n (FLAGS) (CHANGEDSINCE m) + UID SEARCH for expunges
        neither:      UID FETCH 1:n (FLAGS), diffed by the engine, + the `present` set
        nothing at all when UIDNEXT and HIGHESTMODSEQ have not moved.

The cursor is {"uidvalidity", "uidnext", "modseq"} (+ "full" while a full pass runs). Folders are
opened with EXAMINE (read-only), so syncing never changes \\Seen or \\Recent.

imapclient 4.1's `fetch()` converts the message set to ints and so rejects ranges ("1:*", "1:500");
we need ranges (a comma list of 20,000 UIDs overflows Dovecot's 64 KiB command line), so FETCH goes
through imaplib's `uid()` and imapclient's own response parser (`_uid_fetch`).
"""

from __future__ import annotations

import contextlib
import imaplib
import re
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO, cast

from imapclient import IMAPClient
from imapclient import exceptions as imap_exc
from imapclient.response_parser import parse_fetch_response

from inboxlink.auth.netguard import check_host, tls_client_context
from inboxlink.domain import (
    Capabilities,
    ChangeSet,
    Cursor,
    FetchParts,
    Folder,
    FolderRole,
    Identity,
    MessageRef,
    OutgoingMessage,
    RawMessage,
    SentMessage,
)
from inboxlink.errors import AuthError, ProviderError, TransientError, ValidationError
from inboxlink.providers.imap import mapping

SECURITY_MODES = ("tls", "starttls", "none")

# Ramp: small first batches so the first messages land in a second, then large ones for throughput.
_RAMP = (50, 100, 200, 400)
_BATCH_BYTES = 8 << 20  # cap a FETCH at about 8 MB when sizes are known (memory bound)
_HOOK_KEY = b"/private/vendor/vendor.dovecot/http-notify"  # what Dovecot's OX push driver reads


@dataclass(frozen=True)
class ImapConfig:
    email: str
    imap_host: str
    imap_port: int
    username: str
    security: str = "tls"
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_security: str | None = None  # defaults to `security`

    def __post_init__(self) -> None:
        if self.security not in SECURITY_MODES:
            raise ValidationError(f"security must be one of {', '.join(SECURITY_MODES)}")
        if self.smtp_security is not None and self.smtp_security not in SECURITY_MODES:
            raise ValidationError(f"smtp security must be one of {', '.join(SECURITY_MODES)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImapConfig:
        return cls(
            email=str(data["email"]),
            imap_host=str(data["imap_host"]),
            imap_port=int(data["imap_port"]),
            username=str(data["username"]),
            security=str(data.get("security") or "tls"),
            smtp_host=data.get("smtp_host"),
            smtp_port=int(data["smtp_port"]) if data.get("smtp_port") else None,
            smtp_security=data.get("smtp_security"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class ConnectOptions:
    allow_private_hosts: bool = False
    timeout: float = 20.0
    ca_file: str | None = None


class ImapProvider:
    """One IMAP mailbox (and its SMTP server for sending). See the module docstring."""

    def __init__(self, config: ImapConfig, password: str, options: ConnectOptions | None = None) -> None:
        self.config = config
        self._password = password
        self.options = options or ConnectOptions()
        self._client: IMAPClient | None = None
        self._caps: frozenset[str] = frozenset()
        self._selected: str | None = None
        self._folders: list[Folder] | None = None

    # -- connection ------------------------------------------------------------------------
    def _where(self) -> str:
        return f"{self.config.imap_host}:{self.config.imap_port}"

    def _connect(self) -> IMAPClient:
        if self._client is not None:
            return self._client
        cfg = self.config
        # Connect to the address the guard checked, never to the name again (netguard: DNS rebinding);
        # certificates are still checked against the name.
        address = check_host(cfg.imap_host, cfg.imap_port, allow_private=self.options.allow_private_hosts)[0]
        tls = tls_client_context(self.options.ca_file, host=cfg.imap_host) if cfg.security != "none" else None
        try:
            client = IMAPClient(
                address,
                port=cfg.imap_port,
                ssl=cfg.security == "tls",
                ssl_context=tls if cfg.security == "tls" else None,
                timeout=self.options.timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            raise TransientError(
                f"the TLS certificate of {self._where()} is not trusted: {exc.verify_message}"
            ) from exc
        except (OSError, imaplib.IMAP4.error) as exc:
            hint = _security_hint(exc, cfg.security)
            raise TransientError(f"cannot connect to IMAP server {self._where()}: {_why(exc)}{hint}") from exc
        # imapclient runs imaplib at debug level 5 so its logger sees the protocol; imaplib then
        # builds a repr() of every literal (each message body) on the way in, whether or not the
        # logger is enabled: 2.2 s of a 10,000-message fetch that takes 0.46 s without. Level 0.
        client._imap.debug = 0
        try:
            if cfg.security == "starttls":
                client.starttls(tls)  # (not None: security is starttls)
            client.login(cfg.username, self._password)
        except imap_exc.LoginError as exc:
            _safe_logout(client)
            text = _why(exc)
            if "UNAVAILABLE" in text.upper():
                raise TransientError(
                    f"IMAP server {self._where()} is temporarily unavailable: {text}"
                ) from exc
            raise AuthError(
                f"the IMAP server {self._where()} rejected the username or password ({text})"
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            _safe_logout(client)
            raise TransientError(
                f"the TLS certificate of {self._where()} is not trusted: {exc.verify_message}"
            ) from exc
        except (OSError, imaplib.IMAP4.abort) as exc:
            _safe_logout(client)
            raise TransientError(f"connection to {self._where()} failed during login: {_why(exc)}") from exc
        except imaplib.IMAP4.error as exc:
            _safe_logout(client)
            raise ProviderError(
                f"IMAP server {self._where()} refused the login sequence: {_why(exc)}"
            ) from exc
        try:
            self._caps = frozenset(c.decode().upper() for c in client.capabilities())
            if "QRESYNC" in self._caps:
                client.enable("QRESYNC")
            elif "CONDSTORE" in self._caps:
                client.enable("CONDSTORE")
        except (OSError, imaplib.IMAP4.abort) as exc:
            _safe_logout(client)
            raise TransientError(f"connection to {self._where()} dropped: {_why(exc)}") from exc
        self._client = client
        return client

    def register_delivery_hook(self) -> str | None:
        """Register this mailbox for Dovecot's delivery hook (the push_notification plugin's OX
        driver: `api/routes_push_dovecot.py`): set the private server metadata entry the driver
        looks for, as `doveadm mailbox metadata set -u USER -s "" KEY user=USER` would. None when
        done, else why not. Needs METADATA (Dovecot: `imap_metadata = yes`, `mail_attribute_dict`)."""
        client = self._connect()
        if not {"METADATA", "METADATA-SERVER"} & self._caps:
            return "the IMAP server offers no METADATA (Dovecot: imap_metadata = yes)"
        login = self.config.username
        if not login.isascii() or any(c in login for c in '"\\\r\n'):
            return "the login cannot be written in a quoted IMAP string"
        entry = b"(" + _HOOK_KEY + b' "user=' + login.encode() + b'")'
        self._call("SETMETADATA", client._raw_command_untagged, b"SETMETADATA", [b'""', entry], uid=False)
        return None

    def close(self) -> None:
        if self._client is not None:
            _safe_logout(self._client)
            self._client = None
            self._selected = None

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one client call, translating failures at the boundary."""
        try:
            return fn(*args, **kwargs)
        except (TimeoutError, OSError, imaplib.IMAP4.abort) as exc:
            # the connection is unusable: close its socket now (no LOGOUT, it would only wait on
            # a dead peer), rather than leave it to the garbage collector
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.shutdown()
            self._client = None
            self._selected = None
            raise TransientError(
                f"IMAP connection to {self._where()} lost during {what}: {_why(exc)}"
            ) from exc
        except imap_exc.IMAPClientError as exc:
            raise ProviderError(f"IMAP {what} failed on {self._where()}: {_why(exc)}") from exc
        except imaplib.IMAP4.error as exc:
            raise ProviderError(f"IMAP {what} failed on {self._where()}: {_why(exc)}") from exc

    # -- seam: identity and folders ------------------------------------------------------------
    def verify(self) -> tuple[Identity, Capabilities]:
        self._connect()
        caps = self._caps
        return (
            Identity(email=self.config.email),
            Capabilities(
                condstore="CONDSTORE" in caps or "QRESYNC" in caps,
                qresync="QRESYNC" in caps,
                idle="IDLE" in caps,
                special_use="SPECIAL-USE" in caps,
                can_send=bool(self.config.smtp_host),
                server="imap",
                raw=tuple(sorted(caps)),
            ),
        )

    def folders(self) -> list[Folder]:
        client = self._connect()
        listing = self._call("LIST", client.list_folders)
        out: list[Folder] = []
        for attrs, delim, name in listing:
            delimiter = delim.decode() if isinstance(delim, bytes) else delim
            name = name if isinstance(name, str) else name.decode("utf-8", "replace")
            role = mapping.folder_role(name, attrs, delimiter)
            out.append(Folder(key=name, name=name, role=role, selectable=mapping.is_selectable(attrs)))
        out.sort(key=lambda f: (mapping.sync_order(f.role), f.key.lower()))
        self._folders = out
        return out

    def streams(self) -> list[str]:
        folders = self._folders if self._folders is not None else self.folders()
        return [f.key for f in folders if f.selectable]

    # -- seam: sending (SendingProvider) -------------------------------------------------------
    # The SMTP transaction reports its point of no return (OutgoingMessage.on_commit) exactly.
    precise_commit = True

    def _folder_with_role(self, role: FolderRole, fallback: str) -> str:
        folders = self._folders if self._folders is not None else self.folders()
        for f in folders:
            if f.role == role:
                return f.key
        client = self._connect()
        with contextlib.suppress(imaplib.IMAP4.error):
            self._call("CREATE", client.create_folder, fallback)
        return fallback

    def _append(self, folder: str, mime: bytes, flags: Sequence[str]) -> str | None:
        """APPEND and return the new UID when the server says it (UIDPLUS' APPENDUID)."""
        client = self._connect()
        response = self._call("APPEND", client.append, folder, mime, flags=list(flags))
        text = response.decode("ascii", "replace") if isinstance(response, bytes) else str(response)
        found = re.search(r"APPENDUID\s+\d+\s+(\d+)", text, re.IGNORECASE)
        return found.group(1) if found else None

    def send(self, message: OutgoingMessage) -> SentMessage:
        from inboxlink.providers.imap.outgoing import smtp_send

        smtp_send(self.config, self._password, self.options, message)
        # Delivered: from here on nothing may raise, or the caller would think it unsent.
        try:
            sent = self._folder_with_role(FolderRole.SENT, "Sent")
            uid = self._append(sent, message.mime, ["\\Seen"])
        except ProviderError as exc:
            return SentMessage(
                message_id=message.message_id,
                provider_id=message.message_id,
                note=f"sent; the copy to the Sent folder failed: {exc.message}",
            )
        return SentMessage(
            message_id=message.message_id, provider_id=message.message_id, folder=sent, remote_key=uid
        )

    def save_draft(self, message: OutgoingMessage, replaces: SentMessage | None = None) -> SentMessage:
        drafts = self._folder_with_role(FolderRole.DRAFTS, "Drafts")
        uid = self._append(drafts, message.mime, ["\\Draft", "\\Seen"])
        if replaces is not None and replaces.folder and replaces.remote_key:
            client = self._connect()
            self._call("SELECT", client.select_folder, replaces.folder)
            self._selected = None  # selected read-write: the next EXAMINE must not be skipped
            self._call("STORE", client.add_flags, [int(replaces.remote_key)], [b"\\Deleted"])
            if "UIDPLUS" in self._caps:
                self._call("UID EXPUNGE", client.uid_expunge, [int(replaces.remote_key)])
        return SentMessage(
            message_id=message.message_id, provider_id=message.message_id, folder=drafts, remote_key=uid
        )

    # -- seam: changes ------------------------------------------------------------------------
    def _examine(self, folder: str) -> dict[bytes, Any]:
        client = self._connect()
        info: dict[bytes, Any] = self._call("EXAMINE", client.select_folder, folder, readonly=True)
        self._selected = folder
        return info

    def _search_uids(self, criteria: list[str]) -> list[int]:
        client = self._connect()
        return sorted(int(u) for u in self._call("UID SEARCH", client.search, criteria))

    def _uid_fetch(self, uids: str, items: str, modifiers: str | None = None) -> dict[int, dict[bytes, Any]]:
        client = self._connect()
        imap = client._imap
        args = [uids, items] + ([modifiers] if modifiers else [])

        def run() -> dict[int, dict[bytes, Any]]:
            data = _read_fetch(imap, cast(bytes, imap._command("UID", "FETCH", *args)))
            fast = mapping.parse_fetch_fast(data)
            if fast is not None:
                return fast
            parsed: dict[int, dict[bytes, Any]] = parse_fetch_response(data, False, True)
            return parsed

        result: dict[int, dict[bytes, Any]] = self._call("UID FETCH", run)
        return result

    def _pop_vanished(self) -> list[int]:
        assert self._client is not None
        untagged = self._client._imap.untagged_responses
        out: list[int] = []
        for item in untagged.pop("VANISHED", []):
            text = item.decode() if isinstance(item, bytes) else str(item)
            text = text.replace("(EARLIER)", "").strip()
            if text:
                out.extend(mapping.parse_uid_set(text))
        return out

    def changes(self, stream: str, cursor: Cursor | None, limit: int) -> ChangeSet:
        info = self._examine(stream)
        uidvalidity = int(info[b"UIDVALIDITY"])
        uidnext = int(info.get(b"UIDNEXT") or 0)
        modseq = int(info[b"HIGHESTMODSEQ"]) if b"HIGHESTMODSEQ" in info else None
        exists = int(info.get(b"EXISTS") or 0)
        if uidnext == 0:  # some servers omit UIDNEXT; derive it
            uidnext = (max(self._search_uids(["ALL"])) + 1) if exists else 1

        reset = cursor is not None and int(cursor.get("uidvalidity", -1)) != uidvalidity
        if cursor is None or reset or "full" in cursor:
            return self._full_pass(
                stream, cursor if not reset else None, uidvalidity, uidnext, modseq, limit, reset=reset
            )
        return self._incremental(stream, cursor, uidvalidity, uidnext, modseq, limit)

    def _full_pass(
        self,
        stream: str,
        cursor: Cursor | None,
        uidvalidity: int,
        uidnext: int,
        modseq: int | None,
        limit: int,
        *,
        reset: bool,
    ) -> ChangeSet:
        full: dict[str, Any] = (
            dict(cursor["full"])
            if cursor and "full" in cursor
            else {"through": 0, "uidnext": uidnext, "modseq": modseq}
        )
        through = int(full["through"])
        all_uids = self._search_uids(["ALL"])
        pending = [u for u in all_uids if through < u < int(full["uidnext"])]
        batch = pending[:limit]
        more = len(pending) > limit

        def at(through_uid: int) -> dict[str, Any]:
            return {
                "uidvalidity": uidvalidity,
                "uidnext": full["uidnext"],
                "modseq": full["modseq"],
                "full": {**full, "through": through_uid},
            }

        if more:
            next_cursor: dict[str, Any] = at(batch[-1])
        else:
            # The pass is complete: later changes are found from the values at its start.
            next_cursor = {"uidvalidity": uidvalidity, "uidnext": full["uidnext"], "modseq": full["modseq"]}

        def checkpoint(n: int) -> Cursor:
            if n >= len(batch):
                return next_cursor
            return at(batch[n - 1]) if n > 0 else at(through)

        return ChangeSet(
            folder=stream,
            next_cursor=next_cursor,
            upserts=[MessageRef(folder=stream, remote_key=str(u)) for u in batch],
            present=frozenset(str(u) for u in all_uids),
            reset=reset,
            more=more,
            checkpoint=checkpoint,
        )

    def _incremental(
        self, stream: str, cursor: Cursor, uidvalidity: int, uidnext: int, modseq: int | None, limit: int
    ) -> ChangeSet:
        old_next = int(cursor.get("uidnext") or 1)
        old_modseq = cursor.get("modseq")
        upserts: list[MessageRef] = []
        removed: list[tuple[str, str]] = []
        present: frozenset[str] | None = None
        more = False
        new_next = max(uidnext, old_next)

        if uidnext > old_next:
            new_uids = [u for u in self._search_uids(["UID", f"{old_next}:*"]) if u >= old_next]
            if len(new_uids) > limit:
                new_uids, more = new_uids[:limit], True
                new_next = new_uids[-1] + 1
            upserts.extend(MessageRef(folder=stream, remote_key=str(u)) for u in new_uids)

        old_range = f"1:{old_next - 1}" if old_next > 1 else None
        next_modseq = modseq
        if old_range is not None:
            if (
                modseq is not None
                and old_modseq is not None
                and ("CONDSTORE" in self._caps or "QRESYNC" in self._caps)
            ):
                if modseq != int(old_modseq):
                    qresync = "QRESYNC" in self._caps
                    mods = f"(CHANGEDSINCE {int(old_modseq)}{' VANISHED' if qresync else ''})"
                    changed = self._uid_fetch(old_range, "(UID FLAGS)", mods)
                    upserts.extend(
                        MessageRef(
                            folder=stream,
                            remote_key=str(uid),
                            flags=mapping.flags_from_wire(d.get(b"FLAGS", ())),
                        )
                        for uid, d in sorted(changed.items())
                        if uid < old_next
                    )
                    if qresync:
                        removed.extend((stream, str(u)) for u in self._pop_vanished() if u < old_next)
                    else:
                        present = frozenset(str(u) for u in self._search_uids(["ALL"]))
            else:
                # No CONDSTORE: the whole flag list, diffed by the engine, and the UID set for expunges.
                listing = self._uid_fetch(old_range, "(UID FLAGS)")
                upserts.extend(
                    MessageRef(
                        folder=stream, remote_key=str(uid), flags=mapping.flags_from_wire(d.get(b"FLAGS", ()))
                    )
                    for uid, d in sorted(listing.items())
                    if uid < old_next
                )
                present = frozenset(str(u) for u in self._search_uids(["ALL"]))
        if more:
            next_modseq = int(old_modseq) if old_modseq is not None else None
        if present is not None and more:
            present = None  # only a complete listing may sweep
        return ChangeSet(
            folder=stream,
            next_cursor={"uidvalidity": uidvalidity, "uidnext": new_next, "modseq": next_modseq},
            upserts=upserts,
            removed=removed,
            present=present,
            more=more,
        )

    # -- seam: identify and fetch ------------------------------------------------------------
    def identify(self, refs: Sequence[MessageRef]) -> list[MessageRef]:
        from inboxlink.providers.base import provider_id_for_message_id

        out: list[MessageRef] = []
        for folder, group in _by_folder(refs):
            if self._selected != folder:
                self._examine(folder)
            uids = [int(r.remote_key) for r in group]
            found: dict[int, dict[bytes, Any]] = {}
            for chunk in _chunks(uids, 2000):
                found.update(
                    self._uid_fetch(
                        mapping.uid_set(chunk),
                        "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])",
                    )
                )
            missing_id: list[int] = []
            ids: dict[int, str] = {}
            for uid, data in found.items():
                block = _first_body(data)
                mid = mapping.message_id_from_header(block or b"")
                if mid:
                    ids[uid] = mid
                else:
                    missing_id.append(uid)
            for chunk in _chunks(missing_id, 200):
                heads = self._uid_fetch(mapping.uid_set(chunk), "(UID BODY.PEEK[HEADER])")
                for uid, data in heads.items():
                    ids[uid] = provider_id_for_message_id(None, _first_body(data) or b"")
            for ref in group:
                uid = int(ref.remote_key)
                got = found.get(uid)
                if got is None:
                    continue  # expunged meanwhile; the next changes() reports it
                out.append(
                    MessageRef(
                        folder=ref.folder,
                        remote_key=ref.remote_key,
                        provider_id=ids.get(uid),
                        flags=mapping.flags_from_wire(got.get(b"FLAGS", ())),
                        size=int(got[b"RFC822.SIZE"]) if b"RFC822.SIZE" in got else ref.size,
                    )
                )
        return out

    def fetch(self, refs: Sequence[MessageRef], parts: FetchParts) -> Iterator[list[RawMessage]]:
        headers_only = parts is FetchParts.HEADERS
        body_item = "BODY.PEEK[HEADER]" if headers_only else "BODY.PEEK[]"
        items = f"(UID FLAGS INTERNALDATE RFC822.SIZE {body_item})"
        ramp = 0
        for folder, group in _by_folder(refs):
            if self._selected != folder:
                self._examine(folder)
            i = 0
            while i < len(group):
                want = _RAMP[min(ramp, len(_RAMP) - 1)] * (4 if headers_only else 1)
                ramp += 1
                batch: list[MessageRef] = []
                size = 0
                while i < len(group) and len(batch) < want:
                    ref = group[i]
                    if batch and ref.size and size + ref.size > _BATCH_BYTES and not headers_only:
                        break
                    batch.append(ref)
                    size += ref.size or 0
                    i += 1
                data = self._uid_fetch(mapping.uid_set([int(r.remote_key) for r in batch]), items)
                chunk: list[RawMessage] = []
                for ref in batch:
                    d = data.get(int(ref.remote_key))
                    if d is None:
                        continue
                    raw = _first_body(d)
                    if raw is None:
                        continue
                    idate = d.get(b"INTERNALDATE")
                    chunk.append(
                        RawMessage(
                            ref=ref,
                            raw=raw,
                            headers_only=headers_only,
                            flags=mapping.flags_from_wire(d.get(b"FLAGS", ())),
                            internal_date=idate if isinstance(idate, datetime) else None,
                            size=int(d[b"RFC822.SIZE"]) if b"RFC822.SIZE" in d else len(raw),
                        )
                    )
                yield chunk


_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")


def _read_fetch(imap: imaplib.IMAP4, tag: bytes) -> list[Any]:
    """Read the answer to a FETCH we sent with tag `tag`, in the shape imaplib's `uid("FETCH")` would
    return: `(head, literal)` tuples and trailer lines, "<seq> (" heads without the FETCH keyword.

    Why not imaplib's own loop: it runs three regular expressions and an untagged-response store per
    line, which for a bulk FETCH cost more than the transfer (docs/architecture.md). This loop reads
    the same bytes with one `endswith` per line. Untagged responses that are not FETCH (EXISTS,
    EXPUNGE, VANISHED ...) go to imaplib's store, where the rest of the client looks for them.
    """
    stream = cast(BinaryIO, imap.file)  # typeshed allows text files; imaplib's is always binary
    readline, read = stream.readline, stream.read
    prefix = tag + b" "
    data: list[Any] = []
    while True:
        line = readline(1 << 20)
        if not line:
            raise imaplib.IMAP4.abort("socket error: EOF during FETCH")
        if line.startswith(prefix):
            imap.tagged_commands.pop(tag, None)
            status, _, text = line[len(prefix) :].rstrip(b"\r\n").partition(b" ")
            if status != b"OK":
                raise imap_exc.IMAPClientError(
                    f"UID FETCH answered {status.decode()}: {text.decode('utf-8', 'replace')}"[:300]
                )
            return data
        if not line.startswith(b"* "):
            raise imaplib.IMAP4.abort(f"unexpected response during FETCH: {line[:80]!r}")
        seq, _, rest = line[2:].partition(b" ")
        kind, _, payload = rest.partition(b" ")
        head = seq + b" " + payload if kind == b"FETCH" else payload
        pieces: list[Any] = []
        while True:
            m = _LITERAL.search(head)
            if m is None:
                pieces.append(head.rstrip(b"\r\n"))
                break
            literal = read(int(m.group(1)))
            pieces.append((head[:-2], literal))
            head = readline(1 << 20)
            if not head:
                raise imaplib.IMAP4.abort("socket error: EOF inside a FETCH literal")
        if kind == b"FETCH":
            data.extend(pieces)
        elif seq.isdigit():  # "* 5 EXISTS", "* 3 EXPUNGE": imaplib files these as (type, number)
            imap._append_untagged(kind.decode("ascii", "replace"), seq)
        else:  # "* VANISHED (EARLIER) 1:3", "* OK [...]": (type, the rest of the line)
            imap._append_untagged(seq.decode("ascii", "replace"), rest.rstrip(b"\r\n"))


def _first_body(data: dict[bytes, Any]) -> bytes | None:
    for key in (b"BODY[]", b"BODY[HEADER]"):  # what our bulk FETCHes ask for: no loop over the items
        value = data.get(key)
        if type(value) is bytes:
            return value
    for key, value in data.items():
        if key.startswith((b"BODY[", b"RFC822")) and key != b"RFC822.SIZE":
            if value is None:
                return b""
            return bytes(value)
    return None


def _by_folder(refs: Sequence[MessageRef]) -> list[tuple[str, list[MessageRef]]]:
    groups: dict[str, list[MessageRef]] = {}
    for ref in refs:
        groups.setdefault(ref.folder, []).append(ref)
    return list(groups.items())


def _chunks(items: list[int], n: int) -> Iterator[list[int]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _security_hint(exc: BaseException, security: str) -> str:
    """What to try when the failure looks like the wrong security for the port: a TLS port read as
    plaintext gives no greeting (the server waits for a TLS hello), a plaintext port answers a TLS
    hello with text (OpenSSL: wrong version number)."""
    if security == "tls" and isinstance(exc, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(exc):
        return (
            "; the server did not answer in TLS: for a plaintext or STARTTLS port (usually 143) "
            "use security starttls"
        )
    if security != "tls" and isinstance(exc, TimeoutError):
        return "; no IMAP greeting came: for a TLS port (usually 993) use security tls"
    return ""


def _why(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, bytes):
        text = exc.decode("utf-8", "replace")
    text = text.replace("b'", "").replace("'", "") if text.startswith("b'") else text
    return text[:300]


def _safe_logout(client: IMAPClient) -> None:
    try:
        client.logout()
    except Exception:
        with contextlib.suppress(Exception):
            client.shutdown()
