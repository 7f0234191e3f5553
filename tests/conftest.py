"""Fixtures that start real servers: a private Dovecot and a private PostgreSQL per test session.

Locally a missing server is a skip (with the package to install in the reason); in CI (CI=true) it is
a failure, because CI installs the packages and a silently skipped suite would hide that it didn't.
"""

from __future__ import annotations

import itertools
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    import inboxlink.testing  # noqa: F401
except ImportError:  # not installed (pip install -e .): run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from inboxlink.testing import dovecot as dovecot_module
from inboxlink.testing import postgres as postgres_module
from inboxlink.testing.dovecot import Dovecot, MailUser
from inboxlink.testing.postgres import Postgres

_counter = itertools.count(1)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must install it)", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a PostgreSQL fixture carry the `postgres` marker (select with -m)."""
    for item in items:
        if {"postgres", "postgres_url"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """A private Dovecot (IMAP, IMAPS, LMTP on loopback) for the session: inboxlink.testing.dovecot."""
    if not dovecot_module.is_available():
        _unavailable("dovecot not installed (apt-get install dovecot-imapd dovecot-lmtpd)")
    with Dovecot() as server:
        yield server


@pytest.fixture
def mail_user(dovecot: Dovecot) -> MailUser:
    """A fresh user with an empty mailbox: email, password, host, port (IMAP), imaps_port, home."""
    number = next(_counter)
    return dovecot.add_user(f"user{number}.{secrets.token_hex(3)}@inboxlink.test", secrets.token_urlsafe(12))


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A private PostgreSQL server shared by the session (trust auth, fsync off)."""
    if not postgres_module.is_available():
        _unavailable("PostgreSQL server binaries not installed (apt-get install postgresql)")
    with Postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: Postgres) -> Iterator[str]:
    """SQLAlchemy URL (postgresql+psycopg://...) of a new empty database, dropped after the test."""
    name = f"test_{next(_counter)}_{secrets.token_hex(4)}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)
