"""What the group and EC2 report about instances: launched LT version, ImageId, loopback IPs."""

from __future__ import annotations

import ipaddress

import pytest
from aws_sandbox_kit import Kit, unique

from release.aws import Aws, Target
from release.cloud import Cloud
from release.errors import NotFound
from release.sandbox.provision import SeedResources


def test_each_instance_reports_the_version_and_image_it_was_launched_with(kit: Kit, seed: SeedResources) -> None:
    ec2, asg = kit.client("ec2"), kit.client("autoscaling")
    first = kit.group(seed.asg_name)["Instances"]
    assert {m["LaunchTemplate"]["Version"] for m in first} == {"1"}

    image = ec2.register_image(Name=unique("app-2"), RootDeviceName="/dev/xvda")["ImageId"]
    ec2.create_launch_template_version(
        LaunchTemplateId=seed.launch_template_id, SourceVersion="1", LaunchTemplateData={"ImageId": image}
    )
    # Moving the template's default and the group to version 2 must not rewrite old instances.
    ec2.modify_launch_template(LaunchTemplateId=seed.launch_template_id, DefaultVersion="2")
    asg.update_auto_scaling_group(
        AutoScalingGroupName=seed.asg_name,
        LaunchTemplate={"LaunchTemplateId": seed.launch_template_id, "Version": "2"},
        DesiredCapacity=6,
    )
    members = kit.group(seed.asg_name)["Instances"]
    described = kit.instances([m["InstanceId"] for m in members])
    by_version = {
        m["InstanceId"]: (m["LaunchTemplate"]["Version"], described[m["InstanceId"]]["ImageId"]) for m in members
    }
    old = {m["InstanceId"] for m in first}
    assert {by_version[i] for i in old} == {("1", seed.base_image_id)}
    assert {v for i, v in by_version.items() if i not in old} == {("2", image)}
    assert len(by_version) == 6
    for instance_id, (version, _) in by_version.items():
        tags = {t["Key"]: t["Value"] for t in described[instance_id]["Tags"]}
        assert tags["aws:ec2launchtemplate:version"] == version
        assert tags["aws:autoscaling:groupName"] == seed.asg_name


def test_instances_spread_over_both_zones(kit: Kit, seed: SeedResources) -> None:
    zones = [m["AvailabilityZone"] for m in kit.group(seed.asg_name)["Instances"]]
    assert sorted(zones.count(z) for z in set(zones)) == [2, 2]


def test_private_ips_are_unique_loopback_addresses_and_no_public_ip(kit: Kit, seed: SeedResources) -> None:
    ec2 = kit.client("ec2")
    subnet = seed.public_subnet_ids[0]
    ec2.modify_subnet_attribute(SubnetId=subnet, MapPublicIpOnLaunch={"Value": True})
    launched = ec2.run_instances(
        ImageId=seed.base_image_id,
        MinCount=2,
        MaxCount=2,
        SubnetId=subnet,
    )["Instances"]
    ids = [i["InstanceId"] for i in launched] + [m["InstanceId"] for m in kit.group(seed.asg_name)["Instances"]]
    described = kit.instances(ids)
    addresses = [d["PrivateIpAddress"] for d in described.values()]
    assert len(set(addresses)) == len(addresses)
    for instance in described.values():
        address = ipaddress.ip_address(instance["PrivateIpAddress"])
        assert address in ipaddress.ip_network("127.100.0.0/16")
        assert str(address) != "127.0.0.1"
        assert "PublicIpAddress" not in instance
        assert instance["NetworkInterfaces"][0]["PrivateIpAddress"] == str(address)
    ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in launched])


def test_replacements_after_terminate_instances_join_the_target_group(kit: Kit, seed: SeedResources) -> None:
    victim = kit.group(seed.asg_name)["Instances"][0]["InstanceId"]
    kit.client("ec2").terminate_instances(InstanceIds=[victim])
    members = {m["InstanceId"] for m in kit.group(seed.asg_name)["Instances"]}
    assert victim not in members and len(members) == 4
    states = kit.target_states(seed.target_group_arn)
    assert members <= set(states)
    assert states[victim]["State"] == "draining"
    kit.wait_for(
        "the replacement to turn healthy",
        lambda: all(kit.target_states(seed.target_group_arn)[m]["State"] == "healthy" for m in members),
    )


