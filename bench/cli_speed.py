"""How fast the command line answers: `inv --list` against invoke alone, and a bake that finds
nothing changed. Targets: `inv --list` at most 1.5 × invoke alone; a no-op bake at most 1 s.

    .venv/bin/python bench/cli_speed.py [--runs 15] [--bake-runs 7]

"Invoke alone" is the same `inv` program listing a tasks module that holds one empty task and
imports nothing but invoke (`inv --search-root <tmpdir> --list`): it pays for the interpreter,
site-packages and invoke itself, which is the floor of any `inv` command. (A module with no task at
all makes invoke exit 1 with "No tasks found", so it would not list anything.) The two commands run
alternately, so a machine that gets busier or quieter during the run weighs on both alike; figures
are medians of wall time. The no-op bake also prints its CPU time (user + system), which a busy
machine inflates far less than wall time.

The no-op bake runs `inv bake --env sandbox` as a user would, against the running
sandbox of $KILN_SANDBOX_DIR, and only when that sandbox already has an image of the current
inputs (checked first with `inv bake --dry-run`): the script never starts a bake. Otherwise it
says why it skipped. Bake one first: `inv sandbox.up` then `inv bake --env sandbox`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INV = str(Path(sys.executable).parent / "inv")
LIST_TARGET = 1.5  # × invoke alone
NOOP_TARGET = 1.0  # seconds
BARE_TASKS = '''from invoke.tasks import task


@task
def noop(c):
    """Nothing."""
'''


def timed(command: Sequence[str], *,
          env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    seconds, _, done = timed_cpu(command, env=env)
    return seconds, done


def timed_cpu(command: Sequence[str], *,
              env: dict[str, str] | None = None) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Wall time, CPU time (user + system, the command and its children) and the outcome."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(list(command), cwd=ROOT, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done


def figures(times: list[float]) -> str:
    return (f"median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}, "
            f"{len(times)} runs)")


def bench_list(runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="kiln-bare-") as bare:
        Path(bare, "tasks.py").write_text(BARE_TASKS)
        commands = {"kiln": [INV, "--list"], "invoke alone": [INV, "--search-root", bare, "--list"]}
        times: dict[str, list[float]] = {name: [] for name in commands}
        for command in commands.values():  # once each, untimed: warm the file cache and .pyc files
            _, done = timed(command)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}): {done.stderr.strip()}")
        for _ in range(runs):
            for name, command in commands.items():
                times[name].append(timed(command)[0])
    for name in commands:
        print(f"inv --list, {name:<13} {figures(times[name])}")
    ratio = statistics.median(times["kiln"]) / statistics.median(times["invoke alone"])
    verdict = "within" if ratio <= LIST_TARGET else "OVER"
    print(f"inv --list / invoke alone: {ratio:.2f} × ({verdict} the target of {LIST_TARGET} ×)")


def bench_noop_bake(runs: int) -> None:
    from release.errors import KilnError
    from release.sandbox import lookup, server_process

    try:
        info = server_process.find(lookup.STATE_DIR)
    except KilnError as err:
        info, why = None, str(err)
    else:
        why = f"no sandbox running in {lookup.STATE_DIR} (KILN_SANDBOX_DIR)"
    if info is None:
        print(f"no-op bake: skipped, {why}")
        return
    env = {**os.environ, "KILN_SANDBOX_DIR": str(lookup.STATE_DIR)}
    _, check = timed([INV, "bake", "--dry-run", "--env", "sandbox", "--json"], env=env)
    try:
        needed = bool(json.loads(check.stdout)["needed"])
    except (ValueError, KeyError, TypeError):
        print(f"no-op bake: skipped, `inv bake --dry-run` failed (exit {check.returncode}): "
              f"{(check.stdout + check.stderr).strip()[-300:]}")
        return
    if needed:
        print("no-op bake: skipped, the sandbox has no image of the current inputs (run `inv bake --env sandbox`)")
        return
    command = [INV, "bake", "--env", "sandbox"]
    timed(command, env=env)  # untimed: the first run may still have to learn the tools' versions
    times, cpu = [], []
    for _ in range(runs):
        seconds, cpu_seconds, done = timed_cpu(command, env=env)
        if done.returncode != 0 or "nothing changed" not in done.stdout + done.stderr:
            print(f"no-op bake: stopped, a run was not a no-op (exit {done.returncode}): "
                  f"{(done.stdout + done.stderr).strip()[-300:]}")
            return
        times.append(seconds)
        cpu.append(cpu_seconds)
    verdict = "within" if statistics.median(times) <= NOOP_TARGET else "OVER"
    print(f"no-op bake (inv bake --env sandbox): {figures(times)} ({verdict} the target of "
          f"{NOOP_TARGET:.0f} s); CPU median {statistics.median(cpu):.3f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=15, help="runs of each `inv --list`")
    parser.add_argument("--bake-runs", type=int, default=7, help="runs of the no-op bake")
    args = parser.parse_args(argv)
    load = ", ".join(f"{n:.2f}" for n in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load} (a busy machine slows every figure)")
    bench_list(args.runs)
    bench_noop_bake(args.bake_runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
