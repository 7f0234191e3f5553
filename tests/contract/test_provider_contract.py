"""The provider contract: what `providers/base.py` promises, checked against every implementation
with a real server behind it (Dovecot for IMAP, the Google simulator for Gmail; others as they
arrive).

A harness gives each test a fresh mailbox, a provider for it, and ways to change the mailbox
behind the provider's back (as another client or new mail would)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import pytest

from inboxlink.domain import ChangeSet, Cursor, FetchParts, FolderRole, MessageRef
from inboxlink.errors import AuthError, TransientError
from inboxlink.mime.parse import parse_many
from inboxlink.providers.base import MailProvider
from inboxlink.providers.gmail.provider import GmailConfig, GmailProvider
from inboxlink.providers.imap.provider import ConnectOptions, ImapConfig, ImapProvider
from inboxlink.testing.dovecot import Dovecot, MailUser
from inboxlink_sim.google import GoogleSim
from tests.gmail_support import (
    READ_WRITE_SCOPES,
    GmailAccount,
    SimTokenSource,
    StaticTokenSource,
    running_sim,
)
from tests.support import imap_session, make_message


class Harness(Protocol):
    """A fresh mailbox holding "Message number 0" .. "Message number 2", delivered in that order."""

    def provider(self, *, password: str | None = None) -> MailProvider: ...
    def unreachable(self) -> MailProvider: ...
    def add(self, raw: bytes) -> None: ...
    def flag_first(self) -> None:
        """Flag every message in the inbox (as another client would)."""
        ...

    def delete_first(self) -> None:
        """Delete the first message delivered ("Message number 0") for good."""
        ...


@dataclass
class ImapHarness:
    dovecot: Dovecot
    user: MailUser

    def _config(self, port: int | None = None) -> ImapConfig:
        return ImapConfig(
            email=self.user.email,
            imap_host=self.user.host,
            imap_port=port or self.user.port,
            username=self.user.email,
            security="none",
        )

    def provider(self, *, password: str | None = None) -> MailProvider:
        return ImapProvider(
            self._config(),
            password or self.user.password,
            ConnectOptions(allow_private_hosts=True, timeout=10),
        )

    def unreachable(self) -> MailProvider:
        return ImapProvider(self._config(port=1), "x", ConnectOptions(allow_private_hosts=True, timeout=5))

    def add(self, raw: bytes) -> None:
        self.dovecot.deliver_lmtp(self.user.email, raw)

    def _inbox(self, *cmd: str) -> None:
        imap = imap_session(self.user)
        try:
            imap.select("INBOX")
            imap.uid(*cmd)
            imap.expunge()
        finally:
            imap.logout()

    def flag_first(self) -> None:
        self._inbox("STORE", "1:*", "+FLAGS", "(\\Flagged)")

    def delete_first(self) -> None:
        typ_uid = "1"
        self._inbox("STORE", typ_uid, "+FLAGS", "(\\Deleted)")


@dataclass
class GmailHarness:
    account: GmailAccount

    @property
    def sim(self) -> GoogleSim:
        return self.account.sim

    def provider(self, *, password: str | None = None) -> MailProvider:
        if password is not None:
            # the OAuth analogue of a wrong password: a refresh token Google does not know
            return self.account.provider(
                tokens=SimTokenSource(self.sim, refresh_token=password, scopes=READ_WRITE_SCOPES)
            )
        return self.account.provider()

    def unreachable(self) -> MailProvider:
        return GmailProvider(
            GmailConfig(email=self.account.email, api_base="http://127.0.0.1:1"), StaticTokenSource("x")
        )

    def add(self, raw: bytes) -> None:
        self.sim.deliver(self.account.email, raw)

    def flag_first(self) -> None:
        box = self.sim.mailbox(self.account.email)
        with self.sim.state.lock:
            box.modify([m.id for m in box.messages.values() if "INBOX" in m.label_ids], ["STARRED"], [])

    def delete_first(self) -> None:
        box = self.sim.mailbox(self.account.email)
        with self.sim.state.lock:
            first = [m.id for m in box.messages.values() if m.parsed.subject == "Message number 0"]
            assert len(first) == 1
            box.delete(first)


@pytest.fixture(scope="module")
def google_sim() -> Iterator[GoogleSim]:
    with running_sim() as sim:
        yield sim
        assert sim.schema_violations == [], "the simulator answered outside the discovery document"


@pytest.fixture(params=["imap", "gmail"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "gmail":
        sim: GoogleSim = request.getfixturevalue("google_sim")
        account = GmailAccount.create(sim)
        for i in range(3):
            sim.deliver(account.email, make_message(i))
        yield GmailHarness(account)
        sim.clear_faults()
        return
    dovecot: Dovecot = request.getfixturevalue("dovecot")
    mail_user: MailUser = request.getfixturevalue("mail_user")
    for i in range(3):
        dovecot.deliver_lmtp(mail_user.email, make_message(i))
    yield ImapHarness(dovecot, mail_user)


def drain(p: MailProvider, stream: str, cursor: Cursor | None) -> tuple[list[ChangeSet], Cursor]:
    sets = []
    while True:
        cs = p.changes(stream, cursor, limit=2)
        sets.append(cs)
        cursor = cs.next_cursor
        if not cs.more:
            return sets, cursor


def inbox(p: MailProvider) -> str:
    return next(f.key for f in p.folders() if f.role is FolderRole.INBOX)


def test_verify_names_the_mailbox_and_its_capabilities(harness: Harness) -> None:
    p = harness.provider()
    try:
        identity, caps = p.verify()
        assert "@" in identity.email
        assert caps.server
    finally:
        p.close()
        p.close()  # closing twice is safe


def test_rejected_credentials_raise_auth_error(harness: Harness) -> None:
    p = harness.provider(password="definitely-wrong")
    with pytest.raises(AuthError) as info:
        p.verify()
    assert "definitely-wrong" not in str(info.value)


def test_unreachable_server_raises_transient_error(harness: Harness) -> None:
    with pytest.raises(TransientError):
        harness.unreachable().verify()


def test_streams_start_with_the_inbox(harness: Harness) -> None:
    p = harness.provider()
    try:
        assert p.streams()[0] == inbox(p)
    finally:
        p.close()


def test_full_then_incremental(harness: Harness) -> None:
    p = harness.provider()
    try:
        stream = inbox(p)
        sets, cursor = drain(p, stream, None)
        refs = [r for cs in sets for r in cs.upserts]
        assert len(refs) == 3 and len(sets) == 2, "limit=2 pages the full listing"
        assert sets[0].checkpoint is not None and sets[0].checkpoint(1) is not None
        chunks = list(p.fetch(refs, FetchParts.FULL))
        raws = [m for chunk in chunks for m in chunk]
        assert [m.ref.remote_key for m in raws] == [r.remote_key for r in refs]
        parsed = parse_many([m.raw for m in raws])
        # the order is the provider's (IMAP: oldest first; Gmail: newest first)
        assert sorted(x.subject or "" for x in parsed) == [f"Message number {i}" for i in range(3)]
        heads = [m for chunk in p.fetch(refs, FetchParts.HEADERS) for m in chunk]
        assert len(heads) == 3
        assert all(m.headers_only and b"Message number" in m.raw and b"Hello" not in m.raw for m in heads)
        assert [x.subject for x in parse_many([m.raw for m in heads], headers_only=True)] == [
            x.subject for x in parsed
        ]
        # identify() names each message as the engine will once it is fetched: the provider's own
        # id when it has one, else the Message-ID
        ided = p.identify(refs)
        pairs = list(zip(raws, parsed, strict=True))
        assert [r.provider_id for r in ided] == [m.provider_id or x.message_id for m, x in pairs]
        first_key = next(m.ref.remote_key for m, x in pairs if x.subject == "Message number 0")

        # nothing changed: nothing reported
        quiet = p.changes(stream, cursor, limit=100)
        assert not quiet.upserts and not quiet.removed and not quiet.more
        assert quiet.present is None or len(quiet.present) == 3

        harness.add(make_message(10))
        harness.flag_first()
        harness.delete_first()
        cs = p.changes(stream, quiet.next_cursor, limit=100)
        new = [r for r in cs.upserts if r.flags is None or r.remote_key not in {x.remote_key for x in refs}]
        assert len(new) == 1
        flagged = [r for r in cs.upserts if r.flags is not None and "\\Flagged" in r.flags]
        assert len(flagged) >= 2
        gone = {k for _f, k in cs.removed} | (
            {r.remote_key for r in refs} - set(cs.present) if cs.present is not None else set()
        )
        assert gone == {first_key}
    finally:
        p.close()


def test_fetch_skips_refs_that_vanished(harness: Harness) -> None:
    p = harness.provider()
    try:
        stream = inbox(p)
        sets, _ = drain(p, stream, None)
        refs = [r for cs in sets for r in cs.upserts]
        ghost = MessageRef(folder=stream, remote_key="999999")
        got = [m.ref.remote_key for chunk in p.fetch([*refs, ghost], FetchParts.FULL) for m in chunk]
        assert got == [r.remote_key for r in refs]
    finally:
        p.close()
