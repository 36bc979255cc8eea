"""Content addresses for bakes: one digest per image layer over everything that determines it.

An image is baked in two layers, each with its own fingerprint, each input digested on its own so
Kiln can say *which* one changed:

The foundation (what does not change with the app's version):
- base:     the resolved base AMI id (a newer base image means a new foundation)
- deps:     constraints.txt, which pins every Python package the image installs, and the app's
            declared dependencies (app/pyproject.toml), whose wheels the foundation carries
- ansible:  ansible/ except the app layer's playbook and role (foundation.yml, base, proxy, boot…)
- packer:   the template and its variables
- config:   the keys of versions.toml that reach the foundation (bake settings, SSH user)
- tools:    the Packer and ansible-core versions that build it

The app (on a foundation):
- foundation: the foundation's fingerprint (a new foundation means a new app image)
- app:      the app's source tree (the wheel built from it)
- ansible:  ansible/playbook.yml and the app role
- packer, config (app name and version too), tools: as above

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
FOUNDATION_INPUTS = ("base", "deps", "ansible", "packer", "config", "tools")
APP_INPUTS = ("foundation", "app", "ansible", "packer", "config", "tools")
# The app layer's part of ansible/; the rest of ansible/ is the foundation's.
APP_ANSIBLE = ("playbook.yml", "roles/app")


@dataclass(frozen=True)
class Fingerprint:
    """The bake's digest and the digest of each input."""

    inputs: Mapping[str, str]  # name -> short digest (or the base AMI id itself), in order

    @property
    def value(self) -> str:
        h = hashlib.sha256()
        for name, digest in self.inputs.items():
            h.update(f"{name}={digest}\n".encode())
        return h.hexdigest()[:16]

    def as_tag(self) -> str:
        """Compact enough for one AMI tag value (≤ 256 chars): "app=…,deps=…,…"."""
        return ",".join(f"{name}={digest}" for name, digest in self.inputs.items())

    @staticmethod
    def from_tag(text: str) -> dict[str, str]:
        pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
        return {k: v for k, v in pairs}

    def changed_since(self, previous_tag: str | None) -> list[str]:
        """Names of the inputs that differ from a previous bake's tag (all when unknown)."""
        if not previous_tag:
            return list(self.inputs)
        before = self.from_tag(previous_tag)
        return [n for n in self.inputs if before.get(n) != self.inputs.get(n)]


def tree_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for directory, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(SKIP_SUFFIXES))
        files.extend(Path(directory, n) for n in sorted(names) if not n.endswith(SKIP_SUFFIXES))
    return files


def digest_tree(root: Path, *, only: tuple[str, ...] = (), without: tuple[str, ...] = ()) -> str:
    """The tree's digest; `only`/`without`: keep or drop these relative paths (files or folders)."""
    def picked(rel: str) -> bool:
        inside = [p for p in (only or without) if rel == p or rel.startswith(p + "/")]
        return bool(inside) if only else not inside

    h = hashlib.sha256()
    for path in tree_files(root):
        if (only or without) and not picked(path.relative_to(root).as_posix()):
            continue
        rel = path.relative_to(root).as_posix()
        executable = "x" if os.access(path, os.X_OK) else "-"
        h.update(f"{rel}\0{executable}\0".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:12]


def digest_text(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def foundation(project: Path, *, base_ami: str, dependencies: Iterable[str], config_keys: Iterable[str],
               tools: Iterable[str]) -> Fingerprint:
    return Fingerprint({
        "base": base_ami,
        "deps": digest_text((project / "constraints.txt").read_text(), *sorted(dependencies)),
        "ansible": digest_tree(project / "ansible", without=APP_ANSIBLE),
        "packer": digest_tree(project / "packer"),
        "config": digest_text(*config_keys),
        "tools": digest_text(*tools),
    })


def app(project: Path, *, foundation: Fingerprint, config_keys: Iterable[str], tools: Iterable[str]) -> Fingerprint:
    return Fingerprint({
        "foundation": foundation.value,
        "app": digest_tree(project / "app"),
        "ansible": digest_tree(project / "ansible", only=APP_ANSIBLE),
        "packer": digest_tree(project / "packer"),
        "config": digest_text(*config_keys),
        "tools": digest_text(*tools),
    })
