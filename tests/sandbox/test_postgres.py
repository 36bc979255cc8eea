"""release.sandbox.postgres: a real PostgreSQL 15 on loopback, run as the postgres user."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from release.errors import SandboxError
from release.sandbox import postgres
from release.sandbox.postgres import PostgresServer
from release.sandbox.server_process import free_port

pytestmark = pytest.mark.root


def running(pid: int) -> bool:
    """A process that exited may linger as a zombie until init reaps it: that counts as gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


@pytest.fixture
def base_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: /tmp/pytest-of-root is 0700 and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="kiln-test-pg-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    base = Path(tempfile.mkdtemp(prefix="kiln-test-pg-"))
    base.chmod(0o755)
    server = PostgresServer(base / "data", port=free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_listens_only_on_loopback_tcp(server: PostgresServer) -> None:
    with psycopg.connect(server.url()) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()
            for name in ("listen_addresses", "unix_socket_directories", "port")
        }
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    assert settings == {
        "listen_addresses": ("127.0.0.1",),
        "unix_socket_directories": ("",),
        "port": (str(server.port),),
    }


def test_runs_as_the_postgres_user_in_a_private_directory(server: PostgresServer) -> None:
    pid = server.pid()
    assert pid is not None
    assert os.stat(f"/proc/{pid}").st_uid == os.stat(server.cluster_dir).st_uid != 0
    for path in (server.data_dir, server.cluster_dir):
        assert path.stat().st_mode & 0o077 == 0
    assert server.password_path.stat().st_mode & 0o777 == 0o600


def test_start_is_idempotent(server: PostgresServer) -> None:
    pid = server.pid()
    server.start()
    assert server.pid() == pid


def test_create_database_gives_a_private_database_to_its_role(server: PostgresServer) -> None:
    url = server.create_database("shop", "shopper", "first 'password'")
    assert url == f"postgresql://shopper:first%20%27password%27@127.0.0.1:{server.port}/shop"
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("shopper", "shop")
        conn.execute("CREATE TABLE items (id int)")  # the role owns the database's public schema

    other = server.create_database("other", "stranger", "pw")
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(other.replace("/other", "/shop"))


def test_create_database_again_updates_the_password(server: PostgresServer) -> None:
    old = server.create_database("again", "again_user", "old-password")
    new = server.create_database("again", "again_user", "new-password")
    with psycopg.connect(new) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(old)


def test_create_database_refuses_bad_names(server: PostgresServer) -> None:
    with pytest.raises(SandboxError, match="must be 1 to 63 bytes"):
        server.create_database("x" * 64, "user", "pw")
    with pytest.raises(SandboxError, match="password must not be empty"):
        server.create_database("db", "user", "")


def test_stop_then_start_keeps_the_data(base_dir: Path) -> None:
    server = PostgresServer(base_dir / "data", port=free_port())
    try:
        server.start()
        url = server.create_database("keep", "keeper", "pw")
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE notes (body text)")
            conn.execute("INSERT INTO notes VALUES ('still here')")
        pid = server.pid()
        assert pid is not None

        server.stop()
        assert server.pid() is None
        assert not running(pid)
        assert not (server.cluster_dir / "postmaster.pid").exists()
        with pytest.raises(psycopg.OperationalError, match="Connection refused"):
            psycopg.connect(url, connect_timeout=2)
        server.stop()  # stopping a stopped server is a no-op

        server.start()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT body FROM notes").fetchall() == [("still here",)]
    finally:
        server.stop()


def start_then_crash(server: PostgresServer) -> int:
    """Start the server, SIGKILL its postmaster and wait until it is gone; its pid."""
    server.start()
    pid = server.pid()
    assert pid is not None
    pidfd = os.pidfd_open(pid)
    os.kill(pid, signal.SIGKILL)
    select.select([pidfd], [], [], 10)  # a pidfd turns readable when its process exits
    os.close(pidfd)
    return pid


def test_after_a_crash_a_port_that_stays_taken_is_refused(base_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "CRASH_PORT_WAIT_S", 0.5)
    server = PostgresServer(base_dir / "data", port=free_port())
    try:
        start_then_crash(server)
        # Someone else took the port meanwhile, for longer than a crashed server's processes would.
        with (
            socket.create_server(("127.0.0.1", server.port)),
            pytest.raises(SandboxError, match="something else already listens on this port"),
        ):
            server.start()
    finally:
        server.stop()


def test_starts_again_after_a_crash(base_dir: Path) -> None:
    """A killed postmaster leaves its pid file behind; start() must not be stopped by it."""
    server = PostgresServer(base_dir / "data", port=free_port())
    try:
        pid = start_then_crash(server)
        assert (server.cluster_dir / "postmaster.pid").exists()
        assert server.pid() is None

        # The crashed server's last processes may hold the port a moment longer: start() waits
        # for them (here, a listener that goes away half a second later) instead of refusing.
        leftover = socket.create_server(("127.0.0.1", server.port))
        threading.Timer(0.5, leftover.close).start()
        server.start()
        assert server.pid() not in (None, pid)
        with psycopg.connect(server.url()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()


def test_a_second_server_object_sees_the_running_server(server: PostgresServer) -> None:
    """The sandbox starts the server in one command and stops it in another."""
    twin = PostgresServer(server.data_dir, port=server.port)
    assert twin.pid() == server.pid()
    twin.start()  # already running: nothing to do
    assert twin.pid() == server.pid()


def test_refuses_another_port_for_a_running_cluster(server: PostgresServer) -> None:
    twin = PostgresServer(server.data_dir, port=free_port())
    with pytest.raises(SandboxError, match=f"already runs on port {server.port}"):
        twin.start()


def test_refuses_a_busy_port(base_dir: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other:
        server = PostgresServer(base_dir / "data", port=other.getsockname()[1])
        with pytest.raises(SandboxError, match="something else already listens on this port"):
            server.start()
    assert server.pid() is None


def test_missing_binaries_are_a_sandbox_error(base_dir: Path) -> None:
    server = PostgresServer(base_dir / "data", port=free_port(), bin_dir=base_dir / "bin")
    with pytest.raises(SandboxError) as raised:
        server.start()
    assert str(raised.value) == (
        f"postgres 127.0.0.1:{server.port}: {base_dir}/bin/initdb is missing or not executable. "
        "Install it with `apt-get install -y postgresql-15` (Debian 12)"
    )
    assert raised.value.exit_code == SandboxError.exit_code
    assert not (base_dir / "data").exists()


def test_refuses_a_non_loopback_host(base_dir: Path) -> None:
    server = PostgresServer(base_dir / "data", port=free_port(), host="0.0.0.0")
    with pytest.raises(SandboxError, match=re.escape("0.0.0.0 is not a loopback address")):
        server.start()


def test_refuses_a_directory_the_postgres_user_cannot_reach(base_dir: Path) -> None:
    private = base_dir / "private"
    private.mkdir(mode=0o700)
    server = PostgresServer(private / "data", port=free_port())
    with pytest.raises(SandboxError, match=re.escape(f"cannot reach {private}/data: {private} is mode 0700")):
        server.start()
    assert not (private / "data").exists()


def test_url_requires_an_initialised_cluster(base_dir: Path) -> None:
    with pytest.raises(SandboxError, match="has not been initialised"):
        PostgresServer(base_dir / "data", port=free_port()).url()
