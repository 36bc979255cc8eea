"""A real PostgreSQL server on loopback, for the sandbox and for the app's tests.

Runs Debian's PostgreSQL 15 binaries. The server process runs as the `postgres` OS user, because
PostgreSQL refuses to run as root; Kiln (root) only hands it a directory it owns.

Layout of `data_dir` (created on first start, owned by `postgres`, mode 0700):

    cluster/            the database cluster (initdb's PGDATA)
    server.log          the server's log; its tail is quoted when a start fails
    superuser.password  the password of the `postgres` database role (scram-sha-256 over TCP)

The server listens on one loopback TCP address only: no other interface and no Unix socket, so the
only way in is host:port with a password. `start()` is idempotent; `stop()` signals the postmaster
whose pid the server recorded in `cluster/postmaster.pid`, after checking that pid really is this
PostgreSQL, and waits for it to exit.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import secrets
import select
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from release.errors import SandboxError

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"
SUPERUSER = "postgres"
START_TIMEOUT_S = 30
# "fast" shutdown (SIGINT) rolls back open transactions and exits cleanly; if that takes longer
# than this, "immediate" shutdown (SIGQUIT) and then SIGKILL follow.
STOP_TIMEOUT_S = 20
# After a crash, how long the port may stay held by the crashed server's last processes.
CRASH_PORT_WAIT_S = 10
_INSTALL_HINT = "Install it with `apt-get install -y postgresql-15` (Debian 12)"
_MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1


class PostgresServer:
    def __init__(
        self,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        *,
        bin_dir: Path = POSTGRES_BIN,
        os_user: str = OS_USER,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.host = host
        self.bin_dir = bin_dir
        self.os_user = os_user
        self.cluster_dir = self.data_dir / "cluster"
        self.log_path = self.data_dir / "server.log"
        self.password_path = self.data_dir / "superuser.password"
        self._where = f"postgres {host}:{port}"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Initialise the cluster on first use, then start the server unless it already runs."""
        self._check_prerequisites()
        running = self._running_port()
        if running is not None:
            if running != self.port:
                raise SandboxError(
                    f"the cluster in {self.cluster_dir} already runs on port {running}",
                    where=self._where,
                    hint="Stop it first, or use that port",
                )
            return
        owner = pwd.getpwnam(self.os_user)
        _check_reachable(self.data_dir, owner.pw_uid, owner.pw_gid, self._where)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
        self.data_dir.chmod(0o700)
        if not (self.cluster_dir / "PG_VERSION").exists():
            self._initdb(owner)
        elif not self.password_path.exists():
            raise SandboxError(
                f"{self.password_path} is missing, so the existing cluster cannot be administered",
                where=self._where,
                hint=f"Remove {self.data_dir} to start from an empty cluster",
            )
        pidfile = self.cluster_dir / "postmaster.pid"
        crashed = pidfile.exists()
        if crashed:
            # No live postgres of ours has that pid (pid() said so): the server crashed or the
            # machine rebooted. PostgreSQL would refuse to start if the pid now belongs to another
            # process (or an unreaped zombie); its shared-memory check still guards against
            # orphaned backends.
            pidfile.unlink()
        # Right after a crash, the last of its processes may still hold the port for a moment.
        if not _port_freed(self.host, self.port, CRASH_PORT_WAIT_S if crashed else 0):
            raise SandboxError(
                "something else already listens on this port",
                where=self._where,
                hint="Choose a free port or stop the other listener",
            )
        # The options go through pg_ctl's shell; host is a validated IP literal and port an int.
        options = f"-p {self.port} -c listen_addresses={self.host} -c unix_socket_directories=''"
        result = self._run_as_owner(
            [
                str(self.bin_dir / "pg_ctl"),
                "start",
                "--pgdata",
                str(self.cluster_dir),
                "--log",
                str(self.log_path),
                "--wait",
                "--timeout",
                str(START_TIMEOUT_S),
                "-o",
                options,
            ],
            timeout=START_TIMEOUT_S + 10,
        )
        if result.returncode != 0:
            raise SandboxError(
                f"the server did not start: {_last_lines(result.stderr + result.stdout)}"
                f"; server log: {self._log_tail()}",
                where=self._where,
                hint=f"See {self.log_path}",
            )

    def stop(self) -> None:
        """Stop the server if it runs: SIGINT (fast shutdown) to its postmaster, wait for exit."""
        pid = self.pid()
        if pid is None:
            return
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                return
            try:
                os.kill(pid, sig)
                if _wait_for_exit(fd, STOP_TIMEOUT_S):
                    return
            finally:
                os.close(fd)
        raise SandboxError(f"postmaster {pid} did not exit even after SIGKILL", where=self._where)

    def is_running(self) -> bool:
        return self.pid() is not None

    def pid(self) -> int | None:
        """The postmaster's pid, when a live PostgreSQL of ours runs on this cluster."""
        fields = self._pidfile_fields()
        if fields is None:
            return None
        try:
            pid = int(fields[0])
            exe = Path(os.readlink(f"/proc/{pid}/exe"))
        except (ValueError, IndexError, OSError):
            return None  # a stale pid file, left by a crash or a reboot
        # The pid may have been reused by an unrelated process since the file was written.
        if exe.resolve() != (self.bin_dir / "postgres").resolve():
            return None
        return pid

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases -----------------------------------------------------------------------------

    def url(self, database: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        """A libpq URL for `database`; by default as the superuser."""
        if user is None:
            user, password = SUPERUSER, self.superuser_password()
        host = f"[{self.host}]" if ":" in self.host else self.host
        credentials = quote(user, safe="")
        if password is not None:
            credentials += ":" + quote(password, safe="")
        return f"postgresql://{credentials}@{host}:{self.port}/{quote(database, safe='')}"

    def superuser_password(self) -> str:
        try:
            return self.password_path.read_text().strip()
        except FileNotFoundError:
            raise SandboxError(
                "the cluster has not been initialised", where=self._where, hint="Call start() first"
            ) from None

    def create_database(self, name: str, user: str, password: str) -> str:
        """Create (or update) login role `user` with `password` and database `name` owned by it;
        only that role (and the superuser) may connect. Idempotent. Returns the role's URL."""
        for label, value in (("database name", name), ("user", user)):
            if not value or len(value.encode()) > _MAX_IDENTIFIER_BYTES:
                raise SandboxError(f"{label} {value!r} must be 1 to {_MAX_IDENTIFIER_BYTES} bytes", where=self._where)
        if not password:
            raise SandboxError("the password must not be empty", where=self._where)
        # psql's :'var' / :"var" quote literals and identifiers; \gexec runs CREATE DATABASE
        # outside a transaction, only when it is missing. The password comes from the
        # environment (\getenv) so it never shows in a process listing.
        script = "\n".join(
            [
                r"\getenv password KILN_ROLE_PASSWORD",
                "SELECT format('CREATE ROLE %I', :'user')"
                " WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'user') \\gexec",
                "ALTER ROLE :\"user\" WITH LOGIN PASSWORD :'password';",
                "SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user')"
                " WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \\gexec",
                'REVOKE CONNECT, TEMPORARY ON DATABASE :"db" FROM PUBLIC;',
                'GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"user";',
                "",
            ]
        )
        self._psql(script, variables={"db": name, "user": user}, env={"KILN_ROLE_PASSWORD": password})
        return self.url(name, user, password)

    # -- internals -----------------------------------------------------------------------------

    def _check_prerequisites(self) -> None:
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            raise SandboxError(
                f"host {self.host!r} is not an IP address", where=self._where, hint="Use e.g. 127.0.0.1"
            ) from None
        if not address.is_loopback:
            raise SandboxError(
                f"host {self.host} is not a loopback address",
                where=self._where,
                hint="The sandbox only listens on 127.0.0.0/8 or ::1",
            )
        if not 1 <= self.port <= 65535:
            raise SandboxError(f"port {self.port} is out of range", where=self._where)
        for tool in ("initdb", "pg_ctl", "postgres", "psql"):
            if not os.access(self.bin_dir / tool, os.X_OK):
                raise SandboxError(
                    f"{self.bin_dir / tool} is missing or not executable",
                    where=self._where,
                    hint=_INSTALL_HINT,
                )
        try:
            owner = pwd.getpwnam(self.os_user)
        except KeyError:
            raise SandboxError(
                f"there is no OS user {self.os_user!r} to run the server as",
                where=self._where,
                hint=_INSTALL_HINT,
            ) from None
        if os.geteuid() not in (0, owner.pw_uid):
            raise SandboxError(
                f"only root can run the server as the {self.os_user} user",
                where=self._where,
                hint="Run the sandbox as root",
            )

    def _initdb(self, owner: pwd.struct_passwd) -> None:
        self.password_path.write_text(secrets.token_urlsafe(24) + "\n")
        os.chown(self.password_path, owner.pw_uid, owner.pw_gid)
        self.password_path.chmod(0o600)
        result = self._run_as_owner(
            [
                str(self.bin_dir / "initdb"),
                "--pgdata",
                str(self.cluster_dir),
                "--username",
                SUPERUSER,
                "--pwfile",
                str(self.password_path),
                "--auth-host",
                "scram-sha-256",
                "--auth-local",
                "peer",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
            ],
            timeout=120,
        )
        if result.returncode != 0:
            raise SandboxError(f"initdb failed: {_last_lines(result.stderr + result.stdout)}", where=self._where)

    def _run_as_owner(self, argv: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.data_dir)}
        owner = pwd.getpwnam(self.os_user)
        # Root drops to the owner (and its group only); the owner itself runs as is.
        switch = os.geteuid() != owner.pw_uid
        return subprocess.run(
            argv,
            user=owner.pw_uid if switch else None,
            group=owner.pw_gid if switch else None,
            extra_groups=[] if switch else None,
            cwd=self.data_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _psql(self, script: str, *, variables: dict[str, str], env: dict[str, str]) -> None:
        if not self.is_running():
            raise SandboxError("the server is not running", where=self._where, hint="Call start() first")
        argv = [str(self.bin_dir / "psql"), "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1"]
        for key, value in variables.items():
            argv += ["-v", f"{key}={value}"]
        # The superuser's password goes through the environment, never argv.
        argv += ["--dbname", self.url("postgres", SUPERUSER, None)]
        result = subprocess.run(
            argv,
            input=script,
            env={
                "PATH": "/usr/bin:/bin",
                "LANG": "C.UTF-8",
                "PGCONNECT_TIMEOUT": "5",
                "PGPASSWORD": self.superuser_password(),
                **env,
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise SandboxError(f"psql failed: {_last_lines(result.stderr)}", where=self._where)

    def _pidfile_fields(self) -> list[str] | None:
        try:
            return (self.cluster_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None

    def _running_port(self) -> int | None:
        if self.pid() is None:
            return None
        fields = self._pidfile_fields() or []
        try:
            return int(fields[3])  # postmaster.pid line 4: the port
        except (IndexError, ValueError):
            return None

    def _log_tail(self) -> str:
        try:
            return _last_lines(self.log_path.read_text(errors="replace"))
        except FileNotFoundError:
            return "(no log written)"


def _check_reachable(target: Path, uid: int, gid: int, where: str) -> None:
    """The server runs as another user: every existing ancestor of its directory must be
    searchable by it (pytest's /tmp/pytest-of-root, for one, is 0700). Missing ones are created
    by root with the default umask, which lets others through."""
    for path in target.parents:
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if info.st_uid == uid:
            bit = stat.S_IXUSR
        elif info.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            raise SandboxError(
                f"the {OS_USER} user cannot reach {target}: {path} is mode {stat.S_IMODE(info.st_mode):04o}",
                where=where,
                hint="Put the data directory under one that others may traverse (chmod o+x)",
            )


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _port_freed(host: str, port: int, timeout_s: float) -> bool:
    """Whether nothing listens on host:port, or no longer within `timeout_s` (0: asked once)."""
    deadline = time.monotonic() + timeout_s
    while _port_open(host, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _wait_for_exit(pidfd: int, timeout_s: float) -> bool:
    """A pidfd becomes readable when its process exits; works for processes we did not fork."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-count:]) or "(no output)"
