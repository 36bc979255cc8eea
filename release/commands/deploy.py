"""`inv release`, `inv rollback`, `inv resume` and `inv adopt`: read the cloud into a plan, save
it, and drive it as the environment's one fenced driver (the state machine in rollout.py)."""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from packaging.version import Version

from release.aws import Aws
from release.cloud import Cloud
from release.commands.context import CommandContext, actor, parse_version, reach_for, target_for
from release.commands.views import event_printer, next_step, show_plan, show_unfinished
from release.errors import LockHeld, NotFound, UsageError
from release.ledger import Ledger
from release.model import (
    TAG_APP,
    TAG_FINGERPRINT,
    TAG_VALIDATED,
    TAG_VALIDATION_REASON,
    TAG_VERSION,
    InstanceState,
    Lock,
)
from release.plan import Observed, Plan, Request, make_plan
from release.record import Outcome, ReleaseRecord, new_release_id

if TYPE_CHECKING:
    from release import audit
    from release.rollout import Probes, Releaser

LB_SAMPLES = 8


def observe_for_plan(ctx: CommandContext, version: Version) -> Observed:
    """Everything the plan reads. "Before" comes from the group itself: the launch template version
    it references, as AWS resolves it — never from Kiln's records or the template's default."""
    env, cloud, ledger = ctx.env, ctx.cloud, ctx.ledger
    images = cloud.app_images(ctx.cfg.app.name)
    chosen = [i for i in images if i.version == version]
    live = ledger.live(env.name)
    fingerprint = chosen[0].fingerprint if chosen else None
    group = cloud.group(env.asg, env.target_groups)
    default = cloud.template_version(env.launch_template, "$Default")
    ref = group.launch_template_version if group else None
    alarms = cloud.alarm_states(env.alarms)
    return Observed(
        images=images,
        group_template=cloud.template_version(env.launch_template, ref) if default and ref else None,
        default_template=default,
        group=group,
        active_refresh=cloud.active_refresh(env.asg),
        live=live.as_live() if live else None,
        lock=ledger.lock(env.name),
        passed_environments=_passed(ctx, fingerprint, {i.image_id for i in chosen}),
        missing_alarms=tuple(name for name, state in alarms.items() if state == "MISSING"),
        interrupted=ledger.in_progress(env.name),
    )


def _passed(ctx: CommandContext, fingerprint: str | None, image_ids: set[str]) -> frozenset[str]:
    """The environments of `requires` whose own ledgers record a success with this AMI's lineage."""
    passed: set[str] = set()
    for name in ctx.env.requires:
        lower = ctx.cfg.environment(name)
        ledger = Ledger(Aws(target_for(lower)), lower.ledger_table)
        passed |= ledger.passed_environments(fingerprint, image_ids, [name])
    return frozenset(passed)


def release(ctx: CommandContext, version: Version, *, dry_run: bool, allow_downgrade: bool, force: bool,
            kind: str = "release") -> ReleaseRecord | Plan:
    """Plan (reads only), then drive the plan as the environment's one fenced driver."""
    ui = ctx.ui
    observed = observe_for_plan(ctx, version)
    if observed.interrupted is not None:
        show_unfinished(ctx, observed.interrupted, observed.lock)
    plan = make_plan(ctx.env, Request(version, ctx.clock.now(), allow_downgrade=allow_downgrade, force=force),
                     observed)
    show_plan(ui, plan)
    if dry_run or not plan.ok or plan.noop:
        ui.result({"plan": plan, "unfinished": observed.interrupted})
        if not plan.ok:
            raise UsageError(plan.blockers[0])
        return plan
    doing = f"rolling {ctx.env.name} back to {plan.version}" if kind == "rollback" \
        else f"releasing {plan.version} to {ctx.env.name}"
    with _releaser(ctx, doing) as releaser:
        record = releaser.release(plan, kind=kind)
    ui.success(f"{kind} of {record.version} to {ctx.env.name} succeeded: {record.reason or record.journal[-1].message}")
    ui.result({"record": record})
    return record


