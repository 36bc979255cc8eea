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


def bastion(*extra: str, key: Path | None = None) -> list[str]:
    args = ["-var", "ssh_bastion_host=127.100.3.6", "-var", "ssh_bastion_username=jump",
            "-var", "ssh_bastion_port=2222", "-var", "ssh_interface=private_ip", *extra]
    return [*args, "-var", f"ssh_bastion_private_key_file={key}"] if key else args


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "bastion key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def test_template_validates_through_a_bastion(key: Path) -> None:
    for extra in (bastion(key=key), bastion("-var", "ssh_bastion_agent_auth=true")):
        result = packer("validate", "-var-file", str(VARS), *extra, "packer")
        assert result.returncode == 0, result.stdout + result.stderr


def test_packer_1_6_6_refuses_a_bastion_it_cannot_log_in_to(tmp_path: Path) -> None:
    result = packer("validate", "-var-file", str(VARS), *bastion(), "packer")
    assert result.returncode != 0
    assert "ssh_bastion_password or ssh_bastion_private_key_file must be specified" in result.stdout + result.stderr
    result = packer("validate", "-var-file", str(VARS), *bastion(key=tmp_path / "missing"), "packer")
    assert result.returncode != 0
    assert "ssh_bastion_private_key_file is invalid" in result.stdout + result.stderr


def console(expression: str, *extra: str) -> str:
    result = subprocess.run(["packer", "console", "-var-file", str(VARS), *extra, "packer"], cwd=ROOT,
                            input=expression + "\n", capture_output=True, text=True, timeout=60,
                            env={**os.environ, "CHECKPOINT_DISABLE": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_ansible_jumps_through_the_bastion_with_its_key_and_known_hosts(key: Path) -> None:
    jump = console("local.ansible_jump", *bastion("-var", "ssh_bastion_known_hosts=/k/known hosts", key=key))
    assert "--ssh-common-args" in jump
    assert (f"-o ProxyCommand=\\\"ssh -W %h:%p -p 2222 -o BatchMode=yes -o ConnectTimeout=10 -o IdentitiesOnly=yes "
            f"-i '{key}' -o StrictHostKeyChecking=yes -o UserKnownHostsFile='/k/known hosts' "
            "jump@127.100.3.6\\\"") in jump
    # With ssh-agent, and without a user of its own: the instance's user on the bastion too.
    agent = console("local.bastion_jump", "-var", "ssh_bastion_host=bastion.example.com")
    assert agent.strip() == "ssh -W %h:%p -p 22 -o BatchMode=yes -o ConnectTimeout=10 admin@bastion.example.com"
    assert console("local.ansible_jump").strip() == "[]"  # no bastion: Ansible connects directly


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
