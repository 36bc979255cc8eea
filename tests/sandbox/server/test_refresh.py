"""Instance refresh over the real wire: boto3 -> sandbox server -> refresh engine -> moto fleet."""

from __future__ import annotations

import time
from typing import Any

import pytest
from aws_sandbox_kit import Kit, unique
from botocore.exceptions import ClientError

from release.sandbox.provision import SeedResources

FINAL = {"Successful", "Failed", "Cancelled", "RollbackSuccessful", "RollbackFailed"}


def new_version(kit: Kit, seed: SeedResources) -> tuple[str, str]:
    """LT version 2 = version 1 with a new AMI (SourceVersion, as `inv release` does)."""
    ec2 = kit.client("ec2")
    image = ec2.register_image(Name=unique("app-1.1.0"), RootDeviceName="/dev/xvda")["ImageId"]
    version = ec2.create_launch_template_version(
        LaunchTemplateId=seed.launch_template_id, SourceVersion="1", LaunchTemplateData={"ImageId": image}
    )["LaunchTemplateVersion"]["VersionNumber"]
    return str(version), str(image)


def desired(seed: SeedResources, version: str) -> dict[str, Any]:
    return {"LaunchTemplate": {"LaunchTemplateId": seed.launch_template_id, "Version": version}}


def refresh(kit: Kit, name: str) -> dict[str, Any]:
    found: dict[str, Any] = kit.client("autoscaling").describe_instance_refreshes(AutoScalingGroupName=name)[
        "InstanceRefreshes"
    ][0]
    return found


def wait_final(kit: Kit, name: str, timeout: float = 45.0) -> dict[str, Any]:
    found: dict[str, Any] = kit.wait_for(
        "the refresh to finish", lambda: (r := refresh(kit, name))["Status"] in FINAL and r, timeout
    )
    return found


def fleet(kit: Kit, name: str) -> list[tuple[str, str, str]]:
    """(instance id, LT version reported by the ASG, ImageId reported by EC2) per member."""
    members = kit.group(name)["Instances"]
    described = kit.instances([m["InstanceId"] for m in members])
    return sorted(
        (m["InstanceId"], m["LaunchTemplate"]["Version"], described[m["InstanceId"]]["ImageId"]) for m in members
    )


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_min_healthy_50_replaces_the_fleet_in_batches(kit: Kit, seed: SeedResources) -> None:
    asg = kit.client("autoscaling")
    version, image = new_version(kit, seed)
    refresh_id = asg.start_instance_refresh(
        AutoScalingGroupName=seed.asg_name,
        Preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 20},
        DesiredConfiguration=desired(seed, version),
    )["InstanceRefreshId"]

    statuses: list[str] = []
    mixes: set[tuple[int, int]] = set()
    smallest = 99
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        current = refresh(kit, seed.asg_name)
        if not statuses or statuses[-1] != current["Status"]:
            statuses.append(current["Status"])
        members = fleet(kit, seed.asg_name)
        smallest = min(smallest, len(members))
        mixes.add((sum(v == "1" for _, v, _ in members), sum(v == version for _, v, _ in members)))
        if current["Status"] in FINAL:
            break
        time.sleep(0.2)

    assert current["InstanceRefreshId"] == refresh_id
    assert statuses[0] == "Pending" and statuses[-1] == "Successful", statuses
    assert "InProgress" in statuses
    assert current["PercentageComplete"] == 100
    # 50 % of 4 must stay healthy: two replaced at a time, never fewer than two members.
    assert (2, 2) in mixes, mixes
    assert smallest >= 2
    assert all(old + new <= 4 for old, new in mixes), mixes  # MaxHealthyPercentage 100
    members = fleet(kit, seed.asg_name)
    assert len(members) == 4
    assert {(v, i) for _, v, i in members} == {(version, image)}
    assert kit.group(seed.asg_name)["LaunchTemplate"]["Version"] == version  # applied on success only


def test_auto_rollback_on_alarm_restores_the_previous_configuration(kit: Kit, seed: SeedResources) -> None:
    asg, cloudwatch = kit.client("autoscaling"), kit.client("cloudwatch")
    before = fleet(kit, seed.asg_name)
    version, _ = new_version(kit, seed)
    asg.start_instance_refresh(
        AutoScalingGroupName=seed.asg_name,
        Preferences={
            "MinHealthyPercentage": 50,
            "InstanceWarmup": 30,
            "AutoRollback": True,
            "AlarmSpecification": {"Alarms": [seed.alarm_names[0]]},
        },
        DesiredConfiguration=desired(seed, version),
    )
    kit.wait_for("a member on the new version", lambda: any(v == version for _, v, _ in fleet(kit, seed.asg_name)))
    cloudwatch.set_alarm_state(AlarmName=seed.alarm_names[0], StateValue="ALARM", StateReason="5xx from 1.1.0")
    try:
        finished = wait_final(kit, seed.asg_name)
    finally:
        cloudwatch.set_alarm_state(AlarmName=seed.alarm_names[0], StateValue="OK", StateReason="test over")

    assert finished["Status"] == "RollbackSuccessful", finished
    assert "RollbackDetails" in finished
    group = kit.group(seed.asg_name)
    assert group["LaunchTemplate"]["Version"] == "1"
    after = fleet(kit, seed.asg_name)
    assert len(after) == 4
    assert {(v, i) for _, v, i in after} == {(v, i) for _, v, i in before}


