"""Loading tasks.py is what every `inv` pays first (`inv --list`, `inv --help`, each command), so it
imports no AWS, SSH, sandbox or table code: each task imports what it needs when it runs.
bench/cli_speed.py prints what that is worth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
HEAVY = ("boto3", "botocore", "paramiko", "moto", "rich.table", "release.aws", "release.commands")
LOADED = """
import json, sys
import tasks
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(code: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=True)
    return set(json.loads(done.stdout))


def test_loading_tasks_imports_none_of_the_heavy_modules() -> None:
    loaded = _modules_after(LOADED)
    assert "tasks" in loaded
    assert sorted(m for m in HEAVY if m in loaded) == []


def test_listing_the_commands_imports_none_of_them_either() -> None:
    """What `inv --list` runs: invoke's program loads tasks.py and prints its collection."""
    loaded = _modules_after("""
import contextlib, io, json, sys
from invoke.main import program
with contextlib.redirect_stdout(io.StringIO()):
    try:
        program.run(["inv", "--list"])
    except SystemExit:
        pass
print(json.dumps(sorted(sys.modules)))
""")
    assert "tasks" in loaded
    assert sorted(m for m in HEAVY if m in loaded) == []
