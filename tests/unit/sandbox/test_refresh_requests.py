"""Request validation (AWS's rules and error codes), protected and Standby instances."""

from __future__ import annotations

from typing import Any

import pytest

from release.sandbox.engines.refresh import RefreshEngine, RefreshError

from .fakes import GROUP, TEMPLATE_NAME, FakeFleet, Rig, desired

# ---- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preferences", "fragment"),
    [
        ({"MinHealthyPercentage": 101}, "between 0 and 100"),
        ({"MinHealthyPercentage": -1}, "between 0 and 100"),
        ({"MinHealthyPercentage": 50, "MaxHealthyPercentage": 99}, "between 100 and 200"),
        ({"MinHealthyPercentage": 50, "MaxHealthyPercentage": 201}, "between 100 and 200"),
        ({"MaxHealthyPercentage": 150}, "must specify MinHealthyPercentage"),
        ({"MinHealthyPercentage": 10, "MaxHealthyPercentage": 120}, "cannot be greater than 100"),
        ({"InstanceWarmup": -5}, "greater than or equal to 0"),
        ({"CheckpointPercentages": [50, 20]}, "ascending"),
        ({"CheckpointPercentages": [50, 50]}, "ascending"),
        ({"CheckpointPercentages": [0, 50]}, "between 1 and 100"),
        ({"CheckpointPercentages": [50, 101]}, "between 1 and 100"),
        ({"CheckpointDelay": 60}, "must specify CheckpointPercentages"),
        ({"CheckpointPercentages": [50], "CheckpointDelay": 172801}, "between 0 and 172800"),
        ({"BakeTime": 172801}, "between 0 and 172800"),
        ({"AlarmSpecification": {"Alarms": [f"a{i}" for i in range(11)]}}, "up to 10 alarms"),
        ({"ScaleInProtectedInstances": "Terminate"}, "enum value set: [Refresh, Ignore, Wait]"),
        ({"StandbyInstances": "Refresh"}, "enum value set: [Terminate, Ignore, Wait]"),
        ({"SkipMatching": "yes"}, "true or false"),
        ({"MinHealthyPercentage": "50"}, "must be an integer"),
        ({"MinHealthyPrecentage": 50}, "Unknown Preferences parameter(s): MinHealthyPrecentage"),
    ],
)
def test_invalid_preferences_are_rejected_like_aws(preferences: dict[str, Any], fragment: str) -> None:
    rig = Rig(FakeFleet(desired=2))
    with pytest.raises(RefreshError) as err:
        rig.start(preferences=preferences)
    assert (err.value.code, err.value.status) == ("ValidationError", 400)
    assert fragment in err.value.message
    assert rig.engine.describe(GROUP) == []  # nothing was created


@pytest.mark.parametrize(
    "preferences",
    [
        {"MinHealthyPercentage": 0, "MaxHealthyPercentage": 100},
        {"MinHealthyPercentage": 100, "MaxHealthyPercentage": 200},
        {"CheckpointPercentages": [10, 50, 100], "CheckpointDelay": 0},
        {"CheckpointPercentages": [20, 60]},  # AWS allows a last checkpoint below 100
        {"AlarmSpecification": {"Alarms": [f"a{i}" for i in range(10)]}},
        {"BakeTime": 172800, "InstanceWarmup": 0, "ScaleInProtectedInstances": "Refresh"},
    ],
)
def test_valid_preferences_are_accepted_and_echoed(preferences: dict[str, Any]) -> None:
    rig = Rig(FakeFleet(desired=2))
    rig.start(preferences=preferences)
    echoed = rig.latest()["Preferences"]
    assert {k: echoed[k] for k in preferences} == preferences


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"preferences": {"AutoRollback": True}, "desired_configuration": None}, "DesiredConfiguration"),
        ({"desired_configuration": {"LaunchTemplate": {"Version": "2"}}}, "LaunchTemplateId or LaunchTemplateName"),
        (
            {"desired_configuration": {"LaunchTemplate": {"LaunchTemplateId": "lt-1", "LaunchTemplateName": "a"}}},
            "LaunchTemplateId or LaunchTemplateName",
        ),
        ({"desired_configuration": {"LaunchTemplate": {"LaunchTemplateName": "nope"}}}, "does not exist"),
        ({"desired_configuration": desired("9")}, "does not exist"),
        ({"desired_configuration": {"MixedInstancesPolicy": {}}}, "MixedInstancesPolicy"),
        ({"strategy": "Blue"}, "enum value set"),
        ({"strategy": "ReplaceRootVolume"}, "mixed instances policy"),
    ],
)
def test_invalid_requests_are_rejected(kwargs: dict[str, Any], fragment: str) -> None:
    rig = Rig(FakeFleet(desired=2))
    with pytest.raises(RefreshError) as err:
        rig.start(**kwargs)
    assert err.value.code == "ValidationError" and fragment in err.value.message


