"""SSH connections: directly or through the bastion, with the host keys hostkeys.py trusts, and a few remote helpers.

How Kiln reaches an instance:

- **Directly**, or **through a bastion** (the classic jump): an SSH transport to the bastion, then
  a `direct-tcpip` channel to the instance's address:22 that carries the instance's own SSH
  session. Both hops verify their host key strictly.
- **Strict host keys, always.** A server's key is accepted only if it equals a key Kiln knows
  for that host, or its SHA256 fingerprint matches one. Keys come from known_hosts files and,
  for an instance, from its EC2 console output (the blocks cloud-init prints at first boot).
  Anything else is refused with HostKeyRejected; there is no "accept and remember" mode.
- A key first verified through console output can be recorded into a Kiln-owned known_hosts
  file, so the next contact does not need the console.

Everything here returns data; nothing prints.

Why one module (~450 lines): a connection, the jump through the bastion and the remote helpers
share one transport's lifecycle (host-key trust is hostkeys.py).
"""

from __future__ import annotations

import http.client
import logging
import os
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko

from release.config import SshSettings
from release.errors import CommandTimeout, KilnError, SshError
from release.hostkeys import (
    ALGORITHMS_BY_KIND,
    KnownHostsRecorder,
    TrustedKeys,
    known_hosts_keys,
    parse_console_output,
    verify_host_key,
)

# paramiko logs every failed connection with a traceback; Kiln reports failures as data instead.
# Without a handler of its own, Python's last-resort handler would print those to stderr.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

# --- connections ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeouts:
    """Per-host limits, in seconds."""

    connect: float = 10.0  # TCP connect, or opening the jump channel
    banner: float = 10.0  # the server's SSH banner
    auth: float = 10.0  # key exchange and authentication, each
    command: float = 30.0  # one remote command or HTTP request

    @classmethod
    def from_settings(cls, settings: SshSettings, command: float = 30.0) -> Timeouts:
        limit = float(settings.connect_timeout)
        return cls(connect=limit, banner=limit, auth=limit, command=command)


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def _open_transport(sock: Any, host: str, timeouts: Timeouts, trusted: TrustedKeys) -> paramiko.Transport:
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeouts.banner
    transport.handshake_timeout = timeouts.auth
    transport.auth_timeout = timeouts.auth
    # Ask for a kind of key Kiln can verify first, so a host with several keys offers a known one.
    known = [alg for kind in sorted(trusted.kinds()) for alg in ALGORITHMS_BY_KIND.get(kind, ())]
    options = transport.get_security_options()
    options.key_types = [*known, *(alg for alg in options.key_types if alg not in known)]
    limit = timeouts.banner + timeouts.auth
    try:
        transport.start_client(timeout=limit)
    except (paramiko.SSHException, OSError, EOFError) as err:
        transport.close()
        reason = str(err) or type(err).__name__
        if "banner" in reason:  # paramiko's words for "the server said nothing in time"
            reason = f"no SSH banner within {timeouts.banner:g} s ({reason})"
        raise SshError(f"SSH handshake failed: {reason}", where=f"ssh {host}",
                       hint="Check that sshd answers on that address and port") from err  # fmt: skip
    # start_client returns quietly when its own timeout runs out before the key exchange is done.
    if not (transport.is_active() and transport.initial_kex_done):
        transport.close()
        raise SshError(f"SSH handshake failed: no key exchange within {limit:g} s", where=f"ssh {host}",
                       hint="Check that sshd answers on that address and port")  # fmt: skip
    return transport


INSTANCE_LOGIN_HINT = "Check the user name and that the instance's key pair matches your key"
BASTION_LOGIN_HINT = "Check bastion_user; name the bastion's key with bastion_key in [ssh] (or use ssh-agent)"


def _authenticate(transport: paramiko.Transport, host: str, user: str, keys: Sequence[paramiko.PKey],
                  hint: str = INSTANCE_LOGIN_HINT) -> None:  # fmt: skip
    if not keys:
        transport.close()
        raise SshError(
            "no private key to log in with", where=f"ssh {user}@{host}", hint="Pass a key file or start ssh-agent"
        )
    last: Exception | None = None
    for key in keys:
        try:
            transport.auth_publickey(user, key)
        except paramiko.AuthenticationException as err:
            last = err
            continue
        except (paramiko.SSHException, OSError, EOFError) as err:
            last = err
            break
        if transport.is_authenticated():
            return
    transport.close()
    raise SshError(
        f"login as {user} refused ({last or 'no key accepted'})",
        where=f"ssh {user}@{host}",
        hint=hint,
    )


