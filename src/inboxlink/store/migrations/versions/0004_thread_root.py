"""messages.thread_root: the first Message-ID a message's References names (else its In-Reply-To),
indexed, so that a message stored late finds the replies that name it only in References

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 23:10:00
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("thread_root", sa.String(length=998), nullable=True))
    # Existing rows, in batches: the root is computed from columns already stored.
    conn = op.get_bind()
    table = sa.table(
        "messages",
        sa.column("id", sa.Integer),
        sa.column("in_reply_to", sa.String),
        sa.column("references", sa.Text),
        sa.column("thread_root", sa.String),
    )
    last = 0
    while True:
        rows = conn.execute(
            sa.select(table.c.id, table.c.in_reply_to, table.c.references)
            .where(
                table.c.id > last, sa.or_(table.c.in_reply_to.is_not(None), table.c.references.is_not(None))
            )
            .order_by(table.c.id)
            .limit(5000)
        ).all()
        if not rows:
            break
        updates = []
        for r in rows:
            refs = r.references
            if isinstance(refs, str):
                try:
                    refs = json.loads(refs)
                except ValueError:
                    refs = None
            root = refs[0] if isinstance(refs, list) and refs and isinstance(refs[0], str) else r.in_reply_to
            if root:
                updates.append({"row": r.id, "root": root})
        if updates:
            conn.execute(
                table.update()
                .where(table.c.id == sa.bindparam("row"))
                .values(thread_root=sa.bindparam("root")),
                updates,
            )
        last = rows[-1].id
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_thread_root", ["thread_root"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_thread_root")
        batch_op.drop_column("thread_root")
