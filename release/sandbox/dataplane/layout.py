"""Where an instance's files live, shared by the host side and the instance's init.

    state_dir/instances/<instance id>/
        instance.json     the launch spec, the image's layers, hashes of the files written at launch
        upper/ work/      overlayfs upper and work dirs: everything the instance changed
        root/             the overlay mount: the instance's root filesystem
        console.log       what GetConsoleOutput returns (boot lines, service output, syslog)
        status.json       the init's view of the units (phase, state, main pid), for humans and tests
        first-boot        present until the first boot made host keys and printed them (cloud-init's
                          per-instance work); holds the instance id
        init.pid          host pids of the instance's `unshare` and of its init (PID 1 inside)
"""

from __future__ import annotations

from pathlib import Path


def rootfs(instance_dir: Path) -> Path:
    return instance_dir / "root"


def upper(instance_dir: Path) -> Path:
    return instance_dir / "upper"


def work(instance_dir: Path) -> Path:
    return instance_dir / "work"


def console(instance_dir: Path) -> Path:
    return instance_dir / "console.log"


def status(instance_dir: Path) -> Path:
    return instance_dir / "status.json"


def spec(instance_dir: Path) -> Path:
    return instance_dir / "instance.json"


def first_boot(instance_dir: Path) -> Path:
    return instance_dir / "first-boot"


def pids(instance_dir: Path) -> Path:
    return instance_dir / "init.pid"


def read_hostname(root: Path) -> str | None:
    path = root / "etc/hostname"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


