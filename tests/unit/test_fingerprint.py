"""Bake fingerprints: stable, sensitive to what matters, blind to build litter."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from release.fingerprint import INPUT_ORDER, Fingerprint, compute, digest_tree

ROOT = Path(__file__).parents[2]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("app", "ansible", "packer"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                                     "__pycache__"))
    shutil.copy(ROOT / "constraints.txt", tmp_path / "constraints.txt")
    return tmp_path


def fp(project: Path, base: str = "ami-base1") -> Fingerprint:
    return compute(project, base_ami=base, config_keys=["webapp", "1.0.0"], tools=["packer 1.6.6", "ansible 2.19"])


def test_same_inputs_same_fingerprint(project: Path) -> None:
    assert fp(project).value == fp(project).value
    assert len(fp(project).value) == 16


@pytest.mark.parametrize(("change", "input_name"), [
    (lambda p: (p / "app" / "src" / "webapp" / "views.py").write_text("# changed\n", "utf-8"), "app"),
    (lambda p: (p / "ansible" / "playbook.yml").open("a").write("# changed\n"), "ansible"),
    (lambda p: (p / "packer" / "variables.pkr.hcl").open("a").write("# changed\n"), "packer"),
    (lambda p: (p / "constraints.txt").open("a").write("six==1.16.0\n"), "deps"),
])
def test_one_changed_file_changes_exactly_its_input(project: Path, change, input_name: str) -> None:
    before = fp(project)
    change(project)
    after = fp(project)
    assert after.value != before.value
    assert after.changed_since(before.as_tag()) == [input_name]


def test_base_image_config_and_tools_count(project: Path) -> None:
    before = fp(project)
    assert fp(project, base="ami-base2").changed_since(before.as_tag()) == ["base"]
    other = compute(project, base_ami="ami-base1", config_keys=["webapp", "1.1.0"], tools=["packer 1.6.6",
                                                                                           "ansible 2.19"])
    assert other.changed_since(before.as_tag()) == ["config"]


def test_build_litter_is_ignored(project: Path) -> None:
    before = digest_tree(project / "app")
    (project / "app" / "build").mkdir()
    (project / "app" / "build" / "lib.py").write_text("x")
    (project / "app" / "src" / "webapp" / "__pycache__").mkdir(exist_ok=True)
    (project / "app" / "src" / "webapp" / "__pycache__" / "views.cpython-311.pyc").write_bytes(b"\0")
    (project / "app" / "src" / "kiln_webapp.egg-info").mkdir()
    assert digest_tree(project / "app") == before


def test_executable_bit_counts(project: Path) -> None:
    before = digest_tree(project / "ansible")
    (project / "ansible" / "playbook.yml").chmod(0o755)
    assert digest_tree(project / "ansible") != before


def test_tag_round_trip_and_unknown_previous() -> None:
    f = Fingerprint({name: f"d-{name}" for name in INPUT_ORDER})
    assert Fingerprint.from_tag(f.as_tag()) == dict(f.inputs)
    assert len(f.as_tag()) <= 256
    assert f.changed_since(None) == list(INPUT_ORDER)
