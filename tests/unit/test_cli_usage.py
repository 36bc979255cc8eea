"""Arguments a command cannot work with are refused in one line, exit 2, before anything is asked of
AWS or the sandbox (none runs here: any attempt would fail differently)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
INV = Path(sys.executable).parent / "inv"


@pytest.mark.parametrize(("args", "message"), [
    (["release"], "--version is required"),
    (["ami.promote", "--version", "1.0.0"], "inv ami.promote needs --to"),
    (["ami.deprecate", "--children"], "--children applies to --foundation"),
    (["ami.deprecate", "--version", "1.0.0", "--foundation", "ami-0123"], "a --version or a --foundation, not both"),
])
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    done = subprocess.run([str(INV), *args, "--env", "sandbox"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False, env={"PATH": str(INV.parent), "KILN_SANDBOX_DIR": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr
