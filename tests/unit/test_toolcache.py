"""A tool's version answer is remembered until its binary changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from release import packer, toolcache


def _tool(path: Path, version: str) -> Path:
    # Each run leaves a mark, so the test can tell a run from a remembered answer.
    path.write_text(f"#!/bin/sh\necho run >> {path}.runs\necho 'Packer v{version}'\n")
    path.chmod(0o755)
    return path


def _runs(tool: Path) -> int:
    marks = Path(f"{tool}.runs")
    return len(marks.read_text().splitlines()) if marks.exists() else 0


def test_the_answer_is_remembered_until_the_binary_changes(tmp_path: Path) -> None:
    tool, cache = _tool(tmp_path / "packer", "1.6.6"), tmp_path / ".kiln" / "tools.json"
    assert toolcache.version_output(str(tool), ["version"], cache=cache) == "Packer v1.6.6\n"
    assert toolcache.version_output(str(tool), ["version"], cache=cache) == "Packer v1.6.6\n"
    assert _runs(tool) == 1
    _tool(tool, "1.10.0")  # an upgrade: a new binary at the same path
    assert toolcache.version_output(str(tool), ["version"], cache=cache) == "Packer v1.10.0\n"
    assert _runs(tool) == 2
    assert len(cache.read_text().split("Packer v")) == 2, "the replaced binary's answer is dropped"


def test_a_touched_binary_or_other_arguments_run_it_again(tmp_path: Path) -> None:
    tool, cache = _tool(tmp_path / "packer", "1.6.6"), tmp_path / "tools.json"
    toolcache.version_output(str(tool), ["version"], cache=cache)
    os.utime(tool, ns=(1, 1))
    toolcache.version_output(str(tool), ["version"], cache=cache)
    toolcache.version_output(str(tool), ["--version"], cache=cache)
    assert _runs(tool) == 3


def test_failures_are_not_remembered_and_a_bad_cache_is_ignored(tmp_path: Path) -> None:
    tool, cache = tmp_path / "broken", tmp_path / "tools.json"
    tool.write_text(f"#!/bin/sh\necho run >> {tool}.runs\nexit 1\n")
    tool.chmod(0o755)
    toolcache.version_output(str(tool), [], cache=cache)
    toolcache.version_output(str(tool), [], cache=cache)
    assert _runs(tool) == 2 and not cache.exists()
    cache.write_text("{not json")
    good = _tool(tmp_path / "packer", "1.6.6")
    assert toolcache.version_output(str(good), ["version"], cache=cache) == "Packer v1.6.6\n"
    assert "Packer v1.6.6" in cache.read_text()


def test_an_unwritable_cache_only_costs_time(tmp_path: Path) -> None:
    tool = _tool(tmp_path / "packer", "1.6.6")
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = blocker / "tools.json"  # its directory is a file
    assert toolcache.version_output(str(tool), ["version"], cache=cache) == "Packer v1.6.6\n"
    assert toolcache.version_output(str(tool), ["version"], cache=cache) == "Packer v1.6.6\n"
    assert _runs(tool) == 2


def test_check_tool_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool, cache = _tool(tmp_path / "packer", "1.6.6"), tmp_path / "tools.json"
    monkeypatch.setenv("PATH", str(tmp_path))
    for _ in range(3):
        found = packer.check_tool("packer", ["version"], packer.parse_version, SpecifierSet(">=1.6"),
                                  config_key="tools.packer", cache=cache)
        assert found == Version("1.6.6")
    assert _runs(tool) == 1
