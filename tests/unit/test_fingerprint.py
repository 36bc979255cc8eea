"""Bake fingerprints, per layer: stable, sensitive to what matters, blind to build litter. A change
to the app rebakes only the app layer; a change to the foundation rebakes both."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from release.fingerprint import APP_INPUTS, FOUNDATION_INPUTS, Fingerprint, app, digest_tree, foundation

ROOT = Path(__file__).parents[2]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("app", "ansible", "packer"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                                     "__pycache__"))
    shutil.copy(ROOT / "constraints.txt", tmp_path / "constraints.txt")
    return tmp_path


TOOLS = ["packer 1.6.6", "ansible 2.19"]


def layers(project: Path, base: str = "ami-base1", version: str = "1.0.0") -> tuple[Fingerprint, Fingerprint]:
    below = foundation(project, base_ami=base, dependencies=["flask", "gunicorn"], config_keys=["admin"], tools=TOOLS)
    return below, app(project, foundation=below, config_keys=["webapp", version], tools=TOOLS)


def test_same_inputs_same_fingerprint(project: Path) -> None:
    assert layers(project) == layers(project)
    assert len(layers(project)[1].value) == 16
    assert tuple(layers(project)[0].inputs) == FOUNDATION_INPUTS and tuple(layers(project)[1].inputs) == APP_INPUTS


# (change, what changes in the foundation, what changes in the app)
CHANGES = [
    (lambda p: (p / "app" / "src" / "webapp" / "views.py").write_text("# changed\n", "utf-8"), [], ["app"]),
    (lambda p: (p / "ansible" / "playbook.yml").open("a").write("# changed\n"), [], ["ansible"]),
    (lambda p: (p / "ansible" / "roles" / "app" / "tasks" / "main.yml").open("a").write("# changed\n"), [],
     ["ansible"]),
    (lambda p: (p / "ansible" / "roles" / "proxy" / "tasks" / "main.yml").open("a").write("# changed\n"),
     ["ansible"], ["foundation"]),
    (lambda p: (p / "ansible" / "foundation.yml").open("a").write("# changed\n"), ["ansible"], ["foundation"]),
    (lambda p: (p / "packer" / "variables.pkr.hcl").open("a").write("# changed\n"), ["packer"],
     ["foundation", "packer"]),
    (lambda p: (p / "constraints.txt").open("a").write("six==1.16.0\n"), ["deps"], ["foundation"]),
]


@pytest.mark.parametrize(("change", "in_foundation", "in_app"), CHANGES)
def test_one_changed_file_changes_exactly_its_inputs(project: Path, change, in_foundation: list[str],
                                                     in_app: list[str]) -> None:
    below, above = layers(project)
    change(project)
    below_after, above_after = layers(project)
    assert below_after.changed_since(below.as_tag()) == in_foundation
    assert above_after.changed_since(above.as_tag()) == in_app


def test_base_image_config_and_tools_count(project: Path) -> None:
    below, above = layers(project)
    new_base = layers(project, base="ami-base2")
    assert new_base[0].changed_since(below.as_tag()) == ["base"]
    assert new_base[1].changed_since(above.as_tag()) == ["foundation"]
    next_version = layers(project, version="1.1.0")
    assert next_version[0] == below and next_version[1].changed_since(above.as_tag()) == ["config"]
    more_deps = foundation(project, base_ami="ami-base1", dependencies=["flask", "gunicorn", "redis"],
                           config_keys=["admin"], tools=TOOLS)
    assert more_deps.changed_since(below.as_tag()) == ["deps"]


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
    for names in (FOUNDATION_INPUTS, APP_INPUTS):
        f = Fingerprint({name: f"ami-0123456789abcdef0-{name}" for name in names})
        assert Fingerprint.from_tag(f.as_tag()) == dict(f.inputs)
        assert len(f.as_tag()) <= 256
        assert f.changed_since(None) == list(names)