def test_desired_configuration_by_name_and_latest_resolves_to_a_numbered_version() -> None:
    fleet = FakeFleet(desired=2)
    rig = Rig(fleet)
    spec = {"LaunchTemplate": {"LaunchTemplateName": TEMPLATE_NAME, "Version": "$Latest"}}
    # AWS's own StartInstanceRefresh example pairs a $Latest desired configuration with AutoRollback:
    # only the group's current version must be numbered for a rollback.
    rig.start(desired_configuration=spec, preferences={"MinHealthyPercentage": 50, "AutoRollback": True})

    final = rig.run()

    assert final["DesiredConfiguration"] == spec
    assert sorted(i.version for i in fleet.instances.values()) == ["3", "3"]
    assert fleet.group_version == "$Latest"  # applied exactly as requested


def test_refresh_without_desired_configuration_relaunches_the_group_config() -> None:
    fleet = FakeFleet(desired=2)
    rig = Rig(fleet)
    rig.start(desired_configuration=None, preferences={"MinHealthyPercentage": 50})
    final = rig.run()
    assert "DesiredConfiguration" not in final
    assert sorted(i.version for i in fleet.instances.values()) == ["1", "1"]
    assert not [e for e in fleet.events if e[1] == "set_launch_template"]


@pytest.mark.parametrize(
    "call",
    [
        lambda engine: engine.start("nope"),
        lambda engine: engine.describe("nope"),
        lambda engine: engine.cancel("nope"),
        lambda engine: engine.rollback("nope"),
    ],
)
def test_unknown_group_is_a_validation_error(call: Any) -> None:
    rig = Rig(FakeFleet())
    with pytest.raises(RefreshError) as err:
        call(rig.engine)
    assert err.value.code == "ValidationError" and "nope" in err.value.message


def test_rollback_without_an_active_refresh() -> None:
    rig = Rig(FakeFleet())
    with pytest.raises(RefreshError) as err:
        rig.engine.rollback(GROUP)
    assert err.value.code == "ActiveInstanceRefreshNotFound"
    assert "No in progress or pending Instance Refresh found" in err.value.message


def test_time_scale_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RefreshEngine(FakeFleet(), Rig(FakeFleet()).clock, time_scale=0)


# ---- scale-in protected and Standby instances ------------------------------------------------


def _protect_first(fleet: FakeFleet) -> str:
    first = next(iter(fleet.instances))
    fleet.instances[first].protected = True
    return first


def _standby_first(fleet: FakeFleet) -> str:
    first = next(iter(fleet.instances))
    fleet.instances[first].lifecycle_state, fleet.instances[first].pinned = "Standby", True
    return first


HALVES = {"MinHealthyPercentage": 50, "InstanceWarmup": 0}


@pytest.mark.parametrize(
    ("mark", "preference", "value", "replaced"),
    [
        (_protect_first, "ScaleInProtectedInstances", "Ignore", False),
        (_protect_first, "ScaleInProtectedInstances", "Refresh", True),
        (_standby_first, "StandbyInstances", "Ignore", False),
        (_standby_first, "StandbyInstances", "Terminate", True),
    ],
)
def test_protected_and_standby_instances_are_ignored_or_replaced(
    mark: Any, preference: str, value: str, replaced: bool
) -> None:
    fleet = FakeFleet(desired=4)
    special = mark(fleet)
    rig = Rig(fleet)
    rig.start(preferences={**HALVES, preference: value})

    assert rig.latest()["InstancesToUpdate"] == (4 if replaced else 3)
    assert rig.run()["Status"] == "Successful"
    assert (special not in fleet.instances) is replaced


@pytest.mark.parametrize("mark", [_protect_first, _standby_first])
def test_wait_gives_up_after_an_hour(mark: Any) -> None:
    fleet = FakeFleet(desired=4)
    special = mark(fleet)
    rig = Rig(fleet, seconds_per_step=30)
    rig.start(preferences=HALVES)  # Wait is the default for both

    final = rig.run()

    assert final["Status"] == "Failed" and special in final["StatusReason"]
    waited = [h for h in rig.history if (h.get("StatusReason") or "").startswith(f"Waiting for {special}")]
    assert len(waited) * 30 >= 3600
    assert fleet.on_version("1") == [special]  # everything else was replaced


def test_wait_continues_once_protection_is_removed() -> None:
    fleet = FakeFleet(desired=4)
    special = _protect_first(fleet)
    rig = Rig(fleet, seconds_per_step=30)
    rig.start(preferences={**HALVES, "ScaleInProtectedInstances": "Wait"})
    while not (rig.step().get("StatusReason") or "").startswith(f"Waiting for {special}"):
        pass
    fleet.instances[special].protected = False

    assert rig.run()["Status"] == "Successful"
    assert special not in fleet.instances
