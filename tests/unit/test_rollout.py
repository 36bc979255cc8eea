"""The release state machine against an in-memory cloud and ledger, on a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from release import config
from release.clock import FakeClock
from release.errors import EXIT_ROLLBACK_FAILED, AwsError, GateFailed, LeaseLost, LockHeld, RollbackFailed
from release.model import AmiRef, GroupState, InstanceState, Lock, RefreshState, TemplateVersion
from release.plan import Observed, Request, make_plan
from release.record import Lease, Outcome, ReleaseRecord
from release.rollout import CHECKPOINTS, Driver, Event, Phase, ProbeResult, Probes, Releaser, await_lapse

CFG = config.load(Path(__file__).parents[2] / "versions.toml")
ENV = CFG.environment("sandbox")
VERSIONS = {"ami-old": "1.0.0", "ami-new": "1.1.0"}


@dataclass
class Refresh:
    refresh_id: str
    version: int
    image: str
    status: str = "InProgress"
    rolling_back_to: str | None = None


@dataclass
class FakeCloud:
    """A group of 4 whose refreshes replace one instance per observation."""

    clock: FakeClock
    group_ref: str = "1"
    templates: list[TemplateVersion] = field(default_factory=lambda: [
        TemplateVersion("lt-1", "web-sandbox", 1, "ami-old", True, http_tokens="required")])
    images: dict[str, str] = field(default_factory=lambda: {f"i-{n}": "ami-old" for n in range(4)})
    runs: list[Refresh] = field(default_factory=list)
    broken_target: set[str] = field(default_factory=set)  # images whose targets turn unhealthy
    alarm_on: str | None = None  # image whose first instance trips the 5xx alarm
    stuck_rollback: bool = False
    calls: list[str] = field(default_factory=list)
    counter: int = 10
    tokens: dict[str, int] = field(default_factory=dict)
    # Faults: operation -> errors to raise on its next calls (after doing the work, for "lost answers").
    faults: dict[str, list[AwsError]] = field(default_factory=dict)
    lost_answers: set[str] = field(default_factory=set)  # operations that succeed but whose answer is lost

    def _fault(self, operation: str) -> None:
        queue = self.faults.get(operation)
        if queue:
            raise queue.pop(0)

    def _active(self) -> Refresh | None:
        return next((r for r in self.runs if r.status in ("InProgress", "RollbackInProgress")), None)

    def _advance(self) -> None:
        r = self._active()
        if r is None:
            return
        target = r.rolling_back_to if r.status == "RollbackInProgress" else r.image
        if r.status == "RollbackInProgress" and self.stuck_rollback:
            return
        stale = sorted(i for i, img in self.images.items() if img != target)
        if stale:
            del self.images[stale[0]]
            self.counter += 1
            self.images[f"i-{self.counter}"] = target
            return
        if r.status == "RollbackInProgress":
            r.status = "RollbackSuccessful"
        else:
            r.status = "Successful"
            self.group_ref = str(r.version)

    # CloudPort
    def group(self, name: str, target_groups: tuple[str, ...] = ()) -> GroupState | None:
        self._fault("DescribeAutoScalingGroups")
        self._advance()
        instances = tuple(
            InstanceState(i, img, None, "InService", "Healthy",
                          "unhealthy" if img in self.broken_target else "healthy", private_ip="127.100.0.1")
            for i, img in sorted(self.images.items()))
        return GroupState(name, 2, 8, 4, "lt-1", "web-sandbox", self.group_ref, instances)

    def refresh(self, group: str, refresh_id: str) -> RefreshState | None:
        r = next((r for r in self.runs if r.refresh_id == refresh_id), None)
        return None if r is None else RefreshState(r.refresh_id, r.status, None, 50, 2, desired_version=str(r.version))

    def refreshes(self, group: str) -> list[RefreshState]:
        return [s for r in reversed(self.runs) if (s := self.refresh(group, r.refresh_id))]

    def active_refresh(self, group: str) -> RefreshState | None:
        r = self._active()
        return None if r is None else self.refresh(group, r.refresh_id)

    def alarm_states(self, names: tuple[str, ...]) -> dict[str, str]:
        firing = self.alarm_on is not None and self.alarm_on in self.images.values()
        return {n: "ALARM" if firing and "5xx" in n else "OK" for n in names}

    def find_template_version(self, name: str, newer_than: int, marker: str) -> TemplateVersion | None:
        return next((t for t in self.templates if t.number > newer_than and marker in t.description), None)

    def create_template_version(self, name: str, source: int, image_id: str, description: str,
                                client_token: str) -> int:
        if client_token in self.tokens:  # EC2's idempotency: the same token returns the same version
            return self.tokens[client_token]
        self.calls.append(f"create_template_version from {source}")
        number = self.templates[-1].number + 1
        self.templates.append(TemplateVersion("lt-1", name, number, image_id, False, description=description,
                                              http_tokens="required"))
        self.tokens[client_token] = number
        return number

    def set_default_template_version(self, name: str, number: int) -> None:
        self.calls.append(f"default {number}")
        self.templates = [replace(t, is_default=t.number == number) for t in self.templates]

    def start_refresh(self, group: str, template: str, version: int, preferences: dict[str, Any]) -> str:
        if self._active() is not None:  # as AWS answers a second start
            raise AwsError("InstanceRefreshInProgress: an instance refresh is already in progress",
                           operation="StartInstanceRefresh", code="InstanceRefreshInProgress", status=400)
        self.calls.append(f"start_refresh v{version}")
        image = next(t.image_id for t in self.templates if t.number == version)
        refresh = Refresh(f"ir-{len(self.runs) + 1}", version, image)
        self.runs.append(refresh)
        if "StartInstanceRefresh" in self.lost_answers:  # it started; the answer never came back
            self.lost_answers.discard("StartInstanceRefresh")
            raise AwsError("Read timeout on endpoint URL", operation="StartInstanceRefresh")
        return refresh.refresh_id

    def rollback_refresh(self, group: str) -> str:
        self.calls.append("rollback_refresh")
        if self.group_ref.startswith("$"):
            raise AwsError("IrreversibleInstanceRefresh: alias", operation="RollbackInstanceRefresh",
                           code="IrreversibleInstanceRefresh")
        r = self._active()
        assert r is not None
        r.status = "RollbackInProgress"
        r.rolling_back_to = next(t.image_id for t in self.templates if str(t.number) == self.group_ref)
        return r.refresh_id

    def cancel_refresh(self, group: str) -> str:
        self.calls.append("cancel_refresh")
        r = self._active()
        assert r is not None
        r.status = "Cancelled"
        return r.refresh_id


@dataclass
class FakeLedger:
    """The lock as a lease with a fencing token, and fenced record writes, as ledger.Ledger does them."""

    clock: FakeClock
    lock: Lock | None = None
    records: dict[str, ReleaseRecord] = field(default_factory=dict)

    def acquire(self, env: str, lease: Lease, now: datetime, *, phase: str = "planned",
                take_over: str | None = None) -> Lock:
        held = self.lock
        free = held is None or (held.holder == take_over if take_over else not held.live(now))
        if not free:
            assert held is not None
            raise LockHeld(f"{env} is locked by {held.describe(now)}")
        self.lock = Lock(lease.holder, now, now + lease.ttl, who=lease.who, release_id=lease.release_id,
                         phase=phase)
        return self.lock

    def renew(self, env: str, holder: str, now: datetime, ttl: timedelta, phase: str) -> None:
        if self.lock is None or self.lock.holder != holder:
            raise LeaseLost(f"{env}: lock lost")
        self.lock = replace(self.lock, expires_at=now + ttl, phase=phase)

    def release_lock(self, env: str, holder: str) -> None:
        if self.lock is not None and self.lock.holder == holder:
            self.lock = None

    def save(self, record: ReleaseRecord, *, holder: str | None = None, now: datetime | None = None) -> None:
        if holder is not None and (self.lock is None or self.lock.holder != holder):
            raise LeaseLost(f"{record.environment}: lock lost")
        self.records[record.release_id] = record

    @property
    def lock_holder(self) -> str | None:
        return self.lock.holder if self.lock else None


def ami(image_id: str, clock: FakeClock) -> AmiRef:
    return AmiRef(image_id, image_id, "us-east-1", "available", clock.now(), Version(VERSIONS[image_id]),
                  "fp-" + image_id, True)


class Crash(BaseException):
    """A process killed at a checkpoint: nothing after it runs, no cleanup."""


def setup(cloud_changes: dict[str, Any] | None = None, serve: dict[str, str] | None = None
          ) -> tuple[FakeCloud, FakeLedger, Releaser, list[Event]]:
    clock = FakeClock()
    cloud = FakeCloud(clock, **(cloud_changes or {}))
    ledger = FakeLedger(clock)
    events: list[Event] = []
    releaser = new_driver(cloud, ledger, events.append, serve=serve)
    return cloud, ledger, releaser, events


def new_driver(cloud: FakeCloud, ledger: FakeLedger, on_event: Any = lambda e: None, *,
               serve: dict[str, str] | None = None, crash_at: str | None = None, name: str = "one") -> Releaser:
    served = serve or VERSIONS

    def through_lb() -> dict[str, int]:
        counts: dict[str, int] = {}
        for image in cloud.images.values():
            counts[served[image]] = counts.get(served[image], 0) + 1
        return counts

    def checkpoint(point: str) -> None:
        if point == crash_at:
            raise Crash(point)

    probes = Probes(lambda i: ProbeResult(served[i.image_id], True), through_lb)
    return Releaser(ENV, cloud, ledger, cloud.clock, probes, on_event, actor="ana@laptop",
                    driver=Driver(f"holder-{name}", f"ana@laptop pid {name}"), checkpoint=checkpoint)


def plan_for(cloud: FakeCloud, version: str = "1.1.0") -> Any:
    group = cloud.group("web-sandbox")
    assert group is not None
    current = next(t for t in cloud.templates if str(t.number) == group.launch_template_version
                   or group.launch_template_version == "$Latest")
    observed = Observed(images=(ami("ami-old", cloud.clock), ami("ami-new", cloud.clock)),
                        group_template=current, default_template=cloud.templates[0], group=group,
                        active_refresh=None, live=None, lock=None)
    return make_plan(ENV, Request(Version(version), cloud.clock.now()), observed)


def test_release_succeeds_and_records_every_phase() -> None:
    cloud, ledger, releaser, events = setup()
    record = releaser.release(plan_for(cloud))
    assert record.outcome is Outcome.SUCCEEDED
    assert set(cloud.images.values()) == {"ami-new"}
    assert cloud.calls == ["create_template_version from 1", "start_refresh v2", "default 2"]
    assert [e.phase for e in record.journal] == ["locked", "template", "refresh", "gating", "succeeded"]
    assert record.template_before == 1 and record.template_after == 2 and record.previous_version == "1.0.0"
    assert ledger.lock_holder is None
    assert ledger.records[record.release_id] == record
    assert any(e.verdict and e.verdict.kind == "wait" for e in events)


def test_a_timeline_that_breaks_never_stops_the_release_it_draws() -> None:
    cloud, _ledger, releaser, events = setup()

    def broken(*_: object) -> None:
        raise ValueError("a bug in the picture")

    releaser.timeline.add = broken  # type: ignore[method-assign,assignment]
    releaser.timeline.record = broken  # type: ignore[method-assign,assignment]
    record = releaser.release(plan_for(cloud))
    assert record.outcome is Outcome.SUCCEEDED
    said = [e.message for e in events if "timeline stopped recording" in e.message]
    assert len(said) == 1 and "a bug in the picture" in said[0]  # once, not at every poll


def test_alarm_mid_refresh_rolls_back_through_aws() -> None:
    cloud, ledger, releaser, _ = setup({"alarm_on": "ami-new"})
    with pytest.raises(GateFailed, match="alarm web-sandbox-target-5xx in ALARM"):
        releaser.release(plan_for(cloud))
    (record,) = ledger.records.values()
    assert record.outcome is Outcome.ROLLED_BACK and "ALARM" in (record.reason or "")
    assert "rollback_refresh" in cloud.calls and cloud.calls[-1] == "default 1"
    assert set(cloud.images.values()) == {"ami-old"}
    assert cloud.runs[0].status == "RollbackSuccessful"
    assert ledger.lock_holder is None


def test_unhealthy_targets_fail_fast() -> None:
    cloud, _ledger, releaser, events = setup({"broken_target": {"ami-new"}})
    with pytest.raises(GateFailed, match="unhealthy in its target group"):
        releaser.release(plan_for(cloud))
    failing = [e for e in events if e.verdict and e.verdict.kind == "fail"]
    assert failing and len(cloud.runs) == 1  # failed at the first bad instance, rolled back by AWS
    assert set(cloud.images.values()) == {"ami-old"}


def test_wrong_version_on_a_new_instance_fails_fast() -> None:
    cloud, _ledger, releaser, _ = setup(serve={"ami-old": "1.0.0", "ami-new": "1.0.9"})
    with pytest.raises(GateFailed, match=r"serves 1\.0\.9, expected 1\.1\.0"):
        releaser.release(plan_for(cloud))
    assert "rollback_refresh" in cloud.calls  # caught while the refresh was still in progress
    assert set(cloud.images.values()) == {"ami-old"}


def test_gate_failing_after_a_finished_refresh_refreshes_back() -> None:
    cloud, ledger, releaser, _ = setup()
    # A stray server behind the load balancer keeps answering 1.0.0: the refresh succeeds, the gate times out.
    real = releaser.probes.through_load_balancer

    def with_stray() -> dict[str, int]:
        counts = real()
        counts["1.0.0"] = counts.get("1.0.0", 0) + 1
        return counts

    releaser.probes.through_load_balancer = with_stray
    with pytest.raises(GateFailed, match="timed out"):
        releaser.release(plan_for(cloud))
    assert [r.status for r in cloud.runs] == ["Successful", "Successful"]
    assert cloud.calls[-2:] == ["start_refresh v1", "default 1"]
    assert set(cloud.images.values()) == {"ami-old"}
    (record,) = ledger.records.values()
    assert record.outcome is Outcome.ROLLED_BACK and record.rollback_refresh_id == "ir-2"


def test_alias_group_cancels_and_refreshes_back() -> None:
    cloud, _ledger, releaser, _ = setup({"group_ref": "$Latest", "alarm_on": "ami-new"})
    with pytest.raises(GateFailed):
        releaser.release(plan_for(cloud))
    wanted = ("rollback_refresh", "cancel_refresh")
    assert [c for c in cloud.calls if c in wanted] == list(wanted)
    assert "start_refresh v1" in cloud.calls
    assert set(cloud.images.values()) == {"ami-old"}


def test_lock_held_changes_nothing() -> None:
    cloud, ledger, releaser, _ = setup()
    ledger.lock = Lock("bob", cloud.clock.now(), cloud.clock.now() + timedelta(minutes=5), who="bob")
    with pytest.raises(LockHeld):
        releaser.release(plan_for(cloud))
    assert cloud.calls == [] and cloud.runs == [] and ledger.records == {}


def test_rollback_that_does_not_finish_exits_11() -> None:
    cloud, ledger, releaser, _ = setup({"alarm_on": "ami-new", "stuck_rollback": True})
    with pytest.raises(RollbackFailed) as info:
        releaser.release(plan_for(cloud))
    assert info.value.exit_code == EXIT_ROLLBACK_FAILED
    (record,) = ledger.records.values()
    assert record.outcome is Outcome.ROLLBACK_FAILED


# ---------------------------------------------------------------------------------------------- crashes


def lapse(ledger: FakeLedger) -> None:
    """Let the dead driver's lease run out."""
    ledger.clock.advance(ENV.gate.lease + 1)


