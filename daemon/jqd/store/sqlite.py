"""Opening a SQLite database for jqd: checks, exclusive ownership, migrations, connections.

Start-up order (each step fails with a clear message and never overwrites the file):
1. take the lock file `<db>.lock` (flock): a second daemon fails at once, naming the holder;
2. check the file is a readable SQLite database (`quick_check`); a corrupt one stops start-up;
3. switch to WAL with `synchronous=FULL`, so every COMMIT is fsync'd before it returns;
4. apply forward migrations, each in its own transaction with its version bump, so a crash
   mid-migration leaves the previous version and the next start finishes the job.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sqlite3
from importlib import resources

from jqd import faults
from jqd.store.errors import DatabaseCorrupt, DatabaseLocked

log = logging.getLogger("jqd.store")


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("jqd.store").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


MIGRATIONS = _migrations()
SCHEMA_VERSION = MIGRATIONS[-1][0]


class DatabaseLock:
    """An exclusive flock on `<db>.lock`, holding the owner's pid and run id for error messages."""

    def __init__(self, db_path: str, run_id: str):
        self.path = db_path + ".lock"
        directory = os.path.dirname(os.path.abspath(db_path))
        if not os.path.isdir(directory):
            raise DatabaseCorrupt(f"the directory of the database does not exist: {directory} "
                                  "(create it, or point --db / JQD_DB elsewhere)")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
            os.close(self._fd)
            raise DatabaseLocked(f"{db_path} is in use by another jqd ({holder})") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                        "run_id": run_id}).encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def connect(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode (we issue BEGIN/COMMIT), usable from any one thread at a time."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def open_database(path: str, max_bytes: int | None = None) -> sqlite3.Connection:
    """Check, configure and migrate the database; return the write connection.

    Raises DatabaseCorrupt when the file is not a healthy SQLite database or was written by
    a newer jqd. Blocking: call it from a thread.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise DatabaseCorrupt(f"the directory of the database does not exist: {directory}")
    existed = os.path.exists(path) and os.path.getsize(path) > 0
    try:
        conn = connect(path)
        if existed:
            check = conn.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise DatabaseCorrupt(f"{path} failed its integrity check: {check[:3]}; "
                                      "it was left untouched (restore it from a backup)")
        _check_is_jqd(conn, path)  # before anything below may write to a foreign file
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise DatabaseCorrupt(f"{path}: could not switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")  # again: the setting is per connection, after WAL
        migrate(conn)
        if max_bytes is not None:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page_size)}")
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
            raise DatabaseCorrupt(f"cannot open {path}: {exc}") from None
        raise DatabaseCorrupt(f"{path} is not a usable jqd database ({exc}); it was left untouched") from None
    return conn


def _check_is_jqd(conn: sqlite3.Connection, path: str) -> None:
    """Refuse a database from a newer jqd, or a SQLite file that is not jqd's, untouched."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise DatabaseCorrupt(f"{path}: database schema v{version} is newer than this jqd (v{SCHEMA_VERSION}); "
                              "it was left untouched")
    if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise DatabaseCorrupt(f"{path} is a SQLite database but not a jqd one (unknown tables, no version); "
                              "it was left untouched")


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; each runs with its version bump in one transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, sql in MIGRATIONS:
        if number <= version:
            continue
        log.info("migrating database schema to v%d", number)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(sql):
                conn.execute(statement)
                faults.hit("migrate.step")
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        version = number
    return version


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (triggers contain inner semicolons)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--") and not current.strip():
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements
