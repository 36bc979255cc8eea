"""Facts about processes on this machine that the sandbox's lifecycle and its instances' init share."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int, proc: Path = Path("/proc")) -> bool:
    """The process exists and is not a zombie (a zombie has exited; only its parent's wait is due).
    `proc` is the procfs of the PID namespace `pid` belongs to: an instance's init, which runs in
    the instance's PID namespace but sees the host's /proc, passes the instance's own."""
    try:
        os.kill(pid, 0)  # the caller's own PID namespace decides whether `pid` exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
