"""Content addresses for bakes: one digest over everything that determines the image.

The inputs, each digested on its own so Kiln can say *which* one changed:
- app:      the app's source tree (the wheel built from it is a function of it and of constraints)
- deps:     constraints.txt, which pins every Python package the image installs
- ansible:  the playbook and roles
- packer:   the template and its variables
- base:     the resolved base AMI id (a newer base image means a new bake)
- config:   the keys of versions.toml that reach the image (app name and version, bake settings)
- tools:    the Packer and ansible-core versions that build it

Trees are hashed by relative path, executable bit and content, skipping build litter
(__pycache__, *.pyc, build/, *.egg-info, caches), so a local `pip wheel` or a test run never
changes a fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

SKIP_DIRS = {"__pycache__", "build", "dist", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".venv",
             "packer_cache", ".git"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info")
INPUT_ORDER = ("app", "deps", "ansible", "packer", "base", "config", "tools")


@dataclass(frozen=True)
class Fingerprint:
    """The bake's digest and the digest of each input."""

    inputs: Mapping[str, str]  # name -> short digest (or the base AMI id itself)

    @property
    def value(self) -> str:
        h = hashlib.sha256()
        for name in INPUT_ORDER:
            h.update(f"{name}={self.inputs.get(name, '')}\n".encode())
        return h.hexdigest()[:16]

    def as_tag(self) -> str:
        """Compact enough for one AMI tag value (≤ 256 chars): "app=…,deps=…,…"."""
        return ",".join(f"{name}={self.inputs.get(name, '')}" for name in INPUT_ORDER)

    @staticmethod
    def from_tag(text: str) -> dict[str, str]:
        pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
        return {k: v for k, v in pairs}

    def changed_since(self, previous_tag: str | None) -> list[str]:
        """Names of the inputs that differ from a previous bake's tag (all when unknown)."""
        if not previous_tag:
            return list(INPUT_ORDER)
        before = self.from_tag(previous_tag)
        return [n for n in INPUT_ORDER if before.get(n) != self.inputs.get(n)]


def tree_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for directory, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(SKIP_SUFFIXES))
        files.extend(Path(directory, n) for n in sorted(names) if not n.endswith(SKIP_SUFFIXES))
    return files


def digest_tree(root: Path) -> str:
    h = hashlib.sha256()
    for path in tree_files(root):
        rel = path.relative_to(root).as_posix()
        executable = "x" if os.access(path, os.X_OK) else "-"
        h.update(f"{rel}\0{executable}\0".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:12]


def digest_text(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def compute(project: Path, *, base_ami: str, config_keys: Iterable[str], tools: Iterable[str]) -> Fingerprint:
    return Fingerprint({
        "app": digest_tree(project / "app"),
        "deps": digest_text((project / "constraints.txt").read_text()),
        "ansible": digest_tree(project / "ansible"),
        "packer": digest_tree(project / "packer"),
        "base": base_ami,
        "config": digest_text(*config_keys),
        "tools": digest_text(*tools),
    })
