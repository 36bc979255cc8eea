"""The release as a state machine: phases, the allowed transitions, and the executor that drives
them against a cloud, a ledger and a clock.

No boto3, invoke or subprocess here: the cloud and ledger arrive as protocols (aws.Cloud and
ledger.Ledger implement them), the clock is injected, and everything a person should see is
sent to an `on_event` callback (the tasks print it through ui.py).

    planned ─► locked ─► template ─► refresh ─► gating ─► succeeded
       │          │          │                     │
       └──────────┴──────────┴─► failed            └─► rolling_back ─► rolled_back
                                                                    └─► rollback_failed

The group is never moved to the new template version before the refresh (the documented trap
where AWS then "rolls back" to the same bad version): the refresh carries it as
DesiredConfiguration, which AWS applies to the group only on success. Every phase change is
saved to the ledger first, so a re-run resumes from the record instead of starting a second
refresh.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from release.clock import Clock
from release.config import Environment
from release.errors import AwsError, GateFailed, KilnError, RollbackFailed, UsageError
from release.gate import IN_PROGRESS, Expectation, judge
from release.ledger import Outcome, ReleaseRecord, new_release_id
from release.model import GroupState, InstanceState, Lock, RefreshState, Snapshot, TemplateVersion, Verdict
from release.plan import Plan


class Phase(StrEnum):
    PLANNED = "planned"
    LOCKED = "locked"
    TEMPLATE = "template"
    REFRESH = "refresh"
    GATING = "gating"
    SUCCEEDED = "succeeded"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    FAILED = "failed"


TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    Phase.PLANNED: frozenset({Phase.LOCKED, Phase.FAILED}),
    Phase.LOCKED: frozenset({Phase.TEMPLATE, Phase.FAILED}),
    Phase.TEMPLATE: frozenset({Phase.REFRESH, Phase.FAILED}),
    Phase.REFRESH: frozenset({Phase.GATING, Phase.ROLLING_BACK}),
    Phase.GATING: frozenset({Phase.SUCCEEDED, Phase.ROLLING_BACK}),
    Phase.ROLLING_BACK: frozenset({Phase.ROLLED_BACK, Phase.ROLLBACK_FAILED}),
}
FINAL = {Phase.SUCCEEDED: Outcome.SUCCEEDED, Phase.ROLLED_BACK: Outcome.ROLLED_BACK,
         Phase.ROLLBACK_FAILED: Outcome.ROLLBACK_FAILED, Phase.FAILED: Outcome.FAILED}


class CloudPort(Protocol):
    def group(self, name: str, target_groups: tuple[str, ...] = ()) -> GroupState | None: ...
    def refresh(self, group: str, refresh_id: str) -> RefreshState | None: ...
    def active_refresh(self, group: str) -> RefreshState | None: ...
    def alarm_states(self, names: tuple[str, ...]) -> dict[str, str]: ...
    def template_versions(self, name: str) -> list[TemplateVersion]: ...
    def create_template_version(self, name: str, source: int, image_id: str, description: str) -> int: ...
    def set_default_template_version(self, name: str, number: int) -> None: ...
    def start_refresh(self, group: str, template: str, version: int, preferences: dict[str, Any]) -> str: ...
    def rollback_refresh(self, group: str) -> str: ...
    def cancel_refresh(self, group: str) -> str: ...


class LedgerPort(Protocol):
    def acquire(self, env: str, holder: str, now: datetime) -> Lock: ...
    def release_lock(self, env: str, holder: str) -> None: ...
    def save(self, record: ReleaseRecord) -> None: ...


@dataclass(frozen=True)
class Event:
    """Something a person watching should see."""

    at: datetime
    phase: Phase
    message: str
    verdict: Verdict | None = None
    snapshot: Snapshot | None = None


@dataclass
class Probes:
    """How Kiln sees what is really served: per instance, and through the load balancer."""

    served_version: Callable[[InstanceState], str | None]
    through_load_balancer: Callable[[], dict[str, int]]
    _confirmed: dict[str, str] = field(default_factory=dict)

    def version_of(self, instance: InstanceState) -> str | None:
        # An instance's image is immutable: once it answered, the answer stands.
        if instance.instance_id not in self._confirmed:
            served = self.served_version(instance)
            if served is None:
                return None
            self._confirmed[instance.instance_id] = served
        return self._confirmed[instance.instance_id]


class Releaser:
    def __init__(self, env: Environment, cloud: CloudPort, ledger: LedgerPort, clock: Clock, probes: Probes,
                 on_event: Callable[[Event], None], *, actor: str, time_scale: float = 1.0) -> None:
        self.env = env
        self.cloud = cloud
        self.ledger = ledger
        self.clock = clock
        self.probes = probes
        self.on_event = on_event
        self.actor = actor
        self.time_scale = time_scale  # AWS seconds -> this clock's seconds (the sandbox runs faster)
        self.record: ReleaseRecord | None = None

    # ------------------------------------------------------------------ entry points
    def release(self, plan: Plan, *, kind: str = "release") -> ReleaseRecord:
        """Run a plan from the start. Raises GateFailed / RollbackFailed on a failed gate."""
        if not plan.ok:
            raise UsageError(plan.blockers[0])
        assert plan.ami is not None and plan.base_template is not None  # guaranteed by plan.ok
        now = self.clock.now()
        record = ReleaseRecord(
            release_id=new_release_id(), environment=self.env.name, kind=kind, version=plan.version,
            image_id=plan.ami.image_id, fingerprint=plan.ami.fingerprint, actor=self.actor, started_at=now,
            template_before=plan.base_template.number,
            previous_version=plan.previous_version,
            previous_image_id=plan.base_template.image_id)
        self.ledger.acquire(self.env.name, self._holder(record), now)
        self.record = record
        self._step(Phase.LOCKED, f"locked {self.env.name} for {kind} {plan.version}")
        try:
            number = self.cloud.create_template_version(
                self.env.launch_template, plan.base_template.number, plan.ami.image_id,
                f"kiln {kind} {plan.version} ({plan.ami.fingerprint or plan.ami.image_id})")
            self._step(Phase.TEMPLATE, f"created {self.env.launch_template} v{number} from "
                                       f"v{plan.base_template.number} with {plan.ami.image_id}", template_after=number)
            refresh_id = self.cloud.start_refresh(self.env.asg, self.env.launch_template, number,
                                                  dict(plan.preferences))
        except KilnError as err:
            self._finish(Phase.FAILED, f"failed before the fleet changed: {err}")
            raise
        self._step(Phase.REFRESH, f"started instance refresh {refresh_id} to v{number}", refresh_id=refresh_id)
        return self._gate_and_finish()

    def resume(self, record: ReleaseRecord) -> ReleaseRecord:
        """Carry on with a release another Kiln process started and did not finish."""
        self.ledger.acquire(self.env.name, self._holder(record), self.clock.now())
        self.record = record
        self._emit(Phase(record.phase), f"resuming {record.kind} {record.version} ({record.release_id}) "
                                        f"from phase {record.phase}")
        if record.phase == Phase.ROLLING_BACK:
            return self._await_rollback(record.reason or "resumed rollback")
        if record.refresh_id is None:
            if record.template_after is None:
                self._finish(Phase.FAILED, "interrupted before the fleet changed")
                return self._current()
            refresh_id = self.cloud.start_refresh(self.env.asg, self.env.launch_template, record.template_after,
                                                  self.env.refresh.as_aws(self.env.alarms))
            self._step(Phase.REFRESH, f"started instance refresh {refresh_id}", refresh_id=refresh_id)
        return self._gate_and_finish()

    # ------------------------------------------------------------------ the gate
    def _gate_and_finish(self) -> ReleaseRecord:
        record = self._current()
        expect = Expectation(record.version, record.image_id, grace_seconds=self._grace())
        deadline = self.clock.now() + timedelta(seconds=self.env.gate.timeout)
        self._step(Phase.GATING, f"watching the refresh (gate times out at {deadline:%H:%M:%S} UTC)")
        verdict = self._watch(expect, deadline, record.refresh_id)
        if verdict.kind == "pass":
            assert record.template_after is not None
            self.cloud.set_default_template_version(self.env.launch_template, record.template_after)
            self._finish(Phase.SUCCEEDED, verdict.reason)
            return self._current()
        return self._roll_back(verdict.reason)

    def _grace(self) -> float:
        """How long a new instance may fail ELB health checks while it boots: the group's grace
        period (or the refresh's warmup, when longer), in this clock's seconds."""
        group = self.cloud.group(self.env.asg, self.env.target_groups)
        grace = group.health_check_grace_period if group else 0
        return max(grace, self.env.refresh.instance_warmup or 0) * self.time_scale

    def _watch(self, expect: Expectation, deadline: datetime, refresh_id: str | None) -> Verdict:
        while True:
            snapshot = self._observe(expect, refresh_id)
            verdict = judge(snapshot, expect, deadline)
            self._emit(Phase(self._current().phase), verdict.reason, verdict, snapshot)
            if verdict.done:
                return verdict
            self.clock.sleep(self.env.gate.poll_interval)

    def _observe(self, expect: Expectation, refresh_id: str | None) -> Snapshot:
        group = self.cloud.group(self.env.asg, self.env.target_groups)
        if group is None:
            raise UsageError(f"Auto Scaling group {self.env.asg!r} disappeared during the release")
        instances = tuple(
            replace(i, served_version=self.probes.version_of(i))
            if i.lifecycle == "InService" and i.image_id == expect.image_id else i
            for i in group.instances)
        refresh = self.cloud.refresh(self.env.asg, refresh_id) if refresh_id else None
        done = refresh is not None and refresh.status == expect.done_status
        return Snapshot(
            at=self.clock.now(), refresh=refresh, group=replace(group, instances=instances),
            alarms=self.cloud.alarm_states(self.env.alarms),
            # Sampling the load balancer only matters once the refresh is done.
            served_through_lb=self.probes.through_load_balancer() if done else {})

    # ------------------------------------------------------------------ rollback
    def _roll_back(self, reason: str) -> ReleaseRecord:
        record = self._current()
        self._step(Phase.ROLLING_BACK, f"gate failed: {reason}; rolling back to "
                                       f"{record.previous_version or record.previous_image_id}", reason=reason)
        return self._await_rollback(reason)

    def _await_rollback(self, reason: str) -> ReleaseRecord:
        record = self._current()
        assert record.template_before is not None and record.previous_image_id is not None
        expect, refresh_id = self._start_rollback(record)
        deadline = self.clock.now() + timedelta(seconds=self.env.gate.timeout)
        verdict = self._watch(expect, deadline, refresh_id)
        self.cloud.set_default_template_version(self.env.launch_template, record.template_before)
        if verdict.kind == "pass":
            self._finish(Phase.ROLLED_BACK, f"rolled back: {reason}")
            raise GateFailed(f"release of {record.version} to {self.env.name} failed the gate and was rolled back: "
                             f"{reason}", hint="See `inv history` for the journal.")
        self._finish(Phase.ROLLBACK_FAILED, f"gate failed ({reason}); rollback failed too: {verdict.reason}")
        raise RollbackFailed(f"release of {record.version} to {self.env.name} failed ({reason}) and the rollback "
                             f"did not finish: {verdict.reason}",
                             hint="Inspect with `inv status`; run `inv rollback` once the group is stable.")

    def _start_rollback(self, record: ReleaseRecord) -> tuple[Expectation, str]:
        """Ask AWS to roll back while the refresh is in progress; otherwise (ended, or AWS refuses
        because the group used an alias) refresh back to the previous numbered version."""
        assert record.template_before is not None and record.previous_image_id is not None

        def back(done: str) -> Expectation:
            # Going back to what was live before; a seed image Kiln never released is only
            # expected to be back, not healthy.
            return Expectation(record.previous_version, str(record.previous_image_id), done,
                               grace_seconds=self._grace(), health_required=record.previous_version is not None,
                               fail_fast=False)

        if record.rollback_refresh_id:  # resumed after the rollback started
            done = "RollbackSuccessful" if record.rollback_refresh_id == record.refresh_id else "Successful"
            return back(done), record.rollback_refresh_id
        refresh = self.cloud.refresh(self.env.asg, record.refresh_id) if record.refresh_id else None
        if refresh is not None and refresh.status in ("RollbackInProgress", "RollbackSuccessful"):
            self._step(Phase.ROLLING_BACK, f"AWS is rolling back {refresh.refresh_id} itself (AutoRollback)",
                       rollback_refresh_id=refresh.refresh_id)
            return back("RollbackSuccessful"), refresh.refresh_id
        if refresh is not None and refresh.status in IN_PROGRESS:
            try:
                rolled = self.cloud.rollback_refresh(self.env.asg)
                self._step(Phase.ROLLING_BACK, f"RollbackInstanceRefresh {rolled}", rollback_refresh_id=rolled)
                return back("RollbackSuccessful"), rolled
            except AwsError as err:
                self._emit(Phase.ROLLING_BACK, f"AWS cannot roll back ({err.code}); cancelling and refreshing back")
                self.cloud.cancel_refresh(self.env.asg)
                self._wait_until_no_refresh()
        new_id = self.cloud.start_refresh(self.env.asg, self.env.launch_template, record.template_before,
                                          self._rollback_preferences())
        self._step(Phase.ROLLING_BACK, f"started refresh {new_id} back to v{record.template_before}",
                   rollback_refresh_id=new_id)
        return back("Successful"), new_id

    def _rollback_preferences(self) -> dict[str, Any]:
        # Going back must not itself be rolled back by an alarm that is still firing.
        prefs = self.env.refresh.as_aws(())
        prefs["AutoRollback"] = False
        return prefs

    def _wait_until_no_refresh(self) -> None:
        deadline = self.clock.now() + timedelta(seconds=self.env.gate.timeout)
        while self.cloud.active_refresh(self.env.asg) is not None:
            if self.clock.now() >= deadline:
                raise RollbackFailed(f"the refresh on {self.env.asg} did not stop after cancelling",
                                     hint="Check the group in the console; then `inv rollback`.")
            self.clock.sleep(self.env.gate.poll_interval)

    # ------------------------------------------------------------------ bookkeeping
    def _current(self) -> ReleaseRecord:
        assert self.record is not None
        return self.record

    def _holder(self, record: ReleaseRecord) -> str:
        return f"{record.actor} ({record.kind} {record.version}, {record.release_id})"

    def _step(self, phase: Phase, message: str, **changes: Any) -> None:
        record = self._current()
        current = Phase(record.phase)
        if phase != current and phase not in TRANSITIONS.get(current, frozenset()):
            raise KilnError(f"internal: a release cannot go from {current} to {phase}")
        self.record = record.noted(self.clock.now(), phase, message, **changes)
        self.ledger.save(self.record)
        self._emit(phase, message)

    def _finish(self, phase: Phase, message: str) -> None:
        self._step(phase, message, outcome=FINAL[phase], ended_at=self.clock.now(),
                   reason=None if phase is Phase.SUCCEEDED else message)
        self.ledger.release_lock(self.env.name, self._holder(self._current()))

    def _emit(self, phase: Phase, message: str, verdict: Verdict | None = None,
              snapshot: Snapshot | None = None) -> None:
        self.on_event(Event(self.clock.now(), phase, message, verdict, snapshot))
