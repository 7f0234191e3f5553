"""Mailbox upkeep that needs the open provider but is not sync: push subscriptions kept alive, and
the "inboxlink/Linked" label on linked mail, for Gmail (the account's `provider` says so); the
registration for Dovecot's delivery hook, for IMAP (`INBOXLINK_DOVECOT_PUSH_REGISTER`). Adapters are
reached through the seam's optional protocols, never imported.

When: after each successful sync (`SyncEngine.after_sync`, the provider still open and the account's
lease held), at pairing and re-pairing (`AccountService`; unpairing ends the subscription), and
hourly from the task queue (`tasks.py`), which renews subscriptions older than `RENEW_AFTER`: a
daily renewal, as Google advises (a watch lapses after 7 days), that a stopped serve catches up on
at its next hour.

Push (what `capabilities.push` of the account says):

    INBOXLINK_GOOGLE_PUBSUB_TOPIC unset  -> {"mode": "polling", "reason": ...}; nothing is called
    no watch for this topic, or it expires within `EXPIRING` (after a sync), or it was made more
    than `RENEW_AFTER` ago (the task), or pairing
                                         -> provider.watch(topic)
                                            -> {"mode": "pubsub", "topic", "expires_at", "renewed_at"}
                                            refused / failed -> {"mode": "polling", "topic", "reason"}:
                                            polled as before, tried again at the next occasion

Linked label (what `capabilities.linked_label` says): when the granted scopes may change a
message's labels (messages.modify needs gmail.modify; gmail.labels alone only manages the labels
themselves), the account's live messages that have a link to a record and no placement in the
"inboxlink/Linked" folder yet (nor in trash or spam, where Gmail hides labels and the placement
would never show) get the label, created on first use. The next incremental sync records the
placements from Gmail's history, which is what makes this idempotent and cheap: a query that finds
nothing, or one batchModify (50 units) per 1,000 messages. Without those scopes:
{"enabled": false, "reason": ...} and nothing is called.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection, and_, exists, func, or_, select, update

from inboxlink.auth.scopes import catalog
from inboxlink.config import Settings
from inboxlink.domain import FolderRole, MessageRef
from inboxlink.errors import InboxlinkError
from inboxlink.providers.base import DeliveryHookRegistrar, LabelingProvider, MailProvider, PushSubscriber
from inboxlink.store.db import Database
from inboxlink.store.schema import accounts, folders, links, messages, placements
from inboxlink.sync.state import SYNCABLE, now

log = logging.getLogger(__name__)

LINKED_LABEL = "inboxlink/Linked"
EXPIRING = timedelta(days=1)  # after a sync: renew a watch that lapses sooner than this
RENEW_AFTER = timedelta(hours=20)  # the hourly task: renew watches older than this (daily)
LABEL_BATCH = 10_000  # messages labelled per run at most (10 batchModify calls); the rest next run
# Accounts whose provider has push/labels here, and the name of their OAuth scope catalog.
_CATALOG: dict[str, Literal["google", "graph"]] = {"gmail": "google"}


class Upkeep:
    def __init__(
        self, db: Database, settings: Settings, open_provider: Callable[[str], MailProvider]
    ) -> None:
        self.db = db
        self.settings = settings
        self.open_provider = open_provider

    # -- entry points ----------------------------------------------------------------------------
    def after_sync(self, account_id: str, provider: MailProvider) -> None:
        """The engine's hook: renew a lapsing watch, label what was linked since the last run."""
        row = self._account(account_id)
        if row is not None and isinstance(provider, DeliveryHookRegistrar):
            self._delivery_hook(row, provider)
        if row is None or row.provider not in _CATALOG:
            return
        self._push(row, provider, force=False, max_age=None)
        self._label_linked(row, provider)

    def at_pairing(self, account_id: str) -> None:
        """A Google account was paired or re-paired: subscribe to push now, so mail arriving during
        its first sync is announced too. Failures are recorded, never raised: pairing succeeded."""
        row = self._account(account_id)
        if row is None or row.provider not in _CATALOG:
            return
        if not self.settings.google_pubsub_topic:
            self._push(row, None, force=True, max_age=None)
            return
        with self._opened(account_id, "subscribe to push") as provider:
            if provider is not None:
                self._push(row, provider, force=True, max_age=None)

    def at_unpairing(self, account_id: str) -> None:
        """An account is being unpaired, its credentials still here: end its push subscription, so
        that Google stops publishing the mailbox's changes to us. Failures are logged, never raised:
        the unpairing goes on (an abandoned watch lapses within 7 days, its pushes acknowledged and
        ignored meanwhile)."""
        row = self._account(account_id)
        push = ((row.capabilities or {}).get("push") or {}) if row is not None else {}
        if row is None or row.provider not in _CATALOG or push.get("mode") != "pubsub":
            return
        with self._opened(account_id, "end push") as provider:
            if not isinstance(provider, PushSubscriber):
                return
            try:
                provider.stop()
            except InboxlinkError as exc:
                log.warning("account %s: ending the push subscription failed: %s", account_id, exc.message)
                return
            self._record(account_id, push={"mode": "stopped", "reason": "unpaired"})

    def renew_subscriptions(self) -> int:
        """The periodic task: renew every push subscription made more than `RENEW_AFTER` ago (or
        missing) of the accounts that may sync. Returns how many were renewed."""
        if not self.settings.google_pubsub_topic:
            return 0
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(accounts.c.id, accounts.c.provider, accounts.c.capabilities, accounts.c.status).where(
                    accounts.c.provider.in_(list(_CATALOG)), accounts.c.secret.is_not(None)
                )
            ).all()
        renewed = 0
        for row in rows:
            if row.status not in SYNCABLE or not self._watch_due(row.capabilities, max_age=RENEW_AFTER):
                continue
            with self._opened(row.id, "renew push") as provider:
                if provider is not None:
                    renewed += self._push(row, provider, force=True, max_age=None)
        return renewed

    @contextlib.contextmanager
    def _opened(self, account_id: str, purpose: str) -> Iterator[MailProvider | None]:
        """The account's mailbox, open for `purpose` and closed after; None (and a log line) when it
        cannot be opened: upkeep never fails what it accompanies."""
        try:
            provider = self.open_provider(account_id)
        except InboxlinkError as exc:
            log.warning("account %s: cannot open the mailbox to %s: %s", account_id, purpose, exc)
            yield None
            return
        try:
            yield provider
        finally:
            provider.close()

    # -- push ------------------------------------------------------------------------------------
    def _watch_due(self, capabilities: Mapping[str, Any] | None, *, max_age: timedelta | None) -> bool:
        push = (capabilities or {}).get("push") or {}
        if push.get("mode") != "pubsub" or push.get("topic") != self.settings.google_pubsub_topic:
            return True
        at = now()
        try:
            expires = datetime.fromisoformat(str(push["expires_at"]))
            renewed = datetime.fromisoformat(str(push["renewed_at"]))
        except (KeyError, ValueError):
            return True
        return expires - at < EXPIRING or (max_age is not None and at - renewed > max_age)

    def _push(
        self, row: Any, provider: MailProvider | None, *, force: bool, max_age: timedelta | None
    ) -> int:
        topic = self.settings.google_pubsub_topic
        if not topic:
            reason = (
                "INBOXLINK_GOOGLE_PUBSUB_TOPIC is not set: polled every "
                f"{self.settings.sync_interval_seconds:g} s"
            )
            self._record(row.id, push={"mode": "polling", "reason": reason})
            return 0
        if not force and not self._watch_due(row.capabilities, max_age=max_age):
            return 0
        if not isinstance(provider, PushSubscriber):
            return 0
        try:
            subscription = provider.watch(topic)
        except InboxlinkError as exc:
            log.warning("account %s: push subscription to %s failed: %s", row.id, topic, exc.message)
            reason = f"subscription failed: {exc.message}"
            self._record(row.id, push={"mode": "polling", "topic": topic, "reason": reason})
            return 0
        self._record(
            row.id,
            push={
                "mode": "pubsub",
                "topic": topic,
                "expires_at": subscription.expiration.isoformat(),
                "renewed_at": now().isoformat(),
            },
        )
        return 1

    def _delivery_hook(self, row: Any, provider: DeliveryHookRegistrar) -> None:
        """With INBOXLINK_DOVECOT_PUSH_REGISTER, register the mailbox for Dovecot's delivery hook
        once (`capabilities.delivery_hook`); a server without METADATA is asked again after later
        syncs (nothing is sent then: the capability is known), a refusal is recorded with why."""
        if not self.settings.dovecot_push_register:
            return
        if ((row.capabilities or {}).get("delivery_hook") or {}).get("registered"):
            return
        try:
            why = provider.register_delivery_hook()
        except InboxlinkError as exc:
            why = f"the server refused the registration: {exc.message}"
            log.warning("account %s: delivery hook: %s", row.id, why)
        self._record(row.id, delivery_hook={"registered": why is None, "reason": why})

    # -- the Linked label ------------------------------------------------------------------------
    def _label_linked(self, row: Any, provider: MailProvider) -> None:
        scopes = (row.capabilities or {}).get("scopes") or []
        cat = catalog()
        which = _CATALOG[row.provider]
        if not (cat.works(which, "modify_mail", scopes) and cat.works(which, "labels", scopes)):
            reason = (
                f'labelling linked mail "{LINKED_LABEL}" needs the "Organize mail" feature '
                "(gmail.modify): pair again enabling it"
            )
            self._record(row.id, linked_label={"enabled": False, "reason": reason})
            return
        if not isinstance(provider, LabelingProvider):
            return
        with self.db.engine.connect() as conn:
            refs = unlabelled_linked(conn, row.id, LINKED_LABEL, LABEL_BATCH)
        if refs:
            try:
                provider.modify(refs, add=[LINKED_LABEL])
            except InboxlinkError as exc:
                log.warning("account %s: labelling linked mail failed: %s", row.id, exc.message)
                reason = f"last attempt failed: {exc.message}"
                self._record(row.id, linked_label={"enabled": True, "reason": reason})
                return
            log.info("account %s: %d linked messages labelled %s", row.id, len(refs), LINKED_LABEL)
        self._record(row.id, linked_label={"enabled": True, "reason": None})

    # -- rows ------------------------------------------------------------------------------------
    def _account(self, account_id: str) -> Any:
        with self.db.engine.connect() as conn:
            return conn.execute(
                select(accounts.c.id, accounts.c.provider, accounts.c.capabilities).where(
                    accounts.c.id == account_id
                )
            ).one_or_none()

    def _record(self, account_id: str, **values: Any) -> None:
        """Merge `values` into the account's capabilities (re-read in the same transaction, so that
        what the engine or pairing wrote meanwhile is kept); unchanged values write nothing."""
        with self.db.engine.begin() as conn:
            stored = conn.execute(select(accounts.c.capabilities).where(accounts.c.id == account_id)).scalar()
            current = dict(stored or {})
            merged = {**current, **values}
            if merged != current:
                conn.execute(update(accounts).where(accounts.c.id == account_id).values(capabilities=merged))


