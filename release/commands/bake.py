"""`inv bake`: plan the layers, bake what changed with Packer + Ansible, smoke-test, tag."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from release.baker import BakePlan, Baker, BakeResult
from release.commands.context import CommandContext, reach_for, sandbox_key
from release.errors import BakeError
from release.model import Check
from release.ui import Progress


def bake(ctx: CommandContext, *, force: bool, dry_run: bool) -> BakeResult | BakePlan:
    """Bake what changed (nothing when an AMI with these inputs exists), then smoke-test it."""
    ui = ctx.ui
    through_ssm = [e.name for e in ctx.cfg.environments.values() if e.access == "ssm" and not e.sandbox]
    if through_ssm and ctx.cfg.bake.ssm_agent is None and not ctx.env.sandbox:
        ui.warn(f"{', '.join(through_ssm)} read instances through SSM Run Command, but [bake.ssm_agent] is not set: "
                "the foundation installs no SSM agent (Debian's AMIs have none; see README)")
    baker = Baker(ctx.cfg, ctx.env, ctx.aws, ctx.project, ctx.clock, on_step=lambda s: ui.note(f"  {s}"),
                  on_line=lambda line: None, bastion_key=sandbox_key() if ctx.env.sandbox else None)
    plan = baker.plan(force=force)
    fp, below = plan.fingerprint.value, plan.foundation
    ui.info(f"{ctx.cfg.app.name} {plan.version}: fingerprint {fp}, base image {plan.base_image.image_id}")
    foundation = {"needed": below.needed and plan.needed, "fingerprint": below.fingerprint.value,
                  "image_id": below.existing.image_id if below.existing else None, "changed": below.changed}
    if not plan.needed and plan.existing is not None and plan.existing.validated is None and not dry_run:
        # Baked, then interrupted before its smoke test: test it now rather than bake it again.
        ui.info(f"{plan.existing.image_id} has these inputs but was never smoke-tested (an interrupted bake): "
                "smoke-testing it now")
        if plan.existing.imds_support != "v2.0":
            ctx.cloud.require_imds_v2(plan.existing.image_id)  # the bake stopped before its own last steps
        with ui.progress(f"smoke-testing {plan.existing.image_id}") as status:
            checks = _smoke_test(ctx, plan.existing.image_id, plan.version, fp, status)
        return _validated(ctx, baker, BakeResult(plan=plan, image_id=plan.existing.image_id,
                                                 copies={ctx.env.region: plan.existing.image_id}, seconds=0.0,
                                                 foundation_id=plan.existing.foundation or ""), checks, foundation)
    if not plan.needed:
        assert plan.existing is not None
        ui.success(f"nothing changed: {plan.existing.image_id} ({plan.existing.name}) already has fingerprint {fp}")
        ui.result({"needed": False, "fingerprint": fp, "image_id": plan.existing.image_id, "version": plan.version,
                   "foundation": foundation})
        return plan
    if below.existing is not None:
        ui.info(f"foundation {below.fingerprint.value}: {below.existing.image_id} exists; only the app layer is baked")
    else:
        ui.info(f"foundation {below.fingerprint.value}: to bake first ({', '.join(below.changed)} changed)")
    ui.info(f"app {fp}: to bake ({', '.join(plan.changed) or 'forced'} changed)")
    if dry_run:
        ui.info("would run: " + " ".join(plan.command))
        ui.result({"needed": True, "fingerprint": fp, "changed": plan.changed, "command": plan.command,
                   "variables": plan.variables, "foundation": foundation})
        return plan
    with ui.progress(f"baking {plan.version}") as status, stop_on_sigterm():
        baker.on_step = bake_steps(status)
        result = baker.bake(plan)
        if result.foundation_seconds:
            ui.success(f"packer built the foundation {result.foundation_id} in {result.foundation_seconds:.0f} s")
        ui.success(f"packer built {result.image_id} on {result.foundation_id} in "
                   f"{result.seconds - result.foundation_seconds:.0f} s")
        checks = _smoke_test(ctx, result.image_id, plan.version, fp, status)
    return _validated(ctx, baker, result, checks, foundation)


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM (a CI runner cancelling the job) stops a bake the way Ctrl-C does, so that Packer is
    told to clean up (packer.run) instead of being orphaned with its build instance."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _smoke_test(ctx: CommandContext, image_id: str, version: str, fingerprint: str,
                status: Progress) -> tuple[Check, ...]:
    from release.smoke import smoke_test

    status.stage("smoke test")
    status.update(f"smoke-testing {image_id}")
    return smoke_test(ctx.cloud, ctx.env, image_id, version, fingerprint, ctx.clock,
                      lambda key, timeouts: reach_for(ctx, key=key, use_agent=False, timeouts=timeouts),
                      on_step=status.update, ready_timeout=ctx.cfg.bake.smoke_ready_timeout)


def _validated(ctx: CommandContext, baker: Baker, result: BakeResult, checks: tuple[Check, ...],
               foundation: dict[str, object]) -> BakeResult:
    ui, plan, fp = ctx.ui, result.plan, result.plan.fingerprint.value
    result = replace(result, smoke=checks)
    baker.record_validation(result.image_id, checks)
    for check in checks:
        ui.check(bool(check.ok), check.name, check.detail)
    summary = {"needed": True, "version": plan.version, "fingerprint": fp, "image_id": result.image_id,
               "copies": result.copies, "seconds": round(result.seconds, 1), "validated": result.validated,
               "foundation": {**foundation, "image_id": result.foundation_id,
                              "seconds": round(result.foundation_seconds, 1)}}
    ui.table(["region", "AMI"], sorted(result.copies.items()), title=f"{ctx.cfg.app.name} {plan.version} ({fp})")
    ui.result(summary)
    if not result.validated:
        raise BakeError(f"{result.image_id} failed its smoke test and is tagged kiln:validated=false",
                        hint="Fix the image and bake again; `inv release` refuses it unless --force.")
    ui.success(f"{result.image_id} validated")
    return result


def bake_steps(status: Progress) -> Callable[[str], None]:
    """The Baker's steps as progress. Packer's steps and Ansible's tasks arrive as steps too
    (packer.step_of); Packer's whole output goes to a log under .kiln/bake/ (the scheduled workflow
    keeps it)."""

    def on_step(step: str) -> None:
        if step == "packer build":  # the Baker starts a Packer run (one per layer): its clock starts
            status.stage("packer")
        status.update(step)

    return on_step
