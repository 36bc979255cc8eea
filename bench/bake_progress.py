"""A bake's log without a terminal, as CI keeps it, never goes quiet for long (target: no gap
over 10 s while Packer runs).

Runs `inv bake --env sandbox --force` with stdout and stderr going to a pipe (no terminal), stamps
each line as it arrives, and prints the largest gap between lines while Packer runs (each run,
one per image layer, from the "packer build" progress line to the first line after Packer's) and
over the whole bake.

Needs a running sandbox (`inv sandbox.up`; KILN_SANDBOX_DIR is passed on as it is).

    .venv/bin/python bench/bake_progress.py [--log FILE]   # FILE: the lines, each with its second
"""

from __future__ import annotations

import argparse
import itertools
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 10.0


def largest_gap(stamps: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, help="write the stamped lines here")
    args = parser.parse_args()
    inv = str(Path(sys.executable).parent / "inv")
    started = time.monotonic()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen([inv, "bake", "--env", "sandbox", "--force"], cwd=ROOT, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))
        code = proc.wait()
    if args.log:
        args.log.write_text("".join(f"{at:7.1f} s  {text}\n" for at, text in lines))
    runs = packer_runs(lines)
    if not runs:
        print(f"no Packer run found in the bake's output (exit {code}):")
        print("\n".join(text for _, text in lines[-10:]))
        return 1
    gap = max(largest_gap(run) for run in runs)
    print(f"bake without a terminal (exit {code}): {len(lines)} lines in {lines[-1][0]:.0f} s; "
          f"{len(runs)} Packer run(s) of {', '.join(f'{r[-1] - r[0]:.0f} s' for r in runs)} printed "
          f"{sum(len(r) for r in runs)} lines")
    print(f"largest gap between lines during Packer: {gap:.1f} s (target: <= {TARGET_S:.0f} s); "
          f"over the whole bake: {largest_gap([at for at, _ in lines]):.1f} s")
    if code != 0:
        print("the bake failed: " + lines[-1][1])
    return 0 if gap <= TARGET_S and code == 0 else 1


def packer_runs(lines: list[tuple[float, str]]) -> list[list[float]]:
    """When each line of each Packer run arrived: from the "…: packer build 0 s" progress line to
    the first line after it that is not Packer's ("(packer N s)"), that one included."""
    runs: list[list[float]] = []
    current: list[float] | None = None
    for at, text in lines:
        if re.search(r": packer build \d+ s", text):
            current = [at]
            runs.append(current)
        elif current is not None:
            current.append(at)
            if "(packer " not in text:
                current = None
    return runs

if __name__ == "__main__":
    raise SystemExit(main())
