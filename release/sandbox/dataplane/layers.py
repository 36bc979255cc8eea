"""Turning an instance's overlayfs upper dir into a read-only image layer.

The copy is faithful to what overlayfs reads from a lower layer: whiteouts (character devices 0/0)
and opaque directories (the trusted.overlay.opaque xattr) are kept, so files the instance deleted
stay deleted in the image; owners, modes, times, hard links and every xattr (file capabilities
included) are kept too. Instance-specific paths are left out (see `InstanceSpecific`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from release.sandbox.dataplane.cloudinit import METADATA

# Left out of every image, whatever their content: they identify one instance or one boot.
ALWAYS_EXCLUDED = (
    "/etc/ssh/ssh_host_*",  # host keys: each instance gets fresh ones at launch
    "/etc/machine-id",
    "/var/lib/dbus/machine-id",
    METADATA,
    "/var/lib/cloud",  # cloud-init's per-instance state
    "/root/.bash_history",
    "/home/*/.bash_history",
    "/var/tmp/systemd-private-*",
)
# Everything below these is runtime state (directories themselves are kept, so /tmp stays 1777).
EMPTIED_DIRS = ("/tmp", "/run", "/dev", "/proc", "/sys")
# Log files are dropped but their directories kept: nginx will not start without /var/log/nginx.
LOG_DIRS = ("/var/log",)


@dataclass(frozen=True)
class InstanceSpecific:
    """Decides which upper-dir entries stay out of an image."""

    launch_files: Mapping[str, str]  # path inside the instance -> sha256 written at launch

    def excluded(self, path: str, st: os.stat_result, host_path: Path) -> bool:
        if any(fnmatch.fnmatchcase(path, pattern) for pattern in ALWAYS_EXCLUDED):
            return True
        if any(path.startswith(d + "/") for d in EMPTIED_DIRS):
            return True
        if any(path.startswith(d + "/") for d in LOG_DIRS) and not stat.S_ISDIR(st.st_mode):
            return True
        expected = self.launch_files.get(path)
        if expected is not None and stat.S_ISREG(st.st_mode):
            # Still exactly what the launch wrote: the instance's own changes are kept.
            return _sha256(host_path) == expected
        return False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_metadata(source: Path, target: Path, st: os.stat_result) -> None:
    # Order matters: chown clears set-id bits and file capabilities, so mode and xattrs come after.
    os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(target, stat.S_IMODE(st.st_mode))
    for name in os.listxattr(source, follow_symlinks=False):
        try:
            os.setxattr(target, name, os.getxattr(source, name, follow_symlinks=False), follow_symlinks=False)
        except OSError as err:
            # user.* xattrs cannot exist on symlinks; nothing else is expected to fail as root.
            if not stat.S_ISLNK(st.st_mode):
                raise OSError(err.errno, f"copying xattr {name} of {source}: {err.strerror}") from err
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_layer(source: Path, target: Path, excluded: Callable[[str, os.stat_result, Path], bool]) -> None:
    """Copy the tree `source` to the new directory `target`, skipping what `excluded` says."""
    links: dict[tuple[int, int], Path] = {}
    top = os.lstat(source)
    target.mkdir()
    _copy_dir(source, target, "", excluded, links)
    _copy_metadata(source, target, top)


def _copy_dir(
    source: Path,
    target: Path,
    relative: str,
    excluded: Callable[[str, os.stat_result, Path], bool],
    links: dict[tuple[int, int], Path],
) -> None:
    with os.scandir(source) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            src = Path(entry.path)
            dst = target / entry.name
            path = f"{relative}/{entry.name}"
            st = os.lstat(src)
            if excluded(path, st, src):
                continue
            mode = st.st_mode
            key = (st.st_dev, st.st_ino)
            if not stat.S_ISDIR(mode) and st.st_nlink > 1 and key in links:
                os.link(links[key], dst, follow_symlinks=False)
                continue
            if stat.S_ISDIR(mode):
                dst.mkdir()
                _copy_dir(src, dst, path, excluded, links)
            elif stat.S_ISREG(mode):
                shutil.copyfile(src, dst, follow_symlinks=False)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(src), dst)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                os.mknod(dst, mode, st.st_rdev)  # includes whiteouts: char device 0/0
            else:
                continue  # sockets belong to a running process, not to an image
            _copy_metadata(src, dst, st)
            if not stat.S_ISDIR(mode) and st.st_nlink > 1:
                links[key] = dst
