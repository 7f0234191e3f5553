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
    # CRM sharing (crm/access.py): who owns the mailbox, and what teammates see of its linked mail
    Column("owner_id", String(32)),  # users.id; None: the operator's own (embedded single-user mode)
    Column("visibility", String(16), nullable=False, default="everything"),  # metadata|subject|everything
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
    # the first Message-ID of References, else In-Reply-To: finds the replies that name a message
    # only in References (crm/linking._pass_down)
    Column("thread_root", String(998)),
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
    # thread links (crm/linking.py): replies by parent Message-ID, and provider threads
    Index("ix_messages_in_reply_to", "in_reply_to"),
    Index("ix_messages_account_thread", "account_id", "thread_id"),
    Index("ix_messages_thread_root", "thread_root"),
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


# -- CRM: users, records, links, review queue, settings, outbox ---------------------------------
# (crm/records.py, crm/linking.py, crm/access.py, outbound/outbox.py)

users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(320), nullable=False),
    Column("email", String(320), nullable=False),
    Column("token_hash", String(64), nullable=False),  # sha256 of the API token; the token is shown once
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("token_hash", name="uq_users_token_hash"),
)

records = Table(
    "records",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("type", String(16), nullable=False),  # person | company | deal
    Column("name", Text, nullable=False),
    Column("external_id", String(256)),  # the host CRM's id (bulk import is idempotent on it)
    Column("token", String(64)),  # deals: the short token written in subjects, e.g. T-1042
    Column("status", String(16), nullable=False, default="open"),  # deals: open | closed
    Column("company_id", String(32)),  # people and deals: their company
    Column("person_id", String(32)),  # deals: their main contact
    Column("origin", String(16), nullable=False, default="user"),  # user | import | auto (auto-created)
    Column("data", JSON),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("type", "external_id", name="uq_records_type_external_id"),
    Index("ix_records_token", "token"),
    Index("ix_records_company", "company_id"),
    Index("ix_records_person", "person_id"),
)

record_keys = Table(
    "record_keys",
    metadata,
    Column("record_id", String(32), ForeignKey("records.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(8), nullable=False),  # email (people) | domain (companies)
    Column("value", String(320), nullable=False),  # lower-cased
    UniqueConstraint("record_id", "kind", "value", name="uq_record_keys_record_kind_value"),
    Index("ix_record_keys_value", "kind", "value"),
)

links = Table(
    "links",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column(
        "message_id",
        BigInteger().with_variant(Integer(), "sqlite"),
        ForeignKey("messages.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("record_id", String(32), ForeignKey("records.id", ondelete="CASCADE"), nullable=False),
    Column(
        "rule", String(24), nullable=False
    ),  # participant | domain | token | thread | deal_contact | manual | sent
    Column("evidence", Text, nullable=False),  # in words: which address, domain, token or parent message
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("message_id", "record_id", name="uq_links_message_record"),
    Index("ix_links_record", "record_id", "message_id"),
)

review_items = Table(
    "review_items",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column(
        "message_id",
        BigInteger().with_variant(Integer(), "sqlite"),
        ForeignKey("messages.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("kind", String(24), nullable=False),  # which question: deal | person | company
    Column("candidates", JSON, nullable=False),  # [record id, ...]
    Column("reason", Text, nullable=False),
    Column("status", String(16), nullable=False, default="open"),  # open | resolved | dismissed
    Column("resolved_record_id", String(32)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True)),
    UniqueConstraint("message_id", "kind", name="uq_review_items_message_kind"),
    Index("ix_review_items_status", "status", "id"),
)

crm_settings = Table(
    "crm_settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

blocklist = Table(
    "blocklist",
    metadata,
    Column("value", String(320), primary_key=True),  # an address (has @) or a domain, lower-cased
    Column("created_at", DateTime(timezone=True), nullable=False),
)

search_state = Table(  # the SQLite full-text index's progress (crm/search.py); one row
    "search_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("indexed_through", BigInteger, nullable=False, default=0),  # messages.id
    Column("indexed_at", DateTime(timezone=True)),
)

outbox = Table(
    "outbox",
    metadata,
    Column(
        "id", String(32), primary_key=True
    ),  # becomes the Message-ID's left part: retries never send twice
    Column("account_id", String(32), ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("created_by", String(32)),  # users.id
    Column("status", String(16), nullable=False),  # draft | queued | sending | sent | failed | uncertain
    Column("phase", String(16)),  # while sending: connect | data (past the point of no return)
    Column("message_id", String(998), nullable=False),
    Column("compose", JSON, nullable=False),  # to/cc/bcc/subject/text/html/in_reply_to/references/records
    Column("send_at", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("last_error_code", String(32)),
    Column("sent_at", DateTime(timezone=True)),
    Column("sent_folder", String(512)),
    Column("claimed_by", String(64)),  # the process sending it now ("host:pid:nonce")
    Column("claimed_until", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_outbox_status_send_at", "status", "send_at"),
)

# -- events and webhooks
# outbound/events.py writes `event_outbox` rows inside the transaction of the change they describe;
# outbound/webhooks.py fans each event out to the subscribed endpoints (one `webhook_deliveries`
# row per event and endpoint) and delivers those rows with retries, claiming each with a lease.

event_outbox = Table(
    "event_outbox",
    metadata,
    Column("id", String(40), primary_key=True),  # "evt_" + 32 hex: the receivers' idempotency key
    Column("type", String(64), nullable=False),
    Column("data", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("dispatched_at", DateTime(timezone=True)),  # fanned out into deliveries
    Index("ix_event_outbox_dispatched_at", "dispatched_at", "created_at"),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("url", Text, nullable=False),
    Column("event_types", JSON, nullable=False),  # list of event types, or ["*"]
    Column("description", Text),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("disabled_reason", Text),  # e.g. the receiver answered 410 Gone
    Column("secret", Text, nullable=False),  # Fernet token (auth/secrets.py); never plaintext
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    Column("event_id", String(40), ForeignKey("event_outbox.id", ondelete="CASCADE"), nullable=False),
    Column("endpoint_id", String(32), ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False),
    Column("status", String(16), nullable=False),  # pending | succeeded | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True)),  # None once succeeded or failed
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    Column("lease_owner", String(64)),  # host:pid:nonce of the process sending it now
    Column("lease_until", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True)),
    UniqueConstraint("event_id", "endpoint_id", name="uq_webhook_deliveries_event_endpoint"),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    Index("ix_webhook_deliveries_endpoint", "endpoint_id", "id"),
)
