"""The planner: observed state in, plan out. No AWS."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from packaging.version import Version

from release import config
from release.model import AmiRef, GroupState, InstanceState, LiveRelease, Lock, RefreshState, TemplateVersion
from release.plan import Observed, Plan, Request, batches, choose_ami, make_plan

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
CFG = config.load(Path(__file__).parents[2] / "versions.toml")
ENV = CFG.environment("sandbox")


def ami(image_id: str, version: str, *, age_h: int = 1, validated: bool | None = True,
        state: str = "available", deprecated: bool = False, imds_support: str | None = "v2.0") -> AmiRef:
    return AmiRef(image_id=image_id, name=f"webapp-{version}-{image_id}", region="us-east-1", state=state,
                  created_at=NOW - timedelta(hours=age_h), version=Version(version), fingerprint="f" + image_id[-3:],
                  validated=validated, deprecation_time=NOW - timedelta(minutes=1) if deprecated else None,
                  imds_support=imds_support)


def group(version_ref: str = "1", desired: int = 4) -> GroupState:
    instances = tuple(InstanceState(f"i-{n}", "ami-100", "1", "InService", "Healthy", "healthy")
                      for n in range(desired))
    return GroupState("web-sandbox", 2, 8, desired, "lt-1", "web-sandbox", version_ref, instances)


TEMPLATES = (TemplateVersion("lt-1", "web-sandbox", 1, "ami-100", True),)
LIVE = LiveRelease("1.0.0", "ami-100", "f100", 1)


def observed(**changes: object) -> Observed:
    base = Observed(images=(ami("ami-100", "1.0.0", age_h=48), ami("ami-110", "1.1.0")),
                    group_template=TEMPLATES[0], default_template=TEMPLATES[0], group=group(), active_refresh=None,
                    live=LIVE, lock=None)
    return replace(base, **changes)


def plan_for(version: str = "1.1.0", **changes: object) -> Plan:
    request_args = {k: changes.pop(k) for k in ("allow_downgrade", "force") if k in changes}
    return make_plan(ENV, Request(Version(version), NOW, **request_args), observed(**changes))


def test_happy_plan() -> None:
    plan = plan_for()
    assert plan.ok and not plan.noop
    assert plan.ami is not None and plan.ami.image_id == "ami-110"
    assert plan.base_template == TEMPLATES[0] and plan.group_ref == "1" and plan.default_version == 1
    assert [(c.field, c.old, c.new) for c in plan.changes] == [("ImageId", "ami-100", "ami-110")]
    assert plan.batches == (2, 2)  # 4 instances, min 50 %, max 100 %
    assert plan.preferences["AutoRollback"] is True
    assert plan.preferences["AlarmSpecification"] == {"Alarms": list(ENV.alarms)}


@pytest.mark.parametrize(("changes", "version", "expected"), [
    ({}, "9.9.9", "no AMI for 9.9.9; run `inv bake`"),
    ({"images": (ami("ami-110", "1.1.0", validated=None),)}, "1.1.0", "has not been smoke-tested"),
    ({"images": (ami("ami-110", "1.1.0", validated=False),)}, "1.1.0", "failed its smoke test"),
    ({"images": (ami("ami-110", "1.1.0", deprecated=True),)}, "1.1.0", "ami-110 is deprecated"),
    ({"images": (ami("ami-110", "1.1.0", state="pending"),)}, "1.1.0", "is not available (pending)"),
    ({"group": None}, "1.1.0", "Auto Scaling group 'web-sandbox' not found"),
    ({"default_template": None, "group_template": None}, "1.1.0", "launch template 'web-sandbox' not found"),
    ({"group_template": None}, "1.1.0", "references web-sandbox version 1, which does not exist"),
    ({"group": replace(group(), launch_template_name="other")}, "1.1.0", "launches template 'other'"),
    ({"missing_alarms": ("web-sandbox-target-5xx",)}, "1.1.0", "alarm 'web-sandbox-target-5xx' does not exist"),
    ({"active_refresh": RefreshState("ir-9", "InProgress", None, 40, 2)}, "1.1.0",
     "instance refresh ir-9 is already InProgress"),
    ({"lock": Lock("h-1", NOW - timedelta(minutes=5), NOW + timedelta(minutes=25), who="ana@ci pid 7")}, "1.1.0",
     "locked by ana@ci pid 7"),
    ({"live": LiveRelease("1.1.0", "ami-110", "f110", 2)}, "1.0.0", "1.1.0 is live in sandbox; 1.0.0 is older"),
])
def test_blockers(changes: dict[str, object], version: str, expected: str) -> None:
    plan = plan_for(version, **changes)
    assert not plan.ok
    assert any(expected in b for b in plan.blockers), plan.blockers


def test_newest_validated_fingerprint_wins() -> None:
    images = (ami("ami-111", "1.1.0", age_h=5), ami("ami-112", "1.1.0", age_h=1), ami("ami-113", "1.1.0", age_h=0,
                                                                                        validated=False))
    chosen, why = choose_ami(images, Version("1.1.0"), NOW, force=False)
    assert chosen is not None and chosen.image_id == "ami-112" and why == ""
    forced, _ = choose_ami(images, Version("1.1.0"), NOW, force=True)
    assert forced is not None and forced.image_id == "ami-113"


def test_force_admits_unvalidated_with_a_warning() -> None:
    plan = plan_for(images=(ami("ami-110", "1.1.0", validated=None),), force=True)
    assert plan.ok and any("--force" in w for w in plan.warnings)


def test_downgrade_allowed_when_asked() -> None:
    plan = plan_for("1.0.0", live=LiveRelease("1.1.0", "ami-110", "f110", 2), allow_downgrade=True)
    assert plan.ok


def test_same_ami_is_a_noop() -> None:
    plan = plan_for("1.0.0")
    assert plan.noop and plan.ok


def test_stale_lock_is_only_a_warning() -> None:
    plan = plan_for(lock=Lock("bob", NOW - timedelta(hours=3), NOW - timedelta(hours=1)))
    assert plan.ok and any("lapsed lock" in w for w in plan.warnings)


def test_latest_alias_is_pinned_and_auto_rollback_dropped() -> None:
    plan = plan_for(group=group("$Latest"))
    assert plan.ok
    assert plan.preferences["AutoRollback"] is False and "AlarmSpecification" not in plan.preferences
    assert any("pins it to the new numbered version" in n for n in plan.notes)
    assert plan.base_template == TEMPLATES[0]  # "before" is what $Latest resolves to
    assert "cancel the refresh" in plan.on_failure


def test_lower_environments_required() -> None:
    stage = CFG.environment("stage")
    plan = make_plan(stage, Request(Version("1.1.0"), NOW), observed())
    assert any("has not passed dev" in b for b in plan.blockers)
    passed = make_plan(stage, Request(Version("1.1.0"), NOW), observed(passed_environments=frozenset({"dev"})))
    assert not any("has not passed" in b for b in passed.blockers)


@pytest.mark.parametrize(("desired", "low", "high", "expected"), [
    (4, 90, 100, (1, 1, 1, 1)),
    (4, 50, 100, (2, 2)),
    (4, 100, 200, (4,)),
    (4, 50, 150, (4,)),
    (8, 90, 100, (1,) * 8),
    (8, 50, 100, (4, 4)),
    (8, 100, 150, (4, 4)),
    (5, 60, 100, (2, 2, 1)),
    (0, 90, 100, ()),
])
def test_batches(desired: int, low: int, high: int, expected: tuple[int, ...]) -> None:
    assert batches(desired, low, high) == expected


def test_expected_duration_counts_batches_checkpoints_and_bake_time() -> None:
    prod = CFG.environment("prod")  # warmup 300, checkpoints 25/50/100 with 600 s delay, bake 600
    plan = make_plan(prod, Request(Version("1.1.0"), NOW, force=True), observed())
    assert plan.batches == (2, 2)  # min 100 %, max 150 % of 4
    assert plan.expected_seconds == 2 * (300 + 90) + 2 * 600 + 600


def test_an_unfinished_release_blocks_a_new_one_and_names_resume_and_rollback() -> None:
    from release.record import ReleaseRecord

    unfinished = ReleaseRecord("r-1", "sandbox", "release", "1.1.0", "ami-110", "f110", "ana", NOW, phase="gating")
    plan = plan_for(interrupted=unfinished)
    assert not plan.ok
    assert any("`inv resume` finishes it, `inv rollback` undoes it" in b for b in plan.blockers), plan.blockers


def test_rollback_preferences_never_auto_roll_back() -> None:
    plan = plan_for()
    assert plan.rollback_preferences["AutoRollback"] is False
    assert "AlarmSpecification" not in plan.rollback_preferences


# IMDSv2: the new template version inherits the group's MetadataOptions; unset, the AMI decides.
IMDS_CASES = [
    # (template HttpTokens, AMI ImdsSupport, allows IMDSv1)
    ("required", None, False),
    ("required", "v2.0", False),
    (None, "v2.0", False),
    (None, None, True),
    ("optional", "v2.0", True),  # the template's explicit choice wins over the AMI's default
]


@pytest.mark.parametrize(("tokens", "support", "risky"), IMDS_CASES)
def test_a_template_that_allows_imdsv1_blocks_the_release(tokens: str | None, support: str | None,
                                                          risky: bool) -> None:
    template = replace(TEMPLATES[0], http_tokens=tokens)
    images = (ami("ami-100", "1.0.0", age_h=48), ami("ami-110", "1.1.0", imds_support=support))
    plan = plan_for(images=images, group_template=template, default_template=template)
    imds = [b for b in plan.blockers if "IMDSv1" in b]
    assert bool(imds) is risky and plan.ok is not risky
    if risky:
        assert "HttpTokens=required" in imds[0] and 'imdsv1 = "warn"' in imds[0]


def test_imdsv1_warns_instead_when_the_environment_accepts_it() -> None:
    template = replace(TEMPLATES[0], http_tokens="optional")
    plan = make_plan(replace(ENV, imdsv1="warn"), Request(Version("1.1.0"), NOW),
                     observed(group_template=template, default_template=template))
    assert plan.ok
    assert any("HttpTokens=optional" in w for w in plan.warnings)
