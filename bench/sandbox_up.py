"""How long the sandbox takes to start from cold (no server running) and warm (already up), and
how long `down` takes with a fleet of real instances. Uses its own state directory, so it never
touches a sandbox you are using; the Debian base image cache is shared (built once per machine).

    .venv/bin/python bench/sandbox_up.py
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from pathlib import Path

from release import config
from release.commands import sandbox as local_cloud
from release.sandbox import lookup, stack
from release.ui import UI

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    state = Path(tempfile.mkdtemp(prefix="kiln-bench-", dir="/var/tmp"))
    state.chmod(0o755)
    lookup.STATE_DIR = state
    cfg = config.load(ROOT / "versions.toml")
    quiet = UI(stdout=io.StringIO(), stderr=io.StringIO())
    try:
        started = time.perf_counter()
        local_cloud.up(cfg, quiet, time_scale=0.1, instances=True)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        local_cloud.up(cfg, quiet, time_scale=0.1, instances=True)
        warm = time.perf_counter() - started
    finally:
        started = time.perf_counter()
        stack.down(state)
        down = time.perf_counter() - started
        shutil.rmtree(state)
    print(f"sandbox.up cold: {cold:.1f} s (server, PostgreSQL, legacy image, seed, 4 instances)")
    print(f"sandbox.up again (already running): {warm:.1f} s")
    print(f"sandbox.down with its fleet: {down:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
