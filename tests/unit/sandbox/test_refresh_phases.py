"""Checkpoints, bake time, cancel, alarms, failures, rollbacks."""

from __future__ import annotations

from typing import Any

import pytest

from release.sandbox.engines.refresh import RefreshError

from .fakes import GROUP, FakeFleet, Rig


def _one_at_a_time(**extra: Any) -> dict[str, Any]:
    return {"MinHealthyPercentage": 90, "MaxHealthyPercentage": 100, "InstanceWarmup": 0, **extra}


def _halves(**extra: Any) -> dict[str, Any]:
    return {"MinHealthyPercentage": 50, "InstanceWarmup": 0, **extra}


# ---- checkpoints and bake time ---------------------------------------------------------------


def test_checkpoint_pauses_for_the_checkpoint_delay() -> None:
    rig = Rig(FakeFleet(desired=4))
    rig.start(preferences=_one_at_a_time(CheckpointPercentages=[50], CheckpointDelay=600))

    paused = rig.run(until={"Successful"})

    at_checkpoint = [h for h in rig.history if "Checkpoint 50% reached" in (h.get("StatusReason") or "")]
    assert at_checkpoint and {h["PercentageComplete"] for h in at_checkpoint} == {50}
    assert {h["Status"] for h in at_checkpoint} == {"InProgress"}
    assert len(at_checkpoint) >= 600  # one-second steps
    # Nothing was launched while paused.
    pause_steps = range(rig.history.index(at_checkpoint[0]) + 1, rig.history.index(at_checkpoint[-1]) + 1)
    assert not [e for e in rig.fleet.events if e[0] in pause_steps and e[1] == "launch"]
    assert paused["Status"] == "Successful"


def test_checkpoint_delay_defaults_to_an_hour_and_a_100_checkpoint_pauses_before_success() -> None:
    rig = Rig(FakeFleet(desired=2), seconds_per_step=60)
    rig.start(preferences=_halves(CheckpointPercentages=[50, 100]))
    assert rig.latest()["Preferences"]["CheckpointDelay"] == 3600

    final = rig.run()

    reasons = [h.get("StatusReason") or "" for h in rig.history]
    assert sum("Checkpoint 50% reached" in r for r in reasons) >= 60
    assert sum("Checkpoint 100% reached" in r for r in reasons) >= 60
    assert (final["EndTime"] - final["StartTime"]).total_seconds() >= 7200


def test_bake_time_holds_the_refresh_in_baking_before_success() -> None:
    fleet = FakeFleet(desired=2)
    rig = Rig(fleet)
    rig.start(preferences=_halves(BakeTime=120))

    final = rig.run()

    assert rig.statuses() == ["Pending", "InProgress", "Baking", "Successful"]
    baking = [h for h in rig.history if h["Status"] == "Baking"]
    assert len(baking) >= 120 and all(h["PercentageComplete"] == 100 for h in baking)
    assert final["Preferences"]["BakeTime"] == 120
    # The desired configuration reached the group only after baking.
    (set_step,) = [step for step, what, _ in fleet.events if what == "set_launch_template"]
    assert set_step > len(rig.history) - 2


# ---- cancel ----------------------------------------------------------------------------------


def test_cancel_leaves_replaced_instances_and_the_group_config_alone() -> None:
    fleet = FakeFleet(desired=4)
    rig = Rig(fleet)
    refresh_id = rig.start(preferences=_one_at_a_time(InstanceWarmup=30))
    while rig.step()["PercentageComplete"] < 50:
        pass
    replaced = set(fleet.on_version("2"))

    assert rig.engine.cancel(GROUP) == refresh_id
    assert rig.latest()["Status"] == "Cancelling"
    cancel_step = fleet.steps
    final = rig.run()

    assert final["Status"] == "Cancelled" and "EndTime" in final
    assert replaced <= set(fleet.on_version("2"))  # replaced instances stay
    assert len(fleet.instances) == 4 and fleet.on_version("1")
    assert not [e for e in fleet.events if e[0] > cancel_step]  # nothing launched or terminated after
    assert fleet.group_version == "1"
    with pytest.raises(RefreshError) as err:
        rig.engine.cancel(GROUP)
    assert err.value.code == "ActiveInstanceRefreshNotFound" and err.value.status == 400


