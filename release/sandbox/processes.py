"""Facts about processes on this machine that the sandbox's lifecycle and its instances' init share."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has exited; only its parent's wait is due)."""
    try:
        os.kill(pid, 0)  # first: the caller's own PID namespace decides whether `pid` exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
