"""When a bake is needed, layer by layer: a new fingerprint, or an AMI with this fingerprint that
has reached its end of life (deprecated). An app-only change bakes only the app, on the existing
foundation. Real Packer and Ansible version checks; the cloud is a stand-in."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from packaging.version import Version

from release import config
from release.aws import Aws, Target
from release.baker import Baker
from release.clock import FakeClock
from release.model import AmiRef

ROOT = Path(__file__).parents[2]
NOW = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
BASE = AmiRef("ami-0base", "debian-12-amd64-20261101", "us-east-1", "available", NOW, None, None, None)


@dataclass
class Catalogue:
    images: list[AmiRef]
    foundations: list[AmiRef]

    def base_image(self, **_: object) -> AmiRef:
        return BASE

    def app_images(self, app: str) -> list[AmiRef]:
        return self.images

    def foundation_images(self, app: str) -> list[AmiRef]:
        return self.foundations


def baker(images: list[AmiRef], foundations: list[AmiRef] | None = None,
          agent: config.SsmAgentPackage | None = None) -> Baker:
    cfg = config.load(ROOT / "versions.toml")
    cfg = replace(cfg, bake=replace(cfg.bake, ssm_agent=agent))
    env = cfg.environment("sandbox")
    env = replace(env, ssh=replace(env.ssh, bastion=None, bastion_instance=None))
    b = Baker(cfg, env, Aws(Target(region=env.region, endpoint_url="http://127.0.0.1:9")), ROOT, FakeClock(NOW),
              on_step=print, on_line=print)
    b.cloud = Catalogue(images, foundations or [])  # type: ignore[assignment]
    return b


def baked(fingerprint: str, *, deprecated_at: datetime | None = None) -> AmiRef:
    return AmiRef("ami-0app", "webapp-1.0.0", "us-east-1", "available", NOW - timedelta(days=30), Version("1.0.0"),
                  fingerprint, True, deprecation_time=deprecated_at)


def foundation(fingerprint: str) -> AmiRef:
    return AmiRef("ami-0foundation", "webapp-foundation", "us-east-1", "available", NOW - timedelta(days=40), None,
                  fingerprint, True, tags={"kiln:layer": "foundation"}, root_device_name="/dev/xvda")


def test_a_first_bake_bakes_both_layers_and_then_nothing() -> None:
    plan = baker([]).plan()
    assert plan.needed and plan.foundation.needed
    assert plan.foundation.variables["layer"] == "foundation" and plan.variables["layer"] == "app"
    assert plan.foundation.variables["source_ami"] == BASE.image_id
    again = baker([baked(plan.fingerprint.value)], [foundation(plan.foundation.fingerprint.value)]).plan()
    assert not again.needed and again.existing is not None


def test_an_app_change_bakes_only_the_app_on_the_existing_foundation(tmp_path: Path) -> None:
    first = baker([]).plan()
    below = foundation(first.foundation.fingerprint.value)
    plan = baker([baked("an-older-app")], [below]).plan()  # the app's fingerprint has no image
    assert plan.needed and not plan.foundation.needed and plan.foundation.existing == below
    assert plan.variables["source_ami"] == below.image_id and plan.variables["base_ami"] == BASE.image_id
    assert plan.foundation.variables == {}  # nothing to bake below


def test_the_same_inputs_are_not_baked_again() -> None:
    fingerprint = baker([]).plan().fingerprint.value
    plan = baker([baked(fingerprint)]).plan()
    assert not plan.needed and plan.existing is not None


def test_an_ami_past_its_end_of_life_is_baked_again() -> None:
    fingerprint = baker([]).plan().fingerprint.value
    plan = baker([baked(fingerprint, deprecated_at=NOW - timedelta(minutes=1))]).plan()
    assert plan.needed and "ami-0app (these inputs) is deprecated" in plan.changed
    later = baker([baked(fingerprint, deprecated_at=NOW + timedelta(days=1))]).plan()  # not yet
    assert not later.needed


AGENT = config.SsmAgentPackage("https://s3.amazonaws.com/ec2-downloads-windows/SSMAgent/3.3.1142.0/debian_amd64/"
                               "amazon-ssm-agent.deb", "ab" * 32)


def test_the_ssm_agent_is_the_foundations_and_changing_it_rebakes_both_layers() -> None:
    without, with_agent = baker([]).plan(), baker([], agent=AGENT).plan()
    assert "ssm_agent_url" not in without.foundation.variables
    assert with_agent.foundation.variables["ssm_agent_url"] == AGENT.url
    assert with_agent.foundation.variables["ssm_agent_sha256"] == AGENT.sha256
    assert "ssm_agent_url" not in with_agent.variables  # the app layer installs nothing more
    assert with_agent.foundation.fingerprint.value != without.foundation.fingerprint.value
    assert with_agent.fingerprint.value != without.fingerprint.value  # the app image is on a new foundation
    other = baker([], agent=replace(AGENT, sha256="cd" * 32)).plan()
    assert other.foundation.fingerprint.value != with_agent.foundation.fingerprint.value
