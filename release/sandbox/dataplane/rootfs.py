"""Looking into a root filesystem from outside it.

Paths inside an instance are resolved against the instance's root: an absolute symlink such as
multi-user.target.wants/ssh.service -> /lib/systemd/system/ssh.service must land in the
instance, never on the host's file of the same name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_MAX_SYMLINKS = 40


def resolve_in_root(root: Path, path: str | PurePosixPath) -> Path:
    """The host path of `path` as the instance sees it (symlinks followed inside `root`).

    The result may not exist; a symlink loop resolves to a path that does not exist.
    """
    parts = list(PurePosixPath("/", path).parts[1:])
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > _MAX_SYMLINKS:
                return root / "nonexistent-symlink-loop"
            target = PurePosixPath(os.readlink(candidate))
            if target.is_absolute():
                resolved = []
            parts = [p for p in target.parts if p != "/"] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def processes_rooted_under(path: Path) -> list[int]:
    """PIDs (host numbering) whose root directory is `path` or below it."""
    path = Path(os.path.abspath(path))
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            root = Path(os.readlink(f"/proc/{entry}/root"))
        except OSError:
            continue
        if root == path or path in root.parents:
            found.append(int(entry))
    return found


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


def read_account(root: Path, user: str) -> Account | None:
    """A user from the instance's /etc/passwd, by name or numeric id."""
    passwd = resolve_in_root(root, "/etc/passwd")
    if not passwd.exists():
        return None
    for line in passwd.read_text().splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and (fields[0] == user or fields[2] == user):
            return Account(fields[0], int(fields[2]), int(fields[3]), fields[5], fields[6])
    return None


def read_group_id(root: Path, group: str) -> int | None:
    if group.isdigit():
        return int(group)
    groups = resolve_in_root(root, "/etc/group")
    for line in groups.read_text().splitlines() if groups.exists() else []:
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == group:
            return int(fields[2])
    return None


def supplementary_groups(root: Path, user: str) -> list[int]:
    """The groups that list `user` as a member in the instance's /etc/group."""
    groups = resolve_in_root(root, "/etc/group")
    ids = []
    for line in groups.read_text().splitlines() if groups.exists() else []:
        fields = line.split(":")
        if len(fields) >= 4 and user in fields[3].split(","):
            ids.append(int(fields[2]))
    return ids
