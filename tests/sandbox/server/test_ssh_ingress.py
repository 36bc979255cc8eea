"""POST /_kiln/ssh-ingress: what an instance's sshd asks at each login. The answer follows the
instance's security groups as they are at that moment (here without a data plane, so the source is
always this machine; tests/e2e/test_pipeline.py has the bastion as the source)."""

from __future__ import annotations

from typing import Any

from aws_sandbox_kit import Kit, unique

from release.sandbox.provision import SeedResources


def ask(kit: Kit, instance: dict[str, Any]) -> tuple[int, Any]:
    return kit.admin("POST", "ssh-ingress", {"instance_id": instance["InstanceId"], "client": "127.0.0.1:40522",
                                             "server": f"{instance['PrivateIpAddress']}:22"})


def launch(kit: Kit, seed: SeedResources, **network: Any) -> dict[str, Any]:
    ec2 = kit.client("ec2")
    found: dict[str, Any] = ec2.run_instances(ImageId=seed.base_image_id, MinCount=1, MaxCount=1,
                                              **network)["Instances"][0]
    return found


def test_the_fleet_admits_ssh_only_from_the_bastion_group_and_the_bastion_from_anywhere(
    kit: Kit, seed: SeedResources
) -> None:
    groups = seed.security_group_ids
    member = kit.group(seed.asg_name)["Instances"][0]["InstanceId"]
    app = kit.client("ec2").describe_instances(InstanceIds=[member])["Reservations"][0]["Instances"][0]
    status, verdict = ask(kit, app)
    assert status == 200 and verdict["allowed"] is False
    assert verdict["source"] == "this machine (127.0.0.1, outside every instance)"
    assert f"{groups['app']} ({seed_name(kit, groups['app'])})" in verdict["reason"]
    assert f"they admit it only from {groups['bastion']} ({seed_name(kit, groups['bastion'])})" in verdict["reason"]

    bastion = launch(kit, seed, SubnetId=seed.public_subnet_ids[0], SecurityGroupIds=[groups["bastion"]])
    status, verdict = ask(kit, bastion)
    assert (status, verdict["allowed"]) == (200, True)
    assert verdict["reason"].endswith("admits tcp 22 from 0.0.0.0/0")
    kit.client("ec2").terminate_instances(InstanceIds=[bastion["InstanceId"]])


def test_a_rule_added_later_counts_at_the_next_login(kit: Kit, seed: SeedResources) -> None:
    ec2 = kit.client("ec2")
    group = ec2.create_security_group(GroupName=unique("ssh"), Description="ssh later", VpcId=seed.vpc_id)["GroupId"]
    instance = launch(kit, seed, SubnetId=seed.private_subnet_ids[0], SecurityGroupIds=[group])
    assert ask(kit, instance)[1]["allowed"] is False
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "127.0.0.0/8"}]}])
    assert ask(kit, instance)[1]["allowed"] is True
    ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])


def test_an_unknown_instance_is_404(kit: Kit) -> None:
    status, answer = kit.admin("POST", "ssh-ingress", {"instance_id": "i-0000000000000dead", "client": "127.0.0.1:1",
                                                       "server": "127.100.9.9:22"})
    assert status == 404 and "no instance i-0000000000000dead" in answer["error"]


def seed_name(kit: Kit, group_id: str) -> str:
    described = kit.client("ec2").describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    return str(described["GroupName"])
