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
