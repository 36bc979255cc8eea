"""Helpers for the data plane's tests: specs, strict-host-key SSH, listeners, leftovers."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from release.sandbox.contracts import LaunchedInstance
from release.sandbox.dataplane import LocalDataPlane, parse_host_keys
from release.sandbox.dataplane.mounts import mounts_under
from release.sandbox.dataplane.rootfs import processes_rooted_under

BASE_IMAGE = "ami-0base0000000000000"


def requires_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root on Linux")



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


def spec(
    instance_id: str, ip: str, public_key: str | None, image_id: str = BASE_IMAGE, user_data: str | None = None
) -> LaunchedInstance:
    return LaunchedInstance(instance_id, image_id, ip, "kiln-test", public_key, user_data, "us-east-1")


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
