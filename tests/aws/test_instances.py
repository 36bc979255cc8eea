"""What the group and EC2 report about instances: launched LT version, ImageId, loopback IPs."""

from __future__ import annotations

import ipaddress

from aws_sandbox_kit import Kit, unique

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
