"""`MotoFleet`: the refresh engine's view of one account+region, over moto's backends.

Implements contracts.Fleet. Every method is called with the server lock held, so the moto
objects it reads and changes are consistent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from release.clock import Clock
from release.sandbox.contracts import GroupView, Member
from release.sandbox.patches.autoscaling import (
    LT_VERSION_TAG,
    LaunchFailed,
    deregister_from_target_groups,
    launch_into_group,
)
from release.sandbox.patches.targets import TargetHealthBook

log = logging.getLogger("kiln.sandbox.fleet")


class MotoFleet:
    def __init__(
        self, account_id: str, region: str, *, clock: Clock, time_scale: float, targets: TargetHealthBook
    ) -> None:
        self.account_id = account_id
        self.region = region
        self.clock = clock
        self.time_scale = time_scale
        self.targets = targets

    # moto's backends are untyped; these four accessors are the fleet's whole untyped surface.
    def _autoscaling(self) -> Any:
        from moto.autoscaling.models import autoscaling_backends

        return autoscaling_backends[self.account_id][self.region]

    def _ec2(self) -> Any:
        from moto.ec2.models import ec2_backends

        return ec2_backends[self.account_id][self.region]

    def _cloudwatch(self) -> Any:
        from moto.cloudwatch.models import cloudwatch_backends

        return cloudwatch_backends[self.account_id][self.region]

    def _group(self, name: str) -> Any:
        group = self._autoscaling().autoscaling_groups.get(name)
        if group is None:
            raise KeyError(name)
        return group

    def _template(self, launch_template: str) -> Any:
        ec2 = self._ec2()
        template = ec2.launch_templates.get(launch_template)
        if template is None:
            template_id = ec2.launch_template_name_to_ids.get(launch_template)
            template = ec2.launch_templates.get(template_id) if template_id else None
        if template is None:
            raise KeyError(launch_template)
        return template

    # ---- Fleet ----------------------------------------------------------------------------

    def group(self, name: str) -> GroupView:
        group = self._group(name)
        template = group.ec2_launch_template
        ec2 = self._ec2()
        members = []
        for state in group.instance_states:
            instance = state.instance
            tags = ec2.tags.get(instance.id, {})
            lt = state.launch_template
            members.append(
                Member(
                    instance_id=instance.id,
                    image_id=instance.image_id,
                    launch_template_id=lt["LaunchTemplateId"] if lt else None,
                    launch_template_version=tags.get(LT_VERSION_TAG),
                    lifecycle_state=state.lifecycle_state,
                    health_status=state.health_status,
                    protected_from_scale_in=bool(state.protected_from_scale_in),
                    launched_at=getattr(instance, "kiln_launched_at", None) or self.clock.now(),
                    target_health=self.targets.state_of(group.target_group_arns, instance.id)
                    if group.target_group_arns
                    else None,
                )
            )
        return GroupView(
            name=group.name,
            arn=group.arn,
            min_size=int(group.min_size),
            max_size=int(group.max_size),
            desired_capacity=int(group.desired_capacity),
            launch_template_id=template.id if template else None,
            launch_template_name=template.name if template else None,
            launch_template_version=group.provided_launch_template_version if template else None,
            health_check_type=group.health_check_type,
            health_check_grace_period=int(group.health_check_grace_period or 0),
            target_group_arns=tuple(group.target_group_arns),
            members=tuple(members),
        )

    def resolve_version(self, launch_template: str, version: str) -> tuple[str, str, str]:
        template = self._template(launch_template)
        from moto.ec2.exceptions import InvalidLaunchTemplateVersionNotFound

        try:
            found = template.get_version(version)
        except InvalidLaunchTemplateVersionNotFound as exc:
            raise KeyError(f"{launch_template} version {version}") from exc
        return template.id, str(found.number), str(found.image_id)

    def launch(self, group: str, launch_template_id: str, version: str) -> str:
        instances = launch_into_group(self._group(group), 1, template_id=launch_template_id, version=version)
        return str(instances[0].id)

    def terminate(self, group: str, instance_id: str) -> None:
        asg = self._group(group)
        deregister_from_target_groups(asg, [instance_id])
        # Leave the group first, so moto's terminate hook does not launch a replacement:
        # replacing is the engine's decision during a refresh.
        asg.instance_states = [s for s in asg.instance_states if s.instance.id != instance_id]
        self._ec2().terminate_instances([instance_id])

    def set_launch_template(self, group: str, launch_template_id: str, version: str) -> None:
        asg = self._group(group)
        template = self._template(launch_template_id)
        asg.ec2_launch_template = template
        asg.launch_template_version = version
        asg.provided_launch_template_version = version
        asg.launch_config = None
        asg.launch_configuration_name = None

    def alarm_states(self, names: Sequence[str]) -> Mapping[str, str]:
        alarms = self._cloudwatch().alarms
        return {name: str(alarms[name].state_value) for name in names if name in alarms}


def sweep_elb_health(
    group: Any, targets: TargetHealthBook, clock: Clock, time_scale: float, *, replace: bool = True
) -> list[str]:
    """Auto Scaling health checks (Auto Scaling user guide, "Health checks for instances in an Auto
    Scaling group"): an instance in any EC2 state but running is Unhealthy; with HealthCheckType
    ELB, once the grace period has passed, so is one whose target is `unhealthy`. Unhealthy
    InService instances (also those set by SetInstanceHealth) are terminated and replaced from the
    group's launch template. Returns the
    ids replaced. `replace=False` only marks (the server passes it while a refresh runs on the
    group: the refresh engine decides about the instances it is replacing)."""
    grace = timedelta(seconds=float(group.health_check_grace_period or 0) * time_scale)
    now = clock.now()
    for state in group.instance_states:  # EC2 health: any instance state but running is unhealthy
        if state.lifecycle_state == "InService" and state.instance.state != "running":
            state.health_status = "Unhealthy"
    if group.health_check_type == "ELB" and group.target_group_arns:
        for state in group.instance_states:
            launched = getattr(state.instance, "kiln_launched_at", None)
            if launched is None or now < launched + grace:
                continue
            if targets.state_of(group.target_group_arns, state.instance.id) == "unhealthy":
                state.health_status = "Unhealthy"
    if not replace or group.ec2_launch_template is None:
        return []
    sick = [s for s in group.instance_states if s.health_status == "Unhealthy" and s.lifecycle_state == "InService"]
    if not sick:
        return []
    backend = group.autoscaling_backend
    for state in sick:
        deregister_from_target_groups(group, [state.instance.id])
        group.instance_states.remove(state)
        backend.ec2_backend.terminate_instances([state.instance.id])
    try:
        launch_into_group(group, len(sick))
    except LaunchFailed as exc:  # the group stays below capacity, as after a failed scaling activity
        log.warning("%s", exc)
    return [s.instance.id for s in sick]
