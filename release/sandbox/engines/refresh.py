"""The sandbox's instance refresh engine: StartInstanceRefresh and friends, over a `Fleet`.

moto has no instance refresh, so the sandbox server hands these four operations to a
`RefreshEngine` and calls `tick()` a few times a second; each tick moves every active refresh one
step. The engine is pure Python over the `Fleet` seam and a `Clock`: no moto, no boto3, no
threads (the server serialises calls). Tests drive it with a fake fleet and a FakeClock.

Instance refresh in the sandbox
-------------------------------
Follows AWS (API reference: StartInstanceRefresh, DescribeInstanceRefreshes,
CancelInstanceRefresh, RollbackInstanceRefresh, RefreshPreferences, RollbackDetails; user guide:
"How an instance refresh works", "Understand the default values for an instance refresh",
checkpoints, bake time, skip matching, "Undo changes with a manual or auto rollback"):

- One active refresh per group; another StartInstanceRefresh fails with InstanceRefreshInProgress.
- Statuses Pending → InProgress → (Baking, when BakeTime > 0) → Successful; Failed;
  Cancelling → Cancelled; RollbackInProgress → RollbackSuccessful | RollbackFailed.
- Preferences are validated as AWS does and echoed with their defaults (see refresh_prefs.py):
  MinHealthyPercentage 90, MaxHealthyPercentage 100, InstanceWarmup = the group's health check
  grace period, CheckpointDelay 3600 s, SkipMatching/AutoRollback false,
  ScaleInProtectedInstances/StandbyInstances Wait.
- Instances to replace: every instance, or with SkipMatching only those whose launch template,
  numbered version or AMI differ from the desired configuration (or, with no desired
  configuration, from the group's own). Scale-in protected and Standby instances are replaced,
  ignored or waited for per ScaleInProtectedInstances / StandbyInstances; waiting gives up and
  fails the refresh after one hour, as AWS documents.
- Batches: old instances are terminated only while healthy InService capacity stays at or above
  MinHealthyPercentage of desired capacity (rounded up), and replacements launched only while
  the group stays at or below MaxHealthyPercentage of it (rounded down); both in the same step.
  When the bounds leave no room at all, AWS still replaces one instance at a time: with
  MaxHealthyPercentage set, or MinHealthyPercentage 100, it launches first (briefly above
  desired capacity); otherwise it terminates one and launches its replacement at once (healthy
  capacity dips by one).
- A replacement counts as updated (PercentageComplete, InstancesToUpdate, healthy capacity)
  only once it is InService and healthy — ASG health Healthy and, for ELB health checks, target
  health `healthy` — and InstanceWarmup has passed since it entered InService.
- Checkpoints: the refresh replaces up to each CheckpointPercentage (of the instances to
  update, rounded up), then pauses CheckpointDelay before going on. A 100 % checkpoint pauses
  before the refresh completes.
- CloudWatch alarms in AlarmSpecification are read every tick while the refresh is Pending,
  InProgress or Baking; one in ALARM fails the refresh (or rolls it back with AutoRollback).
- AutoRollback / RollbackInstanceRefresh replace the instances the refresh launched with the
  group's configuration from before the refresh. Both need a DesiredConfiguration and a group on
  a numbered launch template version ($Latest/$Default → ValidationError at start,
  IrreversibleInstanceRefresh on rollback); the desired configuration itself may say $Latest
  (AWS's own StartInstanceRefresh example pairs it with AutoRollback). A manual rollback needs a Pending, InProgress or
  Baking refresh (ActiveInstanceRefreshNotFound otherwise). PercentageComplete falls back to 0
  during a rollback; InstancesToUpdate keeps its value from when the rollback started.
- CancelInstanceRefresh stops a refresh or a rollback; it waits for launches in flight
  (WaitForTransitioningInstances defaults to true) and leaves replaced instances as they are.
- The DesiredConfiguration is applied to the group (exactly as given, e.g. "$Latest") only when
  the refresh succeeds, never before.

Differs from AWS:

- Durations from the request or the group (InstanceWarmup, CheckpointDelay, BakeTime, health
  check grace period, the one-hour wait for protected/Standby instances) are multiplied by the
  sandbox's `time_scale` (e.g. 0.02: a 600 s warmup takes 12 s). Instances boot in real time.
- AWS documents no count of failed replacements after which a refresh fails ("misconfigured
  health checks" is named as a cause). The sandbox fails it after 3 failed replacements in one
  pass. A replacement fails when it leaves the group, turns Unhealthy, fails its ELB health check
  after the grace period, or is not healthy within grace + warmup + 300 s (scaled, but at least
  120 s of clock time, because boot time is not scaled).
- Only the Rolling strategy and launch templates (no mixed instances policies, warm pools,
  instance maintenance policies, DefaultInstanceWarmup, SSM-parameter AMIs, lifecycle hooks).
  WarmPoolProgress always reports 100 % and 0 instances to update.
- Standby instances with StandbyInstances=Terminate are terminated and replaced like the rest;
  Standby instances never count toward the group's size or healthy capacity.
- During Baking only the alarms are watched; during a checkpoint pause replacements are still
  health-checked, but a failed one is relaunched only when the pause ends.
- A refresh that fails without AutoRollback leaves the group as it is (failed replacements
  terminated); AWS's group would relaunch to desired capacity on its own.
- StatusReason texts imitate AWS's; they are not byte-identical.
- A refresh stays Pending for one second of clock time (unscaled) before it starts.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from release.clock import Clock
from release.sandbox.contracts import Fleet, GroupView, Member
from release.sandbox.engines.errors import ServiceError
from release.sandbox.engines.refresh_prefs import (
    InvalidRequest,
    Preferences,
    TemplateRef,
    check_strategy,
    parse_desired_configuration,
    parse_preferences,
)

# How many failed replacements in one pass (the refresh, or its rollback) make it fail.
MAX_FAILED_REPLACEMENTS = 3
# A replacement must be healthy within grace period + warmup + this many (scaled) seconds ...
HEALTH_WINDOW = 300
# ... but never less than this many clock seconds: instances boot in real, unscaled time.
MIN_HEALTH_TIMEOUT = 120
# AWS waits one hour for scale-in protection to be removed or Standby instances to return.
BLOCKED_WAIT = 3600
# A refresh stays Pending this long (clock seconds, unscaled), so callers can observe it, as on AWS.
PENDING_SECONDS = 1.0

ACTIVE = ("Pending", "InProgress", "Baking", "Cancelling", "RollbackInProgress")
ROLLBACK_ALLOWED = ("Pending", "InProgress", "Baking")
CANCEL_ALLOWED = ("Pending", "InProgress", "Baking", "RollbackInProgress")
GONE = frozenset({"Terminating", "Terminating:Wait", "Terminating:Proceed", "Terminated", "Detaching", "Detached"})
STANDBY = frozenset({"Standby", "EnteringStandby"})


class RefreshError(ServiceError):
    """An error AWS would return. `code` is AWS's error code (e.g. "InstanceRefreshInProgress",
    "ActiveInstanceRefreshNotFound", "ValidationError", "IrreversibleInstanceRefresh"), `message`
    AWS-like text; `status` the HTTP status (400 for all of these)."""


@dataclass(frozen=True)
class LaunchConfig:
    """A launch template pinned to a numbered version, and the AMI that version launches."""

    template_id: str
    version: str
    image_id: str

    def matches(self, member: Member) -> bool:
        return (
            member.launch_template_id == self.template_id
            and member.launch_template_version == self.version
            and member.image_id == self.image_id
        )


@dataclass
class _Replacement:
    launched_at: datetime
    in_service_since: datetime | None = None
    ready: bool = False  # InService, healthy and warmed up: counts as updated


@dataclass
class _Wave:
    """One pass of replacements: the refresh itself, or its rollback."""

    target: LaunchConfig
    olds: list[str]  # instances still to be replaced (terminated), in the order they will be
    total: int  # how many replacements this pass launches
    fresh: dict[str, _Replacement] = field(default_factory=dict)  # replacements alive
    olds_gone: int = 0
    failures: int = 0
    last_failure: str = ""

    @property
    def ready(self) -> int:
        return sum(1 for r in self.fresh.values() if r.ready)

    def reached(self, count: int) -> bool:
        """True once `count` old instances are gone and `count` replacements are updated."""
        return self.olds_gone >= count and self.ready >= count

    @property
    def done(self) -> bool:
        return not self.olds and len(self.fresh) >= self.total and self.ready >= self.total


@dataclass
class _Rollback:
    reason: str
    start_time: datetime
    percentage_on_rollback: int
    to_update_on_rollback: int
    wave: _Wave


@dataclass
class _Refresh:
    refresh_id: str
    group: str
    prefs: Preferences
    desired: TemplateRef | None
    previous: LaunchConfig  # the group's configuration when the refresh started
    previous_spec: tuple[str, str]  # ... as set on the group: (template id, version as given)
    wave: _Wave
    start_time: datetime
    status: str = "Pending"
    status_reason: str | None = None
    end_time: datetime | None = None
    next_checkpoint: int = 0
    paused_until: datetime | None = None
    bake_until: datetime | None = None
    blocked_since: datetime | None = None
    rollback: _Rollback | None = None

    @property
    def reversible(self) -> bool:
        return self.desired is not None and self.previous_spec[1].isdigit()

    @property
    def current_wave(self) -> _Wave:
        return self.rollback.wave if self.rollback else self.wave


class RefreshEngine:
    """Instance refreshes for every group of one sandbox. See the module docstring."""

    def __init__(self, fleet: Fleet, clock: Clock, *, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self._fleet = fleet
        self._clock = clock
        self._time_scale = time_scale
        self._refreshes: dict[str, list[_Refresh]] = {}  # group name -> refreshes, oldest first
        self._phases: dict[str, Callable[[_Refresh], None]] = {
            "Pending": self._begin,
            "InProgress": self._advance,
            "Baking": self._bake,
            "Cancelling": self._finish_cancel,
            "RollbackInProgress": self._advance_rollback,
        }

    # ---- the four operations -------------------------------------------------------------

    def start(
        self,
        group_name: str,
        *,
        strategy: str = "Rolling",
        preferences: Mapping[str, Any] | None = None,
        desired_configuration: Mapping[str, Any] | None = None,
    ) -> str:
        """StartInstanceRefresh. Validates everything before anything changes; returns the id."""
        group = self._group(group_name)
        if self._active(group_name):
            raise RefreshError(
                "InstanceRefreshInProgress",
                "An Instance Refresh is already in progress and blocks the execution of this Instance Refresh.",
            )
        try:
            check_strategy(strategy)
            desired = parse_desired_configuration(desired_configuration)
            prefs = parse_preferences(preferences, has_desired_configuration=desired is not None)
        except InvalidRequest as err:
            raise RefreshError("ValidationError", str(err)) from err

        previous, previous_spec = self._group_config(group)
        if prefs.auto_rollback and not previous_spec[1].isdigit():
            raise RefreshError(
                "ValidationError",
                f"AutoRollback is not supported because the Auto Scaling group {group_name} uses the "
                f"launch template version {previous_spec[1]}. Set a numbered version on the group.",
            )
        target = self._resolve(desired.template, desired.version) if desired else previous
        olds = self._instances_to_replace(group, target, prefs)
        refresh = _Refresh(
            refresh_id=str(uuid.uuid4()),
            group=group_name,
            prefs=prefs,
            desired=desired,
            previous=previous,
            previous_spec=previous_spec,
            wave=_Wave(target=target, olds=olds, total=len(olds)),
            start_time=self._clock.now(),
        )
        self._refreshes.setdefault(group_name, []).append(refresh)
        return refresh.refresh_id

    def describe(self, group_name: str, refresh_ids: Sequence[str] = ()) -> list[dict[str, Any]]:
        """DescribeInstanceRefreshes: newest first, keyed like botocore's `InstanceRefresh`."""
        self._group(group_name)
        found = reversed(self._refreshes.get(group_name, []))
        return [self._as_aws(r) for r in found if not refresh_ids or r.refresh_id in refresh_ids]

    def cancel(self, group_name: str) -> str:
        """CancelInstanceRefresh: stops an active refresh or rollback; replaced instances stay."""
        self._group(group_name)
        refresh = self._active(group_name)
        if refresh is None or refresh.status not in CANCEL_ALLOWED:
            raise self._no_active(group_name)
        refresh.status = "Cancelling"
        refresh.status_reason = "Waiting for in-flight launches to finish before cancelling."
        return refresh.refresh_id

    def rollback(self, group_name: str) -> str:
        """RollbackInstanceRefresh: only for a Pending/InProgress/Baking refresh that has a
        DesiredConfiguration and started from a numbered launch template version."""
        self._group(group_name)
        refresh = self._active(group_name)
        if refresh is None or refresh.status not in ROLLBACK_ALLOWED:
            raise self._no_active(group_name)
        if refresh.desired is None:
            raise RefreshError(
                "IrreversibleInstanceRefresh",
                "The instance refresh cannot be rolled back because it has no desired configuration.",
            )
        if not refresh.reversible:
            raise RefreshError(
                "IrreversibleInstanceRefresh",
                f"The instance refresh cannot be rolled back because the Auto Scaling group used launch "
                f"template version {refresh.previous_spec[1]} when it started. Rollback needs a numbered version.",
            )
        self._start_rollback(refresh, "Rollback started by RollbackInstanceRefresh.")
        return refresh.refresh_id

    def tick(self) -> None:
        """Advance every active refresh by one step."""
        for refreshes in self._refreshes.values():
            for refresh in refreshes:
                if refresh.status in ACTIVE:
                    self._phases[refresh.status](refresh)

    # ---- phases: one method per status ---------------------------------------------------

    def _begin(self, refresh: _Refresh) -> None:
        """Pending → InProgress once PENDING_SECONDS have passed."""
        if self._alarm_tripped(refresh):
            return
        if self._clock.now() >= refresh.start_time + timedelta(seconds=PENDING_SECONDS):
            refresh.status = "InProgress"

    def _advance(self, refresh: _Refresh) -> None:
        """InProgress: follow the replacements, honour checkpoints, start the next batch."""
        group = self._group_or_fail(refresh)
        if group is None or self._alarm_tripped(refresh):
            return
        wave = refresh.wave
        group = self._follow(refresh, wave, group)
        if wave.failures >= MAX_FAILED_REPLACEMENTS:
            self._fail(refresh, f"Instance refresh failed: {wave.last_failure}")
            return
        now = self._clock.now()
        if refresh.paused_until is not None:
            if now < refresh.paused_until:
                return
            refresh.paused_until = None
            refresh.next_checkpoint += 1
        checkpoint = self._next_checkpoint(refresh)
        if checkpoint is not None and wave.reached(checkpoint[1]):
            percent = checkpoint[0]
            refresh.paused_until = now + self._scaled(refresh.prefs.checkpoint_delay)
            refresh.status_reason = (
                f"Checkpoint {percent}% reached ({wave.ready} of {wave.total} instances updated). "
                f"Waiting {refresh.prefs.checkpoint_delay} seconds (CheckpointDelay) before continuing."
            )
            return
        if wave.done:
            self._finish_replacing(refresh)
            return
        self._replace_batch(refresh, wave, group, checkpoint[1] if checkpoint else wave.total)

    @staticmethod
    def _next_checkpoint(refresh: _Refresh) -> tuple[int, int] | None:
        """The next checkpoint as (percentage, instances to update by then, rounded up)."""
        checkpoints, total = refresh.prefs.checkpoints, refresh.wave.total
        if not total or refresh.next_checkpoint >= len(checkpoints):
            return None
        percent = checkpoints[refresh.next_checkpoint]
        return percent, math.ceil(total * percent / 100)

    def _bake(self, refresh: _Refresh) -> None:
        """Baking: wait BakeTime after the last replacement, still watching the alarms."""
        if self._alarm_tripped(refresh):
            return
        assert refresh.bake_until is not None
        if self._clock.now() >= refresh.bake_until:
            self._succeed(refresh)

    def _finish_cancel(self, refresh: _Refresh) -> None:
        """Cancelling → Cancelled once no replacement is still launching."""
        group = self._group_or_fail(refresh)
        if group is None:
            return
        launching = [
            m.instance_id
            for m in group.members
            if m.instance_id in refresh.current_wave.fresh and m.lifecycle_state.startswith("Pending")
        ]
        if launching:
            return
        refresh.status = "Cancelled"
        refresh.status_reason = "The instance refresh was cancelled by CancelInstanceRefresh."
        refresh.end_time = self._clock.now()

    def _advance_rollback(self, refresh: _Refresh) -> None:
        """RollbackInProgress: replace the refresh's instances with the previous configuration."""
        assert refresh.rollback is not None
        group = self._group_or_fail(refresh)
        if group is None:
            return
        wave = refresh.rollback.wave
        group = self._follow(refresh, wave, group)
        if wave.failures >= MAX_FAILED_REPLACEMENTS:
            refresh.status = "RollbackFailed"
            refresh.status_reason = f"Rollback failed: {wave.last_failure}"
            refresh.end_time = self._clock.now()
            return
        if wave.done:
            self._restore_group(refresh, group)
            refresh.status = "RollbackSuccessful"
            refresh.status_reason = "The rollback completed successfully."
            refresh.end_time = self._clock.now()
            return
        self._replace_batch(refresh, wave, group, None)

    # ---- transitions ---------------------------------------------------------------------

    def _finish_replacing(self, refresh: _Refresh) -> None:
        if refresh.prefs.bake_time > 0:
            refresh.status = "Baking"
            refresh.status_reason = (
                f"Waiting {refresh.prefs.bake_time} seconds (BakeTime) before the instance refresh is complete."
            )
            refresh.bake_until = self._clock.now() + self._scaled(refresh.prefs.bake_time)
        else:
            self._succeed(refresh)

    def _succeed(self, refresh: _Refresh) -> None:
        """Successful: only now does the group take the DesiredConfiguration."""
        if refresh.desired is not None:
            self._fleet.set_launch_template(refresh.group, refresh.wave.target.template_id, refresh.desired.version)
        refresh.status = "Successful"
        refresh.status_reason = None
        refresh.end_time = self._clock.now()

    def _fail(self, refresh: _Refresh, reason: str) -> None:
        """Failed, or RollbackInProgress when AutoRollback is on."""
        if refresh.prefs.auto_rollback and refresh.reversible:
            self._start_rollback(refresh, f"Automatic rollback. {reason}")
            return
        refresh.status = "Failed"
        refresh.status_reason = reason
        refresh.end_time = self._clock.now()

    def _start_rollback(self, refresh: _Refresh, reason: str) -> None:
        """Replace everything the refresh launched (updated or still warming) with the group's
        previous configuration. Unreplaced old instances already match it and stay. The rollback
        launches what brings the group back to its desired capacity: fewer than it terminates
        when the refresh had launched ahead, more when failed replacements left gaps."""
        forward = refresh.wave
        olds = list(forward.fresh)
        group = self._fleet.group(refresh.group)
        staying = sum(1 for m in group.members if m.instance_id not in forward.fresh and _in_capacity(m))
        refresh.rollback = _Rollback(
            reason=reason,
            start_time=self._clock.now(),
            percentage_on_rollback=self._percentage(refresh),
            to_update_on_rollback=self._to_update(refresh),
            wave=_Wave(target=refresh.previous, olds=olds, total=max(0, group.desired_capacity - staying)),
        )
        refresh.status = "RollbackInProgress"
        refresh.status_reason = reason
        refresh.paused_until = refresh.bake_until = refresh.blocked_since = None

    def _restore_group(self, refresh: _Refresh, group: GroupView) -> None:
        """Put the group back on its previous configuration if anything changed it meanwhile."""
        template_id, version = refresh.previous_spec
        if (group.launch_template_id, group.launch_template_version) != (template_id, version):
            self._fleet.set_launch_template(refresh.group, template_id, version)

    def _alarm_tripped(self, refresh: _Refresh) -> bool:
        alarms = refresh.prefs.alarms
        if not alarms:
            return False
        states = self._fleet.alarm_states(alarms)
        firing = [name for name in alarms if states.get(name) == "ALARM"]
        if not firing:
            return False
        self._fail(refresh, f"Instance refresh failed because alarm(s) {', '.join(firing)} went into ALARM state.")
        return True

    # ---- replacing instances -------------------------------------------------------------

    def _follow(self, refresh: _Refresh, wave: _Wave, group: GroupView) -> GroupView:
        """Update each replacement's warmup/health state; terminate replacements that failed.
        Returns the group as it is afterwards."""
        now = self._clock.now()
        members = {m.instance_id: m for m in group.members}
        for instance_id in list(wave.olds):
            old = members.get(instance_id)
            if old is None or old.lifecycle_state in GONE:  # it left the group on its own
                wave.olds.remove(instance_id)
                wave.olds_gone += 1
        warmup = self._scaled(self._warmup(refresh, group))
        terminated = False
        for instance_id, replacement in list(wave.fresh.items()):
            member = members.get(instance_id)
            problem = self._replacement_problem(refresh, group, member, instance_id, replacement)
            if problem:
                if member is not None and member.lifecycle_state not in GONE:
                    self._fleet.terminate(group.name, instance_id)
                    terminated = True
                del wave.fresh[instance_id]
                wave.failures += 1
                wave.last_failure = problem
                continue
            assert member is not None
            if replacement.in_service_since is None and member.lifecycle_state == "InService":
                replacement.in_service_since = now
            replacement.ready = (
                _healthy(member, group)
                and replacement.in_service_since is not None
                and now >= replacement.in_service_since + warmup
            )
        return self._fleet.group(group.name) if terminated else group

    def _replacement_problem(
        self,
        refresh: _Refresh,
        group: GroupView,
        member: Member | None,
        instance_id: str,
        replacement: _Replacement,
    ) -> str | None:
        """Why a replacement counts as failed, or None while it is fine or still booting."""
        if member is None or member.lifecycle_state in GONE:
            return f"Replacement instance {instance_id} left the group before the refresh finished."
        if member.health_status == "Unhealthy":
            return f"Replacement instance {instance_id} failed its Auto Scaling health check."
        now = self._clock.now()
        grace_over = now >= replacement.launched_at + self._scaled(group.health_check_grace_period)
        if _uses_elb(group) and member.target_health == "unhealthy" and grace_over:
            return f"Replacement instance {instance_id} failed its Elastic Load Balancing health check."
        if not replacement.ready and now >= replacement.launched_at + self._health_timeout(refresh, group):
            return (
                f"Replacement instance {instance_id} did not become healthy within "
                f"{self._health_timeout(refresh, group).total_seconds():.0f} seconds."
            )
        return None

    def _replace_batch(self, refresh: _Refresh, wave: _Wave, group: GroupView, cap: int | None) -> None:
        """Terminate and launch as many instances as the healthy-percentage bounds allow,
        without going past `cap` (the next checkpoint: that many terminations and launches)."""
        prefs = refresh.prefs
        members = {m.instance_id: m for m in group.members}
        desired = group.desired_capacity
        min_healthy = math.ceil(desired * prefs.min_healthy / 100)
        max_total = max(desired, math.floor(desired * prefs.max_healthy / 100))
        healthy = sum(1 for m in group.members if _healthy(m, group) and _counts(m, wave))
        total = sum(1 for m in group.members if m.lifecycle_state not in GONE | STANDBY)

        movable = [i for i in wave.olds if not self._blocked_reason(prefs, members[i])]
        movable.sort(key=lambda i: _healthy(members[i], group))  # unhealthy ones cost no capacity
        budget = healthy - min_healthy
        to_terminate: list[str] = []
        for instance_id in movable:
            if cap is not None and wave.olds_gone + len(to_terminate) >= cap:
                break
            if _healthy(members[instance_id], group):
                if budget <= 0:
                    continue
                budget -= 1
            to_terminate.append(instance_id)
        room = max_total - (total - sum(1 for i in to_terminate if _in_capacity(members[i])))
        launch_limit = wave.total if cap is None else min(cap, wave.total)
        launches = max(0, min(launch_limit - len(wave.fresh), room))

        in_flight = any(not r.ready for r in wave.fresh.values())
        if not to_terminate and not launches and not in_flight and movable and len(wave.fresh) < launch_limit:
            # The bounds leave no room; AWS still moves one instance at a time: launching first
            # when MaxHealthyPercentage is set or MinHealthyPercentage is 100, else both at once.
            launches = 1
            if not prefs.max_healthy_given and prefs.min_healthy < 100:
                to_terminate = movable[:1]

        for instance_id in to_terminate:
            self._fleet.terminate(group.name, instance_id)
            wave.olds.remove(instance_id)
            wave.olds_gone += 1
        for _ in range(launches):
            self._launch(wave, group)
        refresh.status_reason = self._progress_reason(refresh, wave, group)
        self._check_blocked(refresh, wave, members, bool(movable or launches or in_flight))

    def _launch(self, wave: _Wave, group: GroupView) -> None:
        target = wave.target
        try:
            instance_id = self._fleet.launch(group.name, target.template_id, target.version)
        except Exception as err:  # a failed EC2 launch fails the replacement, not the server
            wave.failures += 1
            wave.last_failure = (
                f"Failed to launch an instance with {target.template_id} version {target.version}: {err}"
            )
            return
        wave.fresh[instance_id] = _Replacement(launched_at=self._clock.now())

    def _check_blocked(self, refresh: _Refresh, wave: _Wave, members: Mapping[str, Member], other_work: bool) -> None:
        """ScaleInProtectedInstances/StandbyInstances = Wait: once only waiting instances are
        left, wait for them for an hour (scaled), then fail."""
        blocked = [(i, self._blocked_reason(refresh.prefs, members[i])) for i in wave.olds if i in members]
        blocked = [(i, why) for i, why in blocked if why]
        if not blocked or other_work:
            refresh.blocked_since = None
            return
        now = self._clock.now()
        if refresh.blocked_since is None:
            refresh.blocked_since = now
        instance_id, why = blocked[0]
        if now >= refresh.blocked_since + self._scaled(BLOCKED_WAIT):
            self._fail(refresh, f"Instance refresh failed: {instance_id} {why} for more than {BLOCKED_WAIT} seconds.")
        else:
            refresh.status_reason = (
                f"Waiting for {instance_id}: it {why}. The instance refresh fails after {BLOCKED_WAIT} seconds."
            )

    @staticmethod
    def _blocked_reason(prefs: Preferences, member: Member) -> str | None:
        if member.protected_from_scale_in and prefs.scale_in_protected == "Wait":
            return "is protected from scale in"
        if member.lifecycle_state in STANDBY and prefs.standby == "Wait":
            return "is in Standby"
        return None

    def _progress_reason(self, refresh: _Refresh, wave: _Wave, group: GroupView) -> str | None:
        members = {m.instance_id: m for m in group.members}
        waiting = [(i, members.get(i)) for i, r in wave.fresh.items() if not r.ready]
        base = refresh.rollback.reason if refresh.rollback else None
        if not waiting:
            return base
        instance_id, member = waiting[0]
        if member is None:  # launched in this very step
            text = f"Waiting for remaining instances to be available. For example: {instance_id} is Pending."
        elif _healthy(member, group):
            text = f"Waiting for instances to warm up before continuing. For example: {instance_id} is warming up."
        elif _uses_elb(group) and member.lifecycle_state == "InService":
            text = (
                "Waiting for remaining instances to be available. For example: "
                f"{instance_id} has insufficient data to evaluate its health with Elastic Load Balancing."
            )
        else:
            text = (
                "Waiting for remaining instances to be available. For example: "
                f"{instance_id} is {member.lifecycle_state}."
            )
        return f"{base} {text}" if base else text

    def _instances_to_replace(self, group: GroupView, target: LaunchConfig, prefs: Preferences) -> list[str]:
        """Every live instance, minus matching ones (SkipMatching) and ignored protected/Standby ones."""
        chosen = []
        for member in group.members:
            if member.lifecycle_state in GONE:
                continue
            if prefs.skip_matching and target.matches(member):
                continue
            if member.protected_from_scale_in and prefs.scale_in_protected == "Ignore":
                continue
            if member.lifecycle_state in STANDBY and prefs.standby == "Ignore":
                continue
            chosen.append(member.instance_id)
        return chosen

    # ---- reporting -----------------------------------------------------------------------

    def _percentage(self, refresh: _Refresh) -> int:
        """Updated share of the instances to update; during a rollback it falls back to 0."""
        total = refresh.wave.total
        if refresh.rollback is not None:
            remaining = len(refresh.rollback.wave.olds)
            return math.floor(100 * remaining / total) if total else 0
        if refresh.status == "Successful" or not total:
            return 100
        return math.floor(100 * refresh.wave.ready / total)

    def _to_update(self, refresh: _Refresh) -> int:
        if refresh.rollback is not None:
            return refresh.rollback.to_update_on_rollback
        if refresh.status == "Successful":
            return 0
        return refresh.wave.total - refresh.wave.ready

    def _as_aws(self, refresh: _Refresh) -> dict[str, Any]:
        percentage, to_update = self._percentage(refresh), self._to_update(refresh)
        out: dict[str, Any] = {
            "InstanceRefreshId": refresh.refresh_id,
            "AutoScalingGroupName": refresh.group,
            "Status": refresh.status,
            "StartTime": refresh.start_time,
            "PercentageComplete": percentage,
            "InstancesToUpdate": to_update,
            "ProgressDetails": _progress_details(percentage, to_update),
            "Preferences": refresh.prefs.as_aws(),
            "Strategy": "Rolling",
        }
        if refresh.status_reason:
            out["StatusReason"] = refresh.status_reason
        if refresh.end_time is not None:
            out["EndTime"] = refresh.end_time
        if refresh.desired is not None:
            out["DesiredConfiguration"] = refresh.desired.as_aws()
        if refresh.rollback is not None:
            rollback = refresh.rollback
            out["RollbackDetails"] = {
                "RollbackReason": rollback.reason,
                "RollbackStartTime": rollback.start_time,
                "PercentageCompleteOnRollback": rollback.percentage_on_rollback,
                "InstancesToUpdateOnRollback": rollback.to_update_on_rollback,
                "ProgressDetailsOnRollback": _progress_details(
                    rollback.percentage_on_rollback, rollback.to_update_on_rollback
                ),
            }
        return out

    # ---- lookups -------------------------------------------------------------------------

    def _group(self, name: str) -> GroupView:
        try:
            return self._fleet.group(name)
        except KeyError:
            raise RefreshError(
                "ValidationError", f"AutoScalingGroup name not found - AutoScalingGroup {name} not found"
            ) from None

    def _group_or_fail(self, refresh: _Refresh) -> GroupView | None:
        try:
            return self._fleet.group(refresh.group)
        except KeyError:
            refresh.status = "RollbackFailed" if refresh.rollback else "Failed"
            refresh.status_reason = f"The Auto Scaling group {refresh.group} no longer exists."
            refresh.end_time = self._clock.now()
            return None

    def _active(self, group_name: str) -> _Refresh | None:
        return next((r for r in self._refreshes.get(group_name, []) if r.status in ACTIVE), None)

    @staticmethod
    def _no_active(group_name: str) -> RefreshError:
        return RefreshError(
            "ActiveInstanceRefreshNotFound",
            f"No in progress or pending Instance Refresh found for Auto Scaling group {group_name}",
        )

    def _resolve(self, template: str, version: str) -> LaunchConfig:
        try:
            template_id, number, image_id = self._fleet.resolve_version(template, version)
        except KeyError:
            raise RefreshError(
                "ValidationError",
                f"The launch template {template} with version {version} does not exist.",
            ) from None
        return LaunchConfig(template_id, number, image_id)

    def _group_config(self, group: GroupView) -> tuple[LaunchConfig, tuple[str, str]]:
        """The group's configuration, resolved to a numbered version, and as set on the group."""
        template = group.launch_template_id or group.launch_template_name
        if template is None:
            raise RefreshError(
                "ValidationError",
                f"The Auto Scaling group {group.name} has no launch template; the sandbox refreshes only "
                "launch-template groups.",
            )
        config = self._resolve(template, group.launch_template_version or "$Default")
        return config, (config.template_id, group.launch_template_version or "$Default")

    def _warmup(self, refresh: _Refresh, group: GroupView) -> int:
        warmup = refresh.prefs.instance_warmup
        return group.health_check_grace_period if warmup is None else warmup

    def _health_timeout(self, refresh: _Refresh, group: GroupView) -> timedelta:
        window = group.health_check_grace_period + self._warmup(refresh, group) + HEALTH_WINDOW
        return max(self._scaled(window), timedelta(seconds=MIN_HEALTH_TIMEOUT))

    def _scaled(self, seconds: float) -> timedelta:
        return timedelta(seconds=seconds * self._time_scale)


def _uses_elb(group: GroupView) -> bool:
    return group.health_check_type == "ELB" and bool(group.target_group_arns)


def _healthy(member: Member, group: GroupView) -> bool:
    """InService and healthy as the group sees it (plus the load balancer for ELB checks)."""
    if member.lifecycle_state != "InService" or member.health_status != "Healthy":
        return False
    return not _uses_elb(group) or member.target_health == "healthy"


def _in_capacity(member: Member) -> bool:
    return member.lifecycle_state not in GONE | STANDBY


def _counts(member: Member, wave: _Wave) -> bool:
    """Replacements count toward healthy capacity only once warmed up."""
    replacement = wave.fresh.get(member.instance_id)
    return replacement is None or replacement.ready


def _progress_details(percentage: int, to_update: int) -> dict[str, Any]:
    return {
        "LivePoolProgress": {"PercentageComplete": percentage, "InstancesToUpdate": to_update},
        "WarmPoolProgress": {"PercentageComplete": 100, "InstancesToUpdate": 0},
    }
