"""Real sshd servers for the SSH tests: a "bastion" and an "instance" on their own loopback addresses.

Each server is Debian's /usr/sbin/sshd in the foreground (`-D -e`) under our Popen, with its own
temporary config, host key and authorized_keys, so nothing touches the machine's own SSH setup.
Every process started here is stopped by PID, and every temporary directory removed.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

SSHD = Path("/usr/sbin/sshd")
APP_TASKS = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "app" / "tasks" / "main.yml"
MANIFEST_TASK = "Write the release's checksum manifest for the fleet audit"

# A /16 of loopback addresses of our own, picked per process so parallel runs do not collide.
LOOPBACK_NET = f"127.0.{os.getpid() % 200 + 20}"
BASTION_ADDRESS = f"{LOOPBACK_NET}.1"
INSTANCE_ADDRESS = f"{LOOPBACK_NET}.2"
SPARE_ADDRESS = f"{LOOPBACK_NET}.3"  # nothing listens here unless a test says so


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)  # fmt: skip


@dataclass
class SshServer:
    name: str
    address: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def host_key_pub(self) -> str:
        return (self.directory / "ssh_host_ed25519_key.pub").read_text().strip()

    def fingerprint_line(self) -> str:
        """`ssh-keygen -l` output: "256 SHA256:… comment (ED25519)", as cloud-init prints it."""
        proc = subprocess.run(["ssh-keygen", "-l", "-f", str(self.directory / "ssh_host_ed25519_key.pub")],
                              check=True, capture_output=True, text=True)  # fmt: skip
        return proc.stdout.strip()

    def console_output(self, *, keys: bool = True, fingerprints: bool = True, prefix: str = "") -> str:
        """Console text the way EC2 shows cloud-init's first boot, built from this server's key."""
        lines = ["Cloud-init v. 22.4.2 running 'modules:final'"]
        if fingerprints:
            lines += ["-----BEGIN SSH HOST KEY FINGERPRINTS-----", self.fingerprint_line(),
                      "-----END SSH HOST KEY FINGERPRINTS-----"]  # fmt: skip
        if keys:
            lines += ["-----BEGIN SSH HOST KEY KEYS-----", self.host_key_pub, "-----END SSH HOST KEY KEYS-----"]
        lines.append("Cloud-init v. 22.4.2 finished")
        return "\n".join(prefix + line for line in lines) + "\n"

    def known_hosts_line(self) -> str:
        kind, blob = self.host_key_pub.split()[:2]
        label = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{label} {kind} {blob}\n"

    def log(self) -> str:
        return (self.directory / "sshd.log").read_text(errors="replace")


def _descendants(pid: int) -> list[int]:
    """PIDs whose parent chain leads to `pid` (sshd's per-connection children)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def tcp_socket_owners(address: str, port: int) -> set[int]:
    """PIDs holding the TCP socket whose local end is address:port (who made a connection)."""
    local = "{:08X}:{:04X}".format(int.from_bytes(socket.inet_aton(address), "little"), port)
    inodes = {line.split()[9] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
              if line.split()[1] == local}  # fmt: skip
    owners = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        owners.add(int(entry.name))
    return owners


def process_tree(server: SshServer) -> set[int]:
    return {server.process.pid, *_descendants(server.process.pid)}


def start_sshd(name: str, address: str, client_pub: str, *, extra_config: str = "") -> SshServer:
    directory = Path(tempfile.mkdtemp(prefix=f"kiln-sshd-{name}-"))
    keygen(directory / "ssh_host_ed25519_key", f"root@{name}")
    (directory / "authorized_keys").write_text(client_pub)
    port = free_port(address)
    config = directory / "sshd_config"
    config.write_text(
        f"ListenAddress {address}:{port}\n"
        f"HostKey {directory / 'ssh_host_ed25519_key'}\n"
        f"AuthorizedKeysFile {directory / 'authorized_keys'}\n"
        f"PidFile {directory / 'sshd.pid'}\n"
        "UsePAM no\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        # The temp dir lives under /tmp (world-writable), which StrictModes would refuse.
        "StrictModes no\n"
        "AllowTcpForwarding yes\n"
        "LogLevel VERBOSE\n" + extra_config
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log = (directory / "sshd.log").open("wb")
    process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server = SshServer(name, address, port, directory, process)
    deadline = time.monotonic() + 10
    while True:  # wait for the listener (startup, not logic under test)
        try:
            socket.create_connection((address, port), timeout=1).close()
            return server
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_sshd(server)
                pytest.fail(f"sshd {name} did not start:\n{server.log()}")
            time.sleep(0.05)


def stop_sshd(server: SshServer) -> None:
    children = _descendants(server.process.pid)
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    for pid in children:  # sessions still open when the test ended
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(server.directory, ignore_errors=True)


def write_manifest_like_the_bake(release: Path) -> None:
    tasks = yaml.safe_load(APP_TASKS.read_text())
    task = next((t for t in tasks if t.get("name") == MANIFEST_TASK), None)
    if task is None:
        pytest.fail(f"{APP_TASKS} has no task {MANIFEST_TASK!r}: the audit and the bake must agree on the manifest")
    command = task["ansible.builtin.shell"]["cmd"].replace("{{ app_release_dir | quote }}", shlex.quote(str(release)))
    subprocess.run(["bash", "-c", command], check=True)