def unlabelled_linked(conn: Connection, account_id: str, label: str, limit: int) -> list[MessageRef]:
    """Live messages of the account linked to some record that have no placement in the folder
    named `label` (any case: Gmail's label names are case-insensitive), nor in trash or spam; one
    ref each (its first placement)."""
    done = (
        select(placements.c.id)
        .join(folders, folders.c.id == placements.c.folder_id)
        .where(
            placements.c.message_id == messages.c.id,
            or_(
                and_(func.lower(folders.c.name) == label.lower(), folders.c.gone.is_(False)),
                folders.c.role.in_([FolderRole.TRASH.value, FolderRole.JUNK.value]),
            ),
        )
    )
    linked = select(links.c.id).where(links.c.message_id == messages.c.id)
    rows = conn.execute(
        select(messages.c.id, messages.c.provider_id, folders.c.key, placements.c.remote_key)
        .join(placements, placements.c.message_id == messages.c.id)
        .join(folders, folders.c.id == placements.c.folder_id)
        .where(
            messages.c.account_id == account_id,
            messages.c.deleted_at.is_(None),
            folders.c.gone.is_(False),
            exists(linked),
            ~exists(done),
        )
        .order_by(messages.c.id, placements.c.id)
    )
    refs: dict[int, MessageRef] = {}
    for r in rows:
        if r.id not in refs:
            if len(refs) >= limit:
                break
            refs[r.id] = MessageRef(folder=r.key, remote_key=r.remote_key, provider_id=r.provider_id)
    return list(refs.values())
