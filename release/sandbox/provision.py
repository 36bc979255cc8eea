"""Create the seed architecture in the sandbox, through the AWS API like any other client.

VPC with two AZs (public and private subnet each, an internet gateway and a public route table),
security groups (alb, app, bastion, db), an HTTP target group checking /health, an ALB with an
HTTP listener, the sandbox's Debian base image, the instance role and profile (Systems Manager
can manage the instances: AmazonSSMManagedInstanceCore attached), a launch template naming that
profile, the Auto Scaling group
(min 2 / desired 4 / max 8, private subnets, ELB health checks with a grace period, the template
referenced by a *numbered* version), the two CloudWatch alarms, Kiln's DynamoDB ledger table and
the app's Secrets Manager secret.

Idempotent: everything is looked up by name first and created only when missing; nothing that
exists is changed (the secret keeps its JWT_SECRET). Boto3 clients come from the caller's
factory `(service, region) -> client`, so this module never imports boto3 itself.

Why one module (~450 lines): the seed is one ordered story (network, roles, template, group,
balancer, alarms) whose steps share ids.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from release.errors import SandboxError

ClientFactory = Callable[[str, str], Any]

BASE_IMAGE_NAME = "debian-12-amd64-sandbox"
DEBIAN_OWNER_ID = "136693071363"  # the account Debian publishes its AMIs from
VPC_CIDR = "10.40.0.0/16"
SUBNETS = {  # name suffix -> (AZ index, CIDR, public?)
    "public-a": (0, "10.40.0.0/24", True),
    "public-b": (1, "10.40.1.0/24", True),
    "private-a": (0, "10.40.10.0/24", False),
    "private-b": (1, "10.40.11.0/24", False),
}


@dataclass(frozen=True)
class SeedNames:
    """Resource names; Kiln's config supplies them from versions.toml's [environments.sandbox]."""

    asg: str = "web-sandbox"
    launch_template: str = "web-sandbox"
    target_group: str = "web-sandbox"
    load_balancer: str = "web-sandbox"
    table: str = "kiln-ledger"
    secret: str = "kiln/sandbox/webapp"
    alarm_target_5xx: str = "web-sandbox-target-5xx"
    alarm_unhealthy_hosts: str = "web-sandbox-unhealthy-hosts"
    network: str = "web-sandbox"  # Name tag prefix of the VPC, subnets and security groups
    base_image: str = BASE_IMAGE_NAME  # published by the sandbox server, like Debian's AMIs
    base_image_owner: str = DEBIAN_OWNER_ID
    instance_type: str = "t3.micro"
    key_name: str | None = None  # an imported key pair the launch template authorises for SSH
    # The instance role and its instance profile (iam/kiln.cfn.yaml's InstanceRoleName), global
    # like every IAM name: both sandbox environments share it, as two regions of an account do.
    instance_profile: str = "kiln-instance"


@dataclass(frozen=True)
class SeedResources:
    vpc_id: str
    public_subnet_ids: tuple[str, str]
    private_subnet_ids: tuple[str, str]
    security_group_ids: dict[str, str]  # alb, app, bastion, db
    target_group_arn: str
    load_balancer_arn: str
    listener_arn: str
    base_image_id: str
    instance_profile_arn: str
    launch_template_id: str
    launch_template_version: str
    asg_name: str
    alarm_names: tuple[str, str]
    table_name: str
    secret_arn: str


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _tags(name: str, **extra: str) -> list[dict[str, str]]:
    return [{"Key": "Name", "Value": name}, *({"Key": k, "Value": v} for k, v in extra.items())]


def _named(ec2: Any, describe: str, key: str, name: str, **filters: str) -> dict[str, Any] | None:
    found = getattr(ec2, describe)(
        Filters=[{"Name": "tag:Name", "Values": [name]}, *({"Name": k, "Values": [v]} for k, v in filters.items())]
    )[key]
    return found[0] if found else None


def _network(ec2: Any, names: SeedNames) -> tuple[str, dict[str, str]]:
    vpc = _named(ec2, "describe_vpcs", "Vpcs", names.network)
    if vpc is None:
        vpc = ec2.create_vpc(
            CidrBlock=VPC_CIDR, TagSpecifications=[{"ResourceType": "vpc", "Tags": _tags(names.network)}]
        )["Vpc"]
    vpc_id = str(vpc["VpcId"])
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]][:2]
    subnets: dict[str, str] = {}
    for suffix, (zone, cidr, _) in SUBNETS.items():
        name = f"{names.network}-{suffix}"
        subnet = _named(ec2, "describe_subnets", "Subnets", name, **{"vpc-id": vpc_id})
        if subnet is None:
            subnet = ec2.create_subnet(
                VpcId=vpc_id,
                CidrBlock=cidr,
                AvailabilityZone=zones[zone],
                TagSpecifications=[{"ResourceType": "subnet", "Tags": _tags(name)}],
            )["Subnet"]
        subnets[suffix] = str(subnet["SubnetId"])

    igw_name = f"{names.network}-igw"
    if _named(ec2, "describe_internet_gateways", "InternetGateways", igw_name) is None:
        igw = ec2.create_internet_gateway(
            TagSpecifications=[{"ResourceType": "internet-gateway", "Tags": _tags(igw_name)}]
        )["InternetGateway"]["InternetGatewayId"]
        ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc_id)
        table = ec2.create_route_table(
            VpcId=vpc_id,
            TagSpecifications=[{"ResourceType": "route-table", "Tags": _tags(f"{names.network}-public")}],
        )["RouteTable"]["RouteTableId"]
        ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
        for suffix, (_, _, public) in SUBNETS.items():
            if public:
                ec2.associate_route_table(RouteTableId=table, SubnetId=subnets[suffix])
    return vpc_id, subnets


def _security_groups(ec2: Any, names: SeedNames, vpc_id: str) -> dict[str, str]:
    wanted = {
        "alb": "HTTP from anywhere to the load balancer",
        "bastion": "SSH from anywhere to the bastion",
        "app": "HTTP from the load balancer, SSH from the bastion",
        "db": "PostgreSQL from the app",
    }
    groups: dict[str, str] = {}
    created: set[str] = set()
    for role, description in wanted.items():
        name = f"{names.network}-{role}"
        found = ec2.describe_security_groups(
            Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc_id]}]
        )["SecurityGroups"]
        if found:
            groups[role] = str(found[0]["GroupId"])
            continue
        groups[role] = str(
            ec2.create_security_group(
                GroupName=name,
                Description=description,
                VpcId=vpc_id,
                TagSpecifications=[{"ResourceType": "security-group", "Tags": _tags(name)}],
            )["GroupId"]
        )
        created.add(role)

    def allow(role: str, port: int, *, cidr: str | None = None, source: str | None = None) -> None:
        rule: dict[str, Any] = {"IpProtocol": "tcp", "FromPort": port, "ToPort": port}
        if cidr:
            rule["IpRanges"] = [{"CidrIp": cidr}]
        if source:
            rule["UserIdGroupPairs"] = [{"GroupId": groups[source]}]
        ec2.authorize_security_group_ingress(GroupId=groups[role], IpPermissions=[rule])

    if "alb" in created:
        allow("alb", 80, cidr="0.0.0.0/0")
    if "bastion" in created:
        allow("bastion", 22, cidr="0.0.0.0/0")
    if "app" in created:
        allow("app", 80, source="alb")
        allow("app", 22, source="bastion")
    if "db" in created:
        allow("db", 5432, source="app")
    return groups


def _load_balancing(elbv2: Any, names: SeedNames, vpc_id: str, public: list[str], alb_sg: str) -> tuple[str, str, str]:
    try:
        tg_arn = elbv2.describe_target_groups(Names=[names.target_group])["TargetGroups"][0]["TargetGroupArn"]
    except ClientError as exc:
        if _code(exc) != "TargetGroupNotFound":
            raise
        tg_arn = elbv2.create_target_group(
            Name=names.target_group,
            Protocol="HTTP",
            Port=80,
            VpcId=vpc_id,
            TargetType="instance",
            HealthCheckProtocol="HTTP",
            HealthCheckPath="/health",
            HealthCheckPort="traffic-port",
            HealthCheckIntervalSeconds=10,
            HealthCheckTimeoutSeconds=5,
            HealthyThresholdCount=2,
            UnhealthyThresholdCount=2,
            Matcher={"HttpCode": "200"},
        )["TargetGroups"][0]["TargetGroupArn"]
        elbv2.modify_target_group_attributes(
            TargetGroupArn=tg_arn, Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": "30"}]
        )
    try:
        alb_arn = elbv2.describe_load_balancers(Names=[names.load_balancer])["LoadBalancers"][0]["LoadBalancerArn"]
    except ClientError as exc:
        if _code(exc) != "LoadBalancerNotFound":
            raise
        alb_arn = elbv2.create_load_balancer(
            Name=names.load_balancer,
            Subnets=public,
            SecurityGroups=[alb_sg],
            Scheme="internet-facing",
            Type="application",
            IpAddressType="ipv4",
        )["LoadBalancers"][0]["LoadBalancerArn"]
    listeners = elbv2.describe_listeners(LoadBalancerArn=alb_arn)["Listeners"]
    http = [listener for listener in listeners if listener["Port"] == 80]
    if http:
        listener_arn = http[0]["ListenerArn"]
    else:
        listener_arn = elbv2.create_listener(
            LoadBalancerArn=alb_arn,
            Protocol="HTTP",
            Port=80,
            DefaultActions=[{"Type": "forward", "TargetGroupArn": tg_arn}],
        )["Listeners"][0]["ListenerArn"]
    return str(tg_arn), str(alb_arn), str(listener_arn)


def _base_image(ec2: Any, names: SeedNames) -> str:
    """The base AMI the sandbox server publishes (owned by Debian's account, as on AWS)."""
    found = ec2.describe_images(
        Owners=[names.base_image_owner], Filters=[{"Name": "name", "Values": [names.base_image]}]
    )["Images"]
    if not found:
        raise SandboxError(
            f"the sandbox publishes no base image {names.base_image} owned by {names.base_image_owner}",
            where="sandbox provisioning",
            hint="Restart the sandbox (`inv sandbox.reset`) with the base image settings of versions.toml.",
        )
    newest = max(found, key=lambda image: str(image.get("CreationDate", "")))
    return str(newest["ImageId"])


def _user_data(names: SeedNames, region: str) -> str:
    """What the image's boot unit (webapp-boot) reads: where its secret is. Base64, as EC2 wants."""
    document = json.dumps({"secret_id": names.secret, "region": region})
    return base64.b64encode(document.encode()).decode()


SSM_CORE_POLICY_ARN = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def _instance_profile(iam: Any, names: SeedNames) -> str:
    """The fleet's instance role (trusted by EC2, AmazonSSMManagedInstanceCore attached, so Run
    Command reaches its instances) and its instance profile; the profile's ARN."""
    name = names.instance_profile
    try:
        iam.get_role(RoleName=name)
    except ClientError as exc:
        if _code(exc) != "NoSuchEntity":
            raise
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(EC2_TRUST),
                        Description="The sandbox fleet's instances (iam/instance.json on AWS)")  # fmt: skip
        iam.attach_role_policy(RoleName=name, PolicyArn=SSM_CORE_POLICY_ARN)
    try:
        return str(iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Arn"])
    except ClientError as exc:
        if _code(exc) != "NoSuchEntity":
            raise
    profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return str(profile["Arn"])


def _launch_template(
    ec2: Any, names: SeedNames, image_id: str, app_sg: str, region: str, profile_arn: str
) -> tuple[str, str]:
    try:
        template = ec2.describe_launch_templates(LaunchTemplateNames=[names.launch_template])["LaunchTemplates"][0]
        return str(template["LaunchTemplateId"]), str(template["DefaultVersionNumber"])
    except ClientError as exc:
        if not _code(exc).startswith("InvalidLaunchTemplateName"):
            raise
    template = ec2.create_launch_template(
        LaunchTemplateName=names.launch_template,
        VersionDescription="seed: sandbox base image",
        LaunchTemplateData={
            "ImageId": image_id,
            "InstanceType": names.instance_type,
            "SecurityGroupIds": [app_sg],
            "IamInstanceProfile": {"Arn": profile_arn},
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": _tags(names.asg)}],
            "UserData": _user_data(names, region),
            **({"KeyName": names.key_name} if names.key_name else {}),
        },
    )["LaunchTemplate"]
    return str(template["LaunchTemplateId"]), str(template["DefaultVersionNumber"])


def _group(autoscaling: Any, names: SeedNames, template_id: str, version: str, private: list[str], tg_arn: str) -> None:
    if autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[names.asg])["AutoScalingGroups"]:
        return
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=names.asg,
        LaunchTemplate={"LaunchTemplateId": template_id, "Version": version},
        MinSize=2,
        MaxSize=8,
        DesiredCapacity=4,
        VPCZoneIdentifier=",".join(private),
        TargetGroupARNs=[tg_arn],
        HealthCheckType="ELB",
        HealthCheckGracePeriod=300,  # AWS console default; scaled like every sandbox duration
        Tags=[{"Key": "Name", "Value": names.asg, "PropagateAtLaunch": True}],
    )


