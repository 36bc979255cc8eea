"""The release state machine against an in-memory cloud and ledger, on a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from release import config
from release.clock import FakeClock
from release.errors import EXIT_ROLLBACK_FAILED, AwsError, GateFailed, LockHeld, RollbackFailed
from release.ledger import Outcome, ReleaseRecord
from release.machine import Event, Phase, Probes, Releaser
from release.model import AmiRef, GroupState, InstanceState, Lock, RefreshState, TemplateVersion
from release.plan import Observed, Request, make_plan

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
        TemplateVersion("lt-1", "web-sandbox", 1, "ami-old", True)])
    images: dict[str, str] = field(default_factory=lambda: {f"i-{n}": "ami-old" for n in range(4)})
    refreshes: list[Refresh] = field(default_factory=list)
    broken_target: set[str] = field(default_factory=set)  # images whose targets turn unhealthy
    alarm_on: str | None = None  # image whose first instance trips the 5xx alarm
    stuck_rollback: bool = False
    calls: list[str] = field(default_factory=list)
    counter: int = 10

    def _active(self) -> Refresh | None:
        return next((r for r in self.refreshes if r.status in ("InProgress", "RollbackInProgress")), None)

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
        self._advance()
        instances = tuple(
            InstanceState(i, img, None, "InService", "Healthy",
                          "unhealthy" if img in self.broken_target else "healthy", private_ip="127.100.0.1")
            for i, img in sorted(self.images.items()))
        return GroupState(name, 2, 8, 4, "lt-1", "web-sandbox", self.group_ref, instances)

    def refresh(self, group: str, refresh_id: str) -> RefreshState | None:
        r = next((r for r in self.refreshes if r.refresh_id == refresh_id), None)
        return None if r is None else RefreshState(r.refresh_id, r.status, None, 50, 2)

    def active_refresh(self, group: str) -> RefreshState | None:
        r = self._active()
        return None if r is None else self.refresh(group, r.refresh_id)

    def alarm_states(self, names: tuple[str, ...]) -> dict[str, str]:
        firing = self.alarm_on is not None and self.alarm_on in self.images.values()
        return {n: "ALARM" if firing and "5xx" in n else "OK" for n in names}

    def template_versions(self, name: str) -> list[TemplateVersion]:
        return list(self.templates)

    def create_template_version(self, name: str, source: int, image_id: str, description: str) -> int:
        self.calls.append(f"create_template_version from {source}")
        number = self.templates[-1].number + 1
        self.templates.append(TemplateVersion("lt-1", name, number, image_id, False))
        return number

    def set_default_template_version(self, name: str, number: int) -> None:
        self.calls.append(f"default {number}")
        self.templates = [replace(t, is_default=t.number == number) for t in self.templates]

    def start_refresh(self, group: str, template: str, version: int, preferences: dict[str, Any]) -> str:
        assert self._active() is None, "a second refresh over a running one"
        self.calls.append(f"start_refresh v{version}")
        image = next(t.image_id for t in self.templates if t.number == version)
        refresh = Refresh(f"ir-{len(self.refreshes) + 1}", version, image)
        self.refreshes.append(refresh)
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
    lock_holder: str | None = None
    records: dict[str, ReleaseRecord] = field(default_factory=dict)

    def acquire(self, env: str, holder: str, now: datetime) -> Lock:
        if self.lock_holder not in (None, holder):
            raise LockHeld(f"{env} is locked by {self.lock_holder}")
        self.lock_holder = holder
        return Lock(holder, now, now)

    def release_lock(self, env: str, holder: str) -> None:
        if self.lock_holder == holder:
            self.lock_holder = None

    def save(self, record: ReleaseRecord) -> None:
        self.records[record.release_id] = record


def ami(image_id: str, clock: FakeClock) -> AmiRef:
    return AmiRef(image_id, image_id, "us-east-1", "available", clock.now(), Version(VERSIONS[image_id]),
                  "fp-" + image_id, True)


def setup(cloud_changes: dict[str, Any] | None = None, serve: dict[str, str] | None = None
          ) -> tuple[FakeCloud, FakeLedger, Releaser, list[Event]]:
    clock = FakeClock()
    cloud = FakeCloud(clock, **(cloud_changes or {}))
    ledger = FakeLedger()
    events: list[Event] = []
    served = serve or VERSIONS

    def through_lb() -> dict[str, int]:
        counts: dict[str, int] = {}
        for image in cloud.images.values():
            counts[served[image]] = counts.get(served[image], 0) + 1
        return counts

    probes = Probes(lambda i: served[i.image_id], through_lb)
    return cloud, ledger, Releaser(ENV, cloud, ledger, clock, probes, events.append, actor="ana@laptop"), events


def plan_for(cloud: FakeCloud, version: str = "1.1.0") -> Any:
    observed = Observed(images=(ami("ami-old", cloud.clock), ami("ami-new", cloud.clock)),
                        template_versions=cloud.template_versions("web-sandbox"), group=cloud.group("web-sandbox"),
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


def test_alarm_mid_refresh_rolls_back_through_aws() -> None:
    cloud, ledger, releaser, _ = setup({"alarm_on": "ami-new"})
    with pytest.raises(GateFailed, match="alarm web-sandbox-target-5xx in ALARM"):
        releaser.release(plan_for(cloud))
    (record,) = ledger.records.values()
    assert record.outcome is Outcome.ROLLED_BACK and "ALARM" in (record.reason or "")
    assert "rollback_refresh" in cloud.calls and cloud.calls[-1] == "default 1"
    assert set(cloud.images.values()) == {"ami-old"}
    assert cloud.refreshes[0].status == "RollbackSuccessful"
    assert ledger.lock_holder is None


def test_unhealthy_targets_fail_fast() -> None:
    cloud, _ledger, releaser, events = setup({"broken_target": {"ami-new"}})
    with pytest.raises(GateFailed, match="unhealthy in its target group"):
        releaser.release(plan_for(cloud))
    failing = [e for e in events if e.verdict and e.verdict.kind == "fail"]
    assert failing and len(cloud.refreshes) == 1  # failed at the first bad instance, rolled back by AWS
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
    assert [r.status for r in cloud.refreshes] == ["Successful", "Successful"]
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
    ledger.lock_holder = "bob (release 1.0.5)"
    with pytest.raises(LockHeld):
        releaser.release(plan_for(cloud))
    assert cloud.calls == [] and cloud.refreshes == [] and ledger.records == {}


def test_rollback_that_does_not_finish_exits_11() -> None:
    cloud, ledger, releaser, _ = setup({"alarm_on": "ami-new", "stuck_rollback": True})
    with pytest.raises(RollbackFailed) as info:
        releaser.release(plan_for(cloud))
    assert info.value.exit_code == EXIT_ROLLBACK_FAILED
    (record,) = ledger.records.values()
    assert record.outcome is Outcome.ROLLBACK_FAILED


def test_resume_watches_the_running_refresh_without_starting_another() -> None:
    cloud, ledger, first, _ = setup()
    plan = plan_for(cloud)
    # The first Kiln process dies right after starting the refresh.
    original = first._gate_and_finish

    def die() -> ReleaseRecord:
        raise KeyboardInterrupt

    first._gate_and_finish = die  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        first.release(plan)
    first._gate_and_finish = original  # type: ignore[method-assign]
    (interrupted,) = ledger.records.values()
    assert interrupted.phase == Phase.REFRESH and interrupted.refresh_id == "ir-1"
    assert ledger.lock_holder is not None  # the dead process still holds the lock...

    second = Releaser(ENV, cloud, ledger, cloud.clock, first.probes, lambda e: None, actor="ana@laptop")
    record = second.resume(interrupted)  # ...which the same release may take over
    assert record.outcome is Outcome.SUCCEEDED
    assert cloud.calls.count("start_refresh v2") == 1
    assert ledger.lock_holder is None