def crashed_at(point: str, changes: dict[str, Any] | None = None) -> tuple[FakeCloud, FakeLedger, ReleaseRecord]:
    cloud, ledger, _, _ = setup(changes)
    driver = new_driver(cloud, ledger, crash_at=point)
    with pytest.raises(Crash):
        driver.release(plan_for(cloud))
    (record,) = ledger.records.values()
    return cloud, ledger, record


RELEASE_POINTS = [p for p in CHECKPOINTS if not p.startswith(("rollback", "default-restored"))]
ROLLBACK_POINTS = ["rollback-started", "rollback-saved", "rollback-watching", "default-restored"]


@pytest.mark.parametrize("point", RELEASE_POINTS)
def test_a_crash_at_any_step_then_resume_completes_exactly_once(point: str) -> None:
    cloud, ledger, record = crashed_at(point)
    assert record.outcome is Outcome.IN_PROGRESS
    with pytest.raises(LockHeld):  # the dead driver's lease is still live: nobody may resume yet
        new_driver(cloud, ledger, name="two").take_over(record, ledger.lock, force=False)
    lapse(ledger)
    second = new_driver(cloud, ledger, name="two")
    second.take_over(record, ledger.lock, force=False)
    done = second.resume(record)
    assert done.outcome is Outcome.SUCCEEDED
    assert cloud.calls.count("create_template_version from 1") == 1  # no orphan version
    assert len(cloud.runs) == 1  # one refresh per release
    assert set(cloud.images.values()) == {"ami-new"} and cloud.calls[-1] == "default 2"
    assert ledger.lock is None and ledger.records[record.release_id] == done