def resume(ctx: CommandContext, *, dry_run: bool) -> ReleaseRecord | None:
    """Finish the unfinished release whose driver died, once its lease has lapsed."""
    record = ctx.ledger.in_progress(ctx.env.name)
    if record is None:
        ctx.ui.success(f"nothing to resume in {ctx.env.name}: no release is unfinished")
        ctx.ui.result({"unfinished": None})
        return None
    lock = ctx.ledger.lock(ctx.env.name)
    show_unfinished(ctx, record, lock)
    if (after := _lease_waited_out(ctx, lock, dry_run=dry_run)) is not None:
        unfinished, lock = after
        if unfinished is None:
            ctx.ui.success(f"nothing to resume in {ctx.env.name}: the release finished while Kiln waited")
            ctx.ui.result({"unfinished": None})
            return None
        record = unfinished
    now = ctx.clock.now()
    if lock is not None and lock.live(now) and not dry_run:
        raise LockHeld(f"{ctx.env.name} is being driven by {lock.describe(now)}",
                       hint="`inv resume` takes over only once that lease lapses; in an emergency, "
                            "`inv rollback --break-lock` takes it over to go back.")
    if dry_run:
        ctx.ui.info(f"would resume {record.kind} {record.version} from phase {record.phase}: "
                    f"{next_step(record)}; nothing changed")
        ctx.ui.result({"unfinished": record, "dry_run": True})
        return record
    with _releaser(ctx, f"resuming the {record.kind} of {record.version} in {ctx.env.name}") as releaser:
        releaser.take_over(record, lock, force=False)
        ctx.ui.warn(f"taking over {record.kind} {record.version} ({record.release_id}) from "
                    f"{(lock.who if lock else '') or record.actor}, whose lease lapsed")
        done = releaser.resume(record)
    ctx.ui.success(f"resumed {record.kind} of {record.version}: {done.outcome}")
    ctx.ui.result({"record": done})
    return done


def rollback(ctx: CommandContext, *, to: str | None, dry_run: bool, break_lock: bool = False) -> ReleaseRecord | Plan:
    """Go back. An unfinished release is rolled back to what the group ran before it (never
    completed); otherwise a new gated release of the previous good version (or --to VERSION)."""
    record = ctx.ledger.in_progress(ctx.env.name)
    if record is not None:
        return _undo_unfinished(ctx, record, dry_run=dry_run, break_lock=break_lock)
    if break_lock:
        ctx.ui.note(f"no unfinished release in {ctx.env.name}: there is no lock to break")
    history = ctx.ledger.history(ctx.env.name, limit=200)
    good = [r for r in history if r.outcome is Outcome.SUCCEEDED]
    if to is not None:
        target = parse_version(to)
    else:
        if len(good) < 2:
            raise UsageError(f"no previous good release in {ctx.env.name} to roll back to",
                             hint="See `inv history`; pass --to VERSION to choose one.")
        live = good[0]
        previous = next((r for r in good[1:] if r.version != live.version and not _deprecated(ctx, r.version)), None)
        if previous is None:
            raise UsageError(f"no earlier good, undeprecated release than {live.version} in {ctx.env.name}",
                             hint="See `inv history`; pass --to VERSION.")
        target = Version(previous.version)
    ctx.ui.info(f"rolling {ctx.env.name} back to {target}")
    return release(ctx, target, dry_run=dry_run, allow_downgrade=True, force=False, kind="rollback")


