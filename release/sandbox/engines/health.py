"""Target health for the sandbox's target groups, following the rules of Elastic Load Balancing.

The control plane owns the API; this module owns the state machine. A worker thread elsewhere asks
`due_probes()` what to check, performs each HTTP GET, and hands the outcome to `record()`;
DescribeTargetHealth reads `state()` / `describe()`, and the load balancer routes to
`routing_targets()`.

AWS rules followed (Application Load Balancer user guide, "Health checks for Application Load
Balancer target groups", and the elbv2 API reference, `TargetHealth`):

- Every registered target is checked every HealthCheckIntervalSeconds with an HTTP GET on
  HealthCheckPath at HealthCheckPort ("traffic-port" = the port the target was registered with).
  No answer within HealthCheckTimeoutSeconds is a failed check. A check passes when the status
  code is in the Matcher (e.g. "200", "200,302", "200-299"; codes 200-499).
- A newly registered target is `initial` (reason Elb.RegistrationInProgress until the first check
  has completed, then Elb.InitialHealthChecking). Registration takes a while on AWS: the first
  check runs REGISTRATION_DELAY_S (scaled) after RegisterTargets, so a caller always sees the
  target `initial` first. AWS documents that "after your target is
  registered, it must pass one health check to be considered healthy", so by default one passing
  check makes it `healthy`; UnhealthyThresholdCount consecutive failures make it `unhealthy`.
  (`initial_healthy_checks=None` requires HealthyThresholdCount passes instead.)
- A `healthy` target becomes `unhealthy` after UnhealthyThresholdCount consecutive failures; an
  `unhealthy` one becomes `healthy` after HealthyThresholdCount consecutive passes. Any other
  result resets the opposite streak.
- Unhealthy reasons: Target.ResponseCodeMismatch ("Health checks failed with these codes: [502]"),
  Target.Timeout ("Request timed out"), Target.FailedHealthChecks (connection error or malformed
  response: "Health checks failed"). The reason of the latest failed check is reported.
- DeregisterTargets puts a target in `draining` (Target.DeregistrationInProgress) for the target
  group's deregistration delay (attribute deregistration_delay.timeout_seconds, default 300 s);
  AWS shows `draining` until the delay has elapsed even when no request is in flight. Draining
  targets get no new requests and no health checks; afterwards the target is gone and reads as
  `unused` / Target.NotRegistered. Registering a draining target again starts it over as `initial`.
- A target group that no listener forwards to reports its targets `unused` / Target.NotInUse and
  is not checked; a stopped instance is `unused` / Target.InvalidState and is not checked.
- Health checks disabled (HealthCheckEnabled=false; AWS allows this only for Lambda targets)
  report `unavailable` / Target.HealthCheckDisabled; such targets receive traffic.
- Fail open: when a target group has no healthy target but has unhealthy ones, the load balancer
  routes to all of those unhealthy targets (see `routing_targets`).

Time: intervals, timeouts and the deregistration delay are multiplied by `time_scale`, so a sandbox
running at time_scale=0.1 checks a 30 s interval every 3 s. Probe timeouts never go below
MIN_PROBE_TIMEOUT_S, so a loaded machine does not fail healthy loopback targets.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from release.clock import Clock
from release.errors import UsageError

StateName = Literal["initial", "healthy", "unhealthy", "unused", "draining", "unavailable"]

TRAFFIC_PORT = "traffic-port"
DEFAULT_DEREGISTRATION_DELAY_S = 300
MIN_PROBE_TIMEOUT_S = 0.25
# Seconds from RegisterTargets (or a restart) to the first health check.
REGISTRATION_DELAY_S = 5
# A probe whose result never came back (a worker died) is handed out again after its timeout plus
# this much, so one lost result cannot freeze a target's state.
_LOST_PROBE_GRACE_S = 1.0

_MATCHER_PART = re.compile(r"^(\d{3})(?:-(\d{3}))?$")


def parse_matcher(matcher: str) -> tuple[tuple[int, int], ...]:
    """'200', '200,302' or '200-299' -> inclusive ranges. ALB accepts codes 200-499."""
    ranges: list[tuple[int, int]] = []
    for part in matcher.split(","):
        found = _MATCHER_PART.match(part.strip())
        if not found:
            raise UsageError(f"invalid health check matcher {matcher!r}: use codes like 200, 200,302 or 200-299")
        low = int(found.group(1))
        high = int(found.group(2) or low)
        if not 200 <= low <= high <= 499:
            raise UsageError(f"invalid health check matcher {matcher!r}: codes must be within 200-499")
        ranges.append((low, high))
    return tuple(ranges)


@dataclass(frozen=True)
class HealthCheckConfig:
    """A target group's health check settings, with the ALB defaults for instance targets."""

    path: str = "/"
    port: str = TRAFFIC_PORT  # "traffic-port" or a port number as text, as the API carries it
    protocol: str = "HTTP"
    interval_seconds: int = 30
    timeout_seconds: int = 5
    healthy_threshold: int = 5
    unhealthy_threshold: int = 2
    matcher: str = "200"
    enabled: bool = True
    _ranges: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.protocol != "HTTP":
            problems.append(f"health check protocol {self.protocol!r} is not supported by the sandbox (HTTP)")
        if not self.path.startswith("/"):
            problems.append(f"health check path {self.path!r} must start with /")
        if self.port != TRAFFIC_PORT and not (self.port.isdigit() and 1 <= int(self.port) <= 65535):
            problems.append(f"health check port {self.port!r} must be traffic-port or 1-65535")
        if not 5 <= self.interval_seconds <= 300:
            problems.append("health check interval must be 5-300 seconds")
        if not 2 <= self.timeout_seconds <= 120:
            problems.append("health check timeout must be 2-120 seconds")
        if self.timeout_seconds >= self.interval_seconds:
            problems.append("health check timeout must be smaller than the interval")
        for name in ("healthy_threshold", "unhealthy_threshold"):
            if not 2 <= getattr(self, name) <= 10:
                problems.append(f"{name.replace('_', ' ')} count must be 2-10")
        if problems:
            raise UsageError("; ".join(problems))
        object.__setattr__(self, "_ranges", parse_matcher(self.matcher))

    def matches(self, status: int) -> bool:
        return any(low <= status <= high for low, high in self._ranges)

    def port_for(self, traffic_port: int) -> int:
        return traffic_port if self.port == TRAFFIC_PORT else int(self.port)