def test_cancelling_waits_for_launches_in_flight() -> None:
    fleet = FakeFleet(desired=2)
    rig = Rig(fleet)
    rig.start(preferences=_halves())
    rig.run(until={"InProgress"})
    fleet.hold_booting()
    rig.step()  # launches one replacement that stays Pending
    rig.engine.cancel(GROUP)

    for _ in range(3):
        assert rig.step()["Status"] == "Cancelling"
    (launching,) = fleet.on_version("2")
    fleet.set_health(launching)
    assert rig.run()["Status"] == "Cancelled"


# ---- one refresh at a time ---------------------------------------------------------------------


def test_second_start_is_refused_while_one_is_active_and_allowed_after() -> None:
    rig = Rig(FakeFleet(desired=2))
    rig.start(preferences=_halves())
    with pytest.raises(RefreshError) as err:
        rig.start(preferences=_halves())
    assert err.value.code == "InstanceRefreshInProgress"

    rig.run()
    second = rig.start(preferences=_halves())
    described = rig.engine.describe(GROUP)
    assert described[0]["InstanceRefreshId"] == second  # newest first
    assert [d["Status"] for d in described] == ["Pending", "Successful"]
    assert rig.engine.describe(GROUP, [described[1]["InstanceRefreshId"]]) == [described[1]]
    assert rig.engine.describe(GROUP, ["no-such-id"]) == []


# ---- failures --------------------------------------------------------------------------------


def test_refresh_fails_when_replacements_never_get_healthy() -> None:
    fleet = FakeFleet(desired=4, bad_images={"ami-2"})
    rig = Rig(fleet)
    rig.start(preferences=_halves())

    final = rig.run()

    assert final["Status"] == "Failed"
    assert "failed its Elastic Load Balancing health check" in final["StatusReason"]
    assert fleet.batches("launch") == [2, 2]  # a batch, then both relaunched; the third failure ends it
    assert fleet.group_version == "1"  # never applied
    assert not fleet.on_version("2")  # failed replacements were terminated


def test_replacement_stuck_without_a_health_verdict_times_out() -> None:
    fleet = FakeFleet(desired=2)
    fleet.hold_booting()
    rig = Rig(fleet, seconds_per_step=10)
    rig.start(preferences=_halves())

    final = rig.run()

    assert final["Status"] == "Failed"
    assert "did not become healthy within" in final["StatusReason"]


def test_launch_errors_fail_the_refresh() -> None:
    fleet = FakeFleet(desired=2, launch_error="InsufficientInstanceCapacity")
    rig = Rig(fleet)
    rig.start(preferences=_halves())
    final = rig.run()
    assert final["Status"] == "Failed" and "InsufficientInstanceCapacity" in final["StatusReason"]


def test_alarm_without_auto_rollback_fails_the_refresh() -> None:
    fleet = FakeFleet(desired=2)
    rig = Rig(fleet)
    rig.start(preferences=_halves(AlarmSpecification={"Alarms": ["app-5xx"]}))
    rig.first_batch()
    fleet.alarms["app-5xx"] = "ALARM"

    final = rig.run()

    assert final["Status"] == "Failed" and "app-5xx" in final["StatusReason"]
    assert "RollbackDetails" not in final
    assert fleet.group_version == "1"


# ---- rollback --------------------------------------------------------------------------------


