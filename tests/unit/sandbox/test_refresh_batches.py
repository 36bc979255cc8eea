"""Batches: MinHealthyPercentage / MaxHealthyPercentage bounds, warmup and health gating."""

from __future__ import annotations

import math

import pytest

from .fakes import FakeFleet, Rig


def _prefs(min_healthy: int, max_healthy: int | None, warmup: int = 0) -> dict[str, int]:
    prefs = {"MinHealthyPercentage": min_healthy, "InstanceWarmup": warmup}
    if max_healthy is not None:
        prefs["MaxHealthyPercentage"] = max_healthy
    return prefs


@pytest.mark.parametrize(
    ("desired", "min_healthy", "max_healthy", "launches", "terminations", "peak_size"),
    [
        # Bounds leave no room: one at a time; launch first because MaxHealthyPercentage is set.
        (4, 90, 100, [1, 1, 1, 1], [1, 1, 1, 1], 5),
        (8, 90, 100, [1] * 8, [1] * 8, 9),
        # MaxHealthyPercentage omitted: terminate one and launch its replacement together.
        (4, 90, None, [1, 1, 1, 1], [1, 1, 1, 1], 4),
        (8, 90, None, [1] * 8, [1] * 8, 8),
        # Half the group may be out of service: two batches of half the group.
        (4, 50, 100, [2, 2], [2, 2], 4),
        (8, 50, 100, [4, 4], [4, 4], 8),
        # Launch the whole new group first, then terminate the whole old one.
        (4, 100, 200, [4], [4], 8),
        (8, 100, 200, [8], [8], 16),
        # Both bounds have room: terminate half and launch everything the ceiling allows.
        (4, 50, 150, [4], [2, 2], 6),
        (8, 50, 150, [8], [4, 4], 12),
    ],
)
def test_batch_sizes_follow_min_and_max_healthy(
    desired: int,
    min_healthy: int,
    max_healthy: int | None,
    launches: list[int],
    terminations: list[int],
    peak_size: int,
) -> None:
    rig = Rig(FakeFleet(desired=desired))
    rig.start(preferences=_prefs(min_healthy, max_healthy))

    assert rig.run()["Status"] == "Successful"

    assert rig.fleet.batches("launch") == launches
    assert rig.fleet.batches("terminate") == terminations
    assert max(rig.sizes) == peak_size
    assert sorted(i.version for i in rig.fleet.instances.values()) == ["2"] * desired
    if peak_size > desired or max_healthy is not None:
        # Launch-first and room-to-spare modes never dip below MinHealthyPercentage.
        assert min(rig.serving) >= math.ceil(desired * min_healthy / 100)


def test_min_healthy_100_without_max_launches_before_terminating() -> None:
    rig = Rig(FakeFleet(desired=4))
    rig.start(preferences={"MinHealthyPercentage": 100, "InstanceWarmup": 0})
    rig.run()

    assert min(rig.serving) == 4 and max(rig.sizes) == 5
    first_launch = next(step for step, what, _ in rig.fleet.events if what == "launch")
    first_terminate = next(step for step, what, _ in rig.fleet.events if what == "terminate")
    assert first_launch < first_terminate


def test_default_min_healthy_is_90_percent() -> None:
    rig = Rig(FakeFleet(desired=4))
    rig.start(preferences={"InstanceWarmup": 0})
    assert rig.latest()["Preferences"]["MinHealthyPercentage"] == 90
    rig.run()
    assert rig.fleet.batches("launch") == [1, 1, 1, 1]


def test_next_batch_waits_for_instance_warmup_after_inservice() -> None:
    rig = Rig(FakeFleet(desired=4))
    rig.start(preferences=_prefs(50, None, warmup=30))

    assert rig.run()["Status"] == "Successful"

    launch_steps = sorted({step for step, what, _ in rig.fleet.events if what == "launch"})
    assert len(launch_steps) == 2
    # One step to boot to InService, then 30 one-second steps of warmup before the next batch.
    assert launch_steps[1] - launch_steps[0] >= 31
    warming = [h for h in rig.history if "is warming up" in h.get("StatusReason", "")]
    assert warming and all(h["PercentageComplete"] in (0, 50) for h in warming)
    assert warming[0]["PercentageComplete"] == 0