@dataclass(frozen=True)
class TargetState:
    """What DescribeTargetHealth reports: State, Reason and Description (None when healthy)."""

    state: StateName
    reason: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class Probe:
    """One health check to perform: GET http://ip:port{path}, giving up after `timeout` seconds."""

    target_group: str
    target_id: str
    traffic_port: int
    ip: str
    port: int
    path: str
    timeout: float
    registration: int  # which registration of the target this belongs to; stale results are dropped


@dataclass(frozen=True)
class TargetHealthDescription:
    target_id: str
    port: int
    health_check_port: int
    health: TargetState


_REGISTERING = TargetState("initial", "Elb.RegistrationInProgress", "Target registration is in progress")
_INITIAL_CHECKS = TargetState("initial", "Elb.InitialHealthChecking", "Initial health checks in progress")
_HEALTHY = TargetState("healthy")
_DRAINING = TargetState("draining", "Target.DeregistrationInProgress", "Target deregistration is in progress")
_NOT_REGISTERED = TargetState("unused", "Target.NotRegistered", "Target is not registered to the target group")
_NOT_IN_USE = TargetState(
    "unused", "Target.NotInUse", "Target group is not configured to receive traffic from the load balancer"
)
_STOPPED = TargetState("unused", "Target.InvalidState", "Target is in the stopped state")
_CHECKS_DISABLED = TargetState("unavailable", "Target.HealthCheckDisabled", "Health checks are disabled")
_TIMED_OUT = TargetState("unhealthy", "Target.Timeout", "Request timed out")
_FAILED = TargetState("unhealthy", "Target.FailedHealthChecks", "Health checks failed")


def _code_mismatch(status: int) -> TargetState:
    return TargetState("unhealthy", "Target.ResponseCodeMismatch", f"Health checks failed with these codes: [{status}]")


@dataclass
class _Target:
    target_id: str
    ip: str
    port: int
    registration: int
    next_probe_at: datetime
    state: TargetState = _REGISTERING
    passes: int = 0  # consecutive passing checks
    failures: int = 0  # consecutive failing checks
    last_failure: TargetState = _FAILED
    probe_outstanding_until: datetime | None = None
    draining_until: datetime | None = None


@dataclass
class _Group:
    config: HealthCheckConfig
    deregistration_delay_s: int
    in_use: bool
    targets: dict[tuple[str, int], _Target] = field(default_factory=dict)