def test_alarm_with_auto_rollback_rolls_back_to_the_previous_configuration() -> None:
    fleet = FakeFleet(desired=4)
    rig = Rig(fleet)
    rig.start(preferences=_halves(AutoRollback=True, AlarmSpecification={"Alarms": ["app-5xx", "unhealthy-hosts"]}))
    while rig.step()["PercentageComplete"] < 50:
        pass
    before = rig.latest()
    fleet.alarms["unhealthy-hosts"] = "ALARM"

    final = rig.run()

    assert rig.statuses() == ["Pending", "InProgress", "RollbackInProgress", "RollbackSuccessful"]
    assert final["PercentageComplete"] == 0
    details = final["RollbackDetails"]
    assert "unhealthy-hosts" in details["RollbackReason"]
    assert details["PercentageCompleteOnRollback"] == before["PercentageComplete"] == 50
    assert details["InstancesToUpdateOnRollback"] == final["InstancesToUpdate"] == 2
    assert details["ProgressDetailsOnRollback"]["LivePoolProgress"] == {
        "PercentageComplete": 50,
        "InstancesToUpdate": 2,
    }
    assert final["StartTime"] <= details["RollbackStartTime"] <= final["EndTime"]
    assert sorted(i.version for i in fleet.instances.values()) == ["1"] * 4
    assert fleet.group_version == "1"
    assert not [e for e in fleet.events if e[1] == "set_launch_template"]


def test_percentage_complete_falls_during_rollback() -> None:
    fleet = FakeFleet(desired=4)
    rig = Rig(fleet)
    rig.start(preferences=_one_at_a_time(AutoRollback=True, AlarmSpecification={"Alarms": ["a"]}))
    while rig.step()["PercentageComplete"] < 75:
        pass
    fleet.alarms["a"] = "ALARM"
    rig.run()

    during = [h["PercentageComplete"] for h in rig.history if h["Status"] == "RollbackInProgress"]
    assert during[0] == 75 and during == sorted(during, reverse=True) and during[-1] < 75


def test_auto_rollback_when_replacements_fail() -> None:
    fleet = FakeFleet(desired=4, bad_images={"ami-2"})
    rig = Rig(fleet)
    rig.start(preferences=_halves(AutoRollback=True))

    final = rig.run()

    assert final["Status"] == "RollbackSuccessful"
    assert "failed its Elastic Load Balancing health check" in final["RollbackDetails"]["RollbackReason"]
    assert sorted(i.version for i in fleet.instances.values()) == ["1"] * 4


def test_rollback_fails_when_the_previous_configuration_does_not_get_healthy() -> None:
    fleet = FakeFleet(desired=2)
    rig = Rig(fleet)
    rig.start(preferences=_halves(AutoRollback=True, AlarmSpecification={"Alarms": ["a"]}))
    while rig.step()["PercentageComplete"] < 50:
        pass
    fleet.bad_images.add("ami-1")
    fleet.alarms["a"] = "ALARM"
    assert rig.run()["Status"] == "RollbackFailed"


def test_alarm_during_bake_time_rolls_back() -> None:
    fleet = FakeFleet(desired=2)
    rig = Rig(fleet)
    rig.start(preferences=_halves(BakeTime=300, AutoRollback=True, AlarmSpecification={"Alarms": ["a"]}))
    rig.run(until={"Baking"})
    fleet.alarms["a"] = "ALARM"

    assert rig.run()["Status"] == "RollbackSuccessful"
    assert sorted(i.version for i in fleet.instances.values()) == ["1", "1"]


def test_manual_rollback_only_while_the_refresh_is_active() -> None:
    fleet = FakeFleet(desired=4)
    rig = Rig(fleet)
    refresh_id = rig.start(preferences=_halves())
    while rig.step()["PercentageComplete"] < 50:
        pass

    assert rig.engine.rollback(GROUP) == refresh_id
    final = rig.run()

    assert final["Status"] == "RollbackSuccessful"
    assert final["RollbackDetails"]["RollbackReason"] == "Rollback started by RollbackInstanceRefresh."
    assert sorted(i.version for i in fleet.instances.values()) == ["1"] * 4
    with pytest.raises(RefreshError) as err:
        rig.engine.rollback(GROUP)
    assert err.value.code == "ActiveInstanceRefreshNotFound"

    rig.start(preferences=_halves())
    rig.run()
    with pytest.raises(RefreshError) as err:
        rig.engine.rollback(GROUP)  # finished: AWS can't roll it back any more
    assert err.value.code == "ActiveInstanceRefreshNotFound"


