"""An in-memory `Fleet` for refresh engine tests, and a loop that drives engine + fleet + clock.

The fake is a tiny Auto Scaling group with one launch template. Instances launch as Pending;
each `step()` ages them, and after `boot_steps` steps they are InService. Their health then
follows the fleet's rules: healthy, unless their AMI is in `bad_images` (ASG Healthy but the
load balancer says `unhealthy`, like an app that does not answer /health) or the test pins an
instance's health with `set_health()`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from release.clock import FakeClock
from release.sandbox.contracts import GroupView, Member
from release.sandbox.engines.refresh import RefreshEngine

GROUP = "app-asg"
TEMPLATE_ID = "lt-0123456789abcdef0"
TEMPLATE_NAME = "app"
TERMINAL = frozenset({"Successful", "Failed", "Cancelled", "RollbackSuccessful", "RollbackFailed"})


@dataclass
class FakeInstance:
    instance_id: str
    image_id: str
    version: str
    lifecycle_state: str = "Pending"
    health_status: str = "Healthy"
    target_health: str | None = "initial"
    protected: bool = False
    age: int = 0  # steps since launch
    pinned: bool = False  # health set by the test; the fleet leaves it alone


@dataclass
class FakeFleet:
    desired: int = 4
    health_check_type: str = "ELB"
    grace_period: int = 0
    boot_steps: int = 1
    group_version: str = "1"
    # version -> AMI; "$Default" resolves to default_version, "$Latest" to the highest number.
    versions: dict[str, str] = field(default_factory=lambda: {"1": "ami-1", "2": "ami-2", "3": "ami-3"})
    default_version: str = "1"
    bad_images: set[str] = field(default_factory=set)
    alarms: dict[str, str] = field(default_factory=dict)
    instances: dict[str, FakeInstance] = field(default_factory=dict)
    # What the engine did, as (step, action, instance id or version) tuples.
    events: list[tuple[int, str, str]] = field(default_factory=list)
    launch_error: str | None = None  # make every launch raise this
    steps: int = 0
    _counter: int = 0

    def __post_init__(self) -> None:
        _, launched_version, _ = self.resolve_version(TEMPLATE_ID, self.group_version)
        for _ in range(self.desired):
            instance = self._new_instance(launched_version)
            instance.lifecycle_state, instance.target_health, instance.age = "InService", "healthy", self.boot_steps

    # ---- the Fleet protocol --------------------------------------------------------------

    def group(self, name: str) -> GroupView:
        if name != GROUP:
            raise KeyError(name)
        return GroupView(
            name=GROUP,
            arn=f"arn:aws:autoscaling:eu-central-1:123456789012:autoScalingGroup:uuid:autoScalingGroupName/{GROUP}",
            min_size=0,
            max_size=self.desired * 2,
            desired_capacity=self.desired,
            launch_template_id=TEMPLATE_ID,
            launch_template_name=TEMPLATE_NAME,
            launch_template_version=self.group_version,
            health_check_type=self.health_check_type,
            health_check_grace_period=self.grace_period,
            target_group_arns=("arn:aws:elasticloadbalancing:eu-central-1:123456789012:targetgroup/app/1",),
            members=tuple(self._member(i) for i in self.instances.values()),
        )

    def resolve_version(self, launch_template: str, version: str) -> tuple[str, str, str]:
        if launch_template not in (TEMPLATE_ID, TEMPLATE_NAME):
            raise KeyError(launch_template)
        number = {"$Default": self.default_version, "$Latest": max(self.versions, key=int)}.get(version, version)
        return TEMPLATE_ID, number, self.versions[number]

    def launch(self, group: str, launch_template_id: str, version: str) -> str:
        assert group == GROUP and launch_template_id == TEMPLATE_ID and version.isdigit()
        if self.launch_error:
            raise RuntimeError(self.launch_error)
        instance = self._new_instance(version)
        self.events.append((self.steps, "launch", instance.instance_id))
        return instance.instance_id

    def terminate(self, group: str, instance_id: str) -> None:
        assert group == GROUP
        del self.instances[instance_id]
        self.events.append((self.steps, "terminate", instance_id))

    def set_launch_template(self, group: str, launch_template_id: str, version: str) -> None:
        assert group == GROUP and launch_template_id == TEMPLATE_ID
        self.group_version = version
        self.events.append((self.steps, "set_launch_template", version))

    def alarm_states(self, names: Sequence[str]) -> Mapping[str, str]:
        return {name: self.alarms.get(name, "INSUFFICIENT_DATA") for name in names}

    # ---- test controls -------------------------------------------------------------------

    def step(self) -> None:
        """Age every instance by one step: boot the Pending ones, settle their health."""
        self.steps += 1
        for instance in self.instances.values():
            instance.age += 1
            if instance.pinned or instance.age < self.boot_steps:
                continue
            instance.lifecycle_state = "InService"
            instance.target_health = "unhealthy" if instance.image_id in self.bad_images else "healthy"

    def set_health(self, instance_id: str, *, health_status: str = "Healthy", target_health: str = "healthy") -> None:
        instance = self.instances[instance_id]
        instance.lifecycle_state = "InService"
        instance.health_status, instance.target_health, instance.pinned = health_status, target_health, True

    def hold_booting(self) -> None:
        """Keep every instance launched from now on Pending until the test says otherwise."""
        self.boot_steps = 10**9

    def on_version(self, version: str) -> list[str]:
        return [i.instance_id for i in self.instances.values() if i.version == version]

    def serving(self) -> int:
        """Instances that would answer traffic: InService, Healthy, target healthy."""
        return sum(
            1
            for i in self.instances.values()
            if i.lifecycle_state == "InService" and i.health_status == "Healthy" and i.target_health == "healthy"
        )

    def batches(self, action: str) -> list[int]:
        """How many launches (or terminations) happened at each step that had any."""
        per_step: dict[int, int] = {}
        for step, what, _ in self.events:
            if what == action:
                per_step[step] = per_step.get(step, 0) + 1
        return [per_step[s] for s in sorted(per_step)]

    def _new_instance(self, version: str) -> FakeInstance:
        self._counter += 1
        instance = FakeInstance(instance_id=f"i-{self._counter:017x}", image_id=self.versions[version], version=version)
        self.instances[instance.instance_id] = instance
        return instance

    def _member(self, instance: FakeInstance) -> Member:
        return Member(
            instance_id=instance.instance_id,
            image_id=instance.image_id,
            launch_template_id=TEMPLATE_ID,
            launch_template_version=instance.version,
            lifecycle_state=instance.lifecycle_state,
            health_status=instance.health_status,
            protected_from_scale_in=instance.protected,
            launched_at=datetime(2026, 1, 1, tzinfo=UTC),
            target_health=instance.target_health,
        )


@dataclass
class Rig:
    """Engine, fleet and clock wired together; `run()` is the server's tick loop without sleeping."""

    fleet: FakeFleet
    clock: FakeClock = field(default_factory=FakeClock)
    time_scale: float = 1.0
    seconds_per_step: float = 1.0
    history: list[dict[str, Any]] = field(default_factory=list)  # one describe() per step
    serving: list[int] = field(default_factory=list)  # fleet.serving() after each step
    sizes: list[int] = field(default_factory=list)  # live instances after each step

    def __post_init__(self) -> None:
        self.engine = RefreshEngine(self.fleet, self.clock, time_scale=self.time_scale)

    def start(self, **kwargs: Any) -> str:
        kwargs.setdefault("desired_configuration", desired("2"))
        return self.engine.start(GROUP, **kwargs)

    def latest(self) -> dict[str, Any]:
        return self.engine.describe(GROUP)[0]

    def step(self) -> dict[str, Any]:
        self.fleet.step()
        self.engine.tick()
        self.clock.advance(self.seconds_per_step)
        latest = self.latest()
        self.history.append(latest)
        self.serving.append(self.fleet.serving())
        self.sizes.append(len(self.fleet.instances))
        return latest

    def first_batch(self) -> dict[str, Any]:
        """Step until the refresh is InProgress, then once more: its first batch is launched."""
        self.run(until={"InProgress"})
        return self.step()

    def run(self, until: frozenset[str] | set[str] = TERMINAL, max_steps: int = 5000) -> dict[str, Any]:
        for _ in range(max_steps):
            latest = self.step()
            if latest["Status"] in until:
                return latest
        raise AssertionError(f"refresh still {self.latest()['Status']} after {max_steps} steps")

    def statuses(self) -> list[str]:
        """The distinct statuses seen, in order."""
        seen: list[str] = []
        for entry in self.history:
            if not seen or seen[-1] != entry["Status"]:
                seen.append(entry["Status"])
        return seen


def desired(version: str) -> dict[str, Any]:
    return {"LaunchTemplate": {"LaunchTemplateId": TEMPLATE_ID, "Version": version}}
