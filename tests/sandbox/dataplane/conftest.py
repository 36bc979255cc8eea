"""Fixtures for the data plane's tests: the cached base image, a data plane in a temp state dir,
keys, strict-host-key SSH, and checks that nothing an instance started is left behind."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from release.sandbox.contracts import LaunchedInstance
from release.sandbox.dataplane import LocalDataPlane, parse_host_keys
from release.sandbox.dataplane.baseimage import DEFAULT_CACHE_DIR, build_base_image
from release.sandbox.dataplane.mounts import mounts_under
from release.sandbox.dataplane.rootfs import processes_rooted_under

BASE_IMAGE = "ami-0base0000000000000"


def requires_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root on Linux")


@pytest.fixture(scope="session")
def base_rootfs() -> Path:
    """The machine's cached base image (built here on a machine that has none)."""
    requires_root()
    return build_base_image(DEFAULT_CACHE_DIR).rootfs


def listening_sockets(ip: str) -> list[int]:
    """TCP ports in LISTEN on `ip` (from /proc/net/tcp, host network namespace)."""
    wanted = socket.inet_aton(ip)[::-1].hex().upper()
    ports = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, port = fields[1].split(":")
        if address == wanted and fields[3] == "0A":
            ports.append(int(port, 16))
    return ports


def assert_nothing_left(state_dir: Path, instance_id: str, ip: str) -> None:
    instance_dir = state_dir / "instances" / instance_id
    assert not mounts_under(instance_dir), "a mount survived"
    assert not [m for m in Path("/proc/mounts").read_text().splitlines() if f"kiln-{instance_id}" in m]
    assert not processes_rooted_under(instance_dir), "a process survived"
    assert not listening_sockets(ip), f"a listener survived on {ip}"
    assert not instance_dir.exists(), "the instance's files survived"
    leftovers = subprocess.run(["pgrep", "-f", str(instance_dir)], capture_output=True, text=True).stdout
    assert leftovers == "", f"processes mentioning {instance_dir}: {leftovers}"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, base_rootfs: Path) -> Iterator[LocalDataPlane]:
    state_dir = tmp_path_factory.mktemp("dataplane")
    dp = LocalDataPlane(state_dir, DEFAULT_CACHE_DIR)
    dp.register_image(BASE_IMAGE, base_rootfs)
    yield dp
    dp.terminate_all()
    assert not mounts_under(state_dir)
    assert not processes_rooted_under(state_dir)


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(private key file, OpenSSH public key line) of a fresh ed25519 key."""
    path = tmp_path_factory.mktemp("keys") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kiln-test", "-f", str(path)], check=True)
    return path, path.with_suffix(".pub").read_text().strip()


def spec(instance_id: str, ip: str, public_key: str | None, image_id: str = BASE_IMAGE) -> LaunchedInstance:
    return LaunchedInstance(instance_id, image_id, ip, "kiln-test", public_key, None, "us-east-1")


def wait_for_port(ip: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while port not in listening_sockets(ip):
        assert time.monotonic() < deadline, f"nothing listens on {ip}:{port}"
        time.sleep(0.05)


def ssh(plane: LocalDataPlane, instance_id: str, ip: str, key: Path) -> paramiko.SSHClient:
    """An SSH session as `admin`, accepting only the host keys the console printed."""
    keys = parse_host_keys(plane.console_output(instance_id))
    assert keys, "no SSH HOST KEY KEYS block on the console"
    client = paramiko.SSHClient()
    for key_type, data in keys:
        client.get_host_keys().add(ip, key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(data)))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(ip, username="admin", key_filename=str(key), look_for_keys=False, allow_agent=False,
                   timeout=10, banner_timeout=10, auth_timeout=10)  # fmt: skip
    return client


def run(client: paramiko.SSHClient, command: str) -> tuple[int, str]:
    _, stdout, stderr = client.exec_command(command, timeout=60)
    out = stdout.read().decode() + stderr.read().decode()
    return stdout.channel.recv_exit_status(), out