def _alarms(cloudwatch: Any, names: SeedNames, alb_arn: str, tg_arn: str) -> None:
    # CloudWatch dimension values are the ARN suffixes: app/<name>/<id>, targetgroup/<name>/<id>.
    dimensions = [
        {"Name": "LoadBalancer", "Value": alb_arn.split(":loadbalancer/", 1)[1]},
        {"Name": "TargetGroup", "Value": tg_arn.rsplit(":", 1)[1]},
    ]
    existing = {
        a["AlarmName"]
        for a in cloudwatch.describe_alarms(AlarmNames=[names.alarm_target_5xx, names.alarm_unhealthy_hosts])[
            "MetricAlarms"
        ]
    }
    if names.alarm_target_5xx not in existing:
        cloudwatch.put_metric_alarm(
            AlarmName=names.alarm_target_5xx,
            AlarmDescription="Targets answer 5xx: the release is broken",
            Namespace="AWS/ApplicationELB",
            MetricName="HTTPCode_Target_5XX_Count",
            Dimensions=dimensions,
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=5,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
            TreatMissingData="notBreaching",
        )
    if names.alarm_unhealthy_hosts not in existing:
        cloudwatch.put_metric_alarm(
            AlarmName=names.alarm_unhealthy_hosts,
            AlarmDescription="Targets fail their health checks",
            Namespace="AWS/ApplicationELB",
            MetricName="UnHealthyHostCount",
            Dimensions=dimensions,
            # Sustained, not passing: an instance that boots during a rolling refresh fails a few
            # checks; a host unhealthy for three whole minutes in a row is a broken release.
            Statistic="Minimum",
            Period=60,
            EvaluationPeriods=3,
            DatapointsToAlarm=3,
            Threshold=1,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
            TreatMissingData="notBreaching",
        )