def test_manual_rollback_only_while_in_progress(kit: Kit, seed: SeedResources) -> None:
    asg = kit.client("autoscaling")
    with pytest.raises(ClientError) as nothing_running:
        asg.rollback_instance_refresh(AutoScalingGroupName=seed.asg_name)
    assert error_code(nothing_running) == "ActiveInstanceRefreshNotFound"

    version, _ = new_version(kit, seed)
    refresh_id = asg.start_instance_refresh(
        AutoScalingGroupName=seed.asg_name,
        Preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 100},
        DesiredConfiguration=desired(seed, version),
    )["InstanceRefreshId"]
    kit.wait_for("InProgress", lambda: refresh(kit, seed.asg_name)["Status"] == "InProgress")
    assert asg.rollback_instance_refresh(AutoScalingGroupName=seed.asg_name)["InstanceRefreshId"] == refresh_id
    assert refresh(kit, seed.asg_name)["Status"] == "RollbackInProgress"
    finished = wait_final(kit, seed.asg_name)
    assert finished["Status"] == "RollbackSuccessful"
    assert {v for _, v, _ in fleet(kit, seed.asg_name)} == {"1"}

    with pytest.raises(ClientError) as finished_already:
        asg.rollback_instance_refresh(AutoScalingGroupName=seed.asg_name)
    assert error_code(finished_already) == "ActiveInstanceRefreshNotFound"


def test_latest_is_refused_for_rollback_as_aws_refuses_it(kit: Kit, seed: SeedResources) -> None:
    asg = kit.client("autoscaling")
    version, _ = new_version(kit, seed)
    asg.update_auto_scaling_group(
        AutoScalingGroupName=seed.asg_name,
        LaunchTemplate={"LaunchTemplateId": seed.launch_template_id, "Version": "$Latest"},
    )
    with pytest.raises(ClientError) as auto_rollback:
        asg.start_instance_refresh(
            AutoScalingGroupName=seed.asg_name,
            Preferences={"AutoRollback": True},
            DesiredConfiguration=desired(seed, version),
        )
    assert error_code(auto_rollback) == "ValidationError"
    assert "$Latest" in auto_rollback.value.response["Error"]["Message"]

    asg.start_instance_refresh(
        AutoScalingGroupName=seed.asg_name,
        Preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 100},
        DesiredConfiguration=desired(seed, version),
    )
    with pytest.raises(ClientError) as manual:
        asg.rollback_instance_refresh(AutoScalingGroupName=seed.asg_name)
    assert error_code(manual) == "IrreversibleInstanceRefresh"
    asg.cancel_instance_refresh(AutoScalingGroupName=seed.asg_name)
    assert wait_final(kit, seed.asg_name)["Status"] == "Cancelled"


def test_a_second_concurrent_start_is_refused(kit: Kit, seed: SeedResources) -> None:
    asg = kit.client("autoscaling")
    version, _ = new_version(kit, seed)
    first = asg.start_instance_refresh(
        AutoScalingGroupName=seed.asg_name,
        Preferences={"InstanceWarmup": 100},
        DesiredConfiguration=desired(seed, version),
    )["InstanceRefreshId"]
    with pytest.raises(ClientError) as second:
        asg.start_instance_refresh(AutoScalingGroupName=seed.asg_name, DesiredConfiguration=desired(seed, version))
    assert error_code(second) == "InstanceRefreshInProgress"
    assert second.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert asg.cancel_instance_refresh(AutoScalingGroupName=seed.asg_name)["InstanceRefreshId"] == first
    assert wait_final(kit, seed.asg_name)["Status"] == "Cancelled"
    assert kit.group(seed.asg_name)["LaunchTemplate"]["Version"] == "1"  # not applied: not successful


def test_a_release_whose_targets_fail_health_checks_rolls_back(kit: Kit, seed: SeedResources) -> None:
    asg = kit.client("autoscaling")
    version, image = new_version(kit, seed)
    kit.admin("POST", "target-health", {"image_id": image, "healthy": False})  # the new app fails /health
    # A short grace period: the group gives up on the new instances sooner (it is part of the window).
    asg.update_auto_scaling_group(AutoScalingGroupName=seed.asg_name, HealthCheckGracePeriod=30)
    try:
        asg.start_instance_refresh(
            AutoScalingGroupName=seed.asg_name,
            Preferences={"MinHealthyPercentage": 50, "InstanceWarmup": 10, "AutoRollback": True},
            DesiredConfiguration=desired(seed, version),
        )
        kit.wait_for(
            "a new instance to fail its health checks",
            lambda: "unhealthy" in {s["State"] for s in kit.target_states(seed.target_group_arn).values()},
        )
        finished = wait_final(kit, seed.asg_name, timeout=90)
    finally:
        kit.admin("POST", "target-health", {"image_id": image, "healthy": True})
        asg.update_auto_scaling_group(AutoScalingGroupName=seed.asg_name, HealthCheckGracePeriod=300)
    assert finished["Status"] == "RollbackSuccessful", finished
    assert kit.group(seed.asg_name)["LaunchTemplate"]["Version"] == "1"
    assert {(v, i) for _, v, i in fleet(kit, seed.asg_name)} == {("1", seed.base_image_id)}
