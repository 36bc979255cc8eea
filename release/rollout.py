"""The release as a state machine: phases, the allowed transitions, and the one driver that
executes a saved plan against a cloud, a ledger and a clock.

No boto3, invoke or subprocess here: the cloud and ledger arrive as protocols (cloud.Cloud and
ledger.Ledger implement them), the clock is injected, and everything a person should see is
sent to an `on_event` callback (the tasks print it through ui.py).

    planned ─► locked ─► template ─► refresh ─► gating ─► succeeded
                 │          │          │           │
                 └──────────┴──────────┴───────────┴─► rolling_back ─► rolled_back
                 └──────────┴─► failed (nothing changed)           └─► rollback_failed

Safety, in the order it matters:
- The plan is the record: its steps and the way back are saved before the first change, and a
  resumed or undone release follows the saved record, never versions.toml.
- One driver, fenced: the driver holds the environment's lock as a lease. It renews the lease at
  every poll and before every mutating call (the fence), and every record write is conditional
  on the lock still being its own. A driver whose lease was taken over stops (LeaseLost) without
  touching anything more.
- Every mutating call is idempotent or looked up first: CreateLaunchTemplateVersion carries a
  client token derived from the release; before StartInstanceRefresh (and when AWS answers
  InstanceRefreshInProgress) the refresh that targets this release's version is adopted; the
  same holds for a rollback's refresh. A crash between a call and its record converges on re-run.
- The group is never moved to the new template version before the refresh (the documented trap
  where AWS then "rolls back" to the same bad version): the refresh carries it as
  DesiredConfiguration, which AWS applies only on success.
- The gate never blocks: each observation runs with a time budget (poll interval + slack), probes
  run in the background, transient AWS errors are retried until the gate's deadline.

Why one module (~700 lines): the steps share the fencing, the journal and the one record; split
apart, the invariants (every mutation fenced, each step saved before the next) would be spread
across files. The gate's judgement is gate.py; the cloud and the ledger come in as ports.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from release.clock import Clock
from release.config import Environment
from release.errors import AwsError, GateFailed, KilnError, LeaseLost, LockHeld, RollbackFailed, UsageError
from release.gate import IN_PROGRESS, Expectation, judge
from release.model import (
    GroupState,
    InstanceState,
    Lock,
    RefreshState,
    Snapshot,
    TemplateVersion,
    Verdict,
    VerdictKind,
)
from release.plan import Plan
from release.record import Lease, Outcome, ReleaseRecord, client_token, new_release_id
from release.timeline import RELEASE, ROLLBACK, Timeline, decode, unobserved_sample


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
    Phase.LOCKED: frozenset({Phase.TEMPLATE, Phase.FAILED, Phase.ROLLING_BACK}),
    Phase.TEMPLATE: frozenset({Phase.REFRESH, Phase.FAILED, Phase.ROLLING_BACK}),
    Phase.REFRESH: frozenset({Phase.GATING, Phase.ROLLING_BACK}),
    Phase.GATING: frozenset({Phase.SUCCEEDED, Phase.ROLLING_BACK}),
    Phase.ROLLING_BACK: frozenset({Phase.ROLLED_BACK, Phase.ROLLBACK_FAILED}),
}
FINAL = {Phase.SUCCEEDED: Outcome.SUCCEEDED, Phase.ROLLED_BACK: Outcome.ROLLED_BACK,
         Phase.ROLLBACK_FAILED: Outcome.ROLLBACK_FAILED, Phase.FAILED: Outcome.FAILED}

# Named points between steps, and between each mutating call and its record. A test (or a
# person rehearsing a crash) can stop the process at any of them: KILN_CRASH_AT (commands/deploy.py).
CHECKPOINTS = (
    "locked", "template-created", "template-saved", "refresh-started", "refresh-saved", "gating",
    "gate-passed", "default-set", "rollback-started", "rollback-saved", "rollback-watching", "default-restored",
)

# How much longer than the poll interval one observation may take before the loop moves on.
OBSERVE_SLACK_SECONDS = 2.0
# The gate's timeline is saved when a watch ends and every this many polls in between.
TIMELINE_SAVE_POLLS = 10
ROLLBACK_STATUSES = frozenset({"RollbackInProgress", "RollbackSuccessful"})


class CloudPort(Protocol):
    def group(self, name: str, target_groups: tuple[str, ...] = ()) -> GroupState | None: ...
    def refresh(self, group: str, refresh_id: str) -> RefreshState | None: ...
    def refreshes(self, group: str) -> list[RefreshState]: ...
    def active_refresh(self, group: str) -> RefreshState | None: ...
    def alarm_states(self, names: tuple[str, ...]) -> dict[str, str]: ...
    def find_template_version(self, name: str, newer_than: int, marker: str) -> TemplateVersion | None: ...
    def create_template_version(self, name: str, source: int, image_id: str, description: str,
                                client_token: str) -> int: ...
    def set_default_template_version(self, name: str, number: int) -> None: ...
    def start_refresh(self, group: str, template: str, version: int, preferences: dict[str, Any]) -> str: ...
    def rollback_refresh(self, group: str) -> str: ...
    def cancel_refresh(self, group: str) -> str: ...


class TimelineStore(Protocol):
    """Where the gate's timeline of a release is kept for `inv report` (the ledger, beside the record)."""

    def save_timeline(self, record: ReleaseRecord, body: str) -> None: ...
    def timeline(self, env: str, sort_key: str) -> str | None: ...


