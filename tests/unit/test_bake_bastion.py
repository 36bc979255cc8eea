"""What the bake hands Packer when the environment has a bastion: the way through it (address, user,
key or ssh-agent), the fleet's network for the build instance; nothing of it without a bastion.
And the hint when Packer cannot log in to the build instance."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from release import config, packer
from release.aws import Aws, Target
from release.baker import Baker
from release.clock import FakeClock
from release.config import Environment
from release.errors import BakeError

ROOT = Path(__file__).parents[2]
CFG = config.load(ROOT / "versions.toml")
SUBNETS = ("subnet-0private-a", "subnet-0private-b")
APP_SG = "sg-0app"


class FakeCloud:
    def __init__(self) -> None:
        self.asked: list[tuple[str, ...]] = []

    def running_instance_named(self, name: str) -> tuple[str, str]:
        self.asked.append(("instance", name))
        return "i-0bastion", "127.100.3.6"

    def fleet_network(self, template: str, group: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        self.asked.append(("network", template, group))
        return SUBNETS, (APP_SG,)


def baker(env: Environment, tmp_path: Path, bastion_key: Path | None = None) -> tuple[Baker, FakeCloud]:
    made = Baker(CFG, env, Aws(Target(region=env.region, endpoint_url="http://127.0.0.1:9")), tmp_path,
                 FakeClock(datetime(2026, 11, 22, 9, 30, tzinfo=UTC)), on_step=print, on_line=print,
                 bastion_key=bastion_key)
    cloud = FakeCloud()
    made.cloud = cloud  # type: ignore[assignment]
    return made, cloud


def test_without_a_bastion_packer_connects_directly(tmp_path: Path) -> None:
    env = CFG.environment("sandbox")
    made, cloud = baker(replace(env, ssh=replace(env.ssh, bastion_instance=None)), tmp_path)
    assert made._bastion_variables() == {}
    assert cloud.asked == []


def test_the_sandbox_bastion_instance_with_the_sandbox_key(tmp_path: Path) -> None:
    key = tmp_path / "instances.pem"
    made, cloud = baker(CFG.environment("sandbox"), tmp_path, bastion_key=key)
    assert made._bastion_variables() == {
        "ssh_interface": "private_ip",
        "ssh_bastion_host": "127.100.3.6",
        "ssh_bastion_port": 22,
        "ssh_bastion_username": "admin",
        "ssh_bastion_known_hosts": str(tmp_path / ".kiln" / "bake" / "bastion_known_hosts"),
        "ssh_bastion_private_key_file": str(key),
        "subnet_id": SUBNETS[0],  # where the fleet runs, behind the bastion
        "security_group_ids": [APP_SG],
    }
    assert cloud.asked == [("instance", "web-sandbox-bastion"), ("network", "web-sandbox", "web-sandbox")]


def test_a_bastion_by_name_logs_in_with_the_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
    env = CFG.environment("prod")
    env = replace(env, ssh=replace(env.ssh, bastion_user="jump", bastion_port=2222))
    variables = baker(env, tmp_path)[0]._bastion_variables()
    assert variables["ssh_bastion_host"] == "bastion.prod.example.com"
    assert (variables["ssh_bastion_username"], variables["ssh_bastion_port"]) == ("jump", 2222)
    assert variables["ssh_bastion_agent_auth"] is True
    assert "ssh_bastion_private_key_file" not in variables


def test_a_configured_bastion_key_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    env = CFG.environment("prod")
    env = replace(env, ssh=replace(env.ssh, bastion_key="~/.ssh/bastion_ed25519"))
    variables = baker(env, tmp_path, bastion_key=tmp_path / "other.pem")[0]._bastion_variables()
    assert variables["ssh_bastion_private_key_file"] == str(tmp_path / ".ssh" / "bastion_ed25519")
    assert "ssh_bastion_agent_auth" not in variables


def test_no_key_and_no_agent_is_refused_before_packer_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(BakeError) as refused:
        baker(CFG.environment("prod"), tmp_path)[0]._bastion_variables()
    assert "no key to log in to the bastion bastion.prod.example.com with" in str(refused.value)
    assert "bastion_key" in str(refused.value) and "ssh-agent" in str(refused.value)


PACKER_AUTH_FAILURE = [
    "==> amazon-ebs.app: Waiting for SSH to become available...",
    "==> amazon-ebs.app: Error waiting for SSH: Packer experienced an authentication error when trying to "
    "connect via SSH. This can happen if your username/password are wrong. You may want to double-check your "
    "credentials as part of your debugging process. original error: ssh: handshake failed: ssh: unable to "
    "authenticate, attempted methods [none publickey], no supported methods remain",
    "Build 'amazon-ebs.app' errored: Packer experienced an authentication error when trying to connect via SSH.",
]


@pytest.mark.parametrize(("lines", "failed"), [
    (PACKER_AUTH_FAILURE, True),
    (["Build 'amazon-ebs.app' errored: Timeout waiting for SSH."], True),
    (["fatal: [default]: UNREACHABLE! => {\"changed\": false, \"msg\": \"Failed to connect to the host via ssh\"}"],
     True),
    (["TASK [base : Install packages]", "fatal: [default]: FAILED! => {\"msg\": \"No package matching 'nginx'\"}"],
     False),
])
def test_a_failed_login_is_told_from_other_failures(lines: list[str], failed: bool) -> None:
    assert packer.ssh_failed(lines) is failed


def test_the_hint_points_at_the_bastion_setting(tmp_path: Path) -> None:
    env = CFG.environment("sandbox")
    direct = baker(replace(env, ssh=replace(env.ssh, bastion_instance=None)), tmp_path)[0]
    assert "reachable only through a bastion, name the bastion in [environments.sandbox.ssh]" in \
        direct._ssh_hint(None, PACKER_AUTH_FAILURE)
    through = baker(env, tmp_path)[0]
    assert "through the bastion 127.100.3.6: check that the security groups of launch template web-sandbox" in \
        through._ssh_hint("127.100.3.6", PACKER_AUTH_FAILURE)
    assert through._ssh_hint("127.100.3.6", ["fatal: [default]: FAILED!"]) == ""