def test_right_after_a_crash_the_dead_drivers_lease_is_waited_out_then_taken_over() -> None:
    cloud, ledger, record = crashed_at("gating")
    dead = ledger.lock
    assert dead is not None
    started = ledger.clock.now()
    reads: list[float] = []

    def read() -> Lock | None:
        reads.append((ledger.clock.now() - started).total_seconds())
        return ledger.lock

    await_lapse(dead, read, ledger.clock)
    waited = (ledger.clock.now() - started).total_seconds()
    assert (dead.expires_at - started).total_seconds() <= waited < (dead.expires_at - started).total_seconds() + 1.1
    assert reads and all(b - a <= 1.0 for a, b in zip([0.0, *reads], reads, strict=False))  # it kept looking
    second = new_driver(cloud, ledger, name="two")
    second.take_over(record, ledger.lock, force=False)  # no LockHeld: the lease has lapsed
    assert second.resume(record).outcome is Outcome.SUCCEEDED


def test_waiting_out_a_lease_refuses_as_soon_as_its_driver_renews_it() -> None:
    clock = FakeClock()
    lock = Lock("holder-1", clock.now(), clock.now() + timedelta(seconds=120), who="ana@ci pid 7")
    beats = iter([lock, lock, replace(lock, expires_at=lock.expires_at + timedelta(seconds=3))])
    with pytest.raises(LockHeld, match=r"its driver is alive: it renewed its lease \(ana@ci pid 7"):
        await_lapse(lock, lambda: next(beats), clock)
    assert (clock.now() - lock.acquired_at).total_seconds() <= 3.0  # seconds, not the whole lease


