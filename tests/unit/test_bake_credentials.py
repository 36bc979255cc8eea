"""What Packer gets to sign in with: with a bake role, the credentials the role is assumed from
plus the role itself (Packer's assume_role block), so the AWS SDK inside Packer refreshes the
role's credentials however long the bake takes; when Kiln's credentials already act as the role
(CI signed in as it), Packer gets them as they are and no role. Signing in goes to a loopback STS."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from release import config
from release.aws import Aws, Target, session_name
from release.baker import Baker
from release.clock import FakeClock

from .fake_sts import BASE_KEY, FakeSts, serving

ROOT = Path(__file__).parents[2]
NOW = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)


def baker(env_name: str, tmp_path: Path, *, external_id: str | None = None, role_arn: str | None = None) -> Baker:
    cfg = config.load(ROOT / "versions.toml")
    env = cfg.environment(env_name)
    env = replace(env, external_id=external_id, role_duration=7200, role_arn=role_arn or env.role_arn)
    env = replace(env, ssh=replace(env.ssh, bastion=None, bastion_instance=None))  # no bastion to look up
    target = Target(region=env.region, role_arn=env.role_arn, session_name=session_name("ana@laptop"),
                    external_id=env.external_id, role_duration=env.role_duration)
    return Baker(cfg, env, Aws(target), tmp_path, FakeClock(NOW), on_step=print, on_line=print)


@pytest.fixture
def sts(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSts]:
    with serving() as state:
        monkeypatch.setenv("AWS_ENDPOINT_URL", state.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", BASE_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "base-secret")
        yield state


def test_with_a_role_packer_assumes_it_from_the_base_credentials(sts: FakeSts, tmp_path: Path) -> None:
    b = baker("prod", tmp_path, external_id="kiln-prod-7f3a")
    variables = b._variables()
    assert variables["assume_role_arn"] == b.env.role_arn
    assert variables["assume_role_session_name"] == "kiln-ana@laptop"
    assert (variables["assume_role_external_id"], variables["assume_role_duration_seconds"]) == ("kiln-prod-7f3a", 7200)
    env = b._packer_env()
    assert env["AWS_ACCESS_KEY_ID"] == BASE_KEY and "AWS_SESSION_TOKEN" not in env
    assert env["AWS_REGION"] == b.env.region


def test_credentials_that_already_act_as_the_role_go_to_packer_as_they_are(sts: FakeSts, tmp_path: Path) -> None:
    sts.base_is_the_role = True
    b = baker("prod", tmp_path, role_arn="arn:aws:iam::333333333333:role/kiln-deploy")  # the fake's session
    variables = b._variables()
    assert "assume_role_arn" not in variables
    assert b._packer_env()["AWS_ACCESS_KEY_ID"] == BASE_KEY
    assert "AssumeRole" not in [r["Action"] for r in sts.requests]


@pytest.mark.usefixtures("sts")
def test_in_the_sandbox_packer_gets_no_role(tmp_path: Path) -> None:
    cfg = config.load(ROOT / "versions.toml")
    env = cfg.environment("sandbox")
    env = replace(env, ssh=replace(env.ssh, bastion=None, bastion_instance=None))
    b = Baker(cfg, env, Aws(Target(region=env.region, endpoint_url="http://127.0.0.1:9")), tmp_path, FakeClock(NOW),
              on_step=print, on_line=print)
    variables = b._variables()
    assert "assume_role_arn" not in variables and variables["ec2_endpoint"] == "http://127.0.0.1:9"