def _undo_unfinished(ctx: CommandContext, record: ReleaseRecord, *, dry_run: bool, break_lock: bool) -> ReleaseRecord:
    ui = ctx.ui
    lock = ctx.ledger.lock(ctx.env.name)
    show_unfinished(ctx, record, lock)
    if not break_lock and (after := _lease_waited_out(ctx, lock, dry_run=dry_run)) is not None:
        unfinished, lock = after
        if unfinished is None:
            raise UsageError(f"the {record.kind} of {record.version} finished while Kiln waited for its lease",
                             hint="See `inv status`; run `inv rollback` again to go back from where it ended.")
        record = unfinished
    # The time after the wait: a lease that lapsed while it was checked is not live any more.
    now = ctx.clock.now()
    live = lock is not None and lock.live(now)
    if live and not break_lock and not dry_run:
        assert lock is not None
        raise LockHeld(f"{ctx.env.name} is being driven by {lock.describe(now)}",
                       hint="It rolls back by itself if its gate fails; in an emergency "
                            "`inv rollback --break-lock` takes it over and goes back.")
    finish = record.kind == "rollback"  # an interrupted rollback is finished: its purpose is going back
    if dry_run:
        what = (f"finish the interrupted rollback to {record.version}: {next_step(record)}" if finish
                else f"roll {record.kind} {record.version} back: going {record.way_back()}")
        ui.info(f"would {what}; nothing changed")
        ui.result({"unfinished": record, "dry_run": True})
        return record
    with _releaser(ctx, f"{'finishing' if finish else 'undoing'} the {record.kind} of {record.version} in "
                        f"{ctx.env.name}") as releaser:
        if live:
            assert lock is not None
            ui.warn(f"BREAKING THE LOCK of {ctx.env.name}: {lock.describe(now)}. That process stops at its next "
                    "fence check without changing anything more.")
        releaser.take_over(record, lock, force=live)
        if finish:
            done = releaser.resume(record)
        else:
            done = releaser.undo(record, f"rolled back by {actor()} (`inv rollback` of the unfinished {record.kind})")
    ui.success(f"{'finished the rollback to' if finish else 'rolled back'} {record.version} in {ctx.env.name}: "
               f"{done.outcome}")
    ui.result({"record": done})
    return done


def _lease_waited_out(ctx: CommandContext, lock: Lock | None, *, dry_run: bool
                      ) -> tuple[ReleaseRecord | None, Lock | None] | None:
    """Right after a crash the dead driver's lease is still live. Wait for it to lapse (a live
    driver renews it: then LockHeld, nothing taken over), and return the unfinished release and
    the lock as they are now; a dry run only says so. None: there was no live lease to wait for."""
    now = ctx.clock.now()
    if lock is None or not lock.live(now):
        return None
    left = (lock.expires_at - now).total_seconds()
    who = lock.who or lock.holder
    if dry_run:
        ctx.ui.note(f"the lease of {who} lapses in {left:.0f} s: a real run waits for that first "
                    "(and leaves a live driver, which renews it, alone)")
        return None
    from release.rollout import await_lapse

    ctx.ui.info(f"waiting up to {left:.0f} s for the lease of {who} to lapse; a live driver would renew it, "
                "and then nothing is taken over (Ctrl-C stops here, nothing changed)")
    with ctx.ui.progress(f"waiting for the lease of {who} to lapse"):
        await_lapse(lock, lambda: ctx.ledger.lock(ctx.env.name), ctx.clock)
    return ctx.ledger.in_progress(ctx.env.name), ctx.ledger.lock(ctx.env.name)


def _deprecated(ctx: CommandContext, version: str) -> bool:
    """Rollback never picks a version whose AMIs are all deprecated."""
    images = [i for i in ctx.cloud.app_images(ctx.cfg.app.name, version) if i.state == "available"]
    return bool(images) and all(i.deprecated(ctx.clock.now()) for i in images)


