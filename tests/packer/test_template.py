"""The Packer template: formatted, and valid on the Packer this machine has (Debian's 1.6.6),
fully offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VARS = Path(__file__).with_name("test.pkrvars.hcl")

pytestmark = pytest.mark.skipif(shutil.which("packer") is None, reason="packer is not installed")


def packer(*args: str) -> subprocess.CompletedProcess[str]:
    # validate checks that the ansible provisioner's ansible-playbook is on PATH.
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "CHECKPOINT_DISABLE": "1",
        "PACKER_LOG": "",
    }
    return subprocess.run(["packer", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("directory", ["packer", "packer/plugins", "tests/packer"])
def test_hcl_is_formatted(directory: str) -> None:
    result = packer("fmt", "-check", directory)
    assert result.returncode == 0, f"run `packer fmt {directory}`: {result.stdout}{result.stderr}"


@pytest.mark.parametrize(
    "extra",
    [
        [],  # base AMI found by source_ami_filter
        ["-var", "source_ami=ami-0123456789abcdef0"],
        [  # the sandbox's settings
            "-var",
            "ec2_endpoint=http://127.0.0.1:4566",
            "-var",
            "ssh_interface=private_ip",
            "-var",
            "root_device_name=/dev/sda1",
        ],
        [  # copies, sharing and a KMS key
            "-var",
            'ami_regions=["eu-west-1"]',
            "-var",
            'ami_users=["123456789012"]',
            "-var",
            "kms_key_id=alias/kiln",
        ],
        [  # a bake role Packer assumes itself (and refreshes)
            "-var",
            "assume_role_arn=arn:aws:iam::333333333333:role/kiln-bake",
            "-var",
            "assume_role_session_name=kiln-ana@laptop",
            "-var",
            "assume_role_external_id=kiln-prod-7f3a",
            "-var",
            "assume_role_duration_seconds=7200",
        ],
    ],
    ids=["filter", "pinned", "sandbox", "copies", "assume-role"],
)
def test_template_validates(extra: list[str]) -> None:
    result = packer("validate", "-var-file", str(VARS), *extra, "packer")
    assert result.returncode == 0, result.stdout + result.stderr


def test_validate_rejects_what_the_builder_rejects() -> None:
    result = packer("validate", "-var-file", str(VARS), "-var", "ssh_interface=carrier_pigeon", "packer")
    assert result.returncode != 0
    assert "Unknown interface type: carrier_pigeon" in result.stdout + result.stderr


def test_every_bake_must_name_what_it_bakes() -> None:
    result = packer("validate", "packer")
    assert result.returncode != 0
    for name in ("app_version", "fingerprint", "git_sha", "built_at", "builder", "wheelhouse"):
        assert f'Unset variable "{name}"' in result.stdout + result.stderr


def test_required_plugins_stay_out_of_the_build_directory() -> None:
    # Packer 1.6.6 refuses the block; current Packer needs it for `packer init packer/plugins`.
    assert "required_plugins" not in "".join(p.read_text() for p in (ROOT / "packer").glob("*.pkr.hcl"))
    plugins = (ROOT / "packer/plugins/required_plugins.pkr.hcl").read_text()
    assert 'source  = "github.com/hashicorp/amazon"' in plugins
    assert 'source  = "github.com/hashicorp/ansible"' in plugins