class LedgerPort(Protocol):
    def acquire(self, env: str, lease: Lease, now: datetime, *, phase: str = ..., take_over: str | None = ...
                ) -> Lock: ...
    def renew(self, env: str, holder: str, now: datetime, ttl: timedelta, phase: str) -> None: ...
    def release_lock(self, env: str, holder: str) -> None: ...
    def save(self, record: ReleaseRecord, *, holder: str | None = ..., now: datetime | None = ...) -> None: ...


@dataclass(frozen=True)
class Driver:
    """This process, as the lock knows it."""

    holder: str  # unique per process: the fencing token
    who: str  # user@host pid N, for people


@dataclass(frozen=True)
class Event:
    """Something a person watching should see."""

    at: datetime
    phase: Phase
    message: str
    verdict: Verdict | None = None
    snapshot: Snapshot | None = None


@dataclass(frozen=True)
class ProbeResult:
    version: str | None  # what /version says; None: no answer
    health_ok: bool | None  # /health answered 200; None: no answer
    detail: str = ""


@dataclass
class Probes:
    """How Kiln sees what is really served: per instance, and through the load balancer.

    Probes run in the background and never hold up a poll: `look` returns what has been learnt
    within its budget and leaves slower probes running for the next poll (one at a time per
    instance). A healthy answer stands (an instance's image is immutable); a failing one is asked
    again.
    """

    check_instance: Callable[[InstanceState], ProbeResult]
    through_load_balancer: Callable[[], dict[str, int]] | None  # None: no load balancer
    workers: int = 16
    stale_after: float = 60.0  # real seconds
    _known: dict[str, ProbeResult] = field(default_factory=dict)
    _started: dict[str, float] = field(default_factory=dict)
    _running: dict[str, Future[ProbeResult]] = field(default_factory=dict)
    _sampling: Future[dict[str, int]] | None = None
    _pool: ThreadPoolExecutor | None = None

    def look(self, instances: list[InstanceState], budget: float) -> dict[str, ProbeResult]:
        pool = self._executor()
        now = time.monotonic()
        for instance_id, started in list(self._started.items()):
            if instance_id in self._running and now - started > self.stale_after:
                # A probe stuck past every timeout it was given: ask again rather than wait forever.
                del self._running[instance_id]
        for i in instances:
            known = self._known.get(i.instance_id)
            # Only a whole answer stands: a version and a healthy /health. Anything less is asked again.
            confirmed = known is not None and known.version is not None and known.health_ok is True
            if i.instance_id not in self._running and not confirmed:
                self._running[i.instance_id] = pool.submit(self.check_instance, i)
                self._started[i.instance_id] = now
        wanted = [self._running[i.instance_id] for i in instances if i.instance_id in self._running]
        if wanted:
            wait(wanted, timeout=budget)
        for instance_id, future in list(self._running.items()):
            if future.done():
                del self._running[instance_id]
                try:
                    self._known[instance_id] = future.result()
                except Exception as err:  # a probe that breaks is a failed probe, not a crash
                    self._known[instance_id] = ProbeResult(None, False, f"{type(err).__name__}: {err}")
        return {i.instance_id: self._known[i.instance_id] for i in instances if i.instance_id in self._known}

    def sample_load_balancer(self, budget: float) -> dict[str, int] | None:
        if self.through_load_balancer is None:
            return None
        if self._sampling is None:  # one sample in flight at a time, however slow the load balancer
            self._sampling = self._executor().submit(self.through_load_balancer)
        done, _ = wait([self._sampling], timeout=budget, return_when=FIRST_COMPLETED)
        if not done:
            return {}
        future, self._sampling = self._sampling, None
        try:
            return future.result()
        except Exception as err:
            return {f"error: {type(err).__name__}": 1}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="probe")
        return self._pool


