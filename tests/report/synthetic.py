"""Synthetic releases for the report's tests: an instance refresh of a group, poll by poll, judged by
the real gate (release.gate.judge), with the record the state machine would have written.

`release(n, ...)` replaces n instances of 1.0.0 by 1.1.0 in batches; with `fail_batch` an alarm fires
during that batch, the gate fails, and the fleet is refreshed back to 1.0.0 (the rollback watch).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from release.gate import Expectation, judge
from release.model import GroupState, InstanceState, RefreshState, Snapshot, Verdict, VerdictKind
from release.record import JournalEntry, Outcome, ReleaseRecord
from release.timeline import RELEASE, ROLLBACK, Sample, sample_of

START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
POLL = timedelta(seconds=2)
OLD_IMAGE, NEW_IMAGE = "ami-0aaa1111bbbb2222c", "ami-0ddd3333eeee4444f"
OLD, NEW = "1.0.0", "1.1.0"
VERSIONS = {OLD_IMAGE: OLD, NEW_IMAGE: NEW}
ALARMS = ("web-prod-5xx", "web-prod-latency-p99")


@dataclass
class _Instance:
    instance_id: str
    image_id: str
    version: str
    launched_at: datetime
    lifecycle: str = "Pending"
    target: str | None = None
    health: bool | None = None
    served: str | None = None
    asg: str = "Healthy"

    def state(self) -> InstanceState:
        return InstanceState(self.instance_id, self.image_id, "7" if self.image_id == NEW_IMAGE else "6",
                             self.lifecycle, self.asg, self.target, launched_at=self.launched_at,
                             served_version=self.served, health_ok=self.health)


@dataclass(frozen=True)
class Synthetic:
    record: ReleaseRecord
    samples: list[Sample]
    polls: list[tuple[Snapshot, Verdict, str]]  # what the gate saw and said, for timeline tests


class _Sim:
    def __init__(self, n: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = START + timedelta(seconds=9)
        self.counter = 0
        self.fleet: list[_Instance] = []
        self.alarms = dict.fromkeys(ALARMS, "OK")
        self.polls: list[tuple[Snapshot, Verdict, str]] = []
        for _ in range(n):
            i = self._launch(OLD_IMAGE, OLD, START - timedelta(days=3))
            i.lifecycle, i.target, i.health, i.served = "InService", "healthy", True, OLD
        self.n = n

    def _launch(self, image: str, version: str, at: datetime) -> _Instance:
        self.counter += 1
        i = _Instance(f"i-0{self.rng.getrandbits(64):016x}", image, version, at)
        self.fleet.append(i)
        return i

    def refresh(self, expect: Expectation, deadline: datetime, refresh: RefreshState, watch: str, *,
                batch_polls: int, fail_batch: int | None = None, flaps: float = 0.0) -> Verdict:
        """Replace the fleet by `expect.image_id` batch by batch, polling the gate every POLL."""
        version = expect.version or "?"
        batch = max(1, self.n // 8)
        old = [i for i in self.fleet if i.image_id != expect.image_id]
        done = 0
        verdict = Verdict(VerdictKind.WAIT, "")
        for b in range(0, len(old), batch):
            leaving, arriving = old[b:b + batch], []
            for p in range(batch_polls):
                if p == 0:
                    for i in leaving:
                        i.lifecycle = "Terminating"
                if p == 1:
                    self.fleet = [i for i in self.fleet if i not in leaving]
                    arriving = [self._launch(expect.image_id, version, self.now) for _ in leaving]
                    for i in arriving:
                        i.lifecycle = "Pending"
                for i in arriving:
                    # Each instance boots at its own pace (a poll or two apart).
                    lag = min(int(i.instance_id[-1], 16) % 3, max(0, batch_polls - 5))
                    if p == 2 + lag:
                        i.lifecycle, i.target = "InService", "initial"
                    if p == 3 + lag:
                        i.health, i.served = True, version
                    if p == 4 + lag:
                        i.target = "healthy"
                if flaps:
                    for i in self.fleet:
                        # Only instances the gate does not judge flap (the ones being replaced).
                        if i.lifecycle == "InService" and i.image_id != expect.image_id and self.rng.random() < flaps:
                            i.target = "unhealthy" if i.target == "healthy" else "healthy"
                if fail_batch is not None and b // batch == fail_batch and p == batch_polls // 2:
                    self.alarms[ALARMS[0]] = "ALARM"
                pct = int(100 * (done + (len(leaving) if p == batch_polls - 1 else 0)) / max(1, len(old)))
                refresh = replace(refresh, percentage_complete=pct,
                                  instances_to_update=len(old) - done)
                verdict = self.poll(expect, deadline, refresh, watch)
                if verdict.done:
                    return verdict
            done += len(leaving)
        refresh = replace(refresh, status="Successful", percentage_complete=100, instances_to_update=0)
        for _ in range(6):
            verdict = self.poll(expect, deadline, refresh, watch)
            if verdict.done:
                return verdict
            self.alarms = dict.fromkeys(ALARMS, "OK")  # the alarm recovers on the old fleet
        return verdict

    def poll(self, expect: Expectation, deadline: datetime, refresh: RefreshState, watch: str) -> Verdict:
        group = GroupState("web-prod", self.n, self.n * 2, self.n, "lt-0123", "web-prod", "6",
                           tuple(i.state() for i in self.fleet), health_check_grace_period=0)
        lb = {expect.version or "?": 25} if refresh.status == "Successful" else {}
        snap = Snapshot(self.now, refresh, group, dict(self.alarms), served_through_lb=lb)
        verdict = judge(snap, expect, deadline)
        self.polls.append((snap, verdict, watch))
        self.now += POLL
        return verdict


def release(n: int = 16, *, fail_batch: int | None = None, batch_polls: int = 6, flaps: float = 0.0,
            seed: int = 7) -> Synthetic:
    """A release of 1.1.0 onto n instances of 1.0.0 (rolled back when an alarm fires in `fail_batch`)."""
    sim = _Sim(n, seed)
    rid = "3f2c9a1b7e40"
    journal = [
        JournalEntry(START, "locked", f"locked prod for release {NEW} as ana@build-7 pid 4121; plan saved: back to "
                                      f"web-prod v6 ({OLD}, {OLD_IMAGE}); default version v6 on failure"),
        JournalEntry(START + timedelta(seconds=2), "template",
                     f"created web-prod v7 from v6 with {NEW_IMAGE} (git sha 9c1e2d4)"),
        JournalEntry(START + timedelta(seconds=4), "refresh", "started instance refresh ir-0new to v7"),
        JournalEntry(START + timedelta(seconds=6), "gating", "watching the refresh (gate times out at 10:20:06 UTC)"),
    ]
    deadline = START + timedelta(minutes=20)
    refresh = RefreshState("ir-0new", "InProgress", None, 0, n, started_at=START + timedelta(seconds=4),
                           desired_version="7")
    verdict = sim.refresh(Expectation(NEW, NEW_IMAGE), deadline, refresh, RELEASE, batch_polls=batch_polls,
                          fail_batch=fail_batch, flaps=flaps)
    record = ReleaseRecord(
        release_id=rid, environment="prod", kind="release", version=NEW, image_id=NEW_IMAGE,
        fingerprint="f1e2d3c4b5a69788", actor="ana@build-7", started_at=START, group="web-prod",
        template="web-prod", template_before=6, group_ref_before="6", default_before=6, previous_version=OLD,
        previous_image_id=OLD_IMAGE, client_token=f"kiln-{rid}-template",
        preferences={"MinHealthyPercentage": 90, "InstanceWarmup": 30}, template_after=7, refresh_id="ir-0new")
    if verdict.kind is VerdictKind.PASS:
        journal.append(JournalEntry(sim.now, "succeeded", verdict.reason))
        record = replace(record, outcome=Outcome.SUCCEEDED, phase="succeeded", ended_at=sim.now, journal=tuple(journal))
    else:
        failed_at = sim.now
        journal.append(JournalEntry(failed_at, "rolling_back", f"gate failed: {verdict.reason}; going "
                                                               f"{record.way_back()}"))
        journal.append(JournalEntry(failed_at + timedelta(seconds=1), "rolling_back",
                                    "started refresh ir-0back back to v6"))
        sim.now += timedelta(seconds=2)
        back = RefreshState("ir-0back", "InProgress", None, 0, n, desired_version="6")
        done = sim.refresh(Expectation(OLD, OLD_IMAGE, fail_fast=False), sim.now + timedelta(minutes=20), back,
                           ROLLBACK, batch_polls=batch_polls)
        journal.append(JournalEntry(sim.now, "rolled_back", f"rolled back ({done.reason}): {verdict.reason}"))
        record = replace(record, outcome=Outcome.ROLLED_BACK, phase="rolled_back", ended_at=sim.now,
                         reason=verdict.reason, rollback_refresh_id="ir-0back", journal=tuple(journal))
    samples = [sample_of(s, v, w, VERSIONS) for s, v, w in sim.polls]
    return Synthetic(record, samples, sim.polls)
