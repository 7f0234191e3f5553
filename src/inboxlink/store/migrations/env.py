"""Alembic environment: runs on the connection handed over by `store.db.migrate`, or on
`sqlalchemy.url` when run from the alembic command line."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from inboxlink.store.schema import metadata

config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite:///inboxlink.db")
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
