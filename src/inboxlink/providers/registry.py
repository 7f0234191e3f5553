"""The explicit map from provider names to adapters. The only module besides the adapters
themselves that imports a concrete provider."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from inboxlink.config import Settings
from inboxlink.errors import ConfigError, ValidationError
from inboxlink.providers.base import MailProvider, TokenSource
from inboxlink.providers.imap.provider import ConnectOptions, ImapConfig, ImapProvider

if TYPE_CHECKING:
    from inboxlink.providers.gmail.client import QuotaBudget

# The Gmail adapter (and httpx under it) is imported when a Gmail account needs it: it was part of
# the ~0.13 s that httpx and joserfc added to every CLI start, IMAP-only runs included.

PROVIDERS = ("imap", "gmail")

# Gmail's quota is per user: every adapter of one mailbox in this process (a sync, the label upkeep,
# a send) spends from the same bucket, so their sum stays under it.
_budgets: dict[tuple[str, float], QuotaBudget] = {}
_budgets_lock = threading.Lock()


def gmail_budget(email: str, units_per_second: float) -> QuotaBudget:
    """The process-wide quota bucket of one Gmail mailbox (a burst of ten seconds' worth)."""
    from inboxlink.providers.gmail.client import QuotaBudget

    key = (email.lower(), units_per_second)
    with _budgets_lock:
        budget = _budgets.get(key)
        if budget is None:
            budget = _budgets[key] = QuotaBudget(units_per_second, burst=10 * units_per_second)
        return budget


def connect_options(settings: Settings) -> ConnectOptions:
    return ConnectOptions(
        allow_private_hosts=settings.allow_private_hosts,
        timeout=settings.connect_timeout_seconds,
        ca_file=settings.tls_ca_file,
    )


def build_provider(
    kind: str,
    config: Mapping[str, Any],
    credentials: Mapping[str, Any],
    settings: Settings,
    *,
    token_source: TokenSource | None = None,
) -> MailProvider:
    """An adapter for one account. OAuth providers (Gmail, Graph) take their bearer tokens from
    `token_source` (built by `auth.oauth`, which refreshes and saves rotated tokens); password
    providers read `credentials`."""
    if kind == "imap":
        return ImapProvider(
            ImapConfig.from_dict(dict(config)),
            str(credentials.get("password", "")),
            connect_options(settings),
        )
    if kind == "gmail":
        if token_source is None:
            raise ConfigError("a Gmail account needs an OAuth token source (auth.oauth)")
        if not config.get("email"):
            raise ValidationError("a Gmail account's config needs its email address")
        from inboxlink.providers.gmail.provider import GmailConfig, GmailProvider

        return GmailProvider(
            GmailConfig(email=str(config["email"]), api_base=settings.google_api_base),
            token_source,
            budget=gmail_budget(str(config["email"]), settings.gmail_quota_units_per_second),
            timeout=settings.connect_timeout_seconds,
        )
    raise ValidationError(f"unknown provider {kind!r}; known: {', '.join(PROVIDERS)}")
