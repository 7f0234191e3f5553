"""Storage: migrations on SQLite and PostgreSQL, the blob store, the head-revision shortcut."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from inboxlink.config import Settings
from inboxlink.store.blobs import BlobStore
from inboxlink.store.db import HEAD_REVISION, _current_revision, open_database


def test_head_revision_constant_matches_alembic() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import inboxlink.store.db as db

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD_REVISION


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_migrations_create_the_schema(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    settings = Settings(home=tmp_path / "home", database_url=url)
    db = open_database(settings)
    try:
        tables = set(inspect(db.engine).get_table_names())
        assert {
            "accounts",
            "account_transitions",
            "folders",
            "messages",
            "placements",
            "message_addresses",
            "alembic_version",
        } <= tables
        assert _current_revision(db.engine) == HEAD_REVISION
        if backend == "sqlite":
            with db.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        db.close()
    again = open_database(settings)  # idempotent on a current database
    again.close()


def test_blob_store_round_trip_and_segments(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    refs = store.put_many([b"first", b"", b"third \x00 bytes"])
    store.flush()
    assert [store.get(r) for r in refs] == [b"first", b"", b"third \x00 bytes"]
    other = BlobStore(tmp_path / "blobs")  # a second writer appends to its own segment
    ref = other.put_many([b"mine"])[0]
    other.flush()
    assert ref.split(":")[0] != refs[0].split(":")[0]
    assert store.get(ref) == b"mine"
    with pytest.raises(ValueError):
        store.get("../etc/passwd:0:4")
    store.close()
    other.close()
    assert oct((tmp_path / "blobs").stat().st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_0004_fills_the_thread_root_of_stored_mail(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A database from before 0004 gets each message's thread root from what it already stored."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    import inboxlink.store.db as db_module

    url = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    settings = Settings(home=tmp_path / "home", database_url=url)
    settings.resolved_home.mkdir(parents=True)
    engine = db_module.make_engine(settings.resolved_database_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db_module.__file__).parent / "migrations"))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0003")
            conn.execute(
                text(
                    "INSERT INTO accounts (id, provider, email, config, status, status_reason, status_at, "
                    "sync_mode, failures, created_at, visibility) VALUES ('a1', 'imap', 'a@x.example', '{}', "
                    "'connected', 'ok', '2026-01-01', 'full', 0, '2026-01-01', 'everything')"
                )
            )
            for i, (irt, refs) in enumerate(
                [(None, None), ("p@x", '["root@x", "p@x"]'), ("p@x", None), (None, "[]")], start=1
            ):
                conn.execute(
                    text(
                        'INSERT INTO messages (id, account_id, provider_id, in_reply_to, "references", '
                        "has_html, headers_only, created_at, updated_at) VALUES (:i, 'a1', :p, :irt, :refs, "
                        "false, false, '2026-01-01', '2026-01-01')"
                    ),
                    {"i": i, "p": f"m{i}", "irt": irt, "refs": refs},
                )
            command.upgrade(cfg, "head")
            roots = dict(conn.execute(text("SELECT id, thread_root FROM messages ORDER BY id")).all())
    finally:
        engine.dispose()
    assert roots == {1: None, 2: "root@x", 3: "p@x", 4: None}