class JumpChannel:
    """The bastion channel one instance's SSH session runs over, with its sends and its close in turn.

    paramiko's Channel.send checks that the channel is open, then hands the data to the transport
    without holding the channel's lock. Closing the session (our thread) while its transport thread
    still answers the instance (e.g. the close of the last command's channel) can thus put the
    channel's CLOSE on the wire before that data. OpenSSH then drops the whole bastion connection
    ("data packet referred to nonexistent channel"), and every session through it with it.
    """

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self._turn = threading.Lock()

    def send(self, data: bytes) -> int:
        with self._turn:
            return int(self.channel.send(data))

    def close(self) -> None:
        with self._turn:
            self.channel.close()

    def __getattr__(self, name: str) -> Any:  # recv, settimeout, _closed: what paramiko's Transport uses
        return getattr(self.channel, name)


class Connection:
    """An authenticated SSH session to one host. Thread-safe: each call opens its own channel."""

    def __init__(self, transport: paramiko.Transport, host: str, timeouts: Timeouts,
                 via: Connection | None = None) -> None:  # fmt: skip
        self.transport = transport
        self.host = host
        self.timeouts = timeouts
        self.via = via  # the bastion connection this one tunnels through, if any
        self.host_key = transport.get_remote_server_key()

    def open_tcp(self, address: str, port: int) -> paramiko.Channel:
        """A `direct-tcpip` channel from this host to address:port, usable as a socket."""
        try:
            channel = self.transport.open_channel(
                "direct-tcpip", (address, port), ("127.0.0.1", 0), timeout=self.timeouts.connect
            )
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise SshError(
                f"{self.host} could not open a connection to {address}:{port}: {err or type(err).__name__}",
                where=f"ssh {self.host}",
            ) from err
        channel.settimeout(self.timeouts.command)
        return channel

    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        """Run `command` with the login shell; exit status, stdout and stderr. Raises CommandTimeout."""
        limit = self.timeouts.command if timeout is None else timeout
        deadline = time.monotonic() + limit
        try:
            channel = self.transport.open_session(timeout=self.timeouts.connect)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as err:
            raise SshError(f"could not start a command: {err or type(err).__name__}", where=f"ssh {self.host}") from err
        out: list[bytes] = []
        err_out: list[bytes] = []
        try:
            while True:
                while channel.recv_ready():
                    out.append(channel.recv(65536))
                while channel.recv_stderr_ready():
                    err_out.append(channel.recv_stderr(65536))
                if channel.exit_status_ready() and (channel.eof_received or channel.closed):
                    if not channel.recv_ready() and not channel.recv_stderr_ready():
                        break
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CommandTimeout(
                        f"{command!r} did not finish within {limit:g} s", where=f"ssh {self.host}"
                    )
                # The channel's fileno turns readable when stdout or stderr data (or EOF) arrives.
                select.select([channel], [], [], min(remaining, 0.5))
            status = channel.recv_exit_status()
            if status == -1:  # paramiko's value when the channel closed without an exit status
                raise SshError(f"connection lost while running {command!r}", where=f"ssh {self.host}")
        finally:
            channel.close()
        return CommandResult(
            status, b"".join(out).decode("utf-8", "replace"), b"".join(err_out).decode("utf-8", "replace")
        )

    def read_file(self, path: str, *, timeout: float | None = None) -> str:
        """The text of a remote file. Raises SshError naming the file when it cannot be read."""
        result = self.run(f"cat -- {shlex.quote(path)}", timeout=timeout)
        if not result.ok:
            raise SshError(f"cannot read {path}: {result.stderr.strip() or f'exit {result.exit_status}'}",
                           where=f"ssh {self.host}")  # fmt: skip
        return result.stdout

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_private_keys(key_filename: Path | None, use_agent: bool) -> list[paramiko.PKey]:
    """The keys to try, in order: the given key file, then the agent's keys."""
    keys: list[paramiko.PKey] = []
    if key_filename is not None:
        try:
            keys.append(paramiko.PKey.from_path(key_filename))
        except (OSError, paramiko.SSHException, ValueError) as err:
            raise SshError(f"cannot load private key {key_filename}: {err}",
                           hint="Pass an unencrypted OpenSSH/PEM key file, or use ssh-agent") from err  # fmt: skip
    if use_agent and os.environ.get("SSH_AUTH_SOCK"):
        with suppress(paramiko.SSHException, OSError):
            keys.extend(paramiko.Agent().get_keys())
    return keys