def _table(dynamodb: Any, names: SeedNames) -> None:
    try:
        dynamodb.describe_table(TableName=names.table)
        return
    except ClientError as exc:
        if _code(exc) != "ResourceNotFoundException":
            raise
    dynamodb.create_table(
        TableName=names.table,
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        BillingMode="PAY_PER_REQUEST",
    )


def _secret(secretsmanager: Any, names: SeedNames, database_url: str) -> str:
    try:
        return str(secretsmanager.describe_secret(SecretId=names.secret)["ARN"])
    except ClientError as exc:
        if _code(exc) != "ResourceNotFoundException":
            raise
    value = {"JWT_SECRET": secrets.token_urlsafe(48), "DATABASE_URL": database_url}
    return str(
        secretsmanager.create_secret(
            Name=names.secret,
            Description="The web app's runtime secrets, read by instances at boot",
            SecretString=json.dumps(value),
        )["ARN"]
    )


def provision(
    clients: ClientFactory,
    region: str,
    names: SeedNames | None = None,
    *,
    base_image_id: str | None = None,
    database_url: str = "postgresql://webapp@127.0.0.1:5432/webapp",
) -> SeedResources:
    """Create whatever of the seed architecture is missing; return the ids of all of it."""
    names = names or SeedNames()
    ec2 = clients("ec2", region)
    elbv2 = clients("elbv2", region)
    vpc_id, subnets = _network(ec2, names)
    groups = _security_groups(ec2, names, vpc_id)
    public = [subnets["public-a"], subnets["public-b"]]
    private = [subnets["private-a"], subnets["private-b"]]
    tg_arn, alb_arn, listener_arn = _load_balancing(elbv2, names, vpc_id, public, groups["alb"])
    image_id = base_image_id or _base_image(ec2, names)
    profile_arn = _instance_profile(clients("iam", region), names)
    template_id, version = _launch_template(ec2, names, image_id, groups["app"], region, profile_arn)
    _group(clients("autoscaling", region), names, template_id, version, private, tg_arn)
    _alarms(clients("cloudwatch", region), names, alb_arn, tg_arn)
    _table(clients("dynamodb", region), names)
    secret_arn = _secret(clients("secretsmanager", region), names, database_url)
    return SeedResources(
        vpc_id=vpc_id,
        public_subnet_ids=(public[0], public[1]),
        private_subnet_ids=(private[0], private[1]),
        security_group_ids=groups,
        target_group_arn=tg_arn,
        load_balancer_arn=alb_arn,
        listener_arn=listener_arn,
        base_image_id=image_id,
        instance_profile_arn=profile_arn,
        launch_template_id=template_id,
        launch_template_version=version,
        asg_name=names.asg,
        alarm_names=(names.alarm_target_5xx, names.alarm_unhealthy_hosts),
        table_name=names.table,
        secret_arn=secret_arn,
    )
