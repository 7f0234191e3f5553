"""A private PostgreSQL server for tests and benchmarks.

`Postgres().start()` runs the distribution's PostgreSQL server binaries (Debian:
/usr/lib/postgresql/<version>/bin, the newest found) on a free loopback port:

    mkdtemp ROOT/ (chowned to `postgres` when we are root: the server refuses to run as root)
      ├── data/        initdb -A trust -U postgres -E UTF8 --no-sync
      ├── postgres.log
      └── .s.PGSQL.<port>   unix socket (-k ROOT)
    pg_ctl start -w -o "-k ROOT -p PORT -h 127.0.0.1 -c fsync=off ..."   (durability is not wanted here)
    stop(): pg_ctl stop -m fast -w, then ROOT is deleted

As root every server command runs as the `postgres` user; otherwise as the current user.
`url` is a SQLAlchemy URL (``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``, trust auth);
`create_database(name)` returns the URL of a new, empty database.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from inboxlink.testing.dovecot import free_ports

__all__ = ["Postgres", "PostgresError", "find_bindir", "is_available"]

_SEARCH_ROOTS = ("/usr/lib/postgresql", "/usr/local/pgsql", "/opt/postgresql")
_SERVER_USER = "postgres"
_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresError(RuntimeError):
    """The private PostgreSQL could not be started or a command against it failed."""


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres (newest version first), or None."""
    candidates: list[Path] = []
    for root in _SEARCH_ROOTS:
        base = Path(root)
        if base.is_dir():
            versions = sorted(
                (p for p in base.iterdir() if (p / "bin").is_dir()),
                key=lambda p: [int(x) if x.isdigit() else 0 for x in p.name.split(".")],
                reverse=True,
            )
            candidates += [v / "bin" for v in versions]
            candidates.append(base / "bin")
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def is_available() -> bool:
    """True when the PostgreSQL server binaries are installed (and, as root, a `postgres` user exists)."""
    if find_bindir() is None:
        return False
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_SERVER_USER)
        except KeyError:
            return False
    return True


class Postgres:
    """A private PostgreSQL instance; see the module docstring. Use as a context manager or start()/stop()."""

    host = "127.0.0.1"
    user = "postgres"

    def __init__(self, *, root: str | os.PathLike[str] | None = None, keep_dir: bool = False) -> None:
        self._root_parent = Path(root) if root is not None else None
        self.keep_dir = keep_dir
        self._dir: Path | None = None
        self._port: int | None = None
        self._bindir: Path | None = None
        self._started = False
        self._as: tuple[int, int] | None = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam(_SERVER_USER) if is_available() else None
            self._as = (entry.pw_uid, entry.pw_gid) if entry else None

    @property
    def dir(self) -> Path:
        if self._dir is None:
            raise PostgresError("PostgreSQL is not started")
        return self._dir

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.dir

    @property
    def log_path(self) -> Path:
        return self.dir / "postgres.log"

    @property
    def port(self) -> int:
        if self._port is None:
            raise PostgresError("PostgreSQL is not started")
        return self._port

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the `postgres` database."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def dsn(self) -> str:
        """libpq connection string (psycopg.connect) of the `postgres` database."""
        return f"host={self.host} port={self.port} user={self.user} dbname=postgres"

    def __enter__(self) -> Postgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, args: Sequence[str], *, timeout: float = 60.0) -> str:
        kwargs: dict[str, object] = {}
        if self._as is not None:
            kwargs = {"user": self._as[0], "group": self._as[1], "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C", "PGTZ": "UTC"}
        result = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.dir,
            env=env,
            **kwargs,  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            output = result.stderr.strip() or result.stdout.strip()
            raise PostgresError(f"{Path(args[0]).name} exited {result.returncode}: {output}")
        return str(result.stdout)

    def _tool(self, name: str) -> str:
        if self._bindir is None:
            raise PostgresError("PostgreSQL is not started")
        return str(self._bindir / name)

    def start(self) -> Postgres:
        if self._started:
            raise PostgresError("PostgreSQL is already started")
        self._bindir = find_bindir()
        if self._bindir is None or (os.geteuid() == 0 and self._as is None):
            raise PostgresError("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
        self._dir = Path(tempfile.mkdtemp(prefix="inboxlink-pg-", dir=self._root_parent))
        try:
            self._dir.chmod(0o755)
            if self._as is not None:
                os.chown(self._dir, *self._as)
            self._run(
                [
                    self._tool("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-A",
                    "trust",
                    "-U",
                    self.user,
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ]
            )
            for attempt in range(3):
                (self._port,) = free_ports(1, self.host)
                options = (
                    f"-k {self.socket_dir} -p {self._port} -h {self.host} -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
                )
                start = [self._tool("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path)]
                try:
                    self._run([*start, "-o", options, "-w", "-t", "60", "start"], timeout=90)
                    break
                except PostgresError:
                    # a free port can be taken by someone else before the server binds it
                    log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                    if "Address already in use" not in log or attempt == 2:
                        raise
                    self.log_path.unlink()
            self._started = True
        except BaseException as exc:
            log = ""
            with contextlib.suppress(OSError):
                log = self.log_path.read_text(errors="replace")[-3000:]
            self._cleanup()
            if isinstance(exc, PostgresError) and log:
                raise PostgresError(f"{exc}\n--- postgres.log\n{log}") from exc
            raise
        return self

    def stop(self) -> None:
        if self._started:
            self._started = False
            with contextlib.suppress(PostgresError, subprocess.TimeoutExpired):
                self._run([self._tool("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"])
        self._cleanup()

    def _cleanup(self) -> None:
        if self._dir is not None and not self.keep_dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._port = None

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql (unaligned, tuples only) and return its output."""
        return self._run(
            [
                self._tool("psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                *self._server_args(),
                "-d",
                database,
                "-c",
                sql,
            ]
        )

    def _server_args(self) -> list[str]:
        """Where the client tools (psql, createdb, dropdb) find this server."""
        return ["-h", self.host, "-p", str(self.port), "-U", self.user]

    def create_database(self, name: str) -> str:
        """Create an empty database `name` (lower-case identifier) and return its SQLAlchemy URL."""
        if not _DB_NAME.fullmatch(name):
            raise ValueError(f"not a plain database name: {name!r}")
        self._run(
            [
                self._tool("createdb"),
                *self._server_args(),
                "-T",
                "template0",
                "-E",
                "UTF8",
                name,
            ]
        )
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        if not _DB_NAME.fullmatch(name):
            raise ValueError(f"not a plain database name: {name!r}")
        self._run(
            [
                self._tool("dropdb"),
                *self._server_args(),
                "--if-exists",
                "--force",
                name,
            ]
        )
