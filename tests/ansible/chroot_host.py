"""A throwaway Debian 12 machine for provisioning tests: a debootstrapped rootfs (cached), an
overlay on it per test, and an sshd inside it on a loopback address.

The rootfs is the sandbox's base image (python3, python3-venv, openssh-server, sudo and a user
`admin` with passwordless sudo), so provisioning is tested on what Packer provisions. Root only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from release.sandbox.dataplane.baseimage import build_base_image


def sh(*argv: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], check=True, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload,no-any-return]


def base_rootfs() -> Path:
    """The sandbox's cached Debian base image (built on first use; one debootstrap per machine for
    both). KILN_TEST_BASE_ROOTFS names another rootfs to provision instead; it is only read."""
    if os.environ.get("KILN_TEST_BASE_ROOTFS"):
        return Path(os.environ["KILN_TEST_BASE_ROOTFS"])
    return build_base_image().rootfs


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


@dataclass
class Host:
    root: Path  # the instance's merged rootfs
    address: str
    port: int
    user: str
    private_key: Path
    public_key: str


@contextlib.contextmanager
def chroot_host(workdir: Path, address: str = "127.0.0.1") -> Iterator[Host]:
    """An overlay of the base rootfs with proc/dev mounted and sshd listening on address."""
    base = base_rootfs()
    upper, work, root = workdir / "upper", workdir / "work", workdir / "root"
    for directory in (upper, work, root):
        directory.mkdir(parents=True)
    mounts: list[Path] = []
    sshd: subprocess.Popen[bytes] | None = None
    try:
        sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={base},upperdir={upper},workdir={work}", root)
        mounts.append(root)
        for target, args in (
            ("proc", ["-t", "proc", "proc"]),
            ("dev", ["--bind", "/dev"]),
            ("dev/pts", ["--bind", "/dev/pts"]),
            ("run", ["-t", "tmpfs", "-o", "mode=0755", "tmpfs"]),
        ):
            sh("mount", *args, root / target)
            mounts.append(root / target)
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")

        key = workdir / "id_ed25519"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
        public_key = key.with_suffix(".pub").read_text()
        ssh_dir = root / "home/admin/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(public_key)
        sh("chroot", root, "chown", "-R", "admin:admin", "/home/admin/.ssh")
        (root / "run/sshd").mkdir(mode=0o755)
        # Host keys, when the image has none (the sandbox writes them at launch).
        sh("chroot", root, "ssh-keygen", "-A")

        port = free_port(address)
        argv = ["chroot", str(root), "/usr/sbin/sshd", "-D", "-e", "-o", f"ListenAddress={address}:{port}"]
        argv += ["-o", "UsePAM=no", "-o", "PidFile=none"]
        with open(workdir / "sshd.log", "wb") as log:
            sshd = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
        wait_for_port(address, port, sshd)
        yield Host(root, address, port, "admin", key, public_key)
    finally:
        if sshd is not None:
            stop(sshd)
        kill_processes_in(root)
        for mount in reversed(mounts):
            subprocess.run(["umount", "--lazy", str(mount)], check=False)


def wait_for_port(address: str, port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the process for {address}:{port} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {address}:{port} after {timeout}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def kill_processes_in(root: Path) -> None:
    """Every process whose root is this rootfs (sshd's sessions, nginx workers...)."""
    for _ in range(50):
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "root") == str(root):
                        pids.append(int(entry.name))
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise RuntimeError(f"processes in {root} survived SIGKILL")
