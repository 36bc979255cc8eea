"""The health gate: (snapshot, expectation, deadline) -> Verdict. Pure.

The loop that fetches snapshots, sleeps and prints lives in rollout.py; this module only
judges one snapshot, so every rule is a table row in tests/unit/gate_cases/.

Rules, in order — the first definitive failure wins (fail fast):
1. No refresh where one must be, an unknown refresh status, or a refresh that ended other than
   Successful (Failed, Cancelled, any Rollback*) -> fail. Unknown is never "still waiting".
2. A watched CloudWatch alarm in ALARM, missing, or in a state Kiln does not know -> fail.
3. A new instance (on the expected image) that the ASG marks Unhealthy, that its target group
   marks unhealthy or that is missing from a target group (past the grace period), whose /health
   fails (past the grace period), that serves another version on /version, or that the group
   took out of service (terminated) -> fail.
4. Past the deadline -> fail, naming what was still pending.
5. Refresh Successful and as many instances as the group desires are in service, all on the
   expected image, Healthy, in every target group and healthy there, answering /health, serving
   the expected version, and the load balancer (when there is one) serves only that version -> pass.
6. Otherwise -> wait, saying what is pending.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from release.model import Check, InstanceState, Snapshot, Verdict, VerdictKind

IN_PROGRESS = frozenset({"Pending", "InProgress", "Baking"})
SUCCESSFUL = "Successful"
ENDED_BADLY = frozenset({"Failed", "Cancelling", "Cancelled", "RollbackInProgress",
                         "RollbackSuccessful", "RollbackFailed"})


@dataclass(frozen=True)
class Expectation:
    """What the fleet must look like when the release (or the rollback) is done."""

    version: str | None  # None: unknown (e.g. rolling back to an image Kiln did not bake)
    image_id: str
    # The refresh status that means "done". Waiting out AWS's own rollback of a refresh
    # expects RollbackSuccessful instead.
    done_status: str = SUCCESSFUL
    # A new instance failing ELB health checks counts only after this long since its launch (the
    # group's health check grace period, in this clock's seconds): it may still be booting.
    grace_seconds: float = 0.0
    # False when going back to a configuration that was never a Kiln release (the seed's bare
    # image): its health is not Kiln's to promise, only that the fleet is back on it.
    health_required: bool = True
    # A release fails fast on the first bad signal. Watching a rollback does not: its alarms and
    # health recover as the old instances return, so it waits for them until the deadline; only
    # the refresh itself ending badly is final.
    fail_fast: bool = True


def judge(snapshot: Snapshot, expect: Expectation, deadline: datetime) -> Verdict:
    checks = _checks(snapshot, expect)
    if not expect.fail_fast:
        # Only the refresh itself, and a refresh that ended with the fleet elsewhere, are final.
        final = ("instance refresh", "new image")
        checks = tuple(c if c.ok is not False or c.name in final else Check(c.name, None, c.detail) for c in checks)
    failed = [c for c in checks if c.ok is False]
    if failed:
        return Verdict(VerdictKind.FAIL, failed[0].detail, checks)
    pending = [c for c in checks if c.ok is None]
    if snapshot.at >= deadline:
        waiting_for = "; ".join(f"{c.name}: {c.detail}" for c in pending) or "nothing"
        return Verdict(VerdictKind.FAIL, f"timed out at {deadline:%H:%M:%S} waiting for {waiting_for}", checks)
    if not pending:
        serving = expect.version or expect.image_id
        return Verdict(VerdictKind.PASS, f"all {len(_in_service(snapshot))} instances serve {serving}", checks)
    return Verdict(VerdictKind.WAIT, f"{pending[0].name}: {pending[0].detail}", checks)


def _checks(snap: Snapshot, expect: Expectation) -> tuple[Check, ...]:
    refresh_check = _refresh(snap, expect.done_status)
    refresh_done = refresh_check.ok is True
    in_service = _in_service(snap)
    new = [i for i in in_service if i.image_id == expect.image_id]
    # Done means the group's whole desired capacity, not whatever happens to be in service.
    total = max(snap.group.desired_capacity, len(in_service))
    return (
        refresh_check,
        _alarms(snap),
        _on_new_image(in_service, new, refresh_done, snap, expect),
        _asg_health(new, refresh_done, total, expect),
        _target_health(new, refresh_done, total, expect, snap.at),
        _health_endpoint(new, refresh_done, total, expect, snap.at),
        _served_by_instances(new, expect.version, refresh_done, total),
        _served_by_lb(snap, expect.version),
    )


def _in_service(snap: Snapshot) -> list[InstanceState]:
    return [i for i in snap.group.instances if i.lifecycle == "InService"]


def _refresh(snap: Snapshot, done_status: str) -> Check:
    name = "instance refresh"
    r = snap.refresh
    if r is None:
        return Check(name, False, "no instance refresh found for the group")
    if r.status == done_status:
        return Check(name, True, f"{r.refresh_id} {r.status}")
    if r.status in IN_PROGRESS or (done_status != SUCCESSFUL and r.status == "RollbackInProgress"):
        return Check(name, None, f"{r.status}, {r.percentage_complete}% complete, "
                                 f"{r.instances_to_update} to update")
    reason = f": {r.status_reason}" if r.status_reason else ""
    if r.status in ENDED_BADLY:
        return Check(name, False, f"instance refresh {r.refresh_id} is {r.status}{reason}")
    return Check(name, False, f"unknown instance refresh status {r.status!r}{reason}; "
                              "Kiln treats what it does not understand as a failure")


ALARM_STATES_OK = frozenset({"OK", "INSUFFICIENT_DATA"})


def _alarms(snap: Snapshot) -> Check:
    firing = sorted(name for name, state in snap.alarms.items() if state == "ALARM")
    if firing:
        return Check("alarms", False, f"alarm {', '.join(firing)} in ALARM")
    missing = sorted(name for name, state in snap.alarms.items() if state == "MISSING")
    if missing:
        return Check("alarms", False, f"alarm {', '.join(missing)} does not exist: an alarm that cannot fire "
                                      "guards nothing")
    odd = sorted(f"{name} is {state}" for name, state in snap.alarms.items() if state not in ALARM_STATES_OK)
    if odd:
        return Check("alarms", False, f"alarm {', '.join(odd)}, a state Kiln does not know")
    return Check("alarms", True, f"{len(snap.alarms)} OK" if snap.alarms else "none configured")


def _on_new_image(in_service: list[InstanceState], new: list[InstanceState], refresh_done: bool,
                  snap: Snapshot, expect: Expectation) -> Check:
    if snap.vanished and expect.health_required:
        return Check("new image", False, f"new instance {', '.join(snap.vanished)} was taken out of service "
                                         "(terminated by the group)")
    wanted = snap.group.desired_capacity
    detail = f"{len(new)}/{max(wanted, len(in_service))} instances on the new image"
    if in_service and len(new) == len(in_service) and len(new) >= wanted:
        return Check("new image", True, detail)
    if refresh_done and len(new) == len(in_service):
        return Check("new image", None, f"{detail}: {len(in_service)} of {wanted} desired in service")
    if refresh_done:
        # Successful refresh yet old instances remain: the group still launches the old config.
        old = sorted(i.instance_id for i in in_service if i not in new)
        return Check("new image", False, f"refresh finished but {', '.join(old)} still on the old image")
    return Check("new image", None, detail)


def _asg_health(new: list[InstanceState], refresh_done: bool, total: int, expect: Expectation) -> Check:
    if not expect.health_required:
        return Check("ASG health", True, "not checked: going back to a configuration Kiln did not release")
    sick = sorted(i.instance_id for i in new if i.asg_health != "Healthy")
    if sick:
        return Check("ASG health", False, f"new instance {', '.join(sick)} is Unhealthy")
    return _progress("ASG health", len(new), total, refresh_done, "Healthy")


def _target_health(new: list[InstanceState], refresh_done: bool, total: int, expect: Expectation,
                   now: datetime) -> Check:
    if not expect.health_required:
        return Check("target health", True, "not checked: going back to a configuration Kiln did not release")
    sick = sorted(i.instance_id for i in new if i.target_health == "unhealthy" and _past_grace(i, now, expect))
    if sick:
        return Check("target health", False, f"new instance {', '.join(sick)} is unhealthy in its target group")
    absent = sorted(i.instance_id for i in new if i.target_health == "unregistered" and _past_grace(i, now, expect))
    if absent:
        return Check("target health", False, f"new instance {', '.join(absent)} is not registered in every "
                                             "target group")
    healthy = [i for i in new if i.target_health in (None, "healthy")]
    return _progress("target health", len(healthy), total, refresh_done, "healthy")


def _health_endpoint(new: list[InstanceState], refresh_done: bool, total: int, expect: Expectation,
                     now: datetime) -> Check:
    if not expect.health_required:
        return Check("/health", True, "not checked: going back to a configuration Kiln did not release")
    sick = sorted(f"{i.instance_id} ({i.health_detail or 'failed'})" for i in new
                  if i.health_ok is False and _past_grace(i, now, expect))
    if sick:
        return Check("/health", False, f"new instance {', '.join(sick)} fails /health")
    answered = [i for i in new if i.health_ok is True]
    return _progress("/health", len(answered), total, refresh_done, "answer /health")


def _past_grace(instance: InstanceState, now: datetime, expect: Expectation) -> bool:
    if instance.launched_at is None:
        return True
    return (now - instance.launched_at).total_seconds() >= expect.grace_seconds


def _served_by_instances(new: list[InstanceState], version: str | None, refresh_done: bool, total: int) -> Check:
    if version is None:
        return Check("served version", True, "not checked: the expected version is unknown")
    wrong = sorted(f"{i.instance_id} serves {i.served_version}" for i in new
                   if i.served_version is not None and i.served_version != version)
    if wrong:
        return Check("served version", False, f"{', '.join(wrong)}, expected {version}")
    right = [i for i in new if i.served_version == version]
    return _progress("served version", len(right), total, refresh_done, f"serving {version}")


def _served_by_lb(snap: Snapshot, version: str | None) -> Check:
    if version is None:
        return Check("load balancer", True, "not checked: the expected version is unknown")
    seen = snap.served_through_lb
    if seen is None:
        return Check("load balancer", True, "no load balancer to sample")
    if not seen:
        return Check("load balancer", None, "not sampled yet")
    summary = ", ".join(f"{v}×{n}" for v, n in sorted(seen.items()))
    if set(seen) == {version}:
        return Check("load balancer", True, f"serves only {version} ({summary})")
    return Check("load balancer", None, f"serves {summary}")


def _progress(name: str, good: int, total: int, refresh_done: bool, word: str) -> Check:
    detail = f"{good}/{total} {word}"
    if refresh_done and total and good == total:
        return Check(name, True, detail)
    return Check(name, None, detail)