# How often a lease being waited out is read again (one consistent GetItem each time).
LAPSE_POLL_SECONDS = 1.0


def await_lapse(lock: Lock, read_lock: Callable[[], Lock | None], clock: Clock) -> None:
    """Wait until `lock`'s lease lapses, so that a release whose driver was just killed can be
    resumed or rolled back at once instead of "try again in N s". A live driver renews its lease
    at every poll: a renewal, or the lock changing hands, is LockHeld as soon as it is seen, and
    nothing is taken over. Returns when the lease lapsed or the lock was given back (the caller
    reads the state again: the release may have finished meanwhile). Waits at most the lease."""
    while True:
        now = clock.now()
        left = (lock.expires_at - now).total_seconds()
        if left <= 0:
            return
        clock.sleep(min(LAPSE_POLL_SECONDS, left + 0.05))
        seen = read_lock()
        if seen is None:
            return
        if seen.holder != lock.holder:
            raise LockHeld(f"while waiting, the lock was taken by {seen.describe(clock.now())}",
                           hint="See `inv status`.")
        if seen.expires_at > lock.expires_at:
            raise LockHeld(f"its driver is alive: it renewed its lease ({seen.describe(clock.now())})",
                           hint="See `inv status`; in an emergency `inv rollback --break-lock` takes over "
                                "to go back.")
        lock = seen


