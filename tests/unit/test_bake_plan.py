"""When a bake is needed: a new fingerprint, or an AMI with this fingerprint that has reached its
end of life (deprecated). Real Packer and Ansible version checks; the cloud is a stand-in."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from packaging.version import Version

from release import config
from release.aws import Aws, Target
from release.bake import Baker
from release.clock import FakeClock
from release.model import AmiRef

ROOT = Path(__file__).parents[2]
NOW = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
BASE = AmiRef("ami-0base", "debian-12-amd64-20261101", "us-east-1", "available", NOW, None, None, None)


@dataclass
class Catalogue:
    images: list[AmiRef]

    def base_image(self, **_: object) -> AmiRef:
        return BASE

    def app_images(self, app: str) -> list[AmiRef]:
        return self.images


def baker(images: list[AmiRef]) -> Baker:
    cfg = config.load(ROOT / "versions.toml")
    env = cfg.environment("sandbox")
    env = replace(env, ssh=replace(env.ssh, bastion=None, bastion_instance=None))
    b = Baker(cfg, env, Aws(Target(region=env.region, endpoint_url="http://127.0.0.1:9")), ROOT, FakeClock(NOW),
              on_step=print, on_line=print)
    b.cloud = Catalogue(images)  # type: ignore[assignment]
    return b


def baked(fingerprint: str, *, deprecated_at: datetime | None = None) -> AmiRef:
    return AmiRef("ami-0app", "webapp-1.0.0", "us-east-1", "available", NOW - timedelta(days=30), Version("1.0.0"),
                  fingerprint, True, deprecation_time=deprecated_at)


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
