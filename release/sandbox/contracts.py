"""The seams between the sandbox's parts.

- The refresh engine (refresh.py) drives instance refreshes against a `Fleet`.
- The moto-backed fleet (patches/fleet.py) implements `Fleet` over moto's backends.
- The data plane (dataplane/) implements `DataPlane`; the control plane calls it when EC2
  launches, stops, starts, terminates or images an instance, and asks it for target health.
- Run Command (ssm.py) hands a `Script` to whatever runs it inside an instance (the data plane's
  agent, dataplane/agent.py) and watches the `ScriptRun` it gets back.

Everything here is plain data; no moto, no boto3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Member:
    """One instance of an Auto Scaling group, as the group sees it."""

    instance_id: str
    image_id: str
    launch_template_id: str | None
    # The numbered LT version the instance was launched with (never $Latest/$Default).
    launch_template_version: str | None
    lifecycle_state: str  # AWS LifecycleState: Pending, InService, Terminating, Standby, ...
    health_status: str  # ASG view: "Healthy" | "Unhealthy"
    protected_from_scale_in: bool
    launched_at: datetime
    # elbv2 state over the group's target groups (worst wins): initial, healthy, unhealthy,
    # draining, unused; None when the group has no target groups.
    target_health: str | None


@dataclass(frozen=True)
class GroupView:
    name: str
    arn: str
    min_size: int
    max_size: int
    desired_capacity: int
    launch_template_id: str | None
    launch_template_name: str | None
    # As set on the group: a number ("3"), "$Latest" or "$Default".
    launch_template_version: str | None
    health_check_type: str  # "EC2" | "ELB"
    health_check_grace_period: int
    target_group_arns: tuple[str, ...]
    members: tuple[Member, ...]


class Fleet(Protocol):
    """What the refresh engine may observe and do. Implemented over moto in patches/fleet.py."""

    def group(self, name: str) -> GroupView:
        """Raise KeyError when the group does not exist."""
        ...

    def resolve_version(self, launch_template: str, version: str) -> tuple[str, str, str]:
        """Template id or name + ("$Latest" | "$Default" | "3") -> (template id, numbered
        version, ImageId). KeyError if the template or version is unknown."""
        ...

    def launch(self, group: str, launch_template_id: str, version: str) -> str:
        """Launch one instance into the group with that numbered LT version; registers it with
        the group's target groups. Returns the instance id."""
        ...

    def terminate(self, group: str, instance_id: str) -> None:
        """Deregister from target groups, terminate, and remove from the group."""
        ...

    def set_launch_template(self, group: str, launch_template_id: str, version: str) -> None:
        """Point the group at this LT version (the DesiredConfiguration, applied on success)."""
        ...

    def alarm_states(self, names: Sequence[str]) -> Mapping[str, str]:
        """CloudWatch alarm name -> "OK" | "ALARM" | "INSUFFICIENT_DATA"."""
        ...


@dataclass(frozen=True)
class LaunchedInstance:
    """What EC2 tells the data plane when an instance is launched."""

    instance_id: str
    image_id: str
    private_ip: str  # the loopback address the control plane reports as PrivateIpAddress
    key_name: str | None
    public_key: str | None  # OpenSSH public key of key_name, to authorise for the default user
    user_data: str | None
    region: str
    # True: the instance's sshd lets a login in only when the control plane says the instance's
    # security groups admit its source (docs/dataplane.md, "SSH and security groups").
    ssh_by_security_groups: bool = False


class DataPlane(Protocol):
    """The real machines behind EC2. Implemented in dataplane/."""

    def launch(self, spec: LaunchedInstance) -> None:
        """Create the instance's root filesystem and boot it. Must return quickly; boot may
        continue in the background."""
        ...

    def stop(self, instance_id: str) -> None: ...

    def start(self, instance_id: str) -> None: ...

    def terminate(self, instance_id: str) -> None:
        """Stop every process, unmount, delete the instance's files. Idempotent."""
        ...

    def create_image(self, instance_id: str, image_id: str) -> None:
        """Freeze the instance's current root filesystem as image `image_id`."""
        ...

    def register_image(self, image_id: str, rootfs: Path) -> None:
        """Make an existing root filesystem directory the content of image `image_id`."""
        ...

    def copy_image(self, source_image_id: str, image_id: str) -> None:
        """Give image `image_id` (CopyImage, any region) the content of `source_image_id`."""
        ...

    def deregister_image(self, image_id: str) -> None:
        """Free the image's root filesystem (when its last snapshot is deleted)."""
        ...

    def console_output(self, instance_id: str) -> str:
        """EC2-style console text, including the SSH host key fingerprints block."""
        ...

    def probe(self, ip: str, port: int, path: str, timeout: float) -> int | None:
        """One HTTP health-check request; the status code, or None when it did not answer."""
        ...


SSM_SCRIPT_DIRECTORY = (
    "/var/lib/amazon/ssm/{instance}/document/orchestration/{command}/awsrunShellScript/0.awsrunShellScript"
)


@dataclass(frozen=True)
class Script:
    """One AWS-RunShellScript invocation as the SSM agent receives it."""

    command_id: str
    instance_id: str
    commands: tuple[str, ...]
    working_directory: str
    environment: Mapping[str, str]

    @property
    def directory(self) -> str:
        """Where the agent writes `_script.sh` inside the instance (its orchestration directory)."""
        return SSM_SCRIPT_DIRECTORY.format(instance=self.instance_id, command=self.command_id)


@dataclass(frozen=True)
class Finished:
    """How a script ended: its exit status (negative: killed by that signal) and what it wrote."""

    returncode: int
    stdout: str
    stderr: str


class ScriptRun(Protocol):
    """A script running in an instance."""

    def poll(self) -> Finished | None:
        """How it ended and what it wrote, or None while it runs (again after kill(): the end)."""
        ...

    def kill(self) -> Finished:
        """SIGKILL its process group, as the agent does on a timeout or cancel; how it ended."""
        ...
