"""The sandbox is an extra: the product installs and runs without moto.

`pip install kiln` pulls no moto (only `kiln[sandbox]` does), and nothing outside release/sandbox/
imports it: `inv --list` and `inv release --help` work in an interpreter where importing moto
fails, as it does in a virtualenv without the extra.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
NO_MOTO = """
import sys
sys.modules["moto"] = None  # `import moto` now fails, as without the sandbox extra
from invoke.main import program
program.run(["inv", *sys.argv[1:]])
"""


def test_moto_is_only_in_the_sandbox_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith(("moto", "werkzeug"))]
    assert any(d.startswith("moto") for d in project["optional-dependencies"]["sandbox"])


def test_the_product_imports_moto_only_inside_the_sandbox() -> None:
    offenders = []
    for path in [ROOT / "tasks.py", *(ROOT / "release").rglob("*.py")]:
        if "sandbox" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "moto"]
    assert offenders == []


@pytest.mark.parametrize("args", [["--list"], ["release", "--help"], ["status", "--help"]])
def test_the_cli_works_without_moto(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", NO_MOTO, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "release" in done.stdout


def test_pip_install_without_extras_pulls_no_moto_and_the_cli_runs(tmp_path: Path) -> None:
    """For real: a fresh virtualenv, `pip install .` (pinned by constraints.txt), then the CLI."""
    venv, source = tmp_path / "venv", tmp_path / "kiln"
    # pip builds in the tree it is given: a copy keeps build/ litter out of the checkout.
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", ".kiln",
                                                                 "__pycache__", ".*_cache"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt"), str(source)],
                         capture_output=True, text=True, timeout=600, check=False)
    assert pip.returncode == 0, pip.stderr[-2000:]
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=freeze"], capture_output=True, text=True,
                            timeout=60, check=True).stdout.lower()
    installed = {line.split("==")[0] for line in listed.splitlines()}
    assert installed.isdisjoint({"moto", "werkzeug", "cfn-lint", "sympy", "docker"}), sorted(installed)
    for args in (["--list"], ["release", "--help"]):
        done = subprocess.run([str(venv / "bin" / "inv"), *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0 and "release" in done.stdout, done.stderr
