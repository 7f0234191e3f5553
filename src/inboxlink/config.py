"""Settings: the only module that reads environment variables.

Every setting is `INBOXLINK_<NAME>`; see the README for the list. Other modules receive a `Settings`
object (the API through a dependency, the CLI and tasks through `get_settings()`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INBOXLINK_", extra="ignore")

    home: Path = Field(default=Path("inboxlink-data"), description="data directory (SQLite, blobs, key)")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite under home (postgresql+psycopg://...)"
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Fernet key(s), comma-separated, newest first; default: generated into home/secret.key",
    )
    allow_private_hosts: bool = Field(
        default=False, description="let users point accounts at loopback and private addresses"
    )
    tls_ca_file: str | None = Field(
        default=None, description="extra CA bundle to trust for IMAP/SMTP/EWS servers (self-hosted CAs)"
    )
    api_token: SecretStr | None = Field(
        default=None, description="when set, the API requires `Authorization: Bearer <token>`"
    )
    prepare_workers: int = Field(
        default=0,
        ge=0,
        le=8,
        description="worker processes that parse downloaded mail during a large sync (0: parse in-process)",
    )
    public_url: str = Field(
        default="http://127.0.0.1:8025",
        description="where users and providers reach this service (OAuth redirect URIs, push, tracking)",
    )
    google_client_id: str | None = Field(default=None, description="Google OAuth client id (Cloud console)")
    google_client_secret: SecretStr | None = Field(default=None, description="Google OAuth client secret")
    google_discovery_url: str = Field(
        default="https://accounts.google.com/.well-known/openid-configuration",
        description="Google's OIDC discovery document (point at the simulator for demos and tests)",
    )
    google_api_base: str = Field(
        default="https://gmail.googleapis.com", description="base URL of the Gmail API (`/gmail/v1/...`)"
    )
    google_pubsub_topic: str | None = Field(
        default=None,
        description="Pub/Sub topic Gmail publishes mailbox changes to (projects/P/topics/T), pushed to "
        "POST /push/google; unset: Gmail accounts are polled",
    )
    google_pubsub_push_token: SecretStr | None = Field(
        default=None,
        description="the ?token= of the Pub/Sub push endpoint URL; default: derived from the secret key",
    )
    dovecot_push_token: SecretStr | None = Field(
        default=None,
        description="the ?token= of the Dovecot push_notification (OX driver) URL, PUT /push/dovecot; "
        "default: derived from the secret key",
    )
    dovecot_push_register: bool = Field(
        default=False,
        description="register each IMAP mailbox whose server offers METADATA for Dovecot's delivery "
        "hook (SETMETADATA of the OX driver's key, after a sync), instead of the operator's doveadm",
    )
    gmail_quota_units_per_second: float = Field(
        default=250.0, gt=0, description="Gmail API quota units a mailbox may spend per second (Google: 250)"
    )
    log_level: str = "INFO"
    sync_interval_seconds: float = Field(default=60.0, description="poll interval when push is not available")
    push_enabled: bool = Field(
        default=True,
        description="serve holds the IMAP IDLE watchers itself (false when `inboxlink watch` runs apart)",
    )
    push_idle_refresh_seconds: float = Field(
        default=1740.0, gt=0, le=1740.0, description="re-issue IMAP IDLE this often (RFC 2177: <= 29 min)"
    )
    push_tls_handoff: bool = Field(
        default=True,
        description="after a TLS 1.3 handshake an IMAP watch keeps only its traffic keys, not OpenSSL's "
        "connection (measured: 3.0 instead of 23.9 KB per idle connection); the keys are read from "
        "OpenSSL's key log, held in memory",
    )
    connect_timeout_seconds: float = 20.0
    backoff_max_seconds: float = 300.0
    backoff_attempts_before_error: int = 3

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_home / 'inboxlink.db'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