def test_manual_rollback_needs_a_desired_configuration() -> None:
    rig = Rig(FakeFleet(desired=2))
    rig.start(preferences=_halves(), desired_configuration=None)
    with pytest.raises(RefreshError) as err:
        rig.engine.rollback(GROUP)
    assert err.value.code == "IrreversibleInstanceRefresh"


@pytest.mark.parametrize("group_version", ["$Latest", "$Default"])
def test_rollback_refused_when_the_group_uses_latest_or_default(group_version: str) -> None:
    rig = Rig(FakeFleet(desired=2, group_version=group_version))
    with pytest.raises(RefreshError) as err:
        rig.start(preferences=_halves(AutoRollback=True))
    assert err.value.code == "ValidationError" and group_version in err.value.message

    rig.start(preferences=_halves())
    with pytest.raises(RefreshError) as err:
        rig.engine.rollback(GROUP)
    assert err.value.code == "IrreversibleInstanceRefresh"


def test_cancel_stops_a_rollback() -> None:
    fleet = FakeFleet(desired=4)
    rig = Rig(fleet)
    rig.start(preferences=_halves(InstanceWarmup=30))
    while rig.step()["PercentageComplete"] < 50:
        pass
    rig.engine.rollback(GROUP)
    rig.step()
    rig.engine.cancel(GROUP)
    assert rig.run()["Status"] == "Cancelled"


def test_rollback_after_launching_ahead_returns_to_desired_capacity() -> None:
    fleet = FakeFleet(desired=4)
    rig = Rig(fleet)
    rig.start(preferences={"MinHealthyPercentage": 100, "MaxHealthyPercentage": 200, "InstanceWarmup": 30})
    rig.first_batch()
    assert len(fleet.instances) == 8  # the new group is up next to the old one

    rig.engine.rollback(GROUP)
    assert rig.run()["Status"] == "RollbackSuccessful"

    assert sorted(i.version for i in fleet.instances.values()) == ["1"] * 4
    assert min(rig.serving) >= 4


def test_elb_failures_count_only_after_the_grace_period() -> None:
    fleet = FakeFleet(desired=2, grace_period=30, bad_images={"ami-2"})
    originals = set(fleet.instances)
    rig = Rig(fleet)
    rig.start(preferences=_halves())
    rig.first_batch()
    launched_at = fleet.steps

    assert rig.run()["Status"] == "Failed"

    first_kill = next(step for step, what, i in fleet.events if what == "terminate" and i not in originals)
    assert first_kill - launched_at >= 30  # unhealthy targets are tolerated during the grace period


def test_rollback_after_every_instance_was_replaced_starts_at_once() -> None:
    # The sandbox's seed preferences at time scale 0.1: the refresh has replaced all four
    # instances (two still warming up) when the rollback starts.
    fleet = FakeFleet(desired=4, grace_period=300, boot_steps=3)
    rig = Rig(fleet, time_scale=0.1, seconds_per_step=0.2)
    rig.start(preferences={"MinHealthyPercentage": 50, "MaxHealthyPercentage": 100, "InstanceWarmup": 30})
    while fleet.on_version("1") or fleet.serving() < 4:
        rig.step()
    assert rig.latest()["Status"] == "InProgress"
    rig.engine.rollback(GROUP)
    before = len(fleet.events)

    rig.step()

    assert [what for _, what, _ in fleet.events[before:]].count("terminate") == 2
    final = rig.run()
    assert final["Status"] == "RollbackSuccessful"
    assert (final["EndTime"] - final["RollbackDetails"]["RollbackStartTime"]).total_seconds() < 10
