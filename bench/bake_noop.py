"""How long `inv bake` takes when nothing changed (target: at most 2 s).

Needs a running sandbox with the current version baked (`./bootstrap demo` leaves one).
Runs `inv bake --if-changed` N times as a user would, and prints min/median/max wall time.

    .venv/bin/python bench/bake_noop.py [N]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    inv = str(Path(sys.executable).parent / "inv")
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        out = subprocess.run([inv, "bake", "--if-changed", "--env", "sandbox"], cwd=ROOT, capture_output=True,
                             text=True, check=False)
        times.append(time.perf_counter() - started)
        if out.returncode != 0 or "nothing changed" not in out.stdout + out.stderr:
            print(f"not a no-op (exit {out.returncode}): {(out.stdout + out.stderr).strip()[-300:]}")
            return 1
    print(f"no-op bake over {runs} runs: min {min(times):.2f} s, median {statistics.median(times):.2f} s, "
          f"max {max(times):.2f} s (target: <= 2 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
