"""Signing in to an AWS account, through the real CLI: role assumption, the account guard, and
failures that are one line.

The CLI runs as a subprocess against a small STS on loopback (tests/unit/fake_sts.py; the
standard AWS_ENDPOINT_URL points every client at it), which records every request, so a test can
prove that nothing but the sign-in was attempted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .fake_sts import ASSUMED_KEY, BASE_KEY, FakeSts, serving

ROOT = Path(__file__).parents[2]
INV = Path(sys.executable).parent / "inv"

CONFIG = """
default_environment = "prod"
[app]
name = "webapp"
version = "1.0.0"
[base_image]
owners = ["136693071363"]
name = "debian-12-amd64-*"
[environments.prod]
region = "eu-central-1"
account_id = "333333333333"
role_arn = "arn:aws:iam::333333333333:role/kiln-deploy"
external_id = "kiln-prod-7f3a"
role_duration = 7200
bake_role_arn = "arn:aws:iam::333333333333:role/kiln-bake"
asg = "web-prod"
launch_template = "web-prod"
secret_id = "webapp/prod"
"""


@pytest.fixture
def sts() -> Iterator[FakeSts]:
    with serving() as state:
        yield state


def inv(sts: FakeSts, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "versions.toml"
    config.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=sts.endpoint, AWS_ACCESS_KEY_ID=BASE_KEY, AWS_SECRET_ACCESS_KEY="x",
               AWS_EC2_METADATA_DISABLED="true", KILN_ACTOR="ana@ci-runner 7", AWS_MAX_ATTEMPTS="1")
    return subprocess.run([str(INV), *args, "--env", "prod", "--config", str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_role_is_assumed_with_a_session_name_that_says_who(sts: FakeSts, tmp_path: Path) -> None:
    done = inv(sts, tmp_path, "status")
    assume = next(r for r in sts.requests if r["Action"] == "AssumeRole")
    assert assume["RoleArn"] == "arn:aws:iam::333333333333:role/kiln-deploy"
    assert assume["RoleSessionName"] == "kiln-ana@ci-runner-7"
    assert (assume["ExternalId"], assume["DurationSeconds"]) == ("kiln-prod-7f3a", "7200")
    assert BASE_KEY in assume["Authorization"]  # assumed with the base credentials
    who_am_i, assume, identity = sts.requests[:3]
    assert who_am_i["Action"] == "GetCallerIdentity" and BASE_KEY in who_am_i["Authorization"]
    assert identity["Action"] == "GetCallerIdentity"
    assert ASSUMED_KEY in identity["Authorization"]  # and everything after as the role
    assert "account" in done.stdout and "333333333333" in done.stdout


@pytest.mark.parametrize("command", [["release", "--version", "1.0.0"], ["rollback"], ["bake"],
                                     ["release", "--version", "1.0.0", "--dry-run"]])
def test_the_wrong_account_stops_every_command_before_anything_else(sts: FakeSts, tmp_path: Path,
                                                                    command: list[str]) -> None:
    sts.account = "999999999999"
    done = inv(sts, tmp_path, *command)
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip()
    assert "999999999999" in message and "333333333333" in message and "nothing was changed" in message
    assert "Traceback" not in done.stderr
    # Who the base credentials are, the role, the account guard: and no other call.
    assert [r["Action"] for r in sts.requests] == ["GetCallerIdentity", "AssumeRole", "GetCallerIdentity"]


def test_a_failed_sign_in_is_one_line_and_exit_4(sts: FakeSts, tmp_path: Path) -> None:
    sts.deny_assume_role = True
    done = inv(sts, tmp_path, "release", "--version", "1.0.0")
    assert done.returncode == 4
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2, done.stderr  # the error, and its hint
    assert "AccessDenied" in lines[0] and "sts:AssumeRole" in lines[0]
    assert "trust policy" in done.stderr
    assert [r["Action"] for r in sts.requests] == ["GetCallerIdentity", "AssumeRole"]


def test_a_missing_profile_is_one_line_and_exit_4(sts: FakeSts, tmp_path: Path) -> None:
    config = tmp_path / "versions.toml"
    config.write_text(CONFIG.replace('role_duration = 7200', 'role_duration = 7200\nprofile = "nope"'))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "config"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"),
               AWS_ENDPOINT_URL=sts.endpoint, AWS_EC2_METADATA_DISABLED="true")
    done = subprocess.run([str(INV), "status", "--env", "prod", "--config", str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 4, done.stderr
    assert "Traceback" not in done.stderr and "nope" in done.stderr
    assert sts.requests == []


def test_credentials_that_already_act_as_the_role_are_used_as_they_are(sts: FakeSts, tmp_path: Path) -> None:
    """A CI job signed in as the role through OIDC: a role cannot assume itself, so Kiln does not try."""
    sts.base_is_the_role = True
    done = inv(sts, tmp_path, "status")
    assert "333333333333" in done.stdout, done.stderr
    assert "AssumeRole" not in [r["Action"] for r in sts.requests]
    assert all(BASE_KEY in r["Authorization"] for r in sts.requests)


def test_bake_acts_as_the_bake_role(sts: FakeSts, tmp_path: Path) -> None:
    inv(sts, tmp_path, "bake", "--dry-run")
    assume = next(r for r in sts.requests if r["Action"] == "AssumeRole")
    assert assume["RoleArn"] == "arn:aws:iam::333333333333:role/kiln-bake"


AGENT = """
[bake.ssm_agent]
url = "https://s3.amazonaws.com/ec2-downloads-windows/SSMAgent/3.3.1142.0/debian_amd64/amazon-ssm-agent.deb"
sha256 = "%s"
""" % ("ab" * 32)


@pytest.mark.parametrize("agent", [False, True])
def test_a_bake_for_an_ssm_environment_without_an_agent_warns_first(sts: FakeSts, tmp_path: Path,
                                                                    agent: bool) -> None:
    """Debian's AMIs have no SSM agent: an environment read through SSM needs [bake.ssm_agent]."""
    config = tmp_path / "versions.toml"
    config.write_text(CONFIG.replace('secret_id = "webapp/prod"', 'secret_id = "webapp/prod"\naccess = "ssm"')
                      + (AGENT if agent else ""))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=sts.endpoint, AWS_ACCESS_KEY_ID=BASE_KEY, AWS_SECRET_ACCESS_KEY="x",
               AWS_EC2_METADATA_DISABLED="true", AWS_MAX_ATTEMPTS="1")
    done = subprocess.run([str(INV), "bake", "--dry-run", "--env", "prod", "--config", str(config)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    said = done.stdout + done.stderr
    warned = "prod read instances through SSM Run Command, but [bake.ssm_agent] is not set" in said
    assert warned is not agent, said
    # This loopback STS answers nothing else: the bake stops at its first EC2 call, after the warning.
    assert done.returncode != 0 and "Traceback" not in done.stderr