class Releaser:
    def __init__(self, env: Environment, cloud: CloudPort, ledger: LedgerPort, clock: Clock, probes: Probes,
                 on_event: Callable[[Event], None], *, actor: str, driver: Driver, time_scale: float = 1.0,
                 checkpoint: Callable[[str], None] = lambda name: None,
                 timelines: TimelineStore | None = None) -> None:
        self.env = env
        self.cloud = cloud
        self.ledger = ledger
        self.clock = clock
        self.probes = probes
        self.on_event = on_event
        self.actor = actor
        self.driver = driver
        self.time_scale = time_scale  # AWS seconds -> this clock's seconds (the sandbox runs faster)
        self.checkpoint = checkpoint
        self.timelines = timelines
        self.timeline = Timeline()
        self._timeline_failed = False  # said once: the report will miss the rest of this watch
        # Time budgets, in real seconds: how long a poll waits for an observation, and for probes.
        self.observe_budget = env.gate.poll_interval + OBSERVE_SLACK_SECONDS
        self.probe_budget = max(0.5, env.gate.poll_interval / 2)
        self.record: ReleaseRecord | None = None
        self.retried: Counter[str] = Counter()  # transient AWS errors the gate rode out, by code
        self._observer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="observe")
        self._beats = ThreadPoolExecutor(max_workers=1, thread_name_prefix="heartbeat")

    @property
    def ttl(self) -> timedelta:
        return timedelta(seconds=self.env.gate.lease)

    # ------------------------------------------------------------------ entry points
    def release(self, plan: Plan, *, kind: str = "release") -> ReleaseRecord:
        """Save the plan, take the lock, and drive it to the end. Raises GateFailed / RollbackFailed
        on a failed gate, LockHeld (nothing changed) when another driver holds the environment."""
        if not plan.ok:
            raise UsageError(plan.blockers[0])
        record = self.new_record(plan, kind)
        self.ledger.acquire(self.env.name, self._lease(record), self.clock.now())
        self.record = record
        self._step(Phase.LOCKED, f"locked {self.env.name} for {kind} {plan.version} as {self.driver.who}; plan "
                                 f"saved: {record.way_back()} on failure")
        self.checkpoint("locked")
        return self._drive()

    def new_record(self, plan: Plan, kind: str) -> ReleaseRecord:
        assert plan.ami is not None and plan.base_template is not None  # guaranteed by plan.ok
        release_id = new_release_id()
        return ReleaseRecord(
            release_id=release_id, environment=self.env.name, kind=kind, version=plan.version,
            image_id=plan.ami.image_id, fingerprint=plan.ami.fingerprint, actor=self.actor,
            started_at=self.clock.now(), group=self.env.asg, template=self.env.launch_template,
            template_before=plan.base_template.number, group_ref_before=plan.group_ref,
            default_before=plan.default_version, previous_version=plan.previous_version,
            previous_image_id=plan.base_template.image_id, client_token=client_token(release_id),
            preferences=dict(plan.preferences), rollback_preferences=dict(plan.rollback_preferences))

    def take_over(self, record: ReleaseRecord, lock: Lock | None, *, force: bool) -> None:
        """Become the driver of an unfinished release: once its holder's lease has lapsed, or, with
        `force`, from a live holder (which stops at its next fence check). Raises LockHeld."""
        self.ledger.acquire(self.env.name, self._lease(record), self.clock.now(), phase=record.phase,
                            take_over=lock.holder if (force and lock is not None) else None)
        self.record = record

    def resume(self, record: ReleaseRecord) -> ReleaseRecord:
        """Carry on with a release whose driver died, from its saved record (after take_over)."""
        self.record = record
        self._load_timeline()
        self._emit(Phase(record.phase), f"resuming {record.kind} {record.version} ({record.release_id}) "
                                        f"from phase {record.phase}")
        return self._drive()

    def undo(self, record: ReleaseRecord, why: str) -> ReleaseRecord:
        """Roll an unfinished release back to what the group ran before it (after take_over): never
        complete it. Returns the record (rolled back) or raises RollbackFailed."""
        self.record = record
        self._load_timeline()
        with self._leaving_in_progress():
            if record.phase != Phase.ROLLING_BACK:
                self._step(Phase.ROLLING_BACK, f"{why}: going {record.way_back()}", reason=why)
            return self._await_rollback(record.reason or why, gate_failed=False)

    # ------------------------------------------------------------------ driving the saved plan
    def _drive(self) -> ReleaseRecord:
        with self._leaving_in_progress():
            phase = Phase(self._current().phase)
            if phase == Phase.ROLLING_BACK:
                return self._await_rollback(self._current().reason or "resumed rollback", gate_failed=True)
            if phase in (Phase.PLANNED, Phase.LOCKED):
                self._ensure_template()
            if Phase(self._current().phase) == Phase.TEMPLATE:
                self._ensure_refresh()
            return self._gate_and_finish()

    @contextmanager
    def _leaving_in_progress(self) -> Iterator[None]:
        """An error that is not a verdict (an AWS call that keeps failing, a refusal) leaves the
        record in its phase and gives the lock back, so that `inv resume` or `inv rollback` can
        take over at once; a lost lease leaves everything to the new holder."""
        try:
            yield
        except (GateFailed, RollbackFailed, LeaseLost):
            raise
        except KilnError as err:
            record = self._current()
            if record.outcome is Outcome.IN_PROGRESS:
                self.ledger.release_lock(self.env.name, self.driver.holder)
                err.hint = (f"{(err.hint or '').rstrip('.')}. " if err.hint else "") + (
                    f"The {record.kind} of {record.version} is left in phase {record.phase} and the lock is free: "
                    "`inv resume` carries on, `inv rollback` goes back.")
            raise

    def _ensure_template(self) -> None:
        record = self._current()
        assert record.template and record.template_before is not None and record.client_token
        # Created but not recorded by a driver that died: the same client token returns it.
        self._fence()
        number = self.cloud.create_template_version(record.template, record.template_before, record.image_id,
                                                    record.description, record.client_token)
        self.checkpoint("template-created")
        self._step(Phase.TEMPLATE, f"created {record.template} v{number} from v{record.template_before} with "
                                   f"{record.image_id}", template_after=number)
        self.checkpoint("template-saved")

    def _ensure_refresh(self) -> None:
        """Start this release's refresh, or adopt it when it already runs. When the group is busy
        with someone else's refresh, the release fails (nothing changed in the fleet)."""
        record = self._current()
        assert record.group and record.template and record.template_after is not None
        mine = self._my_refresh()
        if mine is None:
            other = self.cloud.active_refresh(record.group)
            if other is not None:
                self._finish(Phase.FAILED, f"instance refresh {other.refresh_id} (to v{other.desired_version}) is "
                                           f"already {other.status} on {record.group}; nothing changed in the fleet")
                raise UsageError(f"another instance refresh ({other.refresh_id}, {other.status}) runs on "
                                 f"{record.group}", hint="Kiln never starts a second refresh over a running one; "
                                                         "wait for it (`inv status`) and release again.")
            self._fence()
            try:
                refresh_id = self.cloud.start_refresh(record.group, record.template, record.template_after,
                                                      dict(record.preferences))
            except AwsError as err:
                # No answer (the start may have reached AWS), or refused as a repeat: look before
                # leaping again. Not found: the release stays here, and resume looks again.
                if err.code not in (None, "InstanceRefreshInProgress") or (mine := self._my_refresh()) is None:
                    raise
                refresh_id = mine.refresh_id
            self.checkpoint("refresh-started")
            how = "started" if mine is None else "adopted (the start reached AWS; its answer was lost or refused)"
        else:
            refresh_id, how = mine.refresh_id, "adopted (started before it was recorded)"
        self._step(Phase.REFRESH, f"{how} instance refresh {refresh_id} to v{record.template_after}",
                   refresh_id=refresh_id)
        self.checkpoint("refresh-saved")

    def _my_refresh(self) -> RefreshState | None:
        """This release's refresh: the newest one to its own template version (a version only
        this release creates)."""
        record = self._current()
        if record.refresh_id:
            return self.cloud.refresh(str(record.group), record.refresh_id)
        if record.template_after is None:
            return None
        return next((r for r in self.cloud.refreshes(str(record.group))
                     if r.desired_version == str(record.template_after)), None)

    # ------------------------------------------------------------------ the gate
    def _gate_and_finish(self) -> ReleaseRecord:
        record = self._current()
        expect = Expectation(record.version, record.image_id, grace_seconds=self._grace())
        deadline = self.clock.now() + timedelta(seconds=self.env.gate.timeout)
        if record.phase != Phase.GATING:
            self._step(Phase.GATING, f"watching the refresh (gate times out at {deadline:%H:%M:%S} UTC)")
        verdict = self._watch(expect, deadline, record.refresh_id, first="gating")
        if verdict.kind is VerdictKind.PASS:
            self.checkpoint("gate-passed")
            assert record.template and record.template_after is not None
            self._fence()
            self.cloud.set_default_template_version(record.template, record.template_after)
            self.checkpoint("default-set")
            self._finish(Phase.SUCCEEDED, verdict.reason)
            return self._current()
        self._step(Phase.ROLLING_BACK, f"gate failed: {verdict.reason}; going {record.way_back()}",
                   reason=verdict.reason)
        return self._await_rollback(verdict.reason, gate_failed=True)

    def _grace(self) -> float:
        """How long a new instance may fail health checks while it boots: the group's grace period
        (or the refresh's warmup, when longer), in this clock's seconds."""
        try:
            group = self.cloud.group(self.env.asg, self.env.target_groups)
        except AwsError as err:
            self._ride_out(err)
            group = None
        grace = group.health_check_grace_period if group else 0
        return max(grace, self.env.refresh.instance_warmup or 0) * self.time_scale

    def _watch(self, expect: Expectation, deadline: datetime, refresh_id: str | None, *, first: str) -> Verdict:
        """Poll until a verdict. An observation gets the poll interval plus a little slack; one that
        takes longer is waited for at the next poll (never two at once), and meanwhile the gate
        says so and keeps its deadline. Transient AWS errors are retried until the deadline."""
        seen: set[str] = set()
        pending: Future[Snapshot] | None = None
        budget = self.observe_budget
        polls = 0
        beat: Future[None] | None = None
        while True:
            beat = self._heartbeat_in_background(beat)
            if pending is None:
                pending = self._observer.submit(self._observe, expect, refresh_id, seen)
            snapshot: Snapshot | None = None
            try:
                snapshot = pending.result(timeout=budget)
                pending = None
                verdict = judge(snapshot, expect, deadline)
            except FutureTimeout:
                verdict = self._waiting(f"AWS or a probe has not answered within {budget:.0f} s; still waiting",
                                        deadline)
            except AwsError as err:
                pending = None
                if not err.transient:
                    verdict = Verdict(VerdictKind.FAIL, f"cannot observe the fleet: {err}")
                else:
                    self._note_retry(err)
                    verdict = self._waiting(f"AWS answered {err.code or 'nothing'} ({err.where}); asking again",
                                            deadline)
            self._emit(Phase(self._current().phase), verdict.reason, verdict, snapshot)
            self._sample(first, verdict, snapshot)
            polls += 1
            if polls == 1:
                self.checkpoint(first)
            if verdict.done or polls % TIMELINE_SAVE_POLLS == 0:
                self._save_timeline()
            if verdict.done:
                return verdict
            self.clock.sleep(self.env.gate.poll_interval)

    def _sample(self, first: str, verdict: Verdict, snapshot: Snapshot | None) -> None:
        """One poll into the timeline `inv report` draws (what each instance ran, the checks). The
        timeline is a picture, not a step: whatever goes wrong with it never stops a release."""
        watch = RELEASE if first == "gating" else ROLLBACK
        record = self._current()
        try:
            if snapshot is None:
                self.timeline.add(unobserved_sample(self.clock.now(), verdict, watch))
                return
            versions = {record.image_id: record.version}
            if record.previous_image_id and record.previous_version:
                versions[record.previous_image_id] = record.previous_version
            self.timeline.record(snapshot, verdict, watch, versions)
        except Exception as err:  # a bug in the picture must not fail the release it draws
            if not self._timeline_failed:
                self._timeline_failed = True
                self._emit(Phase(record.phase), f"the report's timeline stopped recording ({err!r})")

    def _save_timeline(self) -> None:
        """The timeline is a picture, not a step: failing to keep it never stops a release."""
        if self.timelines is None or not len(self.timeline):
            return
        try:
            self.timelines.save_timeline(self._current(), self.timeline.encode())
        except KilnError as err:
            self._emit(Phase(self._current().phase), f"the report's timeline was not saved ({err})")

    def _load_timeline(self) -> None:
        """Carry on the timeline of the release taken over, so its report shows the whole story."""
        record = self._current()
        try:
            body = self.timelines.timeline(record.environment, record.sort_key) if self.timelines else None
        except KilnError:
            body = None
        for sample in decode(body) if body else ():
            self.timeline.add(sample)

    def _waiting(self, why: str, deadline: datetime) -> Verdict:
        if self.clock.now() >= deadline:
            return Verdict(VerdictKind.FAIL, f"timed out at {deadline:%H:%M:%S}: {why}")
        return Verdict(VerdictKind.WAIT, why)

    def _observe(self, expect: Expectation, refresh_id: str | None, seen: set[str]) -> Snapshot:
        group = self.cloud.group(self.env.asg, self.env.target_groups)
        if group is None:
            raise UsageError(f"Auto Scaling group {self.env.asg!r} disappeared during the release")
        # Only instances in service on the expected image are probed; a terminating one is never waited on.
        ours = [i for i in group.instances if i.lifecycle == "InService" and i.image_id == expect.image_id]
        probe_budget = self.probe_budget
        answers = self.probes.look(ours, probe_budget)
        instances = tuple(
            replace(i, served_version=answers[i.instance_id].version, health_ok=answers[i.instance_id].health_ok,
                    health_detail=answers[i.instance_id].detail) if i.instance_id in answers else i
            for i in group.instances)
        vanished: tuple[str, ...] = ()
        if expect.fail_fast:
            now_ours = {i.instance_id for i in ours}
            vanished = tuple(sorted(seen - now_ours))
            seen |= now_ours
        refresh = self.cloud.refresh(self.env.asg, refresh_id) if refresh_id else None
        done = refresh is not None and refresh.status == expect.done_status
        # Sampling the load balancer only matters once the refresh is done.
        lb = self.probes.sample_load_balancer(probe_budget) if done else (
            None if self.probes.through_load_balancer is None else {})
        return Snapshot(at=self.clock.now(), refresh=refresh, group=replace(group, instances=instances),
                        alarms=self.cloud.alarm_states(self.env.alarms), served_through_lb=lb, vanished=vanished)

    # ------------------------------------------------------------------ rollback
    def _await_rollback(self, reason: str, *, gate_failed: bool) -> ReleaseRecord:
        record = self._current()
        assert record.template and record.template_before is not None and record.previous_image_id is not None
        self._reconcile_template()
        started = self._ensure_rollback()
        if started is None:
            self._restore_default()
            return self._rolled_back(reason, "nothing had changed in the fleet", gate_failed)
        expect, refresh_id = started
        deadline = self.clock.now() + timedelta(seconds=self.env.gate.timeout)
        verdict = self._watch(expect, deadline, refresh_id, first="rollback-watching")
        if verdict.kind is not VerdictKind.PASS and expect.done_status == "RollbackSuccessful":
            # AWS's rollback ended, but on another configuration than "before" (the group had been
            # moved to the new version before the refresh, the known trap): refresh back ourselves.
            ended = self.cloud.refresh(str(record.group), refresh_id)
            if ended is not None and ended.status == "RollbackSuccessful":
                self._emit(Phase.ROLLING_BACK, f"AWS's rollback ended elsewhere ({verdict.reason}); refreshing back")
                mine = self._my_refresh() or ended
                expect, refresh_id = self._start_refresh_back(mine)
                verdict = self._watch(expect, deadline, refresh_id, first="rollback-watching")
        self._restore_default()
        if verdict.kind is VerdictKind.PASS:
            return self._rolled_back(reason, verdict.reason, gate_failed)
        self._finish(Phase.ROLLBACK_FAILED, f"{reason}; the rollback did not finish: {verdict.reason}")
        raise RollbackFailed(f"{record.kind} of {record.version} to {self.env.name} failed ({reason}) and the "
                             f"rollback did not finish: {verdict.reason}",
                             hint="Inspect with `inv status`; run `inv rollback` once the group is stable.")

    def _reconcile_template(self) -> None:
        """A version this release created but did not record (its driver died in between) is found
        by the release id in its description and written down: no version goes unaccounted for."""
        record = self._current()
        if record.template_after is not None or not record.template or record.template_before is None:
            return
        found = self.cloud.find_template_version(record.template, record.template_before, f"[{record.release_id}]")
        if found is not None:
            self._step(Phase.ROLLING_BACK, f"found {record.template} v{found.number}, created by this release before "
                                           "it was recorded", template_after=found.number)

    def _rolled_back(self, reason: str, how: str, gate_failed: bool) -> ReleaseRecord:
        record = self._current()
        self._finish(Phase.ROLLED_BACK, f"rolled back ({how}): {reason}")
        if gate_failed:
            raise GateFailed(f"{record.kind} of {record.version} to {self.env.name} failed the gate and was rolled "
                             f"back: {reason}", hint="See `inv history` for the journal.")
        return self._current()

    def _restore_default(self) -> None:
        record = self._current()
        assert record.template and record.template_before is not None
        self._fence()
        self.cloud.set_default_template_version(record.template, record.default_before or record.template_before)
        self.checkpoint("default-restored")

    def _ensure_rollback(self) -> tuple[Expectation, str] | None:
        """Start going back (or adopt a way back already under way). None: the fleet never changed.

        While this release's refresh runs, AWS rolls it back (RollbackInstanceRefresh); when AWS
        cannot (the group used an alias) or the refresh has ended, a new refresh goes back to the
        saved "before" version."""
        record = self._current()
        assert record.group and record.template and record.template_before is not None
        if record.rollback_refresh_id:  # resumed after the way back started
            done = "RollbackSuccessful" if record.rollback_refresh_id == record.refresh_id else "Successful"
            return self._back(done), record.rollback_refresh_id
        mine = self._my_refresh()
        if mine is None:
            return None
        if mine.status in ROLLBACK_STATUSES:
            self._step(Phase.ROLLING_BACK, f"AWS is rolling back {mine.refresh_id} itself", refresh_id=mine.refresh_id,
                       rollback_refresh_id=mine.refresh_id)
            return self._back("RollbackSuccessful"), mine.refresh_id
        if mine.status in IN_PROGRESS:
            self._fence()
            try:
                rolled = self.cloud.rollback_refresh(record.group)
                self.checkpoint("rollback-started")
                self._step(Phase.ROLLING_BACK, f"RollbackInstanceRefresh {rolled}", refresh_id=mine.refresh_id,
                           rollback_refresh_id=rolled)
                self.checkpoint("rollback-saved")
                return self._back("RollbackSuccessful"), rolled
            except AwsError as err:
                again = self.cloud.refresh(record.group, mine.refresh_id)
                if again is not None and again.status in ROLLBACK_STATUSES:  # a repeat of a call that worked
                    self._step(Phase.ROLLING_BACK, f"AWS is rolling back {again.refresh_id}",
                               refresh_id=again.refresh_id, rollback_refresh_id=again.refresh_id)
                    return self._back("RollbackSuccessful"), again.refresh_id
                self._emit(Phase.ROLLING_BACK, f"AWS cannot roll back ({err.code}); cancelling and refreshing back")
                self._fence()
                self.cloud.cancel_refresh(record.group)
        return self._start_refresh_back(mine)

    def _start_refresh_back(self, mine: RefreshState) -> tuple[Expectation, str]:
        """A refresh back to the saved "before" version (or the one already started for it)."""
        record = self._current()
        assert record.group and record.template and record.template_before is not None
        back = self._refresh_back(mine)
        if back is not None:
            self._step(Phase.ROLLING_BACK, f"adopted refresh {back.refresh_id} back to v{record.template_before} "
                                           "(started before it was recorded)", rollback_refresh_id=back.refresh_id)
            return self._back("Successful"), back.refresh_id
        self._wait_until_no_refresh()
        self._fence()
        try:
            new_id = self.cloud.start_refresh(record.group, record.template, record.template_before,
                                              dict(record.rollback_preferences))
        except AwsError as err:
            if err.code not in (None, "InstanceRefreshInProgress") or (back := self._refresh_back(mine)) is None:
                raise
            new_id = back.refresh_id
        self.checkpoint("rollback-started")
        self._step(Phase.ROLLING_BACK, f"started refresh {new_id} back to v{record.template_before}",
                   refresh_id=mine.refresh_id, rollback_refresh_id=new_id)
        self.checkpoint("rollback-saved")
        return self._back("Successful"), new_id

    def _refresh_back(self, mine: RefreshState) -> RefreshState | None:
        """A refresh to the "before" version started after this release's own refresh."""
        record = self._current()
        for r in self.cloud.refreshes(str(record.group)):  # newest first
            if r.refresh_id == mine.refresh_id:
                return None
            if r.desired_version == str(record.template_before):
                return r
        return None

    def _back(self, done: str) -> Expectation:
        record = self._current()
        # Going back to what was live before; a seed image Kiln never released is only expected
        # to be back, not healthy.
        return Expectation(record.previous_version, str(record.previous_image_id), done, grace_seconds=self._grace(),
                           health_required=record.previous_version is not None, fail_fast=False)

    def _wait_until_no_refresh(self) -> None:
        deadline = self.clock.now() + timedelta(seconds=self.env.gate.timeout)
        while (active := self.cloud.active_refresh(self.env.asg)) is not None:
            if self.clock.now() >= deadline:
                raise RollbackFailed(f"the refresh {active.refresh_id} on {self.env.asg} did not stop",
                                     hint="Check the group in the console; then `inv rollback`.")
            self._heartbeat()
            self.clock.sleep(self.env.gate.poll_interval)

    # ------------------------------------------------------------------ the lock and the record
    def _lease(self, record: ReleaseRecord) -> Lease:
        return Lease(self.driver.holder, self.driver.who, self.ttl, record.release_id, record.kind, record.version)

    def _heartbeat(self) -> None:
        self.ledger.renew(self.env.name, self.driver.holder, self.clock.now(), self.ttl, self._current().phase)

    def _heartbeat_in_background(self, beat: Future[None] | None) -> Future[None] | None:
        """The gate's heartbeat: renewed in the background, so that a slow ledger never holds up a
        poll (the lease outlasts three polls). A lost lease stops the driver at once; a transient
        failure is tried again at the next poll. Returns the heartbeat still in flight, if any."""
        if beat is None or beat.done():
            if beat is not None:
                self._settle(beat)
            beat = self._beats.submit(self._heartbeat)
            wait([beat], timeout=0.5)
        if beat.done():
            self._settle(beat)
            return None
        return beat

    def _settle(self, beat: Future[None]) -> None:
        try:
            beat.result()  # LeaseLost propagates: this driver must stop
        except AwsError as err:
            self._ride_out(err)

    def _ride_out(self, err: AwsError) -> None:
        """A transient AWS error is noted and lived with (the next poll asks again); any other is raised."""
        if not err.transient:
            raise err
        self._note_retry(err)

    def _note_retry(self, err: AwsError) -> None:
        self.retried[err.code or "no answer"] += 1

    def _fence(self) -> None:
        """Before every mutating call: still ours? (renews the lease; LeaseLost when not)."""
        self._heartbeat()

    def _current(self) -> ReleaseRecord:
        assert self.record is not None
        return self.record

    def _step(self, phase: Phase, message: str, **changes: Any) -> None:
        record = self._current()
        current = Phase(record.phase)
        if phase != current and phase not in TRANSITIONS.get(current, frozenset()):
            raise KilnError(f"internal: a release cannot go from {current} to {phase}")
        updated = record.noted(self.clock.now(), phase, message, **changes)
        self.ledger.save(updated, holder=self.driver.holder, now=self.clock.now())
        self.record = updated
        self._emit(phase, message)

    def _finish(self, phase: Phase, message: str) -> None:
        if self.retried:  # the journal tells what the gate rode out
            rode_out = ", ".join(f"{code}×{n}" for code, n in sorted(self.retried.items()))
            message += f" (the gate retried {rode_out})"
        self._step(phase, message, outcome=FINAL[phase], ended_at=self.clock.now(),
                   reason=None if phase is Phase.SUCCEEDED else message)
        self.ledger.release_lock(self.env.name, self.driver.holder)

    def _emit(self, phase: Phase, message: str, verdict: Verdict | None = None,
              snapshot: Snapshot | None = None) -> None:
        self.on_event(Event(self.clock.now(), phase, message, verdict, snapshot))

    def close(self) -> None:
        self._observer.shutdown(wait=False, cancel_futures=True)
        self._beats.shutdown(wait=False, cancel_futures=True)
        self.probes.close()