def test_waiting_out_a_lease_refuses_a_lock_that_changed_hands_and_returns_on_one_given_back() -> None:
    clock = FakeClock()
    lock = Lock("holder-1", clock.now(), clock.now() + timedelta(seconds=30))
    taken = Lock("holder-2", clock.now(), clock.now() + timedelta(seconds=30), who="bo@laptop pid 9")
    with pytest.raises(LockHeld, match="the lock was taken by bo@laptop pid 9"):
        await_lapse(lock, lambda: taken, clock)
    before = clock.now()
    await_lapse(lock, lambda: None, clock)  # the driver finished and gave the lock back
    assert (clock.now() - before).total_seconds() <= 1.0
    lapsed = Lock("holder-1", clock.now(), clock.now() - timedelta(seconds=1))
    await_lapse(lapsed, lambda: pytest.fail("a lapsed lease is not read again"), clock)


@pytest.mark.parametrize("point", RELEASE_POINTS)
def test_a_crash_at_any_step_then_rollback_goes_back_never_forward(point: str) -> None:
    cloud, ledger, record = crashed_at(point)
    lapse(ledger)
    second = new_driver(cloud, ledger, name="two")
    second.take_over(record, ledger.lock, force=False)
    done = second.undo(record, "operator asked")
    assert done.outcome is Outcome.ROLLED_BACK
    assert set(cloud.images.values()) == {"ami-old"}
    assert cloud.calls.count("create_template_version from 1") <= 1
    assert sum(1 for c in cloud.calls if c == "start_refresh v2") <= 1
    assert cloud.calls[-1] == "default 1" and cloud.templates[0].is_default
    assert ledger.lock is None
    # Every version this release created is written down.
    created = [t.number for t in cloud.templates if f"[{record.release_id}]" in t.description]
    assert created == ([done.template_after] if created else [])