class TargetHealthTracker:
    """Thread-safe: every public method holds one lock; probes run on other threads."""

    def __init__(
        self,
        clock: Clock,
        *,
        time_scale: float = 1.0,
        initial_healthy_checks: int | None = 1,
        registration_delay_s: float = REGISTRATION_DELAY_S,
    ) -> None:
        if time_scale <= 0:
            raise UsageError("time_scale must be positive")
        self._clock = clock
        self._scale = time_scale
        self._initial_healthy_checks = initial_healthy_checks
        self._registration_delay_s = registration_delay_s
        self._groups: dict[str, _Group] = {}
        self._stopped: set[str] = set()
        self._registrations = 0
        self._lock = threading.RLock()

    # --- target groups -------------------------------------------------------------------------

    def configure(
        self,
        target_group: str,
        config: HealthCheckConfig,
        *,
        deregistration_delay_s: int = DEFAULT_DEREGISTRATION_DELAY_S,
        in_use: bool | None = None,
    ) -> None:
        """Create the group, or change its settings (ModifyTargetGroup keeps target states).
        `in_use` (a listener forwards to it) defaults to True for a new group, unchanged otherwise."""
        if not 0 <= deregistration_delay_s <= 3600:
            raise UsageError("deregistration_delay.timeout_seconds must be 0-3600")
        with self._lock:
            group = self._groups.get(target_group)
            if group is None:
                self._groups[target_group] = _Group(config, deregistration_delay_s, in_use is not False)
                return
            group.config = config
            group.deregistration_delay_s = deregistration_delay_s
        if in_use is not None:
            self.set_in_use(target_group, in_use)

    def set_in_use(self, target_group: str, in_use: bool) -> None:
        """Whether a listener forwards to the group (a group nobody uses is not health checked)."""
        with self._lock:
            group = self._group(target_group)
            if in_use and not group.in_use:
                now = self._clock.now()
                for target in group.targets.values():
                    if target.draining_until is None:
                        self._restart(target, now)
            group.in_use = in_use

    # --- targets -------------------------------------------------------------------------------

    def register(self, target_group: str, target_id: str, ip: str, port: int) -> None:
        """RegisterTargets: idempotent for a registered target; a draining one starts over."""
        with self._lock:
            group = self._group(target_group)
            now = self._clock.now()
            existing = group.targets.get((target_id, port))
            if existing is not None and existing.draining_until is None:
                existing.ip = ip
                return
            self._registrations += 1
            first_check = now + self._scaled(self._registration_delay_s)
            group.targets[(target_id, port)] = _Target(
                target_id, ip, port, self._registrations, next_probe_at=first_check
            )

    def deregister(self, target_group: str, target_id: str, port: int | None = None) -> None:
        """DeregisterTargets: `draining` for the deregistration delay, then gone. Unknown: no-op."""
        with self._lock:
            group = self._group(target_group)
            now = self._clock.now()
            for key in self._keys(group, target_id, port):
                target = group.targets[key]
                if target.draining_until is not None:
                    continue
                if group.deregistration_delay_s == 0:
                    del group.targets[key]
                    continue
                target.draining_until = now + self._scaled(group.deregistration_delay_s)
                target.state = _DRAINING
                target.probe_outstanding_until = None

    def set_stopped(self, target_id: str, stopped: bool) -> None:
        """An instance stopped (unused, not checked) or started again (initial checks anew)."""
        with self._lock:
            if not stopped and target_id in self._stopped:
                now = self._clock.now()
                for group in self._groups.values():
                    for target in group.targets.values():
                        if target.target_id == target_id and target.draining_until is None:
                            self._restart(target, now)
            if stopped:
                self._stopped.add(target_id)
            else:
                self._stopped.discard(target_id)

    # --- probing -------------------------------------------------------------------------------

    def due_probes(self) -> list[Probe]:
        """The checks to run now. Each is handed out once; the next is due one interval later."""
        with self._lock:
            now = self._clock.now()
            self._expire_draining(now)
            probes: list[Probe] = []
            for name, group in self._groups.items():
                config = group.config
                if not (group.in_use and config.enabled):
                    continue
                interval = self._scaled(config.interval_seconds)
                timeout = max(config.timeout_seconds * self._scale, MIN_PROBE_TIMEOUT_S)
                for target in group.targets.values():
                    if target.draining_until is not None or target.target_id in self._stopped:
                        continue
                    outstanding = target.probe_outstanding_until
                    if outstanding is not None and now < outstanding:
                        continue
                    if now < target.next_probe_at:
                        continue
                    target.next_probe_at = now + interval
                    target.probe_outstanding_until = now + timedelta(seconds=timeout + _LOST_PROBE_GRACE_S)
                    probes.append(
                        Probe(
                            target_group=name,
                            target_id=target.target_id,
                            traffic_port=target.port,
                            ip=target.ip,
                            port=config.port_for(target.port),
                            path=config.path,
                            timeout=timeout,
                            registration=target.registration,
                        )
                    )
            return probes

    def record(self, probe: Probe, status: int | None, *, timed_out: bool = False) -> None:
        """The outcome of a probe: the HTTP status, or None when no valid response came back
        (`timed_out=True` when the timeout expired, else a connection error or malformed reply).
        Results for targets deregistered or re-registered since the probe are ignored."""
        with self._lock:
            group = self._groups.get(probe.target_group)
            target = group.targets.get((probe.target_id, probe.traffic_port)) if group else None
            if group is None or target is None or target.registration != probe.registration:
                return
            if target.draining_until is not None or target.target_id in self._stopped:
                return
            target.probe_outstanding_until = None
            if status is not None and group.config.matches(status):
                self._passed(target, group.config)
            elif status is not None:
                self._failed(target, group.config, _code_mismatch(status))
            else:
                self._failed(target, group.config, _TIMED_OUT if timed_out else _FAILED)

    def _passed(self, target: _Target, config: HealthCheckConfig) -> None:
        target.passes += 1
        target.failures = 0
        if target.state.state == "initial":
            needed = self._initial_healthy_checks or config.healthy_threshold
        else:
            needed = config.healthy_threshold
        if target.state.state == "healthy":
            return
        if target.passes >= needed:
            target.state = _HEALTHY
        elif target.state.state == "initial":
            target.state = _INITIAL_CHECKS

    def _failed(self, target: _Target, config: HealthCheckConfig, reason: TargetState) -> None:
        target.failures += 1
        target.passes = 0
        target.last_failure = reason
        if target.state.state == "unhealthy":
            target.state = reason  # the latest failure's reason is what AWS reports
        elif target.failures >= config.unhealthy_threshold:
            target.state = reason
        elif target.state.state == "initial":
            target.state = _INITIAL_CHECKS

    # --- reading -------------------------------------------------------------------------------

    def state(self, target_group: str, target_id: str, port: int | None = None) -> TargetState:
        """The target's health as DescribeTargetHealth reports it (`port` needed only when the
        same target is registered on several ports)."""
        with self._lock:
            group = self._group(target_group)
            self._expire_draining(self._clock.now())
            keys = self._keys(group, target_id, port)
            if not keys:
                return _NOT_REGISTERED
            return self._reported(group, group.targets[keys[0]])

    def describe(self, target_group: str) -> list[TargetHealthDescription]:
        """Every target of the group (draining ones included), in registration order."""
        with self._lock:
            group = self._group(target_group)
            self._expire_draining(self._clock.now())
            return [
                TargetHealthDescription(t.target_id, t.port, group.config.port_for(t.port), self._reported(group, t))
                for t in sorted(group.targets.values(), key=lambda t: t.registration)
            ]

    def healthy_targets(self, target_group: str) -> list[tuple[str, int]]:
        """(ip, port) of the targets in state `healthy`."""
        return [(ip, port) for ip, port, state in self._endpoints(target_group) if state == "healthy"]

    def routing_targets(self, target_group: str) -> list[tuple[str, int]]:
        """Where the load balancer sends requests: healthy targets (and those whose checks are
        disabled); when there are none, every unhealthy target (ALB fails open)."""
        endpoints = self._endpoints(target_group)
        serving = [(ip, port) for ip, port, state in endpoints if state in ("healthy", "unavailable")]
        if serving:
            return serving
        return [(ip, port) for ip, port, state in endpoints if state == "unhealthy"]

    def host_counts(self, target_group: str) -> tuple[int, int]:
        """(HealthyHostCount, UnHealthyHostCount): draining and initial targets count in neither."""
        states = [state for _, _, state in self._endpoints(target_group)]
        return states.count("healthy"), states.count("unhealthy")

    # --- internals -----------------------------------------------------------------------------

    def _endpoints(self, target_group: str) -> list[tuple[str, int, StateName]]:
        with self._lock:
            group = self._group(target_group)
            self._expire_draining(self._clock.now())
            return [
                (t.ip, t.port, self._reported(group, t).state)
                for t in sorted(group.targets.values(), key=lambda t: t.registration)
            ]

    def _reported(self, group: _Group, target: _Target) -> TargetState:
        if target.draining_until is not None:
            return _DRAINING
        if target.target_id in self._stopped:
            return _STOPPED
        if not group.in_use:
            return _NOT_IN_USE
        if not group.config.enabled:
            return _CHECKS_DISABLED
        return target.state

    def _restart(self, target: _Target, now: datetime) -> None:
        target.state = _REGISTERING
        target.passes = target.failures = 0
        target.next_probe_at = now + self._scaled(self._registration_delay_s)
        target.probe_outstanding_until = None

    def _expire_draining(self, now: datetime) -> None:
        for group in self._groups.values():
            gone = [k for k, t in group.targets.items() if t.draining_until is not None and t.draining_until <= now]
            for key in gone:
                del group.targets[key]

    def _group(self, target_group: str) -> _Group:
        group = self._groups.get(target_group)
        if group is None:
            raise KeyError(f"unknown target group {target_group}")
        return group

    @staticmethod
    def _keys(group: _Group, target_id: str, port: int | None) -> list[tuple[str, int]]:
        return [k for k in group.targets if k[0] == target_id and (port is None or k[1] == port)]

    def _scaled(self, seconds: float) -> timedelta:
        return timedelta(seconds=seconds * self._scale)