def test_warmup_defaults_to_the_health_check_grace_period() -> None:
    rig = Rig(FakeFleet(desired=2, grace_period=20))
    rig.start(preferences={"MinHealthyPercentage": 50})
    rig.run()

    launch_steps = sorted({step for step, what, _ in rig.fleet.events if what == "launch"})
    assert launch_steps[1] - launch_steps[0] >= 21


def test_time_scale_shrinks_warmup() -> None:
    rig = Rig(FakeFleet(desired=2), time_scale=0.02, seconds_per_step=0.2)
    rig.start(preferences=_prefs(50, None, warmup=600))  # 600 s × 0.02 = 12 s per batch

    final = rig.run()

    elapsed = (final["EndTime"] - final["StartTime"]).total_seconds()
    assert 24 <= elapsed < 30


def test_replacement_counts_only_once_the_load_balancer_says_healthy() -> None:
    fleet = FakeFleet(desired=2)
    rig = Rig(fleet)
    rig.start(preferences=_prefs(50, None))
    rig.first_batch()
    (new,) = fleet.on_version("2")
    fleet.set_health(new, target_health="initial")  # InService, but no ELB verdict yet

    for _ in range(5):
        latest = rig.step()
    assert latest["PercentageComplete"] == 0
    assert "insufficient data to evaluate its health with Elastic Load Balancing" in latest["StatusReason"]
    assert len(fleet.on_version("1")) == 1  # the next batch did not start

    fleet.set_health(new, target_health="healthy")
    assert rig.run()["Status"] == "Successful"


def test_ec2_health_checks_ignore_target_health() -> None:
    fleet = FakeFleet(desired=2, health_check_type="EC2", bad_images={"ami-2"})
    rig = Rig(fleet)
    rig.start(preferences=_prefs(50, None))
    assert rig.run()["Status"] == "Successful"


def test_unhealthy_replacement_is_replaced_again() -> None:
    fleet = FakeFleet(desired=2)
    rig = Rig(fleet)
    rig.start(preferences=_prefs(50, None))
    rig.first_batch()
    (first,) = fleet.on_version("2")
    fleet.set_health(first, health_status="Unhealthy", target_health="unhealthy")

    assert rig.run()["Status"] == "Successful"

    assert first not in fleet.instances
    assert ("terminate", first) in [(what, i) for _, what, i in fleet.events]
    assert len(fleet.batches("launch")) == 3  # the first replacement, its replacement, batch two


def test_skip_matching_replaces_only_instances_that_differ() -> None:
    fleet = FakeFleet(desired=4)
    ids = list(fleet.instances)
    for instance_id in ids[:2]:
        fleet.instances[instance_id].version, fleet.instances[instance_id].image_id = "2", "ami-2"
    fleet.instances[ids[1]].image_id = "ami-1"  # right version label, wrong AMI: still differs
    rig = Rig(fleet)
    rig.start(preferences={**_prefs(50, None), "SkipMatching": True})

    assert rig.latest()["InstancesToUpdate"] == 3
    assert rig.run()["Status"] == "Successful"

    assert ids[0] in fleet.instances
    assert not set(ids[1:]) & set(fleet.instances)


def test_without_skip_matching_every_instance_is_replaced() -> None:
    fleet = FakeFleet(desired=2, group_version="2")
    rig = Rig(fleet)
    rig.start(preferences=_prefs(50, None))
    assert rig.latest()["InstancesToUpdate"] == 2
    rig.run()
    assert len(fleet.batches("terminate")) == 2


def test_skip_matching_with_nothing_to_replace_succeeds_at_once() -> None:
    fleet = FakeFleet(desired=2, group_version="2")
    rig = Rig(fleet)
    rig.start(preferences={"SkipMatching": True, "CheckpointPercentages": [50]})
    final = rig.run()
    assert (final["Status"], final["PercentageComplete"], final["InstancesToUpdate"]) == ("Successful", 100, 0)
    assert not fleet.batches("launch")
