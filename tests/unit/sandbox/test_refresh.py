"""The refresh engine's life cycle: start, describe, tick to Successful, and the group's config."""

from __future__ import annotations

from datetime import datetime

from .fakes import GROUP, TEMPLATE_ID, FakeFleet, Rig


def test_happy_path_goes_pending_inprogress_successful_and_applies_desired_config_at_the_end() -> None:
    rig = Rig(FakeFleet(desired=4))
    refresh_id = rig.start(preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 5})

    first = rig.latest()
    assert (first["InstanceRefreshId"], first["Status"], first["InstancesToUpdate"]) == (refresh_id, "Pending", 4)

    final = rig.run()

    assert rig.statuses() == ["Pending", "InProgress", "Successful"]
    assert final["PercentageComplete"] == 100 and final["InstancesToUpdate"] == 0
    assert sorted(i.version for i in rig.fleet.instances.values()) == ["2"] * 4
    assert rig.fleet.group_version == "2"
    # The group took the desired configuration only once, at the very end.
    set_events = [e for e in rig.fleet.events if e[1] == "set_launch_template"]
    assert set_events == [(rig.fleet.events[-1][0], "set_launch_template", "2")]
    assert {h["Status"] for h in rig.history[:-1]} == {"Pending", "InProgress"}


def test_describe_fields_are_keyed_like_botocore_instance_refresh() -> None:
    rig = Rig(FakeFleet(desired=2))
    rig.start(preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 0, "SkipMatching": True})
    final = rig.run()

    assert set(final) == {
        "InstanceRefreshId",
        "AutoScalingGroupName",
        "Status",
        "StartTime",
        "EndTime",
        "PercentageComplete",
        "InstancesToUpdate",
        "ProgressDetails",
        "Preferences",
        "DesiredConfiguration",
        "Strategy",
    }
    assert final["AutoScalingGroupName"] == GROUP
    assert isinstance(final["StartTime"], datetime) and final["StartTime"].tzinfo is not None
    assert final["EndTime"] > final["StartTime"]
    assert final["ProgressDetails"]["LivePoolProgress"] == {"PercentageComplete": 100, "InstancesToUpdate": 0}
    assert final["DesiredConfiguration"] == {"LaunchTemplate": {"LaunchTemplateId": TEMPLATE_ID, "Version": "2"}}
    assert final["Preferences"] == {
        "MinHealthyPercentage": 50,
        "InstanceWarmup": 0,
        "SkipMatching": True,
        "AutoRollback": False,
        "ScaleInProtectedInstances": "Wait",
        "StandbyInstances": "Wait",
    }


def test_percentage_complete_and_instances_to_update_move_together() -> None:
    rig = Rig(FakeFleet(desired=4))
    rig.start(preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 10})
    rig.run()

    seen = sorted({(h["PercentageComplete"], h["InstancesToUpdate"]) for h in rig.history})
    assert seen == [(0, 4), (50, 2), (100, 0)]
    for entry in rig.history:
        live = entry["ProgressDetails"]["LivePoolProgress"]
        assert live == {
            "PercentageComplete": entry["PercentageComplete"],
            "InstancesToUpdate": entry["InstancesToUpdate"],
        }
    assert "StatusReason" not in rig.history[-1]


def test_status_reason_while_replacements_boot() -> None:
    fleet = FakeFleet(desired=2, boot_steps=3)
    rig = Rig(fleet)
    rig.start(preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 0})
    reason = rig.first_batch()["StatusReason"]
    assert reason.startswith("Waiting for remaining instances to be available. For example: i-")
    assert reason.endswith("is Pending.")
