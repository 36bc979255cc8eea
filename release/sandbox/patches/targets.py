"""Target health with AWS's states and reason codes, instead of moto's "always healthy".

moto 5.2.5 reports every registered target `healthy` the moment it is registered. Here every
target group moto knows is mirrored into a `health.TargetHealthTracker` (the ELB state machine:
initial → healthy/unhealthy by thresholds and intervals, draining for the deregistration delay,
unused when stopped or when no listener forwards to the group), and DescribeTargetHealth reports
the tracker's state, reason and description.

What one health check *does* is pluggable (`TargetHealthBook.probe`, a `ProbeFn`):
- default: `AdminHealthPolicy`, which answers 200, or 503 for the instances/images a test marked
  unhealthy through the admin API (so the reason is Target.ResponseCodeMismatch, as for an app
  whose /health fails);
- with a data plane: a real HTTP GET through `DataPlane.probe` (`dataplane_probe`).
A target group whose health check the tracker cannot model (e.g. TCP) keeps moto's behaviour.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from release.clock import Clock
from release.errors import UsageError
from release.sandbox.contracts import DataPlane
from release.sandbox.engines.health import HealthCheckConfig, Probe, TargetHealthTracker, TargetState
from release.sandbox.patches._replace import replace

log = logging.getLogger("kiln.sandbox.targets")

# A probe's outcome: the HTTP status (None: no valid answer) and whether it timed out.
ProbeOutcome = tuple[int | None, bool]
ProbeFn = Callable[[Probe], ProbeOutcome]

# Worst first: the state an instance has "over all its target groups" for the ASG's view.
_SEVERITY = ["unhealthy", "draining", "initial", "unavailable", "unused", "healthy"]


class AdminHealthPolicy:
    """The default health check: 200 for every target unless a test marked it unhealthy."""

    def __init__(self, image_of: Callable[[str], str | None]) -> None:
        self._image_of = image_of
        self._lock = threading.Lock()
        self.unhealthy_instances: set[str] = set()
        self.unhealthy_images: set[str] = set()

    def set(self, *, instance_id: str | None = None, image_id: str | None = None, healthy: bool) -> None:
        with self._lock:
            for key, bucket in ((instance_id, self.unhealthy_instances), (image_id, self.unhealthy_images)):
                if key is None:
                    continue
                if healthy:
                    bucket.discard(key)
                else:
                    bucket.add(key)

    def clear(self) -> None:
        with self._lock:
            self.unhealthy_instances.clear()
            self.unhealthy_images.clear()

    def snapshot(self) -> dict[str, list[str]]:
        with self._lock:
            return {
                "unhealthy_instances": sorted(self.unhealthy_instances),
                "unhealthy_images": sorted(self.unhealthy_images),
            }

    def failing(self, target_id: str) -> bool:
        with self._lock:
            if target_id in self.unhealthy_instances:
                return True
            if not self.unhealthy_images:
                return False
        # Only when an image is marked: finding an instance's image walks (and moto copies) every
        # reservation, and doing it at every check of a group of 500 targets (one a second each at
        # time scale 0.1) kept half a core of a control-plane sandbox busy.
        image_id = self._image_of(target_id)
        with self._lock:
            return image_id in self.unhealthy_images

    def __call__(self, probe: Probe) -> ProbeOutcome:
        return (503 if self.failing(probe.target_id) else 200), False


def dataplane_probe(dataplane: DataPlane, policy: AdminHealthPolicy | None = None) -> ProbeFn:
    """A real HTTP health check through the data plane; a target the admin policy marked unhealthy
    answers 503 whatever the instance says (`inv sandbox.fault --unhealthy`)."""

    def probe(p: Probe) -> ProbeOutcome:
        if policy is not None and policy.failing(p.target_id):
            return 503, False
        return dataplane.probe(p.ip, p.port, p.path, p.timeout), False

    return probe


def health_check_config(tg: Any) -> HealthCheckConfig:
    """moto's FakeTargetGroup settings -> the tracker's config (UsageError if it can't model it)."""
    port = tg.health_check_port
    return HealthCheckConfig(
        path=tg.health_check_path or "/",
        port="traffic-port" if port in (None, "traffic-port") else str(port),
        protocol=str(tg.health_check_protocol or "HTTP"),
        interval_seconds=int(tg.health_check_interval_seconds),
        timeout_seconds=int(tg.health_check_timeout_seconds),
        healthy_threshold=int(tg.healthy_threshold_count),
        unhealthy_threshold=int(tg.unhealthy_threshold_count),
        matcher=str((tg.matcher or {}).get("HttpCode", "200")),
        enabled=bool(tg.health_check_enabled),
    )


class TargetHealthBook:
    """Mirrors moto's target groups into the tracker and runs the checks."""

    def __init__(self, clock: Clock, time_scale: float) -> None:
        self.tracker = TargetHealthTracker(clock, time_scale=time_scale)
        self._groups: dict[str, Any] = {}  # arn -> moto FakeTargetGroup the tracker knows
        self._untracked: set[str] = set()
        self.policy = AdminHealthPolicy(self._image_of)
        self.probe: ProbeFn = self.policy

    def _image_of(self, instance_id: str) -> str | None:
        for tg in list(self._groups.values()):
            instance = tg.ec2_backend.get_instance_by_id(instance_id)
            if instance is not None:
                return str(instance.image_id)
        return None

    def _sync_group(self, tg: Any) -> bool:
        """Create or update the tracker's copy of the group; False if it can't be modelled."""
        if tg.arn in self._untracked:
            return False
        try:
            config = health_check_config(tg)
        except UsageError as exc:
            log.warning("target group %s keeps moto's health: %s", tg.name, exc)
            self._untracked.add(tg.arn)
            return False
        delay = int(tg.attributes.get("deregistration_delay.timeout_seconds", 300))
        self.tracker.configure(tg.arn, config, deregistration_delay_s=delay, in_use=bool(tg.load_balancer_arns))
        self._groups[tg.arn] = tg
        return True

    def registered(self, tg: Any, target_id: str, port: int) -> None:
        if not self._sync_group(tg):
            return
        instance = tg.ec2_backend.get_instance_by_id(target_id)
        ip = instance.private_ip if instance is not None else target_id
        self.tracker.register(tg.arn, target_id, str(ip), port)

    def deregistered(self, tg: Any, target_id: str) -> None:
        if tg.arn in self._groups:
            self.tracker.deregister(tg.arn, target_id)

    def tracker_groups(self) -> frozenset[str]:
        return frozenset(self._groups)

    def stopped(self, instance_id: str, stopped: bool) -> None:
        self.tracker.set_stopped(instance_id, stopped)

    def status(self, tg: Any, target_id: str) -> TargetState | None:
        """What DescribeTargetHealth reports, or None for a group the tracker does not model."""
        if tg.arn not in self._groups:
            return None
        self._sync_group(tg)  # settings or listeners may have changed since
        return self.tracker.state(tg.arn, target_id)

    def state_of(self, target_group_arns: Iterable[str], instance_id: str) -> str | None:
        """Worst state over the given target groups (for the group's view), None if in none."""
        found = []
        for arn in target_group_arns:
            if arn in self._groups:
                state = self.tracker.state(arn, instance_id)
                if state.reason != "Target.NotRegistered":
                    found.append(state.state)
        return min(found, key=_SEVERITY.index) if found else None

    # ---- the checker: collect under the server lock, probe outside it, record -------------

    def collect_due(self) -> list[Probe]:
        for tg in list(self._groups.values()):
            self._sync_group(tg)
        return self.tracker.due_probes()

    def run_probes(self, due: list[Probe]) -> list[tuple[Probe, ProbeOutcome]]:
        return [(probe, self.probe(probe)) for probe in due]

    def record(self, results: list[tuple[Probe, ProbeOutcome]]) -> None:
        for probe, (status, timed_out) in results:
            self.tracker.record(probe, status, timed_out=timed_out)

    def tick(self) -> None:
        self.record(self.run_probes(self.collect_due()))


def _book() -> TargetHealthBook:
    from release.sandbox.patches import runtime

    return runtime().targets


def apply() -> None:
    """Route moto's target registration and DescribeTargetHealth through the book."""
    from moto.elbv2.models import FakeHealthStatus, FakeTargetGroup

    original_register: Any = FakeTargetGroup.register
    original_deregister: Any = FakeTargetGroup.deregister
    original_terminated: Any = FakeTargetGroup.deregister_terminated_instances
    original_health_for: Any = FakeTargetGroup.health_for

    def register(self: Any, targets: list[dict[str, Any]]) -> None:
        original_register(self, targets)
        for target in targets:
            stored = self.targets[target["Id"]]
            _book().registered(self, target["Id"], int(stored["Port"]))

    def deregister(self: Any, targets: list[dict[str, Any]]) -> None:
        original_deregister(self, targets)
        for target in targets:
            _book().deregistered(self, target["Id"])

    def deregister_terminated_instances(self: Any, instance_ids: list[str]) -> None:
        registered = [i for i in instance_ids if i in self.targets]
        original_terminated(self, instance_ids)
        for instance_id in registered:
            _book().deregistered(self, instance_id)

    def health_for(self: Any, target: dict[str, Any], ec2_backend: Any) -> Any:
        state = _book().status(self, target["Id"])
        if state is None:
            return original_health_for(self, target, ec2_backend)
        stored = self.targets.get(target["Id"]) or self.terminated_targets.get(target["Id"]) or target
        port = stored.get("Port", self.port)
        return FakeHealthStatus(
            target["Id"], port, self.health_check_port, state.state, state.reason, state.description
        )

    from moto.elbv2.models import ELBv2Backend

    original_describe: Any = ELBv2Backend.describe_target_health

    def describe_target_health(self: Any, target_group_arn: str, targets: list[dict[str, Any]]) -> Any:
        # AWS lists draining targets too when no Targets are named; moto only registered ones.
        if not targets and target_group_arn in _book().tracker_groups():
            _book().status(self.target_groups[target_group_arn], "")  # refresh settings first
            described = _book().tracker.describe(target_group_arn)
            targets = [{"Id": d.target_id, "Port": d.port} for d in described]
            if not targets:
                return []
        return original_describe(self, target_group_arn, targets)

    replace(ELBv2Backend, "describe_target_health", describe_target_health)
    replace(FakeTargetGroup, "register", register)
    replace(FakeTargetGroup, "deregister", deregister)
    replace(FakeTargetGroup, "deregister_terminated_instances", deregister_terminated_instances)
    replace(FakeTargetGroup, "health_for", health_for)