def crash_point(name: str) -> None:
    """Rehearsing crashes: with KILN_CRASH_AT=<checkpoint>[,…] (machine.CHECKPOINTS), the process
    kills itself with SIGKILL at that point, as a power cut would. Tests use it; nothing else should."""
    if name in os.environ.get("KILN_CRASH_AT", "").split(","):
        sys.stderr.write(f"kiln: KILN_CRASH_AT={name}: killing this process (SIGKILL)\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def _releaser(ctx: CommandContext, doing: str) -> Iterator[Releaser]:
    """The environment's driver: a Releaser whose gate reads the cloud with a small retry budget
    (it polls again anyway), and whose SSH (and bastion connection) is closed when it is over.
    While it works, a progress line says `doing`, the phase and the refresh's percentage."""
    gate_cloud = Cloud(Aws(ctx.aws.target, attempts=3))
    from release.rollout import Driver, Releaser

    driver = Driver(holder=uuid.uuid4().hex, who=f"{actor()} pid {os.getpid()}")
    with reach_for(ctx) as reach, ctx.ui.progress(doing) as progress:
        releaser = Releaser(ctx.env, gate_cloud, ctx.ledger, ctx.clock, probes_for(ctx, reach),
                            event_printer(ctx.ui, progress), actor=actor(), driver=driver,
                            time_scale=ctx.aws.target.time_scale,
                            checkpoint=crash_point, timelines=ctx.ledger)
        try:
            yield releaser
        finally:
            releaser.close()


def probes_for(ctx: CommandContext, reach: audit.Reach) -> Probes:
    from release import audit
    from release.rollout import ProbeResult, Probes

    lb = ctx.cloud.load_balancer_url(ctx.env.target_groups)

    def check(instance: InstanceState) -> ProbeResult:
        if not instance.private_ip:
            return ProbeResult(None, None, "no private IP address")
        return ProbeResult(*audit.probe_release(reach, instance.private_ip, instance_id=instance.instance_id))

    return Probes(check, (lambda: sample_versions(lb, LB_SAMPLES)) if lb else None)


def sample_versions(url: str, count: int) -> dict[str, int]:
    """GET /version `count` times through the load balancer: version -> how often it answered."""
    seen: Counter[str] = Counter()
    for _ in range(count):
        try:
            with urllib.request.urlopen(f"{url}/version", timeout=2) as response:
                seen[str(json.loads(response.read()).get("version"))] += 1
        except (urllib.error.URLError, OSError, ValueError) as err:
            seen[f"error: {type(err).__name__}"] += 1
    return dict(seen)


def adopt(ctx: CommandContext, version: Version, *, force: bool = False) -> ReleaseRecord:
    """Make what the group runs now release `version` in the ledger (release 0 of a fleet Kiln did
    not build): tag its AMI as the app's, validated by adoption, and record a successful release."""
    env = ctx.env
    if ctx.ledger.history(env.name, limit=1) and not force:
        raise UsageError(f"{env.name} already has a release history; adoption is for a fleet Kiln never released",
                         hint="See `inv history`; pass --force to adopt anyway.")
    group = ctx.cloud.group(env.asg, env.target_groups)
    # What the group launches now, as AWS resolves its reference: the truth to adopt.
    current = ctx.cloud.template_version(env.launch_template, group.launch_template_version or "$Default") \
        if group else None
    if group is None or current is None:
        raise NotFound(f"Auto Scaling group {env.asg!r} or the launch template version it references "
                       f"({env.launch_template!r}) not found",
                       hint=f"Check [environments.{env.name}] in versions.toml.")
    now = ctx.clock.now()
    ctx.cloud.tag_image(current.image_id, {
        TAG_APP: ctx.cfg.app.name, TAG_VERSION: str(version), TAG_FINGERPRINT: f"adopted-{current.image_id}",
        TAG_VALIDATED: "true", TAG_VALIDATION_REASON: f"adopted as release {version} on {now:%Y-%m-%d}"})
    record = ReleaseRecord(
        release_id=new_release_id(), environment=env.name, kind="adopt", version=str(version),
        image_id=current.image_id, fingerprint=f"adopted-{current.image_id}", actor=actor(), started_at=now,
        outcome=Outcome.SUCCEEDED, phase="succeeded", template_before=current.number, template_after=current.number,
        ended_at=now).noted(now, "succeeded", f"adopted {env.launch_template} v{current.number} "
                                              f"({current.image_id}) as release {version}")
    ctx.ledger.save(record)
    ctx.ui.success(f"adopted {current.image_id} ({env.launch_template} v{current.number}) as release {version} "
                   f"of {env.name}")
    ctx.ui.result({"record": record})
    return record
