"""The seed architecture, as provisioned through the API."""

from __future__ import annotations

import base64
import json

from aws_sandbox_kit import Kit

from release.sandbox.provision import DEBIAN_OWNER_ID, SeedNames, SeedResources, provision


def test_seed_architecture_matches_the_spec(kit: Kit, seed: SeedResources, seed_names: SeedNames) -> None:
    ec2, elbv2 = kit.client("ec2"), kit.client("elbv2")
    subnets = ec2.describe_subnets(SubnetIds=[*seed.public_subnet_ids, *seed.private_subnet_ids])["Subnets"]
    assert len({s["AvailabilityZone"] for s in subnets}) == 2
    assert {s["VpcId"] for s in subnets} == {seed.vpc_id}
    assert set(seed.security_group_ids) == {"alb", "app", "bastion", "db"}

    [tg] = elbv2.describe_target_groups(TargetGroupArns=[seed.target_group_arn])["TargetGroups"]
    assert (tg["Protocol"], tg["Port"], tg["HealthCheckPath"]) == ("HTTP", 80, "/health")
    assert (tg["HealthCheckIntervalSeconds"], tg["HealthyThresholdCount"], tg["UnhealthyThresholdCount"]) == (10, 2, 2)
    [listener] = elbv2.describe_listeners(LoadBalancerArn=seed.load_balancer_arn)["Listeners"]
    assert listener["DefaultActions"][0]["TargetGroupArn"] == seed.target_group_arn

    base = ec2.describe_images(ImageIds=[seed.base_image_id])["Images"][0]
    assert (base["Name"], base["OwnerId"], base["Public"]) == ("debian-12-amd64-sandbox", DEBIAN_OWNER_ID, True)

    group = kit.group(seed.asg_name)
    assert (group["MinSize"], group["DesiredCapacity"], group["MaxSize"]) == (2, 4, 8)
    assert group["LaunchTemplate"] == {
        "LaunchTemplateId": seed.launch_template_id,
        "LaunchTemplateName": seed.asg_name,
        "Version": "1",
    }
    assert (group["HealthCheckType"], group["HealthCheckGracePeriod"]) == ("ELB", 300)
    assert group["TargetGroupARNs"] == [seed.target_group_arn]
    assert set(group["VPCZoneIdentifier"].split(",")) == set(seed.private_subnet_ids)

    alarms = kit.client("cloudwatch").describe_alarms(AlarmNames=list(seed.alarm_names))["MetricAlarms"]
    assert {a["MetricName"] for a in alarms} == {"HTTPCode_Target_5XX_Count", "UnHealthyHostCount"}
    for alarm in alarms:
        assert {d["Name"] for d in alarm["Dimensions"]} == {"LoadBalancer", "TargetGroup"}

    table = kit.client("dynamodb").describe_table(TableName=seed.table_name)["Table"]
    assert {(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]} == {("pk", "HASH"), ("sk", "RANGE")}

    secret = json.loads(kit.client("secretsmanager").get_secret_value(SecretId=seed.secret_arn)["SecretString"])
    assert set(secret) == {"JWT_SECRET", "DATABASE_URL"} and len(secret["JWT_SECRET"]) >= 32

    # The image is environment-agnostic: the launch template's user data tells its boot unit
    # which secret to read (see docs/image.md).
    data = kit.client("ec2").describe_launch_template_versions(LaunchTemplateId=seed.launch_template_id)[
        "LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert json.loads(base64.b64decode(data["UserData"])) == {"secret_id": seed_names.secret, "region": "us-east-1"}


def test_provision_is_idempotent(kit: Kit, seed: SeedResources, seed_names: SeedNames) -> None:
    secret_before = kit.client("secretsmanager").get_secret_value(SecretId=seed.secret_arn)["SecretString"]
    again = provision(lambda service, region: kit.client(service, region), "us-east-1", seed_names)
    assert again == seed
    assert kit.client("secretsmanager").get_secret_value(SecretId=seed.secret_arn)["SecretString"] == secret_before
    assert len(kit.group(seed.asg_name)["Instances"]) == 4


def test_the_base_image_is_published_in_every_region_like_debians(kit: Kit) -> None:
    """versions.toml's [base_image] (owners + name filter, newest) finds it in any region."""
    for region in ("us-east-1", "eu-central-1"):
        images = kit.client("ec2", region).describe_images(
            Owners=[DEBIAN_OWNER_ID], Filters=[{"Name": "name", "Values": ["debian-12-amd64-*"]}]
        )["Images"]
        assert [i["Name"] for i in images] == ["debian-12-amd64-sandbox"]
