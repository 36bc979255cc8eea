"""Target health: AWS's states and reason codes, driven by the admin health policy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aws_sandbox_kit import Kit, unique

from release.sandbox.provision import SeedResources


@pytest.fixture(autouse=True)
def healthy_again(kit: Kit) -> Iterator[None]:
    yield
    kit.admin("DELETE", "target-health")


def members(kit: Kit, seed: SeedResources) -> list[str]:
    return [m["InstanceId"] for m in kit.group(seed.asg_name)["Instances"]]


def test_new_targets_start_initial_then_turn_healthy(kit: Kit, seed: SeedResources) -> None:
    elbv2 = kit.client("elbv2")
    instance = kit.client("ec2").run_instances(ImageId=seed.base_image_id, MinCount=1, MaxCount=1)["Instances"][0]
    elbv2.register_targets(TargetGroupArn=seed.target_group_arn, Targets=[{"Id": instance["InstanceId"]}])
    first = kit.target_states(seed.target_group_arn)[instance["InstanceId"]]
    assert first["State"] == "initial"
    assert first["Reason"] in ("Elb.RegistrationInProgress", "Elb.InitialHealthChecking")
    kit.wait_for(
        "healthy", lambda: kit.target_states(seed.target_group_arn)[instance["InstanceId"]] == {"State": "healthy"}
    )


def test_a_failing_instance_turns_unhealthy_with_aws_reason(kit: Kit, seed: SeedResources) -> None:
    sick, *others = members(kit, seed)
    # The group's grace period, 60 s x 0.1, counts from each instance's launch: it is over by the time
    # the instance turns unhealthy, and the group replaces it, as AWS does.
    kit.client("autoscaling").update_auto_scaling_group(AutoScalingGroupName=seed.asg_name, HealthCheckGracePeriod=60)
    kit.wait_for(
        "all healthy", lambda: {s["State"] for s in kit.target_states(seed.target_group_arn).values()} == {"healthy"}
    )
    status, body = kit.admin("POST", "target-health", {"instance_id": sick, "healthy": False})
    assert status == 200 and body["unhealthy_instances"] == [sick]
    state = kit.wait_for(
        "unhealthy", lambda: (s := kit.target_states(seed.target_group_arn)[sick])["State"] == "unhealthy" and s
    )
    assert state["Reason"] == "Target.ResponseCodeMismatch"
    assert state["Description"] == "Health checks failed with these codes: [503]"
    assert all(kit.target_states(seed.target_group_arn)[o]["State"] == "healthy" for o in others)
    # ELB health checks: past the grace period the group replaces it.
    kit.wait_for("the sick instance to be replaced", lambda: sick not in (ids := members(kit, seed)) and len(ids) == 4,
                 timeout=60)
    assert kit.target_states(seed.target_group_arn)[sick]["State"] == "draining"
    described = kit.instances([sick])[sick]
    assert described["State"]["Name"] == "terminated"


def test_every_instance_of_an_image_can_be_marked_unhealthy(kit: Kit, seed: SeedResources) -> None:
    # A group whose ELB health checks would replace them is switched to EC2 health checks first.
    kit.client("autoscaling").update_auto_scaling_group(AutoScalingGroupName=seed.asg_name, HealthCheckType="EC2")
    kit.admin("POST", "target-health", {"image_id": seed.base_image_id, "healthy": False})
    kit.wait_for(
        "all unhealthy",
        lambda: {s["State"] for s in kit.target_states(seed.target_group_arn).values()} == {"unhealthy"},
    )
    assert {m["HealthStatus"] for m in kit.group(seed.asg_name)["Instances"]} == {"Healthy"}
    kit.admin("POST", "target-health", {"image_id": seed.base_image_id, "healthy": True})
    kit.wait_for(
        "all healthy again",
        lambda: {s["State"] for s in kit.target_states(seed.target_group_arn).values()} == {"healthy"},
    )


def test_deregistered_targets_drain_and_stopped_ones_are_unused(kit: Kit, seed: SeedResources) -> None:
    elbv2, ec2 = kit.client("elbv2"), kit.client("ec2")
    leaving = members(kit, seed)[0]
    elbv2.deregister_targets(TargetGroupArn=seed.target_group_arn, Targets=[{"Id": leaving}])
    draining = kit.target_states(seed.target_group_arn)[leaving]
    assert draining == {
        "State": "draining",
        "Reason": "Target.DeregistrationInProgress",
        "Description": "Target deregistration is in progress",
    }
    # Deregistration delay 30 s x 0.1: then the target is gone and reads as not registered.
    kit.wait_for("drained", lambda: leaving not in kit.target_states(seed.target_group_arn))
    named = elbv2.describe_target_health(TargetGroupArn=seed.target_group_arn, Targets=[{"Id": leaving}])
    assert named["TargetHealthDescriptions"][0]["TargetHealth"]["Reason"] == "Target.NotRegistered"

    loner = ec2.run_instances(ImageId=seed.base_image_id, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    elbv2.register_targets(TargetGroupArn=seed.target_group_arn, Targets=[{"Id": loner}])
    ec2.stop_instances(InstanceIds=[loner])
    stopped = kit.target_states(seed.target_group_arn)[loner]
    assert (stopped["State"], stopped["Reason"]) == ("unused", "Target.InvalidState")


def test_a_stopped_group_member_is_replaced(kit: Kit, seed: SeedResources) -> None:
    stopping = members(kit, seed)[0]
    kit.client("ec2").stop_instances(InstanceIds=[stopping])
    kit.wait_for("a replacement", lambda: stopping not in (ids := members(kit, seed)) and len(ids) == 4)
    assert kit.instances([stopping])[stopping]["State"]["Name"] == "terminated"


def test_a_target_group_without_a_load_balancer_is_not_in_use(kit: Kit, seed: SeedResources) -> None:
    elbv2 = kit.client("elbv2")
    arn = elbv2.create_target_group(Name=unique("lonely"), Protocol="HTTP", Port=80, VpcId=seed.vpc_id)["TargetGroups"][
        0
    ]["TargetGroupArn"]
    instance = members(kit, seed)[0]
    elbv2.register_targets(TargetGroupArn=arn, Targets=[{"Id": instance}])
    state = kit.target_states(arn)[instance]
    assert (state["State"], state["Reason"]) == ("unused", "Target.NotInUse")


def test_admin_api_rejects_bad_requests(kit: Kit) -> None:
    assert kit.admin("POST", "target-health", {"instance_id": "i-1"})[0] == 400
    assert kit.admin("POST", "target-health", {"healthy": False})[0] == 400
    assert kit.admin("GET", "nothing-here")[0] == 404
    status, health = kit.admin("GET", "health")
    assert status == 200 and health["ok"] is True and health["time_scale"] == 0.1
    assert health["pid"] == kit.info.pid