@pytest.mark.parametrize("point", ROLLBACK_POINTS)
def test_a_crash_while_rolling_back_then_resume_or_rollback_finishes_going_back(point: str) -> None:
    for finish in ("resume", "rollback"):
        cloud, ledger, record = crashed_at(point, {"alarm_on": "ami-new"})
        assert record.phase == Phase.ROLLING_BACK
        lapse(ledger)
        second = new_driver(cloud, ledger, name="two")
        second.take_over(record, ledger.lock, force=False)
        if finish == "resume":
            with pytest.raises(GateFailed):
                second.resume(record)
        else:
            second.undo(record, "operator asked")
        done = ledger.records[record.release_id]
        assert done.outcome is Outcome.ROLLED_BACK, (finish, done)
        assert set(cloud.images.values()) == {"ami-old"}
        assert cloud.calls.count("rollback_refresh") == 1 and len(cloud.runs) == 1
        assert ledger.lock is None


def test_a_lost_answer_to_start_instance_refresh_adopts_the_refresh_that_started() -> None:
    cloud, _ledger, releaser, _events = setup({"lost_answers": {"StartInstanceRefresh"}})
    record = releaser.release(plan_for(cloud))
    assert record.outcome is Outcome.SUCCEEDED and len(cloud.runs) == 1
    assert any("adopted (the start reached AWS" in e.message for e in record.journal)


