"""The AWS side of a release in Kiln's words: `Cloud` reads and changes one environment's region
(images, launch templates, the group, its refreshes, target health, alarms) and returns
release.model types. It talks to AWS only through aws.Aws (the session, retries and errors).

Why one module (~600 lines): every AWS read and write Kiln makes, each a short method; the
IAM policy test and the contract tests walk this one class.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from packaging.version import InvalidVersion, Version

from release.aws import Aws
from release.clock import as_utc
from release.errors import AwsError, NotFound
from release.model import (
    LAYER_FOUNDATION,
    TAG_APP,
    TAG_FINGERPRINT,
    TAG_LAYER,
    TAG_VALIDATED,
    TAG_VERSION,
    AmiRef,
    CommandInvocation,
    GroupState,
    InstanceState,
    RefreshState,
    TemplateVersion,
)

if TYPE_CHECKING:  # the clients' types (types-boto3, a dev dependency) for mypy; nothing at run time
    from types_boto3_autoscaling import AutoScalingClient
    from types_boto3_autoscaling.type_defs import (
        DescribeInstanceRefreshesTypeTypeDef,
        InstanceRefreshTypeDef,
        RefreshPreferencesTypeDef,
    )
    from types_boto3_ec2 import EC2Client
    from types_boto3_ec2.type_defs import (
        FilterTypeDef,
        ImageTypeDef,
        InstanceTypeDef,
        LaunchTemplateVersionTypeDef,
        TagTypeDef,
    )


class Cloud:
    """What Kiln reads and changes in one environment's region, in Kiln's words.

    One object remembers what cannot change while it lives, so that a gate polling a group of
    hundreds of instances asks AWS the same few calls each poll: a target group's ARN for its name,
    and each instance's launch facts (`launch_facts`)."""

    def __init__(self, aws: Aws) -> None:
        self.aws = aws
        self.region = aws.target.region
        self._target_group_arns: dict[str, str] = {}
        self._launched: dict[str, InstanceTypeDef] = {}  # instance id -> EC2's description, when complete

    def _ec2(self) -> EC2Client:
        return self.aws.client("ec2")

    def _asg(self) -> AutoScalingClient:
        return self.aws.client("autoscaling")

    # Images
    def _described_app_images(self, app: str, version: str | None = None,
                              layer: str | None = None) -> list[ImageTypeDef]:
        """EC2's description of the app's AMIs owned by this account (optionally one version or layer);
        foundations included unless a layer or version is asked for."""
        filters: list[FilterTypeDef] = [{"Name": "tag:" + TAG_APP, "Values": [app]}]
        if version is not None:
            filters.append({"Name": "tag:" + TAG_VERSION, "Values": [version]})
        if layer is not None:
            filters.append({"Name": "tag:" + TAG_LAYER, "Values": [layer]})
        with self.aws.call("DescribeImages", f"{app} images in {self.region}"):
            pages = self._ec2().get_paginator("describe_images").paginate(Owners=["self"], Filters=filters,
                                                                          IncludeDeprecated=True)
            return [image for page in pages for image in page["Images"]]

    def app_images(self, app: str, version: str | None = None) -> list[AmiRef]:
        """Kiln's app AMIs for `app` (optionally one version), newest first; never a foundation."""
        refs = [_ami_ref(i, self.region) for i in self._described_app_images(app, version)]
        return sorted((r for r in refs if not r.is_foundation), key=lambda r: r.created_at, reverse=True)

    def foundation_images(self, app: str) -> list[AmiRef]:
        """The foundations app images of `app` are baked on, newest first."""
        refs = [_ami_ref(i, self.region) for i in self._described_app_images(app, layer=LAYER_FOUNDATION)]
        return sorted(refs, key=lambda r: r.created_at, reverse=True)

    def image(self, image_id: str) -> AmiRef | None:
        try:
            with self.aws.call("DescribeImages", image_id):
                images = self._ec2().describe_images(ImageIds=[image_id], IncludeDeprecated=True)["Images"]
        except AwsError as err:
            if (err.code or "").startswith("InvalidAMIID"):
                return None
            raise
        return _ami_ref(images[0], self.region) if images else None

    def base_image(self, *, owners: tuple[str, ...], name: str, pinned: str | None) -> AmiRef | None:
        """The pinned AMI, or the newest available one named like `name` among `owners`."""
        if pinned:
            return self.image(pinned)
        with self.aws.call("DescribeImages", f"{name} owned by {', '.join(owners)}"):
            images = self._ec2().describe_images(
                Owners=list(owners), Filters=[{"Name": "name", "Values": [name]},
                                              {"Name": "state", "Values": ["available"]}])["Images"]
        refs = sorted((_ami_ref(i, self.region) for i in images), key=lambda r: r.created_at)
        return refs[-1] if refs else None

    def tag_image(self, image_id: str, tags: dict[str, str]) -> None:
        """Tag an AMI and its snapshots alike."""
        snapshots = self.snapshots_of(image_id)
        with self.aws.call("CreateTags", image_id):
            self._ec2().create_tags(Resources=[image_id, *snapshots],
                                    Tags=[{"Key": k, "Value": v} for k, v in tags.items()])

    def snapshots_of(self, image_id: str) -> tuple[str, ...]:
        with self.aws.call("DescribeImages", image_id):
            images = self._ec2().describe_images(ImageIds=[image_id], IncludeDeprecated=True)["Images"]
        return _snapshot_ids(images[0]) if images else ()

    def catalogue(self, app: str) -> list[tuple[AmiRef, tuple[str, ...]]]:
        """Every Kiln AMI of the app in this region, with its snapshots."""
        return [(_ami_ref(i, self.region), _snapshot_ids(i)) for i in self._described_app_images(app)]

    def delete_image(self, image_id: str, snapshot_ids: tuple[str, ...]) -> None:
        """Deregister the AMI, then delete its snapshots (AWS keeps them otherwise)."""
        with self.aws.call("DeregisterImage", image_id):
            self._ec2().deregister_image(ImageId=image_id)
        for snapshot in snapshot_ids:
            with self.aws.call("DeleteSnapshot", snapshot):
                self._ec2().delete_snapshot(SnapshotId=snapshot)

    def caller_account(self) -> str:
        """The account these credentials act in (sts:GetCallerIdentity, which needs no permission).
        With a role to assume, this is the first call that signs in."""
        hint = None
        if self.aws.target.role_arn:
            hint = (f"Kiln signs in by assuming {self.aws.target.role_arn}: check the role's trust policy "
                    "(and external_id), and the credentials it is assumed from (aws sts get-caller-identity).")
        with self.aws.call("GetCallerIdentity", hint=hint):
            return str(self.aws.client("sts").get_caller_identity()["Account"])

    def require_imds_v2(self, image_id: str, region: str | None = None) -> None:
        """Mark the AMI IMDSv2-only (ImdsSupport=v2.0): instances launched from it require session
        tokens unless their launch template says otherwise. AWS cannot undo this on an AMI."""
        with self.aws.call("ModifyImageAttribute", f"{image_id} ImdsSupport in {region or self.region}"):
            self.aws.client("ec2", region).modify_image_attribute(ImageId=image_id, ImdsSupport={"Value": "v2.0"})

    def deprecate_image(self, image_id: str, at: datetime, region: str | None = None) -> None:
        with self.aws.call("EnableImageDeprecation", f"{image_id} in {region or self.region}"):
            self.aws.client("ec2", region).enable_image_deprecation(ImageId=image_id, DeprecateAt=at)

    def copy_image(self, source: AmiRef, kms_key_id: str | None, *, cross_account: bool = False) -> str:
        """Copy an AMI into this region, encrypted with the key when one is named. The copy and its
        new snapshots carry the source's tags, passed explicitly: CopyImageTags copies no snapshot
        tags, and none of another account's tags on a shared AMI (a copy made by another account)."""
        tags = [{"Key": k, "Value": v} for k, v in sorted(source.tags.items()) if not k.startswith("aws:")]
        args: dict[str, Any] = {"SourceRegion": source.region, "SourceImageId": source.image_id,
                                "Name": source.name}
        if tags:
            args["TagSpecifications"] = [{"ResourceType": kind, "Tags": tags} for kind in ("image", "snapshot")]
        if kms_key_id:
            args.update(Encrypted=True, KmsKeyId=kms_key_id)
        hint = ("A copy of another account's encrypted AMI needs its KMS key to allow this account "
                "(kms:DescribeKey, kms:Decrypt, kms:CreateGrant, kms:ReEncrypt*): bake with a customer managed "
                "key (kms_key_id) shared with it; AWS's default EBS key cannot be shared." if cross_account else None)
        with self.aws.call("CopyImage", f"{source.image_id} from {source.region} to {self.region}", hint=hint):
            return str(self._ec2().copy_image(**args)["ImageId"])

    def share_image(self, image_id: str, account_id: str) -> list[str]:
        """Let `account_id` launch and copy the AMI: a launch permission on it, and a create-volume
        permission on each of its snapshots (CopyImage reads them). Returns the snapshot ids."""
        snapshots = list(self.snapshots_of(image_id))
        with self.aws.call("ModifyImageAttribute", f"{image_id} launch permission for {account_id}"):
            self._ec2().modify_image_attribute(ImageId=image_id,
                                               LaunchPermission={"Add": [{"UserId": account_id}]})
        for snapshot in snapshots:
            with self.aws.call("ModifySnapshotAttribute", f"{snapshot} create-volume permission for {account_id}"):
                self._ec2().modify_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission",
                                                      OperationType="add", UserIds=[account_id])
        return snapshots

    def image_references(self) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, list[str]]]:
        """Who uses which AMI in this region: (launch template versions, instances, SSM parameters).

        Launch template versions count when an Auto Scaling group uses them, or they are the
        template's default or latest version (what $Default / $Latest would launch)."""
        templates: dict[str, list[str]] = {}
        with self.aws.call("DescribeAutoScalingGroups", f"all groups in {self.region}"):
            pages = self._asg().get_paginator("describe_auto_scaling_groups").paginate()
            groups = [g for page in pages for g in page["AutoScalingGroups"]]
        used: dict[str, set[str]] = {}
        for g in groups:
            lt = g.get("LaunchTemplate") or {}
            if lt.get("LaunchTemplateName"):
                used.setdefault(lt["LaunchTemplateName"], set()).add(str(lt.get("Version") or "$Default"))
        with self.aws.call("DescribeLaunchTemplates", f"all templates in {self.region}"):
            template_pages = self._ec2().get_paginator("describe_launch_templates").paginate()
            launch_templates = [t for page in template_pages for t in page["LaunchTemplates"]]
        for t in launch_templates:
            name = t["LaunchTemplateName"]
            wanted = {str(t["DefaultVersionNumber"]): "default", str(t["LatestVersionNumber"]): "latest"}
            for ref in used.get(name, ()):
                number = {"$Default": str(t["DefaultVersionNumber"]), "$Latest": str(t["LatestVersionNumber"])}.get(
                    ref, ref)
                wanted[number] = "used by an Auto Scaling group"
            for v in self.template_versions(name):
                if str(v.number) in wanted and v.image_id:
                    templates.setdefault(v.image_id, []).append(f"{name} v{v.number} ({wanted[str(v.number)]})")
        instances: dict[str, list[str]] = {}
        with self.aws.call("DescribeInstances", f"all instances in {self.region}"):
            instance_pages = self._ec2().get_paginator("describe_instances").paginate(
                Filters=[{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])
            for page in instance_pages:
                for r in page["Reservations"]:
                    for i in r["Instances"]:
                        instances.setdefault(i["ImageId"], []).append(i["InstanceId"])
        return templates, instances, self._ssm_image_parameters()

    def _ssm_image_parameters(self) -> dict[str, list[str]]:
        ssm = self.aws.client("ssm")
        with self.aws.call("DescribeParameters", f"all parameters in {self.region}"):
            pages = ssm.get_paginator("describe_parameters").paginate()
            names = [p["Name"] for page in pages for p in page["Parameters"]]
        found: dict[str, list[str]] = {}
        for start in range(0, len(names), 10):  # GetParameters takes at most 10 names
            with self.aws.call("GetParameters", ", ".join(names[start:start + 3])):
                params = ssm.get_parameters(Names=names[start:start + 10])["Parameters"]
            for p in params:
                if str(p.get("Value", "")).startswith("ami-"):
                    found.setdefault(p["Value"], []).append(p["Name"])
        return found

    # Instances
    def instances_tagged(self, tags: dict[str, str], *, states: tuple[str, ...]) -> list[str]:
        filters: list[FilterTypeDef] = [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
        filters.append({"Name": "instance-state-name", "Values": list(states)})
        with self.aws.call("DescribeInstances", ", ".join(f"{k}={v}" for k, v in tags.items())):
            pages = self._ec2().get_paginator("describe_instances").paginate(Filters=filters)
            return [i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def running_instance_named(self, name: str) -> tuple[str, str]:
        """(instance id, address) of the running instance tagged Name=`name`, such as a bastion:
        its public IP, or its private IP when it has none (a VPN, the sandbox)."""
        filters: list[FilterTypeDef] = [{"Name": "tag:Name", "Values": [name]},
                                        {"Name": "instance-state-name", "Values": ["running"]}]
        with self.aws.call("DescribeInstances", f"Name={name}"):
            pages = self._ec2().get_paginator("describe_instances").paginate(Filters=filters)
            found = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
        addressed = [i for i in found if i.get("PublicIpAddress") or i.get("PrivateIpAddress")]
        if len(addressed) != 1:
            raise NotFound(f"{len(addressed) or 'no'} running instances named {name!r} in {self.aws.target.region}",
                           where="ssh bastion_instance",
                           hint="Start the bastion, or fix bastion_instance in the environment's [ssh] settings"
                           if not addressed else "Give the bastion a Name tag no other running instance has")
        chosen = addressed[0]
        return str(chosen["InstanceId"]), str(chosen.get("PublicIpAddress") or chosen["PrivateIpAddress"])

    def launch_from_template(self, template: str, image_id: str, key_name: str, tags: dict[str, str]) -> str:
        """One instance from the template's default version with another image (the smoke test)."""
        with self.aws.call("RunInstances", f"{image_id} from {template}"):
            out = self._ec2().run_instances(
                LaunchTemplate={"LaunchTemplateName": template, "Version": "$Default"}, ImageId=image_id,
                KeyName=key_name, MinCount=1, MaxCount=1,
                TagSpecifications=[{"ResourceType": "instance",
                                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])
        return str(out["Instances"][0]["InstanceId"])

    def fleet_network(self, template: str, group: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(subnet ids, security group ids) the group's instances get: the group's subnets and the
        security groups of the template's default version; empty where either does not say."""
        with self.aws.call("DescribeAutoScalingGroups", group):
            found = self._asg().describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
        subnets = tuple(s.strip() for s in (found[0].get("VPCZoneIdentifier") or "").split(",") if s.strip()) \
            if found else ()
        try:
            with self.aws.call("DescribeLaunchTemplateVersions", f"{template} $Default"):
                versions = self._ec2().describe_launch_template_versions(
                    LaunchTemplateName=template, Versions=["$Default"])["LaunchTemplateVersions"]
        except AwsError as err:
            if err.code and ("NotFound" in err.code or "DoesNotExist" in err.code):
                return subnets, ()
            raise
        data = versions[0].get("LaunchTemplateData", {}) if versions else {}
        groups = list(data.get("SecurityGroupIds", []))
        for interface in data.get("NetworkInterfaces", []):
            groups += [g for g in interface.get("Groups", []) if g not in groups]
        return subnets, tuple(groups)

    def instance(self, instance_id: str) -> tuple[str, str | None]:
        """(state, private IP). An instance just launched may not show yet (EC2's reads are
        eventually consistent: InvalidInstanceID.NotFound, or no reservation): it is "pending"."""
        try:
            with self.aws.call("DescribeInstances", instance_id):
                r = self._ec2().describe_instances(InstanceIds=[instance_id])["Reservations"]
        except AwsError as err:
            if err.code != "InvalidInstanceID.NotFound":
                raise
            return "pending", None
        if not r or not r[0].get("Instances"):
            return "pending", None
        i = r[0]["Instances"][0]
        return i["State"]["Name"], i.get("PrivateIpAddress")

    def terminate(self, instance_id: str) -> None:
        with self.aws.call("TerminateInstances", instance_id):
            self._ec2().terminate_instances(InstanceIds=[instance_id])

    def import_key_pair(self, name: str, public_key: str) -> None:
        with self.aws.call("ImportKeyPair", name):
            self._ec2().import_key_pair(KeyName=name, PublicKeyMaterial=public_key.encode())

    def delete_key_pair(self, name: str) -> None:
        with self.aws.call("DeleteKeyPair", name):
            self._ec2().delete_key_pair(KeyName=name)

    # Launch templates
    def template_versions(self, name: str) -> list[TemplateVersion]:
        """Every numbered version of the template, oldest first; [] when it does not exist."""
        try:
            with self.aws.call("DescribeLaunchTemplateVersions", name):
                pages = self._ec2().get_paginator("describe_launch_template_versions").paginate(
                    LaunchTemplateName=name)
                raw = [v for page in pages for v in page["LaunchTemplateVersions"]]
        except AwsError as err:
            if (err.code and "NotFound" in err.code) or err.code == "InvalidLaunchTemplateName.NotFoundException":
                return []
            raise
        return sorted((_template_version(v) for v in raw), key=lambda t: t.number)

    def template_version(self, name: str, ref: str) -> TemplateVersion | None:
        """One version, named as a group names it ("7", "$Latest", "$Default"); None when the
        template or that version does not exist. AWS resolves the aliases."""
        try:
            with self.aws.call("DescribeLaunchTemplateVersions", f"{name} {ref}"):
                raw = self._ec2().describe_launch_template_versions(
                    LaunchTemplateName=name, Versions=[ref])["LaunchTemplateVersions"]
        except AwsError as err:
            if err.code and ("NotFound" in err.code or "DoesNotExist" in err.code):
                return None
            raise
        return _template_version(raw[0]) if raw else None

    def find_template_version(self, name: str, newer_than: int, marker: str) -> TemplateVersion | None:
        """The version after `newer_than` whose description carries `marker` (a release id): a
        version whose creation was not written down before its creator died."""
        with self.aws.call("DescribeLaunchTemplateVersions", f"{name} after v{newer_than}"):
            # AWS's MinVersion reads "after which" in one place and "minimum" in another: ask from
            # `newer_than` itself and filter, which is right either way.
            pages = self._ec2().get_paginator("describe_launch_template_versions").paginate(
                LaunchTemplateName=name, MinVersion=str(newer_than))
            for page in pages:
                for v in page["LaunchTemplateVersions"]:
                    if int(v["VersionNumber"]) > newer_than and marker in (v.get("VersionDescription") or ""):
                        return _template_version(v)
        return None

    def create_template_version(self, name: str, source: int, image_id: str, description: str,
                                client_token: str) -> int:
        """A new version that inherits everything from `source` except the ImageId. Idempotent:
        the same client token with the same parameters returns the version made the first time."""
        with self.aws.call("CreateLaunchTemplateVersion", f"{name} from v{source}"):
            out = self._ec2().create_launch_template_version(
                LaunchTemplateName=name, SourceVersion=str(source), VersionDescription=description[:255],
                LaunchTemplateData={"ImageId": image_id}, ClientToken=client_token[:128])
        return int(out["LaunchTemplateVersion"]["VersionNumber"])

    def set_default_template_version(self, name: str, number: int) -> None:
        with self.aws.call("ModifyLaunchTemplate", f"{name} default v{number}"):
            self._ec2().modify_launch_template(LaunchTemplateName=name, DefaultVersion=str(number))

    # The Auto Scaling group
    def group(self, name: str, target_groups: tuple[str, ...] = ()) -> GroupState | None:
        with self.aws.call("DescribeAutoScalingGroups", name):
            groups = self._asg().describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
        if not groups:
            return None
        g = groups[0]
        lt = g.get("LaunchTemplate") or (g.get("MixedInstancesPolicy") or {}).get(
            "LaunchTemplate", {}).get("LaunchTemplateSpecification", {})
        groups_to_check = target_groups or tuple(g.get("TargetGroupARNs", []))
        health = self.target_health(groups_to_check)
        ids = [i["InstanceId"] for i in g.get("Instances", [])]
        described = self.launch_facts(ids)
        instances = tuple(
            InstanceState(
                instance_id=i["InstanceId"],
                image_id=described.get(i["InstanceId"], {}).get("ImageId", ""),
                launch_template_version=(i.get("LaunchTemplate") or {}).get("Version"),
                lifecycle=i["LifecycleState"],
                asg_health=i["HealthStatus"],
                target_health=_target_state(health.get(i["InstanceId"], []), len(groups_to_check)),
                private_ip=described.get(i["InstanceId"], {}).get("PrivateIpAddress") or None,
                launched_at=as_utc(described.get(i["InstanceId"], {}).get("LaunchTime")),
            )
            for i in g.get("Instances", []))
        return GroupState(name=name, min_size=g["MinSize"], max_size=g["MaxSize"],
                          desired_capacity=g["DesiredCapacity"], launch_template_id=lt.get("LaunchTemplateId"),
                          launch_template_name=lt.get("LaunchTemplateName"),
                          launch_template_version=lt.get("Version"), instances=instances,
                          health_check_grace_period=int(g.get("HealthCheckGracePeriod") or 0))

    def launch_facts(self, instance_ids: list[str]) -> dict[str, InstanceTypeDef]:
        """instance id -> EC2's description, for its image, private address and launch time.

        Those never change while an instance lives (its launch time does on a stop and start, and a
        group replaces a member that stops), so EC2 is asked only about instances this object has
        not yet seen with all three: a poll of a steady group of 500 asks nothing, and one during a
        refresh asks about the batch just launched. Instances no longer asked about are forgotten."""
        launched = self._launched  # one view, whichever thread replaces it meanwhile
        fresh = self.describe_instances([i for i in instance_ids if i not in launched])
        known = {i: launched[i] for i in instance_ids if i in launched}
        for instance_id, described in fresh.items():
            if described.get("ImageId") and described.get("PrivateIpAddress") and described.get("LaunchTime"):
                known[instance_id] = described
        self._launched = known
        return {**known, **fresh}

    def describe_instances(self, instance_ids: list[str]) -> dict[str, InstanceTypeDef]:
        """instance id -> EC2's description of it."""
        if not instance_ids:
            return {}
        with self.aws.call("DescribeInstances", ", ".join(instance_ids[:3])):
            pages = self._ec2().get_paginator("describe_instances").paginate(InstanceIds=instance_ids)
            return {i["InstanceId"]: i for page in pages for r in page["Reservations"] for i in r["Instances"]}

    def target_health(self, target_groups: tuple[str, ...]) -> dict[str, list[str]]:
        """instance id -> its state in each target group."""
        states: dict[str, list[str]] = {}
        elb = self.aws.client("elbv2")
        for tg in target_groups:
            arn = tg if tg.startswith("arn:") else self.target_group_arn(tg)
            with self.aws.call("DescribeTargetHealth", tg):
                for d in elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]:
                    states.setdefault(d["Target"]["Id"], []).append(d["TargetHealth"]["State"])
        return states

    def target_group_arn(self, name: str) -> str:
        """The ARN of the target group named `name` (asked once: a name's ARN never changes)."""
        if name not in self._target_group_arns:
            with self.aws.call("DescribeTargetGroups", name,
                               hint="Check [environments.*] target_groups (names or ARNs)."):
                groups = self.aws.client("elbv2").describe_target_groups(Names=[name])["TargetGroups"]
            self._target_group_arns[name] = str(groups[0]["TargetGroupArn"])
        return self._target_group_arns[name]

    def load_balancer_url(self, target_groups: tuple[str, ...]) -> str | None:
        """http://<DNS name>:<listener port> of the first target group's load balancer (in the
        sandbox the DNS name is a loopback address, where its local ALB listens)."""
        if not target_groups:
            return None
        elb = self.aws.client("elbv2")
        arn = target_groups[0] if target_groups[0].startswith("arn:") else self.target_group_arn(target_groups[0])
        with self.aws.call("DescribeTargetGroups", arn):
            lbs = elb.describe_target_groups(TargetGroupArns=[arn])["TargetGroups"][0].get("LoadBalancerArns", [])
        if not lbs:
            return None
        with self.aws.call("DescribeLoadBalancers", lbs[0]):
            dns = elb.describe_load_balancers(LoadBalancerArns=[lbs[0]])["LoadBalancers"][0]["DNSName"]
            listeners = elb.describe_listeners(LoadBalancerArn=lbs[0])["Listeners"]
        port = listeners[0]["Port"] if listeners else 80
        return f"http://{dns}:{port}"

    # Instance refresh
    def refreshes(self, group: str) -> list[RefreshState]:
        """Newest first."""
        raw: list[InstanceRefreshTypeDef] = []
        args: DescribeInstanceRefreshesTypeTypeDef = {"AutoScalingGroupName": group}
        with self.aws.call("DescribeInstanceRefreshes", group):
            while True:  # botocore has no paginator for this call; AWS pages it with NextToken
                page = self._asg().describe_instance_refreshes(**args)
                raw += page["InstanceRefreshes"]
                if not page.get("NextToken"):
                    break
                args["NextToken"] = page["NextToken"]
        return [_refresh_state(r) for r in raw]

    def refresh(self, group: str, refresh_id: str) -> RefreshState | None:
        with self.aws.call("DescribeInstanceRefreshes", f"{group} {refresh_id}"):
            raw = self._asg().describe_instance_refreshes(
                AutoScalingGroupName=group, InstanceRefreshIds=[refresh_id])["InstanceRefreshes"]
        return _refresh_state(raw[0]) if raw else None

    def active_refresh(self, group: str) -> RefreshState | None:
        return next((r for r in self.refreshes(group)
                     if r.status in ("Pending", "InProgress", "Baking", "Cancelling", "RollbackInProgress")), None)

    def start_refresh(self, group: str, template: str, version: int, preferences: dict[str, Any]) -> str:
        """Refresh the group to a numbered LT version, applied to the group only on success.

        Sent once: botocore re-sending it after a lost answer would start a second refresh when the
        first has already ended (or be refused when it has not). The caller looks for the refresh
        that targets its version before asking again (machine.Releaser)."""
        # Built by config.RefreshPreferences.as_aws in AWS's shape (kept as plain JSON in the
        # ledger's records); the contract tests check that shape against the service model.
        prefs = cast("RefreshPreferencesTypeDef", preferences)
        with self.aws.call("StartInstanceRefresh", group):
            out = self.aws.client("autoscaling", once=True).start_instance_refresh(
                AutoScalingGroupName=group, Strategy="Rolling", Preferences=prefs,
                DesiredConfiguration={"LaunchTemplate": {"LaunchTemplateName": template, "Version": str(version)}})
        return str(out["InstanceRefreshId"])

    def rollback_refresh(self, group: str) -> str:
        with self.aws.call("RollbackInstanceRefresh", group):
            return str(self._asg().rollback_instance_refresh(AutoScalingGroupName=group)["InstanceRefreshId"])

    def cancel_refresh(self, group: str) -> str:
        with self.aws.call("CancelInstanceRefresh", group):
            return str(self._asg().cancel_instance_refresh(AutoScalingGroupName=group)["InstanceRefreshId"])

    # Alarms and consoles
    def alarm_states(self, names: tuple[str, ...]) -> dict[str, str]:
        if not names:
            return {}
        with self.aws.call("DescribeAlarms", ", ".join(names)):
            pages = self.aws.client("cloudwatch").get_paginator("describe_alarms").paginate(AlarmNames=list(names))
            alarms = [a for page in pages for a in page["MetricAlarms"]]
        found = {a["AlarmName"]: a["StateValue"] for a in alarms}
        return {n: found.get(n, "MISSING") for n in names}

    # SSM Run Command: reads on instances without SSH (environments with access = "ssm")
    def send_shell_command(self, instance_id: str, lines: list[str], *, timeout_s: int, comment: str) -> str:
        """SendCommand AWS-RunShellScript to one instance; its CommandId. `timeout_s` is the script's
        executionTimeout; delivery may take as long again (TimeoutSeconds, at least 30 as AWS wants)."""
        with self.aws.call("SendCommand", instance_id):
            return self.aws.client("ssm").send_command(
                InstanceIds=[instance_id], DocumentName="AWS-RunShellScript", Comment=comment[:100],
                Parameters={"commands": lines, "executionTimeout": [str(timeout_s)]},
                TimeoutSeconds=max(30, timeout_s))["Command"]["CommandId"]

    def command_invocation(self, command_id: str, instance_id: str) -> CommandInvocation | None:
        """The invocation's state; None while AWS does not know it yet (right after SendCommand)."""
        try:
            with self.aws.call("GetCommandInvocation", f"{command_id} on {instance_id}"):
                got = self.aws.client("ssm").get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        except AwsError as err:
            if err.code == "InvocationDoesNotExist":
                return None
            raise
        return CommandInvocation(status=got.get("Status", "Pending"), details=got.get("StatusDetails", ""),
                                 exit_code=int(got.get("ResponseCode", -1)),
                                 stdout=got.get("StandardOutputContent", ""),
                                 stderr=got.get("StandardErrorContent", ""))

    def console_output(self, instance_id: str) -> str:
        with self.aws.call("GetConsoleOutput", instance_id):
            out = self._ec2().get_console_output(InstanceId=instance_id)
        return str(out.get("Output") or "")


_HEALTH_ORDER = ["unhealthy", "unavailable", "draining", "initial", "unused", "healthy"]


def _target_state(states: list[str], target_groups: int) -> str | None:
    """An instance's health across the group's target groups: None without target groups,
    "unregistered" when it is missing from any of them, else the worst state."""
    if not target_groups:
        return None
    if len(states) < target_groups:
        return "unregistered"
    return _worst(states)


def _worst(states: list[str]) -> str | None:
    if not states:
        return None
    return min(states, key=lambda s: _HEALTH_ORDER.index(s) if s in _HEALTH_ORDER else -1)


def _snapshot_ids(image: ImageTypeDef) -> tuple[str, ...]:
    return tuple(m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", [])
                 if m.get("Ebs", {}).get("SnapshotId"))


def _tags(raw: list[TagTypeDef] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in raw or []}


def _ami_ref(image: ImageTypeDef, region: str) -> AmiRef:
    tags = _tags(image.get("Tags"))
    try:
        version: Version | None = Version(tags[TAG_VERSION])
    except (KeyError, InvalidVersion):
        version = None
    validated = {"true": True, "false": False}.get(tags.get(TAG_VALIDATED, ""))
    deprecation = image.get("DeprecationTime")
    return AmiRef(
        image_id=image["ImageId"], name=image.get("Name", ""), region=region, state=image.get("State", "unknown"),
        created_at=as_utc(image.get("CreationDate")) or datetime.min.replace(tzinfo=UTC),
        version=version, fingerprint=tags.get(TAG_FINGERPRINT), validated=validated,
        deprecation_time=as_utc(deprecation), tags=tags, root_device_name=image.get("RootDeviceName"),
        imds_support=image.get("ImdsSupport"))



def _template_version(v: LaunchTemplateVersionTypeDef) -> TemplateVersion:
    data = v["LaunchTemplateData"]
    return TemplateVersion(template_id=v["LaunchTemplateId"], template_name=v["LaunchTemplateName"],
                           number=int(v["VersionNumber"]), image_id=data.get("ImageId", ""),
                           is_default=bool(v.get("DefaultVersion")), created_at=v.get("CreateTime"),
                           description=v.get("VersionDescription") or "",
                           http_tokens=data.get("MetadataOptions", {}).get("HttpTokens"))


def _refresh_state(r: InstanceRefreshTypeDef) -> RefreshState:
    return RefreshState(
        refresh_id=r["InstanceRefreshId"], status=r["Status"], status_reason=r.get("StatusReason"),
        percentage_complete=int(r.get("PercentageComplete", 0) or 0),
        instances_to_update=int(r.get("InstancesToUpdate", 0) or 0),
        started_at=as_utc(r.get("StartTime")), ended_at=as_utc(r.get("EndTime")),
        desired_version=((r.get("DesiredConfiguration") or {}).get("LaunchTemplate") or {}).get("Version"))
