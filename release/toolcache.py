"""What a tool says its version is, remembered per binary.

`ansible-playbook --version` takes about 0.6 s (it starts Python and imports Ansible), and `packer
version` about 0.1 s: together most of a bake that finds nothing changed. Their answer only changes
when the binary does, so Kiln keeps it in a small JSON file (.kiln/tools.json) keyed by the
binary's resolved path, the arguments, and its size, modification time, change time and inode.
Installing, upgrading or replacing a tool (pip writes a new ansible-playbook; a package manager a new
packer) changes at least one of them, and the next call runs the tool again. Delete the file to
forget every answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path


def version_output(path: str, args: Sequence[str], *, cache: Path | None, timeout: float = 60) -> str:
    """What `path args…` prints (stdout then stderr): remembered in `cache` when it exits 0."""
    key = _key(path, args)
    known = _read(cache) if cache is not None and key else {}
    if key and key in known:
        return known[key]
    out = subprocess.run([path, *args], capture_output=True, text=True, timeout=timeout, check=False)
    text = out.stdout + out.stderr
    if cache is not None and key and out.returncode == 0:
        # Answers of binaries that are gone or replaced are dropped, so the file stays small.
        _write(cache, {k: v for k, v in known.items() if not k.startswith(f"{_real(path)}\0")} | {key: text})
    return text


def _real(path: str) -> str:
    return os.path.realpath(path)


def _key(path: str, args: Sequence[str]) -> str | None:
    real = _real(path)
    try:
        st = os.stat(real)
    except OSError:
        return None
    return "\0".join([real, " ".join(args), str(st.st_size), str(st.st_mtime_ns), str(st.st_ctime_ns),
                      str(st.st_ino)])


def _read(cache: Path) -> dict[str, str]:
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write(cache: Path, data: dict[str, str]) -> None:
    """Atomically (two bakes at once read a whole file or none); a cache that cannot be written is
    only slower, never an error."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".tools-", suffix=".json")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1, sort_keys=True)
        os.replace(tmp, cache)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
