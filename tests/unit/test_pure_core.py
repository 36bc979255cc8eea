"""The pure core (config, model, record, plan, gate, the rollout state machine, the AMI catalogue,
fingerprints, clock, errors) loads no adapter: no AWS SDK, SSH, invoke, the sandbox, or Kiln's
own adapters. Each is imported in a fresh interpreter and `sys.modules` is checked, so an import
that drags an adapter in through another module fails here."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ("config", "model", "record", "plan", "gate", "rollout", "catalogue", "promotion", "fingerprint", "clock",
        "errors", "timeline", "report")
ADAPTERS = ("boto3", "botocore", "paramiko", "invoke", "moto", "rich", "release.aws", "release.cloud",
            "release.ledger", "release.ssh", "release.packer", "release.ui", "release.sandbox", "release.commands")
# Ways out of the process a core module must not take itself (a library may use them inside).
NO_IO_MODULES = {"subprocess", "socket", "urllib", "http", "shutil"}


def loaded_by(module: str) -> list[str]:
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return list(json.loads(out.stdout))


@pytest.mark.parametrize("name", CORE)
def test_a_core_module_loads_no_adapter(name: str) -> None:
    modules = loaded_by(f"release.{name}")
    bad = sorted(m for m in modules if any(m == a or m.startswith(a + ".") for a in ADAPTERS))
    assert bad == [], f"release.{name} loads adapters: {bad}"


@pytest.mark.parametrize("name", CORE)
def test_a_core_module_does_no_io_itself(name: str) -> None:
    tree = ast.parse((ROOT / "release" / f"{name}.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert sorted(imported & NO_IO_MODULES) == []


def test_the_check_catches_an_adapter() -> None:
    """The check itself works: the command layer does load boto3."""
    assert "boto3" in loaded_by("release.commands.deploy")


def test_the_commands_bake_the_project_they_ship_in() -> None:
    """The tree `inv bake` bakes (app/, ansible/, packer/) is the repository's, wherever the
    command modules sit in the package."""
    from release.commands.context import PROJECT

    assert all((PROJECT / part).is_dir() for part in ("app", "ansible", "packer")), PROJECT


def test_the_product_reaches_the_sandbox_only_through_its_lookup() -> None:
    """Outside the sandbox package, only the sandbox tasks import it; everything else asks
    sandbox/lookup.py where it runs and which key it uses (the rest is the endpoint)."""
    offenders = []
    for path in sorted((ROOT / "release").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith("release/sandbox/") or relative == "release/commands/sandbox.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("release.sandbox"):
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.startswith("release.sandbox")]
            else:
                continue
            offenders += [f"{relative}: {name}" for name in names if name != "release.sandbox.lookup"]
    assert offenders == []
