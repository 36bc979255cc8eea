"""Fixtures for the web app's tests: the app from app/src, one real PostgreSQL for the session."""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from flask import Flask
from webapp_kit import APP_DIR, JWT_SECRET

# Test the source tree, not whatever webapp may be installed.
sys.path.insert(0, str(APP_DIR / "src"))

from webapp import create_app

from release.sandbox.postgres import PostgresServer
from release.sandbox.server_process import free_port


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    # Not under pytest's tmp dir: /tmp/pytest-of-root is 0700 and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="kiln-test-pg-"))
    base.chmod(0o755)
    server = PostgresServer(base / "data", port=free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def session_database_url(postgres: PostgresServer) -> str:
    return postgres.create_database("webapp", "webapp", secrets.token_urlsafe(16))


@pytest.fixture
def database_url(postgres: PostgresServer, session_database_url: str) -> str:
    """The app's database, emptied for one test: as on a first boot, the app creates its table."""
    with psycopg.connect(postgres.url("webapp"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS users")
    return session_database_url


@pytest.fixture
def build_info_path(tmp_path: Path) -> Path:
    return tmp_path / "build-info.json"


@pytest.fixture
def make_app(build_info_path: Path) -> Callable[..., Flask]:
    """create_app() from an environment: only the variables a test passes."""

    def make(**environ: str) -> Flask:
        app = create_app({"WEBAPP_BUILD_INFO": str(build_info_path), **environ})
        app.testing = True
        return app

    return make


@pytest.fixture
def app(make_app: Callable[..., Flask], database_url: str) -> Flask:
    """The app, fully configured against a fresh database."""
    return make_app(DATABASE_URL=database_url, JWT_SECRET=JWT_SECRET, WEBAPP_INSTANCE_ID="i-0abc")