def test_a_bastion_is_found_by_its_name_tag_and_only_when_it_is_one_running_instance(
    kit: Kit, seed: SeedResources
) -> None:
    cloud = Cloud(Aws(Target(region="us-east-1", endpoint_url=kit.info.endpoint)))
    ec2 = kit.client("ec2")
    name = unique("bastion")
    with pytest.raises(NotFound, match=rf"no running instances named '{name}'.*Start the bastion"):
        cloud.running_instance_named(name)

    def launch() -> str:
        tags = [{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}]
        return str(ec2.run_instances(ImageId=seed.base_image_id, MinCount=1, MaxCount=1,
                                     TagSpecifications=tags)["Instances"][0]["InstanceId"])  # fmt: skip

    first = launch()
    instance_id, address = cloud.running_instance_named(name)
    assert instance_id == first and ipaddress.ip_address(address).is_loopback  # the private IP: no public one here
    second = launch()
    with pytest.raises(NotFound, match=r"2 running instances named .*no other running instance has"):
        cloud.running_instance_named(name)
    ec2.terminate_instances(InstanceIds=[first, second])


@pytest.mark.parametrize("decrement", [False, True])
def test_terminate_instance_in_auto_scaling_group_deregisters_it_from_the_target_groups(
    kit: Kit, seed: SeedResources, decrement: bool
) -> None:
    victim = kit.group(seed.asg_name)["Instances"][0]["InstanceId"]
    kit.client("autoscaling").terminate_instance_in_auto_scaling_group(
        InstanceId=victim, ShouldDecrementDesiredCapacity=decrement
    )
    members = {m["InstanceId"] for m in kit.group(seed.asg_name)["Instances"]}
    assert victim not in members and len(members) == (3 if decrement else 4)
    states = kit.target_states(seed.target_group_arn)
    assert states[victim]["State"] == "draining"  # connection draining, as for any deregistered target
    assert members <= set(states)
    kit.wait_for("the victim to finish draining", lambda: victim not in kit.target_states(seed.target_group_arn))
    gone = kit.client("elbv2").describe_target_health(TargetGroupArn=seed.target_group_arn, Targets=[{"Id": victim}])
    assert gone["TargetHealthDescriptions"][0]["TargetHealth"]["Reason"] == "Target.NotRegistered"
    kit.wait_for(
        "the members to be healthy",
        lambda: all(kit.target_states(seed.target_group_arn)[m]["State"] == "healthy" for m in members),
    )


def test_detach_instances_deregisters_them_from_the_target_groups(kit: Kit, seed: SeedResources) -> None:
    detached = kit.group(seed.asg_name)["Instances"][0]["InstanceId"]
    kit.client("autoscaling").detach_instances(
        AutoScalingGroupName=seed.asg_name, InstanceIds=[detached], ShouldDecrementDesiredCapacity=True
    )
    assert kit.target_states(seed.target_group_arn)[detached]["State"] == "draining"
    kit.wait_for("the detached instance to finish draining",
                 lambda: detached not in kit.target_states(seed.target_group_arn))  # fmt: skip
    kit.client("ec2").terminate_instances(InstanceIds=[detached])


@pytest.mark.parametrize("how", ["set_desired_capacity", "update_auto_scaling_group"])
def test_a_scale_in_deregisters_the_instances_it_terminates(kit: Kit, seed: SeedResources, how: str) -> None:
    before = {m["InstanceId"] for m in kit.group(seed.asg_name)["Instances"]}
    autoscaling = kit.client("autoscaling")
    if how == "set_desired_capacity":
        autoscaling.set_desired_capacity(AutoScalingGroupName=seed.asg_name, DesiredCapacity=2)
    else:
        autoscaling.update_auto_scaling_group(AutoScalingGroupName=seed.asg_name, DesiredCapacity=2)
    members = {m["InstanceId"] for m in kit.group(seed.asg_name)["Instances"]}
    gone = before - members
    assert len(members) == 2 and len(gone) == 2
    states = kit.target_states(seed.target_group_arn)
    assert {states[i]["State"] for i in gone} == {"draining"}
    kit.wait_for("the terminated instances to finish draining",
                 lambda: not gone & set(kit.target_states(seed.target_group_arn)))  # fmt: skip
    assert set(kit.target_states(seed.target_group_arn)) == members


def test_a_terminated_instance_gives_its_subnet_address_back(kit: Kit) -> None:
    # A /28 holds 11 instances (EC2 keeps 5 of its 16 addresses): 30 launches, each terminated
    # before the next, then 11 at once, fit only if every terminated instance freed its address.
    ec2 = kit.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.0.0/28")["Subnet"]["SubnetId"]
    image = ec2.register_image(Name=unique("small-subnet"), RootDeviceName="/dev/xvda")["ImageId"]
    for _ in range(30):
        launched = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet)["Instances"]
        ec2.terminate_instances(InstanceIds=[launched[0]["InstanceId"]])
    full = ec2.run_instances(ImageId=image, MinCount=11, MaxCount=11, SubnetId=subnet)["Instances"]
    assert len(full) == 11
    ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in full])