def test_a_lost_answer_to_a_start_that_never_arrived_leaves_the_release_for_resume() -> None:
    cloud, ledger, releaser, _events = setup()
    original = cloud.start_refresh

    def lost_on_the_way(*args: Any) -> str:
        cloud.start_refresh = original  # type: ignore[method-assign]
        raise AwsError("Connect timeout on endpoint URL", operation="StartInstanceRefresh")

    cloud.start_refresh = lost_on_the_way  # type: ignore[method-assign]
    with pytest.raises(AwsError):
        releaser.release(plan_for(cloud))
    (record,) = ledger.records.values()
    assert record.outcome is Outcome.IN_PROGRESS and record.phase == Phase.TEMPLATE and cloud.runs == []
    assert ledger.lock is None  # given back at once: resume need not wait for the lease
    again = new_driver(cloud, ledger, name="two")
    again.take_over(record, ledger.lock, force=False)
    done = again.resume(record)
    assert done.outcome is Outcome.SUCCEEDED and len(cloud.runs) == 1


def test_a_repeated_start_refused_as_in_progress_adopts_ours() -> None:
    cloud, _ledger, releaser, _ = setup()
    original = cloud.start_refresh

    def start_twice(group: str, template: str, version: int, preferences: dict[str, Any]) -> str:
        original(group, template, version, preferences)  # the first attempt reached AWS; its answer was lost
        return original(group, template, version, preferences)  # botocore's retry is refused

    cloud.start_refresh = start_twice  # type: ignore[method-assign]
    record = releaser.release(plan_for(cloud))
    assert record.outcome is Outcome.SUCCEEDED and len(cloud.runs) == 1
    assert any("adopted (the start reached AWS" in e.message for e in record.journal)


