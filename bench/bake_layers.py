"""How long bakes take, layer by layer, in a running sandbox (real Packer, Ansible and smoke test).

    KILN_SANDBOX_DIR=/var/tmp/kiln-bench inv sandbox.up
    KILN_SANDBOX_DIR=/var/tmp/kiln-bench .venv/bin/python bench/bake_layers.py

Works on a copy of the project (so the checkout's own bakes and fingerprints are untouched) and
prints, each end to end through `inv bake` (wheelhouse, Packer, smoke test):
- the first bake: foundation + app (skipped when the foundation of this tree exists already);
- an app-only rebake after a one-line change in app/ (target: <= 60 s);
- a no-op bake (`inv bake` with nothing changed; target: <= 1 s), median of 5.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INV = str(Path(sys.executable).parent / "inv")


def bake(project: Path, *args: str) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    done = subprocess.run([INV, "bake", "--env", "sandbox", "--json", *args], cwd=project, capture_output=True,
                          text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"inv bake {' '.join(args)} failed (exit {done.returncode}): {done.stderr.strip()[-600:]}")
    return seconds, json.loads(done.stdout)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as scratch:
        project = Path(scratch) / "kiln"
        shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(".venv", ".git", ".kiln", "build", "*.egg-info",
                                                                     "__pycache__", ".*_cache"))
        seconds, first = bake(project)
        foundation = first.get("foundation", {})
        assert isinstance(foundation, dict)
        if first.get("needed") and foundation.get("seconds"):
            print(f"first bake (foundation + app): {seconds:.0f} s, of which the foundation "
                  f"{foundation['seconds']:.0f} s")
        else:
            print(f"first bake: {seconds:.0f} s (the foundation {foundation.get('image_id')} existed already)")

        views = project / "app" / "src" / "webapp" / "__init__.py"
        views.write_text(views.read_text() + f"\n# bench {time.time()}\n")
        seconds, rebake = bake(project)
        below = rebake.get("foundation", {})
        assert isinstance(below, dict)
        layers = "app only" if not below.get("seconds") else "foundation too (unexpected)"
        print(f"app-only rebake after a one-line change in app/: {seconds:.0f} s end to end ({layers}; "
              f"Packer and smoke test included; target <= 60 s)")

        times = []
        for _ in range(5):
            seconds, noop = bake(project)
            assert noop.get("needed") is False, noop
            times.append(seconds)
        print(f"no-op bake: median {statistics.median(times):.2f} s, min {min(times):.2f} s, "
              f"max {max(times):.2f} s over 5 (target <= 1 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
