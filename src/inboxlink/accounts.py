"""Accounts: pair, re-pair, list, show, unpair. Used by the API and the CLI alike.

Pairing verifies the credentials against the server before anything is stored: a wrong password,
an unreachable host or a host the network guard refuses is an error and creates nothing. Re-pairing
is pairing bound to an existing account (same mailbox required, `wrong_account` otherwise): the new
credentials replace the old ones, the status goes back to pending, and the folder cursors are kept,
so the next sync resumes where the account stopped and downloads nothing again.

Google accounts (provider "gmail") pair through OAuth (`auth/oauth.py` draws the flow): the
identity comes from the verified id_token, the tokens are stored encrypted as
`{"access_token", "refresh_token", "expires_at", "scopes"}`, and `config["features"]` lists what
the user enabled. Enabling a feature later is re-pairing with more features: only the missing
scopes are asked for (incremental consent). `open_provider` gives Gmail adapters a
`GoogleTokenSource` whose rotated tokens are written back here at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update

from inboxlink.auth.oauth import GoogleOAuth, GoogleTokenSource, Grant, TokenSet
from inboxlink.auth.scopes import Permissions, catalog
from inboxlink.auth.secrets import SecretBox, register_secret
from inboxlink.config import Settings
from inboxlink.domain import AccountStatus
from inboxlink.errors import NotFound, OAuthFlowError, ValidationError, WrongAccount
from inboxlink.providers import registry
from inboxlink.providers.base import MailProvider
from inboxlink.providers.imap.provider import ImapConfig
from inboxlink.providers.imap.smtp import check_smtp
from inboxlink.store import mailstore
from inboxlink.store.db import Database
from inboxlink.store.schema import account_transitions, accounts, folders, messages, placements
from inboxlink.sync.state import SYNCABLE, open_account, transition
from inboxlink.sync.upkeep import Upkeep


@dataclass
class AccountView:
    id: str
    provider: str
    email: str
    status: str
    status_reason: str | None
    status_at: datetime
    created_at: datetime
    last_sync_at: datetime | None
    last_error: str | None
    message_count: int
    placement_count: int
    sync_mode: str
    config: dict[str, Any]
    capabilities: dict[str, Any] | None
    owner_id: str | None = None
    visibility: str = "everything"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("status_at", "created_at", "last_sync_at"):
            v = d[k]
            d[k] = v.isoformat() if isinstance(v, datetime) else v
        return d


@dataclass
class Transition:
    from_status: str | None
    to_status: str
    reason: str
    at: datetime


def _email_ok(email: str) -> str:
    email = email.strip()
    if "@" not in email or email.startswith("@") or email.endswith("@") or " " in email:
        raise ValidationError(f"{email!r} is not an email address")
    return email


class AccountService:
    def __init__(self, db: Database, settings: Settings, box: SecretBox) -> None:
        self.db = db
        self.settings = settings
        self.box = box
        # one per process, built eagerly (no I/O): it holds the single-use record of OAuth states
        self.google = GoogleOAuth(settings, box)
        # push subscriptions and the Linked label (sync/upkeep.py); the engine calls it after syncs
        self.upkeep = Upkeep(db, settings, self.open_provider)

    # -- providers for the engine ----------------------------------------------------------------
    def open_provider(self, account_id: str) -> MailProvider:
        with self.db.engine.connect() as conn:
            row = conn.execute(
                select(accounts.c.provider, accounts.c.config, accounts.c.secret).where(
                    accounts.c.id == account_id
                )
            ).one_or_none()
        if row is None:
            raise NotFound(f"no account {account_id}")
        creds = self.box.decrypt_json(row.secret) if row.secret else {}
        for value in creds.values():
            if isinstance(value, str) and value:
                register_secret(value)
        if row.provider == "gmail":
            source = self.google_token_source(account_id, TokenSet.from_secret(creds))
            return registry.build_provider(
                row.provider, row.config, creds, self.settings, token_source=source
            )
        return registry.build_provider(row.provider, row.config, creds, self.settings)

    # -- pairing -------------------------------------------------------------------------------
    def pair_imap(
        self, config: ImapConfig, password: str, *, account_id: str | None = None, headers_only: bool = False
    ) -> AccountView:
        _email_ok(config.email)
        if not password:
            raise ValidationError("a password is required")
        register_secret(password)
        existing = self._find(account_id, "imap", config.email)
        if existing is not None and existing.email.lower() != config.email.lower():
            raise WrongAccount(
                f"account {existing.id} belongs to {existing.email}, not {config.email}: "
                "re-pairing must use the same mailbox"
            )
        provider = registry.build_provider("imap", config.to_dict(), {"password": password}, self.settings)
        try:
            identity, caps = provider.verify()
        finally:
            provider.close()
        smtp_error = (
            check_smtp(config, password, registry.connect_options(self.settings))
            if config.smtp_host
            else "no SMTP server configured"
        )
        capabilities = {**caps.server_facts(), "can_send": smtp_error is None, "smtp_error": smtp_error}
        secret = self.box.encrypt({"password": password})
        with self.db.engine.begin() as conn:
            if existing is not None:
                conn.execute(
                    update(accounts)
                    .where(accounts.c.id == existing.id)
                    .values(
                        config=config.to_dict(),
                        secret=secret,
                        capabilities=capabilities,
                        failures=0,
                        last_error=None,
                        next_attempt_at=None,
                    )
                )
                transition(conn, existing.id, AccountStatus.PENDING, "re-paired", user_action=True)
                new_id = existing.id
            else:
                new_id = open_account(
                    conn,
                    provider="imap",
                    email=identity.email,
                    display_name=identity.display_name,
                    config=config.to_dict(),
                    secret=secret,
                    capabilities=capabilities,
                    sync_mode="headers" if headers_only else "full",
                )
        return self.get(new_id)

    def _find(self, account_id: str | None, provider: str, email: str) -> AccountView | None:
        if account_id is not None:
            return self.get(account_id)
        with self.db.engine.connect() as conn:
            row = conn.execute(
                select(accounts.c.id)
                .where(accounts.c.provider == provider, func.lower(accounts.c.email) == email.lower())
                .order_by(accounts.c.created_at)
            ).first()
        return self.get(row.id) if row else None

    # -- Google (OAuth) pairing ------------------------------------------------------------------
    def google_authorization_url(
        self, features: str | Sequence[str] | None = None, *, account_id: str | None = None
    ) -> str:
        """Where to send the user's browser to pair a Google mailbox with `features` (comma-separated
        ids; default: the catalog's defaults), or to re-pair / enable more features on `account_id`.

        A new pairing asks for the features' least set of scopes; an existing healthy account only
        for the scopes its grant lacks; an account whose grant is gone (auth_error, unpaired) for
        all of its features' scopes again. Identity scopes (openid email profile) are always asked:
        the id_token proves which mailbox consented."""
        self.google.client_id  # noqa: B018  (a ConfigError naming the settings, before anything else)
        cat = catalog()
        login_hint = None
        if account_id is None:
            wanted = cat.parse_features("google", features)
            scopes = cat.scopes_for("google", wanted)
        else:
            view = self.get(account_id)
            if view.provider != "gmail":
                raise ValidationError(f"account {account_id} is a {view.provider} account, not a Google one")
            added = cat.parse_features("google", features) if features else []
            wanted = list(dict.fromkeys([*view.config.get("features", []), *added]))
            tokens = self._stored_tokens(account_id)
            grant_alive = view.status not in (
                AccountStatus.AUTH_ERROR.value,
                AccountStatus.DISCONNECTED.value,
            )
            if tokens is not None and tokens.refresh_token and grant_alive:
                scopes = cat.missing("google", wanted, tokens.scopes)
            else:
                scopes = cat.scopes_for("google", wanted)
            login_hint = view.email
        asked = [*cat.identity_scopes("google"), *scopes]
        return self.google.authorization_url(asked, wanted, account_id, login_hint=login_hint)

    def google_finish(self, params: Mapping[str, str]) -> tuple[AccountView, bool]:
        """Finish the flow from the callback's query: (the account, whether it was created).

        Nothing is written unless state, code and id_token all check out; re-pairing another
        Google account than the one bound in the state is `WrongAccount` and changes nothing."""
        grant = self.google.finish(params)
        identity = grant.identity
        existing = (
            self.get(grant.flow.account_id)
            if grant.flow.account_id is not None
            else self._find(None, "gmail", identity.email)
        )
        if existing is not None:
            sub = existing.config.get("google_sub")
            same = sub == identity.sub if sub else existing.email.lower() == identity.email.lower()
            if existing.provider != "gmail" or not same:
                raise WrongAccount(
                    f"account {existing.id} belongs to {existing.email}, not {identity.email}: "
                    "re-pairing must use the same Google account",
                    account=existing.id,
                )
        tokens = grant.tokens
        if not tokens.refresh_token:
            old = self._stored_tokens(existing.id) if existing is not None else None
            if old is None or not old.refresh_token:
                raise OAuthFlowError("Google returned no refresh token; start pairing again")
            tokens = TokenSet(tokens.access_token, old.refresh_token, tokens.expires_at, tokens.scopes)
        features = list(
            dict.fromkeys([*(existing.config.get("features", []) if existing else []), *grant.flow.features])
        )
        view, created = self._store_google(existing, grant, tokens, features)
        # Subscribe to push at once (or record that the account is polled): mail arriving during
        # the first sync is announced too. A failure is recorded on the account, never raised.
        self.upkeep.at_pairing(view.id)
        return self.get(view.id), created

    def _store_google(
        self, existing: AccountView | None, grant: Grant, tokens: TokenSet, features: list[str]
    ) -> tuple[AccountView, bool]:
        cat = catalog()
        config = {"email": grant.identity.email, "features": features, "google_sub": grant.identity.sub}
        capabilities = {
            "scopes": sorted(cat.normalize("google", tokens.scopes)),
            "can_send": cat.works("google", "send_mail", tokens.scopes),
        }
        sync_mode = "full" if cat.works("google", "read_mail", tokens.scopes) else "headers"
        secret = self.box.encrypt(tokens.to_secret())
        if existing is not None:
            added = [f for f in features if f not in existing.config.get("features", [])]
            with self.db.engine.begin() as conn:
                conn.execute(
                    update(accounts)
                    .where(accounts.c.id == existing.id)
                    .values(
                        config=config,
                        secret=secret,
                        capabilities={**(existing.capabilities or {}), **capabilities},
                        sync_mode=sync_mode,
                        display_name=grant.identity.name,
                        failures=0,
                        last_error=None,
                        next_attempt_at=None,
                    )
                )
                reason = f"re-paired (enabled {', '.join(added)})" if added else "re-paired"
                transition(conn, existing.id, AccountStatus.PENDING, reason, user_action=True)
            return self.get(existing.id), False
        with self.db.engine.begin() as conn:
            new_id = open_account(
                conn,
                provider="gmail",
                email=grant.identity.email,
                display_name=grant.identity.name,
                config=config,
                secret=secret,
                capabilities=capabilities,
                sync_mode=sync_mode,
            )
        return self.get(new_id), True

    def google_token_source(self, account_id: str, tokens: TokenSet) -> GoogleTokenSource:
        """The token source of a Google account; rotated tokens are stored at once, unless the
        account was re-paired or unpaired meanwhile (then the newer grant wins)."""
        return self.google.token_source(tokens, self._google_saver(account_id))

    def _google_saver(self, account_id: str) -> Callable[[TokenSet, TokenSet], None]:
        def save(new: TokenSet, previous: TokenSet) -> None:
            with self.db.engine.begin() as conn:
                stored = conn.execute(select(accounts.c.secret).where(accounts.c.id == account_id)).scalar()
                if stored is None:
                    return  # unpaired meanwhile: forget the tokens
                if (
                    TokenSet.from_secret(self.box.decrypt_json(stored)).refresh_token
                    != previous.refresh_token
                ):
                    return  # re-paired meanwhile: its grant is newer than ours
                # compare-and-set on the ciphertext read above: a concurrent re-pair is not overwritten
                conn.execute(
                    update(accounts)
                    .where(accounts.c.id == account_id, accounts.c.secret == stored)
                    .values(secret=self.box.encrypt(new.to_secret()))
                )

        return save

    def _stored_tokens(self, account_id: str) -> TokenSet | None:
        with self.db.engine.connect() as conn:
            stored = conn.execute(select(accounts.c.secret).where(accounts.c.id == account_id)).scalar()
        return TokenSet.from_secret(self.box.decrypt_json(stored)) if stored else None

    def permissions(self, account_id: str) -> Permissions:
        """Each granted scope and what it powers; each feature: enabled, works, missing scopes."""
        view = self.get(account_id)
        if view.provider != "gmail":
            raise ValidationError(
                f"account {account_id} is a {view.provider} account: it has a password, not OAuth permissions"
            )
        tokens = self._stored_tokens(account_id)
        granted = tokens.scopes if tokens is not None else ()
        return catalog().permissions("google", view.config.get("features", []), granted)

    # -- reading -------------------------------------------------------------------------------
    def all(self) -> list[AccountView]:
        with self.db.engine.connect() as conn:
            ids = [r.id for r in conn.execute(select(accounts.c.id).order_by(accounts.c.created_at))]
        return [self.get(i) for i in ids]

    def get(self, account_id: str) -> AccountView:
        with self.db.engine.connect() as conn:
            row = conn.execute(select(accounts).where(accounts.c.id == account_id)).one_or_none()
            if row is None:
                raise NotFound(f"no account {account_id}")
            count = mailstore.count_messages(conn, account_id)
            in_folders = mailstore.count_placements(conn, account_id)
        return AccountView(
            id=row.id,
            provider=row.provider,
            email=row.email,
            status=row.status,
            status_reason=row.status_reason,
            status_at=row.status_at,
            created_at=row.created_at,
            last_sync_at=row.last_sync_at,
            last_error=row.last_error,
            message_count=int(count),
            placement_count=int(in_folders),
            sync_mode=row.sync_mode,
            config=dict(row.config or {}),
            capabilities=row.capabilities,
            owner_id=row.owner_id,
            visibility=row.visibility,
        )

    def syncable_by_email(self, provider: str, email: str) -> list[str]:
        """Ids of the `provider` accounts of mailbox `email` that may sync (a push names only the
        address); several when teammates paired the same mailbox."""
        return self._syncable(
            accounts.c.provider == provider, func.lower(accounts.c.email) == email.strip().lower()
        )

    def syncable_imap_by_login(self, login: str, host: str | None = None) -> list[str]:
        """Ids of the IMAP accounts that may sync and log in as `login` (`config.username`), or whose
        address it is: a mail server's delivery hook names its own user, which is usually the login.
        With `host`, only accounts on that IMAP host (one inboxlink may serve several servers whose
        user names overlap). Case-insensitive; reads the plaintext config, no secret."""
        login = login.strip().lower()
        username = func.lower(accounts.c.config["username"].as_string())
        where = [accounts.c.provider == "imap", or_(username == login, func.lower(accounts.c.email) == login)]
        if host is not None:
            where.append(func.lower(accounts.c.config["imap_host"].as_string()) == host.strip().lower())
        return self._syncable(*where)

    def _syncable(self, *where: Any) -> list[str]:
        syncable = [s.value for s in SYNCABLE]
        with self.db.engine.connect() as conn:
            return list(
                conn.execute(select(accounts.c.id).where(accounts.c.status.in_(syncable), *where)).scalars()
            )

    def transitions(self, account_id: str) -> list[Transition]:
        self.get(account_id)
        with self.db.engine.connect() as conn:
            return [
                Transition(r.from_status, r.to_status, r.reason, r.at)
                for r in conn.execute(
                    select(account_transitions)
                    .where(account_transitions.c.account_id == account_id)
                    .order_by(account_transitions.c.id)
                )
            ]

    def folders(self, account_id: str) -> list[dict[str, Any]]:
        self.get(account_id)
        with self.db.engine.connect() as conn:
            return [
                {"key": r.key, "name": r.name, "role": r.role, "synced_at": r.synced_at}
                for r in conn.execute(
                    select(folders).where(folders.c.account_id == account_id, folders.c.gone.is_(False))
                )
            ]

    def messages(
        self, account_id: str, *, folder: str | None = None, after: int = 0, limit: int = 100
    ) -> tuple[list[dict[str, Any]], int | None]:
        """The account's messages (those still on the server), oldest row first, `limit` at a time:
        keyset pages by row id, so a sync running meanwhile neither repeats nor skips a row. With
        `folder` (a key from `folders`) only the messages placed there. Returns the page and the
        `after` of the next page (None at the end)."""
        from inboxlink.crm.timeline import iso_utc, participants

        self.get(account_id)
        if not 1 <= limit <= 1000:
            raise ValidationError("limit must be between 1 and 1000")
        with self.db.engine.connect() as conn:
            query = select(
                messages.c.id,
                messages.c.message_id,
                messages.c.provider_id,
                messages.c.thread_id,
                messages.c.subject,
                messages.c.from_email,
                messages.c.from_name,
                messages.c.recipients,
                messages.c.date,
                messages.c.internal_date,
                messages.c.size,
                messages.c.snippet,
                messages.c.headers_only,
                messages.c.parse_note,
            ).where(
                messages.c.account_id == account_id, messages.c.deleted_at.is_(None), messages.c.id > after
            )
            if folder is not None:
                folder_id = conn.execute(
                    select(folders.c.id).where(
                        folders.c.account_id == account_id, folders.c.key == folder, folders.c.gone.is_(False)
                    )
                ).scalar()
                if folder_id is None:
                    raise NotFound(f"no folder {folder!r} in account {account_id}")
                placed = select(placements.c.message_id).where(placements.c.folder_id == folder_id)
                query = query.where(messages.c.id.in_(placed))
            rows = conn.execute(query.order_by(messages.c.id).limit(limit + 1)).all()
            more = len(rows) > limit
            rows = rows[:limit]
            where: dict[int, list[dict[str, Any]]] = {r.id: [] for r in rows}
            if rows:
                for p in conn.execute(
                    select(
                        placements.c.message_id, folders.c.key, placements.c.remote_key, placements.c.flags
                    )
                    .join(folders, folders.c.id == placements.c.folder_id)
                    .where(placements.c.message_id.in_(list(where)))
                    .order_by(placements.c.message_id, folders.c.key)
                ):
                    flags = p.flags.split() if p.flags else []
                    where[p.message_id].append({"folder": p.key, "remote_key": p.remote_key, "flags": flags})
        page = []
        for r in rows:
            page.append(
                {
                    "id": r.id,
                    "message_id": r.message_id,
                    "provider_id": r.provider_id,
                    "thread_id": r.thread_id,
                    "subject": r.subject,
                    **participants(r),
                    "date": iso_utc(r.date),
                    "internal_date": iso_utc(r.internal_date),
                    "size": r.size,
                    "snippet": r.snippet,
                    "headers_only": bool(r.headers_only),
                    "parse_note": r.parse_note,
                    "placements": where[r.id],
                }
            )
        return page, (rows[-1].id if more else None)

    # -- unpairing -----------------------------------------------------------------------------
    def unpair(self, account_id: str) -> AccountView:
        """Stop syncing and forget the credentials. The mail already synced stays."""
        self.get(account_id)
        self.upkeep.at_unpairing(account_id)  # while the credentials are still here
        with self.db.engine.begin() as conn:
            conn.execute(update(accounts).where(accounts.c.id == account_id).values(secret=None))
            transition(conn, account_id, AccountStatus.DISCONNECTED, "unpaired by the user", user_action=True)
        return self.get(account_id)

    # -- sharing (crm/access.py reads it) ------------------------------------------------------------
    def set_sharing(
        self, account_id: str, *, owner_id: str | None = None, visibility: str | None = None
    ) -> AccountView:
        """Who owns the mailbox (set once, at pairing) and what teammates see of its linked mail."""
        from inboxlink.crm.access import VISIBILITIES
        from inboxlink.crm.linking import bump

        values: dict[str, Any] = {}
        if visibility is not None:
            if visibility not in VISIBILITIES:
                raise ValidationError(f"visibility must be one of {', '.join(VISIBILITIES)}")
            values["visibility"] = visibility
        with self.db.engine.begin() as conn:
            if owner_id is not None:
                conn.execute(
                    update(accounts)
                    .where(accounts.c.id == account_id, accounts.c.owner_id.is_(None))
                    .values(owner_id=owner_id)
                )
            if values:
                conn.execute(update(accounts).where(accounts.c.id == account_id).values(**values))
            bump(conn)  # the team's own addresses may have changed
        return self.get(account_id)