def test_throttling_during_the_gate_is_retried_not_fatal() -> None:
    throttled = [AwsError("Throttling: Rate exceeded", operation="DescribeAutoScalingGroups", code="Throttling",
                          status=400) for _ in range(6)]
    cloud, ledger, releaser, events = setup()
    plan = plan_for(cloud)
    cloud.faults["DescribeAutoScalingGroups"] = throttled
    record = releaser.release(plan)
    assert record.outcome is Outcome.SUCCEEDED
    assert sum("asking again" in e.message for e in events) >= 5
    assert ledger.lock is None
    assert "the gate retried Throttling×6" in record.journal[-1].message  # the ledger tells what happened


def test_a_non_transient_error_in_a_step_leaves_the_release_for_resume_or_rollback() -> None:
    denied = AwsError("UnauthorizedOperation: no", operation="CreateLaunchTemplateVersion",
                      code="UnauthorizedOperation", status=403)
    cloud, ledger, releaser, _ = setup()
    original = cloud.create_template_version
    calls = {"n": 0}

    def refuse_once(*args: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise denied
        return original(*args)

    cloud.create_template_version = refuse_once  # type: ignore[method-assign]
    with pytest.raises(AwsError) as info:
        releaser.release(plan_for(cloud))
    assert "`inv resume` carries on, `inv rollback` goes back" in str(info.value)
    (record,) = ledger.records.values()
    assert record.outcome is Outcome.IN_PROGRESS and ledger.lock is None and cloud.runs == []


def test_a_broken_lock_stops_the_displaced_driver_at_its_next_fence() -> None:
    cloud, ledger, _, _ = setup({"alarm_on": "ami-new"})
    first = new_driver(cloud, ledger, crash_at="gating")
    with pytest.raises(Crash):  # stands for "still running, between two polls"
        first.release(plan_for(cloud))
    (record,) = ledger.records.values()
    emergency = new_driver(cloud, ledger, name="two")
    emergency.take_over(record, ledger.lock, force=True)  # `inv rollback --break-lock`: the lease was live
    calls_before = list(cloud.calls)
    with pytest.raises(LeaseLost):  # the displaced driver polls again: its heartbeat finds the lock gone
        first._gate_and_finish()
    assert cloud.calls == calls_before  # ...and it changed nothing
    done = emergency.undo(record, "emergency")
    assert done.outcome is Outcome.ROLLED_BACK and set(cloud.images.values()) == {"ami-old"}


def test_a_probe_that_never_answers_does_not_hold_up_the_gate() -> None:
    import threading

    cloud, _ledger, releaser, events = setup()
    stuck = threading.Event()

    def hangs(instance: InstanceState) -> ProbeResult:
        stuck.wait(30)
        return ProbeResult(None, None, "never answered")

    releaser.probes = Probes(hangs, None)
    releaser.probe_budget = 0.01
    try:
        with pytest.raises((GateFailed, RollbackFailed), match="timed out"):
            releaser.release(plan_for(cloud))
    finally:
        stuck.set()
    polls = [e for e in events if e.verdict is not None and e.phase == Phase.GATING]
    assert len(polls) > ENV.gate.timeout // ENV.gate.poll_interval // 2  # it kept polling to the deadline


def test_a_vanished_new_instance_fails_the_gate() -> None:
    cloud, _ledger, releaser, _ = setup()
    original = cloud._advance
    state = {"seen": False}

    def terminate_a_new_one() -> None:
        original()
        new = sorted(i for i, img in cloud.images.items() if img == "ami-new")
        if new and not state["seen"]:
            state["seen"] = True
        elif new and state["seen"] == 1:
            del cloud.images[new[0]]  # the group terminates a new instance and launches another
            cloud.counter += 1
            cloud.images[f"i-{cloud.counter}"] = "ami-new"
        if state["seen"] is True:
            state["seen"] = 1  # type: ignore[assignment]

    cloud._advance = terminate_a_new_one  # type: ignore[method-assign]
    with pytest.raises(GateFailed, match="taken out of service"):
        releaser.release(plan_for(cloud))


def test_the_state_machine_loads_no_aws_library() -> None:
    import subprocess
    import sys

    code = ("import sys, release.rollout, release.plan, release.gate, release.record; "
            "print(sorted(m for m in ('boto3', 'botocore', 'invoke', 'paramiko') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_when_aws_rolls_back_to_the_wrong_configuration_kiln_refreshes_back_to_before() -> None:
    """The known trap: the group was moved to the new version before the refresh, so AWS's
    rollback "restores" the bad version. Kiln notices the fleet is not back and refreshes back."""
    cloud, ledger, releaser, _ = setup({"alarm_on": "ami-new"})
    original = cloud.start_refresh

    def start_then_someone_moves_the_group(group: str, template: str, version: int, prefs: dict[str, Any]) -> str:
        refresh_id = original(group, template, version, prefs)
        if version == 2:
            cloud.group_ref = "2"
        return refresh_id

    cloud.start_refresh = start_then_someone_moves_the_group  # type: ignore[method-assign]
    with pytest.raises(GateFailed):
        releaser.release(plan_for(cloud))
    assert "rollback_refresh" in cloud.calls and "start_refresh v1" in cloud.calls
    assert set(cloud.images.values()) == {"ami-old"}
    (record,) = ledger.records.values()
    assert record.outcome is Outcome.ROLLED_BACK and ledger.lock is None


def test_an_instance_whose_version_did_not_answer_is_asked_again() -> None:
    """A probe that got /health but not /version (the app still starting) is not the final word."""
    cloud, _ledger, releaser, _ = setup()
    answers: dict[str, int] = {}

    def flaky(instance: InstanceState) -> ProbeResult:
        answers[instance.instance_id] = answers.get(instance.instance_id, 0) + 1
        if answers[instance.instance_id] == 1:
            return ProbeResult(None, True, "GET /version failed: connection refused")
        return ProbeResult(VERSIONS[instance.image_id], True)

    releaser.probes = Probes(flaky, None)
    record = releaser.release(plan_for(cloud))
    assert record.outcome is Outcome.SUCCEEDED
    assert all(n == 2 for n in answers.values()), answers


class Timelines:
    """A TimelineStore in memory: what the gate saved, by release."""

    def __init__(self) -> None:
        self.saved: dict[str, str] = {}
        self.saves = 0

    def save_timeline(self, record: ReleaseRecord, body: str) -> None:
        self.saved[record.sort_key] = body
        self.saves += 1

    def timeline(self, env: str, sort_key: str) -> str | None:
        return self.saved.get(sort_key)


def test_the_gate_keeps_a_timeline_of_the_release_and_its_rollback_for_the_report() -> None:
    from release.timeline import ROLLBACK, decode

    cloud, ledger, releaser, _ = setup({"alarm_on": "ami-new"})
    releaser.timelines = store = Timelines()
    with pytest.raises(GateFailed):
        releaser.release(plan_for(cloud))
    (record,) = ledger.records.values()
    samples = decode(store.saved[record.sort_key])
    assert samples and samples[-1].watch == ROLLBACK and samples[-1].verdict == "pass"
    assert {s.watch for s in samples} == {"release", ROLLBACK}
    assert any(i.version == "1.1.0" for s in samples for i in s.instances)  # images named by version
    assert store.saves >= 2  # when each watch ended


def test_a_timeline_that_cannot_be_saved_never_stops_a_release() -> None:
    class Broken(Timelines):
        def save_timeline(self, record: ReleaseRecord, body: str) -> None:
            raise AwsError("AccessDenied: no", operation="PutItem")

    cloud, _ledger, releaser, events = setup()
    releaser.timelines = Broken()
    assert releaser.release(plan_for(cloud)).outcome is Outcome.SUCCEEDED
    assert any("timeline was not saved" in e.message for e in events)