ConsoleOutput = Callable[[str], str]  # instance id -> its EC2 console output text
BastionLocator = Callable[[str], tuple[str, str]]  # Name tag -> (instance id, address) of the running bastion


class Ssh:
    """How Kiln reaches instances: settings, keys, trust, and the (shared) bastion connection.

    `console_output(instance_id)` (e.g. Aws.console_output) is consulted for an instance's host
    key only when the known_hosts files do not already vouch for the offered key. It is called
    from the audit's worker threads, so it must be thread-safe (boto3 clients are).

    With `bastion_instance` in the settings, `locate_bastion` finds that instance (its id and
    address); being an EC2 instance, its console output may then vouch for its host key too.
    The bastion is logged in to with `bastion_key` (or the settings' one), then the instance
    keys, then ssh-agent's keys.

    `connect` tries the TCP connection (or the jump channel) `CONNECT_ATTEMPTS` times, pausing
    1 s then 2 s (`sleep`): an instance whose sshd is just (re)starting refuses for a moment.
    A host key nothing vouches for, or a refused login, is never retried.
    """

    CONNECT_ATTEMPTS = 3

    def __init__(
        self,
        settings: SshSettings,
        *,
        key_filename: Path | None = None,
        use_agent: bool = True,
        known_hosts: Iterable[Path] = (),
        console_output: ConsoleOutput | None = None,
        record_to: Path | None = None,
        timeouts: Timeouts | None = None,
        port: int = 22,
        locate_bastion: BastionLocator | None = None,
        bastion_key: Path | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.port = port  # where instances' sshd listens
        self.timeouts = timeouts or Timeouts.from_settings(settings)
        files = list(known_hosts)
        default = Path(settings.known_hosts or "~/.ssh/known_hosts").expanduser()
        if default not in files:
            files.insert(0, default)
        if record_to is not None and record_to not in files:
            files.append(record_to)
        self.known_hosts = tuple(files)
        self.console_output = console_output
        self.recorder = KnownHostsRecorder(record_to) if record_to is not None else None
        self._keys = load_private_keys(key_filename, use_agent)
        self.locate_bastion = locate_bastion
        self._sleep = sleep
        self._bastion_keys: list[paramiko.PKey] = []
        if settings.bastion or settings.bastion_instance:
            configured = Path(settings.bastion_key).expanduser() if settings.bastion_key else None
            self._bastion_keys = [*load_private_keys(bastion_key or configured, use_agent=False), *self._keys,
                                  *(load_private_keys(None, use_agent=True) if not use_agent else [])]
        self._bastion: Connection | None = None
        self._bastion_lock = threading.Lock()

    # trust

    def trusted_from_files(self, address: str, port: int) -> TrustedKeys:
        trusted = TrustedKeys()
        for path in self.known_hosts:
            trusted = trusted | known_hosts_keys(path, address, port)
        return trusted

    def _verify(self, transport: paramiko.Transport, host: str, address: str, port: int,
                trusted: TrustedKeys, instance_id: str | None) -> None:  # fmt: skip
        key = transport.get_remote_server_key()
        if trusted.accepts(key.get_name(), key.asbytes()):
            return
        if instance_id is not None and self.console_output is not None:
            try:
                text = self.console_output(instance_id)
            except KilnError as err:
                trusted = trusted | TrustedKeys(looked_in=(f"console output of {instance_id} (unavailable: {err})",))
            else:
                trusted = trusted | parse_console_output(text, source=f"console output of {instance_id}")
                if trusted.accepts(key.get_name(), key.asbytes()):
                    if self.recorder is not None:
                        self.recorder.record(address, port, key)
                    return
        transport.close()
        verify_host_key(host, key, trusted)  # raises: nothing vouched for this key

    # connections

    def _connect(self, sock: Any, address: str, port: int, user: str, instance_id: str | None,
                 via: Connection | None, keys: Sequence[paramiko.PKey] | None = None) -> Connection:  # fmt: skip
        host = f"{instance_id} ({address}:{port})" if instance_id else f"{address}:{port}"
        trusted = self.trusted_from_files(address, port)
        transport = _open_transport(sock, host, self.timeouts, trusted)
        self._verify(transport, host, address, port, trusted, instance_id)
        if keys is None:
            _authenticate(transport, host, user, self._keys)
        else:
            _authenticate(transport, host, user, keys, BASTION_LOGIN_HINT)
        return Connection(transport, host, self.timeouts, via=via)

    def _tcp(self, address: str, port: int) -> socket.socket:
        try:
            return socket.create_connection((address, port), timeout=self.timeouts.connect)
        except OSError as err:
            raise SshError(f"cannot reach {address}:{port}: {err.strerror or err}", where=f"ssh {address}:{port}",
                           hint="Check the address, the security group and that sshd runs") from err  # fmt: skip

    def bastion(self) -> Connection | None:
        """The bastion connection (opened once, shared by all threads), or None when direct."""
        if not (self.settings.bastion or self.settings.bastion_instance):
            return None
        with self._bastion_lock:
            if self._bastion is None or not self._bastion.transport.is_active():
                instance_id, address = self._bastion_address()
                port, user = self.settings.bastion_port, self.settings.bastion_user or self.settings.user
                self._bastion = self._connect(self._tcp(address, port), address, port, user, instance_id, None,
                                              self._bastion_keys)
            return self._bastion

    def _bastion_address(self) -> tuple[str | None, str]:
        if self.settings.bastion:
            return None, self.settings.bastion
        name = self.settings.bastion_instance or ""
        if self.locate_bastion is None:
            raise SshError(f"cannot find the bastion instance {name!r}: no cloud to ask", where="ssh bastion",
                           hint="Pass locate_bastion (Cloud.running_instance_named)")  # fmt: skip
        return self.locate_bastion(name)

    def connect(self, address: str, *, instance_id: str | None = None, port: int | None = None,
                user: str | None = None) -> Connection:  # fmt: skip
        """An authenticated session to address:port, through the bastion when one is configured."""
        port = self.port if port is None else port
        for attempt in range(1, self.CONNECT_ATTEMPTS + 1):
            jump = self.bastion()
            try:
                sock: Any = JumpChannel(jump.open_tcp(address, port)) if jump is not None else self._tcp(address, port)
                break
            except SshError as err:
                if attempt == self.CONNECT_ATTEMPTS:
                    raise SshError(f"{err.message} ({attempt} attempts)", where=err.where, hint=err.hint) from err
                self._sleep(float(attempt))
        try:
            return self._connect(sock, address, port, user or self.settings.user, instance_id, jump)
        except BaseException:
            sock.close()
            raise

    def http_get(self, address: str, port: int, path: str, *, timeout: float | None = None,
                 instance_id: str | None = None) -> HttpResponse:
        """GET http://address:port/path, from the bastion when there is one (private addresses).
        `instance_id` is not needed over SSH (audit.Reach has it for SSM)."""
        jump = self.bastion()
        sock: Any = jump.open_tcp(address, port) if jump is not None else self._tcp(address, port)
        sock.settimeout(self.timeouts.command if timeout is None else timeout)
        try:
            return _http_get_over(sock, address, port, path)
        except (OSError, http.client.HTTPException, paramiko.SSHException, EOFError) as err:
            raise SshError(f"GET {path} from {address}:{port} failed: {err or type(err).__name__}",
                           where=f"http {address}:{port}") from err  # fmt: skip
        finally:
            sock.close()

    def close(self) -> None:
        with self._bastion_lock:
            if self._bastion is not None:
                self._bastion.close()
                self._bastion = None

    def __enter__(self) -> Ssh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _http_get_over(sock: Any, address: str, port: int, path: str) -> HttpResponse:
    """One HTTP/1.1 GET over an already connected socket or channel (Connection: close)."""
    request = f"GET {path} HTTP/1.1\r\nHost: {address}:{port}\r\nUser-Agent: kiln\r\nConnection: close\r\n\r\n"
    sock.sendall(request.encode("ascii"))
    response = http.client.HTTPResponse(sock, method="GET")
    try:
        response.begin()
        body = response.read()
    finally:
        response.close()
    return HttpResponse(response.status, body, {k.lower(): v for k, v in response.getheaders()})



def new_key_pair(path: Path, comment: str) -> str:
    """Write a new Ed25519 private key (OpenSSH format, 0600) to `path`; its public key line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{public.decode()} {comment}"
