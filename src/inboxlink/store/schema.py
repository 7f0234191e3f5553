"""Tables. SQLAlchemy Core: the sync hot path writes with `executemany`, the edges read with
plain selects. Alembic migrations beside this module create them (`store/migrations`); a change here
needs a new revision there.

Identity rules (DESIGN §4):
- a message is unique per (account, provider_id): the RFC Message-ID for IMAP (or a header digest
  when it has none), the provider's id for Gmail/Graph/EWS;
- a message sits in one or more folders: one `placements` row each, unique per (folder, remote_key);
- a message with no placement left is soft-deleted (`deleted_at`), so a move seen as "expunge here,
  appear there" re-attaches it without downloading it again.
Raw bytes live in the blob store (`store/blobs.py`); `messages.blob` points there.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# BigInteger primary keys autoincrement on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the rowid.
IdType = BigInteger().with_variant(Integer(), "sqlite")

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("provider", String(16), nullable=False),
    Column("email", String(320), nullable=False),
    Column("display_name", String(320)),
    Column("status", String(16), nullable=False),
    Column("status_reason", Text),
    Column("status_at", DateTime(timezone=True), nullable=False),
    Column("config", JSON, nullable=False),  # non-secret settings: hosts, ports, username, security
    Column("secret", Text),  # Fernet token of the credentials (auth/secrets.py); never plaintext
    Column("capabilities", JSON),
    Column("sync_mode", String(16), nullable=False, default="full"),  # full | headers
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_sync_at", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("failures", Integer, nullable=False, default=0),  # consecutive transient failures
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("lease_owner", String(64)),  # which process is syncing it now
    Column("lease_until", DateTime(timezone=True)),
)

account_transitions = Table(
    "account_transitions",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("account_id", String(32), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("from_status", String(16)),
    Column("to_status", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_account_transitions_account", "account_id", "id"),
)

folders = Table(
    "folders",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("account_id", String(32), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("key", String(512), nullable=False),
    Column("name", String(512), nullable=False),
    Column("role", String(16), nullable=False),
    Column("cursor", JSON),
    Column("synced_at", DateTime(timezone=True)),
    Column("gone", Boolean, nullable=False, default=False),  # deleted on the server
    UniqueConstraint("account_id", "key", name="uq_folders_account_key"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("account_id", String(32), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("provider_id", String(512), nullable=False),
    Column("message_id", String(998)),  # RFC 5322 Message-ID without <>
    Column("thread_id", String(512)),
    Column("subject", Text),
    Column("from_email", String(320)),
    Column("from_name", Text),
    Column("date", DateTime(timezone=True)),
    Column("internal_date", DateTime(timezone=True)),
    Column("size", Integer),
    Column("snippet", Text),
    Column("text_body", Text),
    Column("has_html", Boolean, nullable=False, default=False),
    Column("recipients", JSON),  # {"to": [[email, name]], "cc": ..., "bcc": ..., "reply_to": ...}
    Column("in_reply_to", String(998)),
    Column("references", JSON),
    Column("headers", JSON),
    Column("attachments", JSON),
    Column("headers_only", Boolean, nullable=False, default=False),
    Column("parse_note", Text),
    Column("blob", String(96)),
    Column("html_sanitized", Text),  # filled lazily on first display
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True)),
    UniqueConstraint("account_id", "provider_id", name="uq_messages_account_provider_id"),
    Index("ix_messages_message_id", "message_id"),
    Index("ix_messages_account_date", "account_id", "date"),
)

placements = Table(
    "placements",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column(
        "message_id",
        BigInteger().with_variant(Integer(), "sqlite"),
        ForeignKey("messages.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "folder_id",
        BigInteger().with_variant(Integer(), "sqlite"),
        ForeignKey("folders.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("remote_key", String(256), nullable=False),
    Column("flags", String(512), nullable=False, default=""),
    UniqueConstraint("folder_id", "remote_key", name="uq_placements_folder_key"),
    Index("ix_placements_message", "message_id"),
)

message_addresses = Table(
    "message_addresses",
    metadata,
    Column(
        "message_id",
        BigInteger().with_variant(Integer(), "sqlite"),
        ForeignKey("messages.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("role", String(8), nullable=False),  # from | to | cc | bcc | reply_to
    Column("email", String(320), nullable=False),  # lower-cased
    Column("name", Text),
    Index("ix_message_addresses_email", "email"),
    Index("ix_message_addresses_message", "message_id"),
)
