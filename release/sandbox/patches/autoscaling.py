"""Auto Scaling fixes: launches pin a numbered LT version, report it, and join the target groups.

moto 5.2.5 launches group instances with the template's *default* version's tags and data but the
group's ImageId, and DescribeAutoScalingGroups reports each instance's LaunchTemplate.Version as
the template's current default, computed live. AWS reports the version each instance was
launched with (Auto Scaling API reference, Instance.LaunchTemplate). Here every launch resolves
the group's version ($Latest/$Default/number) to a number once, launches with exactly that
version, and the instance carries it (EC2's own `aws:ec2launchtemplate:version` tag), which is
what DescribeAutoScalingGroups then reports.

moto also does not register replacements (e.g. after TerminateInstances) in the group's target
groups; AWS registers every instance the group launches. Launches here always register. The other
way round, moto leaves an instance registered when it leaves the group through
TerminateInstanceInAutoScalingGroup, DetachInstances or a scale-in (a lower desired capacity,
through SetDesiredCapacity or UpdateAutoScalingGroup); AWS deregisters it from the group's target
groups (its target drains for the deregistration delay, then is gone). Here every way out of a
group deregisters. (A group scaled from 500 down to 4 had left 496 terminated instances
registered, reported healthy and health-checked five times a second.)

Instances are spread over the group's subnets by Availability Zone, fewest instances first, as
AWS balances a group across its AZs.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from release.sandbox.patches._replace import replace

log = logging.getLogger("kiln.sandbox.autoscaling")

LT_ID_TAG = "aws:ec2launchtemplate:id"
LT_VERSION_TAG = "aws:ec2launchtemplate:version"


class LaunchFailed(RuntimeError):
    """The data plane could not start any of the instances asked for."""


def _pick_subnet(group: Any) -> tuple[str | None, str]:
    """The subnet (and its AZ) in the AZ that has the fewest of the group's instances."""
    ec2 = group.autoscaling_backend.ec2_backend
    per_az = Counter(state.instance.placement.zone for state in group.instance_states)
    subnet_ids = [s for s in (group.vpc_zone_identifier or "").split(",") if s]
    if subnet_ids:
        choices = [(per_az[ec2.get_subnet(s).availability_zone], i, s) for i, s in enumerate(subnet_ids)]
        _, _, subnet_id = min(choices)
        return subnet_id, ec2.get_subnet(subnet_id).availability_zone
    zones = list(group.availability_zones)
    zone = min(zones, key=lambda z: (per_az[z], zones.index(z)))
    return None, zone


def deregister_from_target_groups(group: Any, instance_ids: list[str]) -> None:
    """Deregister instances leaving the group from its target groups (they drain, then are gone),
    as AWS does for every instance that leaves a group: terminated, detached or replaced."""
    elbv2 = group.autoscaling_backend.elbv2_backend
    for arn in group.target_group_arns:
        target_group = elbv2.target_groups.get(arn)
        if target_group is None:
            continue
        registered = [{"Id": i} for i in instance_ids if i in target_group.targets]
        if registered:
            target_group.deregister(registered)


def launch_into_group(
    group: Any, count: int, *, template_id: str | None = None, version: str | None = None
) -> list[Any]:
    """Launch `count` instances into the group from one numbered version of its (or the given)
    launch template, add them to the group and register them in its target groups. Instances the
    data plane could not start stay out of the group (LaunchFailed when none started)."""
    from moto.autoscaling.models import ASG_NAME_TAG, InstanceState

    from release.sandbox.patches import runtime

    backend = group.autoscaling_backend
    ec2 = backend.ec2_backend
    template = ec2.get_launch_template(template_id) if template_id else group.ec2_launch_template
    lt_version = template.get_version(version or group.launch_template_version)
    tags = group.get_propagated_tags()
    tags[ASG_NAME_TAG] = group.name
    launched = []
    failures: list[str] = []
    for _ in range(count):
        subnet_id, zone = _pick_subnet(group)
        reservation = ec2.run_instances(
            lt_version.image_id,
            1,
            None,
            [],
            instance_type=lt_version.instance_type or "t3.micro",
            is_instance_type_default=False,
            tags={"instance": dict(tags)},
            placement=zone,
            launch_template={"LaunchTemplateId": template.id, "Version": str(lt_version.number)},
            subnet_id=subnet_id,
        )
        for instance in reservation.instances:
            if instance.state == "terminated":  # the data plane could not start it
                failures.append(getattr(instance, "kiln_launch_error", "the instance could not be started"))
                continue
            instance.autoscaling_group = group
            instance.kiln_launched_at = runtime().clock.now()
            group.instance_states.append(
                InstanceState(instance, protected_from_scale_in=group.new_instances_protected_from_scale_in)
            )
            launched.append(instance)
    if group.name in backend.autoscaling_groups:
        backend.update_attached_target_groups(group.name)
    if failures and not launched:
        raise LaunchFailed(f"no instance could be launched into {group.name}: {failures[0]}")
    return launched


def apply() -> None:
    from moto.autoscaling.models import AutoScalingBackend, FakeAutoScalingGroup, InstanceState

    original_replace: Any = FakeAutoScalingGroup.replace_autoscaling_group_instances

    def replace_autoscaling_group_instances(self: Any, count_needed: int, propagated_tags: dict[str, str]) -> None:
        if self.ec2_launch_template is None:  # launch configurations: moto's own path
            original_replace(self, count_needed, propagated_tags)
            return
        try:
            launch_into_group(self, count_needed)
        except LaunchFailed as exc:  # AWS: the API call succeeds, the scaling activity fails
            log.warning("%s", exc)

    def launch_template(self: Any) -> dict[str, Any] | None:
        ec2 = self.instance.ec2_backend
        by_key = ec2.tags.get(self.instance.id, {})
        template_id = by_key.get(LT_ID_TAG)
        if template_id is None:
            return None
        template = ec2.launch_templates.get(template_id)
        return {
            "LaunchTemplateId": template_id,
            "LaunchTemplateName": template.name if template else None,
            "Version": by_key.get(LT_VERSION_TAG),
        }

    original_detach: Any = AutoScalingBackend.detach_instances

    def detach_instances(self: Any, group_name: str, instance_ids: list[str], should_decrement: bool) -> Any:
        # TerminateInstanceInAutoScalingGroup detaches first too: both leave the target groups.
        group = self.autoscaling_groups.get(group_name)
        if group is not None:
            members = {s.instance.id for s in group.instance_states}
            deregister_from_target_groups(group, [i for i in instance_ids if i in members])
        return original_detach(self, group_name, instance_ids, should_decrement)

    original_set_desired: Any = FakeAutoScalingGroup.set_desired_capacity

    def set_desired_capacity(self: Any, new_capacity: int | None) -> None:
        before = {s.instance.id for s in self.instance_states}
        original_set_desired(self, new_capacity)
        left = before - {s.instance.id for s in self.instance_states}
        if left:  # scaled in: moto terminated them without telling the target groups
            deregister_from_target_groups(self, sorted(left))

    replace(FakeAutoScalingGroup, "replace_autoscaling_group_instances", replace_autoscaling_group_instances)
    replace(FakeAutoScalingGroup, "set_desired_capacity", set_desired_capacity)
    replace(AutoScalingBackend, "detach_instances", detach_instances)
    replace(InstanceState, "launch_template", property(launch_template))
