"""PostgreSQL access: the health probe and the users table.

One short-lived connection per request keeps the app simple and survives database restarts
without a pool to heal. Every connection has a 2 s connect timeout and a statement timeout, so a
dead or stuck database turns into a quick 503, never a hung gunicorn worker.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors
from psycopg.rows import dict_row

CONNECT_TIMEOUT_S = 2
STATEMENT_TIMEOUT_MS = 5000
USERS_LIMIT = 1000
# Serialises schema creation across gunicorn workers and instances: two concurrent
# CREATE TABLE IF NOT EXISTS can still collide in PostgreSQL's catalogs.
SCHEMA_LOCK_KEY = 0x6B696C6E_75736572  # "kilnuser"

MALFORMED_URL = "DATABASE_URL is malformed (expected postgresql://user:password@host:port/database)"

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    email text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS users_email_key ON users (lower(email));
"""


class DatabaseUnavailable(Exception):
    """The database cannot be reached or used; str() is a one-line reason without secrets."""


class DuplicateEmail(Exception):
    pass


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def ping(self) -> None:
        with self._connection() as conn:
            conn.execute("SELECT 1")

    def list_users(self) -> list[dict[str, Any]]:
        self._ensure_schema()
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute("SELECT id, name, email, created_at FROM users ORDER BY id LIMIT %s", (USERS_LIMIT,))
            return [_user(row) for row in cursor.fetchall()]

    def create_user(self, name: str, email: str) -> dict[str, Any]:
        self._ensure_schema()
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            try:
                cursor.execute(
                    "INSERT INTO users (name, email) VALUES (%s, %s) RETURNING id, name, email, created_at",
                    (name, email),
                )
            except errors.UniqueViolation:
                raise DuplicateEmail(email) from None
            row = cursor.fetchone()
            assert row is not None  # INSERT … RETURNING gives one row
            return _user(row)

    def _ensure_schema(self) -> None:
        """Create the table once per process; idempotent and safe when workers race."""
        with self._schema_lock:
            if self._schema_ready:
                return
            with self._connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
                conn.execute(SCHEMA)
            self._schema_ready = True

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection that commits on success; any database failure becomes
        DatabaseUnavailable (refused, timed out, server gone mid-query, no privilege, ...)."""
        try:
            conn = psycopg.connect(
                self.url,
                connect_timeout=CONNECT_TIMEOUT_S,
                options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                application_name="webapp",
            )
        except psycopg.ProgrammingError:
            # libpq quotes the offending part of the URL, which may be the password: say less.
            raise DatabaseUnavailable(MALFORMED_URL) from None
        except psycopg.Error as error:
            raise DatabaseUnavailable(describe(error)) from None
        try:
            with conn:
                yield conn
        except psycopg.Error as error:
            raise DatabaseUnavailable(describe(error)) from None


def describe(error: Exception) -> str:
    """libpq's multi-line message, cut to its cause: 'connection refused', 'password
    authentication failed for user "web"', 'connection timeout expired', ..."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    cause = first_line.rsplit("failed: ", 1)[-1]
    cause = re.sub(r"^(FATAL|ERROR):\s*", "", cause)
    cause = re.sub(r"\s+", " ", cause).strip()
    return cause[:1].lower() + cause[1:]


def _user(row: dict[str, Any]) -> dict[str, Any]:
    created_at: datetime = row["created_at"]
    return {"id": row["id"], "name": row["name"], "email": row["email"], "created_at": created_at.isoformat()}
