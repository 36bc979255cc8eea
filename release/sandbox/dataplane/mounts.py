"""mount(2) and umount2(2) through libc, and the host's view of what is mounted where.

libc rather than mount(8): exact flags, an errno on failure, and no mtab side effects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

from release.errors import SandboxError

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount(source: str, target: Path, fstype: str | None, flags: int = 0, options: str | None = None) -> None:
    rc = _libc.mount(
        source.encode(),
        os.fsencode(target),
        fstype.encode() if fstype else None,
        flags,
        options.encode() if options else None,
    )
    if rc != 0:
        code = ctypes.get_errno()
        raise SandboxError(f"mount {fstype or 'bind'} {source} on {target} failed: {os.strerror(code)}")


def umount(target: Path, *, lazy: bool = False) -> int:
    """Unmount; returns 0 or the errno (callers decide whether EBUSY is worth a retry)."""
    rc = _libc.umount2(os.fsencode(target), MNT_DETACH if lazy else 0)
    return 0 if rc == 0 else ctypes.get_errno()


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Path]:
    points = []
    for line in mountinfo.read_text().splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            points.append(Path(_unescape(fields[4])))
    return points


def mounts_under(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Path]:
    """Mount points at or below `path`, deepest first (the order to unmount them in)."""
    path = Path(os.path.abspath(path))
    found = {p for p in mount_points(mountinfo) if p == path or path in p.parents}
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_tree(path: Path) -> None:
    """Unmount everything at or below `path`; lazily only when a plain unmount stays busy,
    and then verify it is gone. Raises SandboxError when something stays mounted."""
    for _attempt in range(3):
        points = mounts_under(path)
        if not points:
            return
        for point in points:
            code = umount(point)
            if code not in (0, errno.EINVAL, errno.ENOENT, errno.EBUSY):
                raise SandboxError(f"umount {point} failed: {os.strerror(code)}")
    for point in mounts_under(path):
        umount(point, lazy=True)
    left = mounts_under(path)
    if left:
        raise SandboxError(f"still mounted after a lazy unmount: {', '.join(map(str, left))}")
