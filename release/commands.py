"""What each `inv` command does, behind the thin tasks: wire config, AWS, ledger, clock and UI
together, and render results. Every user mistake is a KilnError (one line, an exit code)."""

from __future__ import annotations

import getpass
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.version import InvalidVersion, Version

from release.aws import Aws, Cloud, Target, credentials_configured, session_name
from release.bake import BakePlan, Baker, BakeResult
from release.catalogue import Action, CatalogueImage, Decision, References, decide
from release.clock import Clock, SystemClock
from release.config import Config, Environment, select_environment
from release.errors import BakeError, LockHeld, NotFound, SandboxError, UsageError, WrongAccount
from release.ledger import Ledger
from release.model import (
    TAG_APP,
    TAG_DEPRECATED_REASON,
    TAG_FINGERPRINT,
    TAG_FOUNDATION_DEPRECATED,
    TAG_VALIDATED,
    TAG_VALIDATION_REASON,
    TAG_VERSION,
    Check,
    GroupState,
    InstanceState,
    Lock,
    RefreshState,
    TemplateVersion,
)
from release.plan import Observed, Plan, Request, make_plan
from release.record import Outcome, ReleaseRecord, new_release_id
from release.ui import UI, Progress

if TYPE_CHECKING:
    # Imported where they are used: SSH (paramiko), the fleet audit and the release machine are not
    # every command's, and `inv bake` finding nothing changed should not wait for them.
    from release import fleet
    from release.machine import Event, Probes, Releaser
    from release.ssh import Ssh, Timeouts

SANDBOX_DIR = Path(os.environ.get("KILN_SANDBOX_DIR", "/var/lib/kiln/sandbox"))
LB_SAMPLES = 8
# The tree that is baked (app/, ansible/, packer/), wherever the config file comes from.
PROJECT = Path(__file__).resolve().parents[1]


@dataclass
class Context:
    """One command's world: the config, the chosen environment, AWS, the clock and the printer."""

    cfg: Config
    env: Environment
    aws: Aws
    ui: UI
    clock: Clock
    project: Path
    account: str | None = None  # the AWS account the credentials act in, once checked

    @property
    def cloud(self) -> Cloud:
        return Cloud(self.aws)

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.aws, self.env.ledger_table)


def open_context(cfg: Config, env_name: str | None, ui: UI, *, clock: Clock | None = None,
                 project: Path | None = None, bake: bool = False) -> Context:
    """The world of one command. `bake`: act as the environment's bake role (bake_role_arn)."""
    env, why = select_environment(cfg, env_name, aws_credentials=bool(env_name) or credentials_configured())
    if why:
        ui.once(why)
    ctx = Context(cfg, env, Aws(target_for(env, bake=bake)), ui, clock or SystemClock(), project or PROJECT)
    if not env.sandbox or env.account_id:
        ctx.account = check_account(ctx)
    return ctx


def check_account(ctx: Context) -> str:
    """The account guard: the account the credentials act in (after any role assumption) must be
    the environment's `account_id`, before any command reads or changes anything else."""
    seen = ctx.cloud.caller_account()
    want = ctx.env.account_id
    if want and seen != want:
        raise WrongAccount(f"the AWS credentials act in account {seen}, but [environments.{ctx.env.name}] "
                           f"account_id is {want}; nothing was changed",
                           hint=f"Sign in to account {want} (AWS_PROFILE, or role_arn in versions.toml), "
                                "or correct account_id.")
    if not want:
        ctx.ui.once(f"[environments.{ctx.env.name}] has no account_id: acting in account {seen} unchecked; "
                    f"set account_id = \"{seen}\" to have Kiln refuse any other.")
    return seen


def target_for(env: Environment, *, bake: bool = False) -> Target:
    if not env.sandbox:
        role = (env.bake_role_arn or env.role_arn) if bake else env.role_arn
        return Target(region=env.region, profile=env.profile, role_arn=role,
                      session_name=session_name(actor()), external_id=env.external_id,
                      role_duration=env.role_duration)
    from release.sandbox import lifecycle  # the sandbox is only loaded when it is used

    info = lifecycle.status(SANDBOX_DIR)
    if info is None:
        raise SandboxError(f"environment {env.name!r} is the sandbox, and the sandbox is not running",
                           hint="Start it with `inv sandbox.up`.")
    return Target(region=env.region, endpoint_url=info.endpoint, time_scale=info.time_scale, read_timeout=10.0)


def actor() -> str:
    return os.environ.get("KILN_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


# ---------------------------------------------------------------------------------------------- bake


def bake(ctx: Context, *, force: bool, dry_run: bool, if_changed: bool) -> BakeResult | BakePlan:
    ui = ctx.ui
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
    del if_changed  # the fingerprint check above is what --if-changed asks for; baking is the default
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


def _smoke_test(ctx: Context, image_id: str, version: str, fingerprint: str, status: Progress) -> tuple[Check, ...]:
    from release.smoke import smoke_test

    status.stage("smoke test")
    status.update(f"smoke-testing {image_id}")
    return smoke_test(ctx.cloud, ctx.env, image_id, version, fingerprint, ctx.clock,
                      lambda key, timeouts: ssh_for(ctx, key=key, use_agent=False, timeouts=timeouts),
                      on_step=status.update)


def _validated(ctx: Context, baker: Baker, result: BakeResult, checks: tuple[Check, ...],
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


# ---------------------------------------------------------------------------------------------- release


def observe_for_plan(ctx: Context, version: Version) -> Observed:
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


def _passed(ctx: Context, fingerprint: str | None, image_ids: set[str]) -> frozenset[str]:
    """The environments of `requires` whose own ledgers record a success with this AMI's lineage."""
    passed: set[str] = set()
    for name in ctx.env.requires:
        lower = ctx.cfg.environment(name)
        ledger = Ledger(Aws(target_for(lower)), lower.ledger_table)
        passed |= ledger.passed_environments(fingerprint, image_ids, [name])
    return frozenset(passed)


def parse_version(text: str | None) -> Version:
    if not text:
        raise UsageError("--version is required", hint="Name the version, e.g. --version 1.4.2 (see `inv history`).")
    try:
        return Version(text)
    except InvalidVersion:
        raise UsageError(f"--version {text!r} is not a PEP 440 version", hint='Use e.g. --version 1.4.2.') from None


def release(ctx: Context, version: Version, *, dry_run: bool, allow_downgrade: bool, force: bool,
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


def resume(ctx: Context, *, dry_run: bool) -> ReleaseRecord | None:
    """Finish the unfinished release whose driver died, once its lease has lapsed."""
    record = ctx.ledger.in_progress(ctx.env.name)
    if record is None:
        ctx.ui.success(f"nothing to resume in {ctx.env.name}: no release is unfinished")
        ctx.ui.result({"unfinished": None})
        return None
    lock = ctx.ledger.lock(ctx.env.name)
    show_unfinished(ctx, record, lock)
    now = ctx.clock.now()
    if lock is not None and lock.live(now):
        raise LockHeld(f"{ctx.env.name} is being driven by {lock.describe(now)}",
                       hint="`inv resume` takes over only once that lease lapses; in an emergency, "
                            "`inv rollback --break-lock` takes it over to go back.")
    if dry_run:
        ctx.ui.info(f"would resume {record.kind} {record.version} from phase {record.phase}: "
                    f"{_next_step(record)}; nothing changed")
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


def rollback(ctx: Context, *, to: str | None, dry_run: bool, break_lock: bool = False) -> ReleaseRecord | Plan:
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


def _undo_unfinished(ctx: Context, record: ReleaseRecord, *, dry_run: bool, break_lock: bool) -> ReleaseRecord:
    ui, now = ctx.ui, ctx.clock.now()
    lock = ctx.ledger.lock(ctx.env.name)
    show_unfinished(ctx, record, lock)
    live = lock is not None and lock.live(now)
    if live and not break_lock:
        assert lock is not None
        raise LockHeld(f"{ctx.env.name} is being driven by {lock.describe(now)}",
                       hint="It rolls back by itself if its gate fails; in an emergency "
                            "`inv rollback --break-lock` takes it over and goes back.")
    finish = record.kind == "rollback"  # an interrupted rollback is finished: its purpose is going back
    if dry_run:
        what = (f"finish the interrupted rollback to {record.version}: {_next_step(record)}" if finish
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


def _next_step(record: ReleaseRecord) -> str:
    if record.phase == "rolling_back":
        return f"carry on going {record.way_back()}"
    todo = next((text for done, text in record.steps() if not done), "record the outcome")
    return todo


def show_unfinished(ctx: Context, record: ReleaseRecord, lock: Lock | None) -> None:
    """An unfinished release: who, how far, the lock, and what resume and rollback would do."""
    ui, now = ctx.ui, ctx.clock.now()
    ui.warn(f"unfinished {record.kind} of {record.version} ({record.release_id}) by {record.actor}, started "
            f"{record.started_at:%Y-%m-%d %H:%M:%S} UTC, phase {record.phase}")
    for done, text in record.steps():
        ui.check(done, text)
    if lock is None:
        ui.note("lock: free (its driver gave it back or died before taking it)")
    else:
        ui.note(f"lock: {lock.describe(now)}")
    ui.note(f"`inv resume` would {_next_step(record)}")
    ui.note("`inv rollback` would " + (f"finish the rollback to {record.version}" if record.kind == "rollback"
                                       else f"go {record.way_back()}"))


def _deprecated(ctx: Context, version: str) -> bool:
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
def _releaser(ctx: Context, doing: str) -> Iterator[Releaser]:
    """The environment's driver: a Releaser whose gate reads the cloud with a small retry budget
    (it polls again anyway), and whose SSH (and bastion connection) is closed when it is over.
    While it works, a progress line says `doing`, the phase and the refresh's percentage."""
    gate_cloud = Cloud(Aws(ctx.aws.target, attempts=3))
    from release.machine import Driver, Releaser

    driver = Driver(holder=uuid.uuid4().hex, who=f"{actor()} pid {os.getpid()}")
    with ssh_for(ctx) as ssh, ctx.ui.progress(doing) as progress:
        releaser = Releaser(ctx.env, gate_cloud, ctx.ledger, ctx.clock, probes_for(ctx, ssh),
                            _printer(ctx.ui, progress), actor=actor(), driver=driver,
                            time_scale=ctx.aws.target.time_scale,
                            checkpoint=crash_point)
        try:
            yield releaser
        finally:
            releaser.close()


def ssh_for(ctx: Context, *, key: Path | None = None, use_agent: bool = True, record_to: Path | None = None,
            timeouts: Timeouts | None = None) -> Ssh:
    """SSH to the environment's instances: strict host keys (known_hosts, then the console output)
    and the environment's bastion, found through the cloud when it is named by its Name tag."""
    from release.ssh import Ssh

    sandbox = sandbox_key() if ctx.env.sandbox else None
    return Ssh(ctx.env.ssh, key_filename=key or sandbox, use_agent=use_agent, console_output=ctx.cloud.console_output,
               record_to=record_to, timeouts=timeouts, locate_bastion=ctx.cloud.running_instance_named,
               bastion_key=sandbox)


def probes_for(ctx: Context, ssh: Ssh) -> Probes:
    from release import fleet
    from release.machine import ProbeResult, Probes

    lb = _load_balancer_url(ctx)

    def check(instance: InstanceState) -> ProbeResult:
        if not instance.private_ip:
            return ProbeResult(None, None, "no private IP address")
        return ProbeResult(*fleet.probe_release(ssh, instance.private_ip))

    return Probes(check, (lambda: sample_versions(lb, LB_SAMPLES)) if lb else None)


def _load_balancer_url(ctx: Context) -> str | None:
    if not ctx.aws.target.is_sandbox:
        return ctx.cloud.load_balancer_url(ctx.env.target_groups)
    # The sandbox's ALB DNS names are made up; its listeners really answer on loopback ports.
    from release.sandbox import stack

    assert ctx.aws.target.endpoint_url is not None
    url = stack.load_balancer_url(ctx.aws.target.endpoint_url, ctx.env.target_groups[0]) \
        if ctx.env.target_groups else None
    if url is not None:
        _require_loopback(url)
    return url


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


def _require_loopback(url: str) -> None:
    host = urllib.parse.urlparse(url).hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SandboxError(f"the sandbox's load balancer answers at {url}, which is not a loopback address",
                           hint="Restart the sandbox (inv sandbox.reset); Kiln never dials outside loopback.")


def _printer(ui: UI, progress: Progress) -> Callable[[Event], None]:
    """Print phase changes as lines and gate verdicts as notes (with the refresh's percentage),
    skipping repeats; the progress line carries the phase and the percentage between them."""
    last: dict[str, str] = {}

    def on_event(event: Event) -> None:
        progress.stage(event.phase.value.replace("_", " "), again=False)
        text = event.message
        refresh = event.snapshot.refresh if event.snapshot is not None else None
        if event.snapshot is not None and event.verdict is not None:
            group = event.snapshot.group
            by_image = Counter(i.image_id for i in group.instances if i.lifecycle == "InService")
            # The refresh's own waiting reason already says how far it is.
            said = event.verdict.reason.startswith("instance refresh")
            done = f"refresh {refresh.percentage_complete} % | " if refresh is not None and not said else ""
            text = (f"[{event.at:%H:%M:%S}] {event.verdict.kind}: {event.verdict.reason} "
                    f"| {done}in service: {', '.join(f'{n}×{img}' for img, n in sorted(by_image.items()))}")
        if refresh is not None:
            progress.update(f"instance refresh {refresh.percentage_complete} % ({refresh.status})", say=False)
        if last.get("text") == text:
            return
        last["text"] = text
        if event.verdict is not None:
            ui.note(text)
        else:
            ui.info(f"[{event.at:%H:%M:%S}] {text}")

    return on_event


def show_plan(ui: UI, plan: Plan) -> None:
    ami = plan.ami.image_id if plan.ami else "—"
    ui.info(f"Plan: {plan.version} to {plan.environment} ({ami})")
    rows = [("live", f"{plan.live.version} ({plan.live.image_id})" if plan.live else plan.previous_version or "—"),
            ("launch template", f"v{plan.base_template.number} (what the group launches"
             f"{', as ' + plan.group_ref if plan.group_ref and not plan.group_ref.isdigit() else ''}) → a new version"
             if plan.base_template else "—"),
            *[(f"change {c.field}", f"{c.old} → {c.new}") for c in plan.changes],
            ("batches", " + ".join(map(str, plan.batches)) or "—"),
            ("expected duration", f"~{plan.expected_seconds // 60} min {plan.expected_seconds % 60} s (on AWS)"),
            ("gate", "; ".join(plan.gate_checks)),
            ("on failure", plan.on_failure)]
    ui.table(["", ""], rows)
    for note in plan.notes:
        ui.note(note)
    for warning in plan.warnings:
        ui.warn(warning)
    for blocker in plan.blockers:
        ui.failure(blocker)


# ---------------------------------------------------------------------------------------------- status


def status(ctx: Context) -> None:
    """What is live, what the group really runs, the lock, any unfinished release and what to do
    about it, and where the ledger and the cloud disagree."""
    env, cloud, ledger, ui, now = ctx.env, ctx.cloud, ctx.ledger, ctx.ui, ctx.clock.now()
    account = ctx.account or cloud.caller_account()
    ui.check(True, "account", f"{account}" + (" (the sandbox)" if env.sandbox else
                                              " = account_id" if env.account_id else " (account_id not set)"))
    live = ledger.live(env.name)
    running = ledger.in_progress(env.name)
    lock = ledger.lock(env.name)
    group = cloud.group(env.asg, env.target_groups)
    refresh = cloud.active_refresh(env.asg)
    versions = {i.image_id: str(i.version) for i in cloud.app_images(ctx.cfg.app.name)}
    current = cloud.template_version(env.launch_template, group.launch_template_version) \
        if group and group.launch_template_version else None
    ui.check(live is not None, "live release", f"{live.version} ({live.image_id}, {live.ended_at:%Y-%m-%d %H:%M})"
             if live and live.ended_at else "none recorded")
    ui.check(lock is None, "lock", lock.describe(now) if lock else "free")
    ui.check(running is None, "no release unfinished", "" if running is None else
             f"{running.kind} {running.version} in phase {running.phase}")
    if running is not None:
        show_unfinished(ctx, running, lock)
    ui.check(refresh is None, "no instance refresh running",
             f"{refresh.refresh_id} {refresh.status} {refresh.percentage_complete}% (to v{refresh.desired_version})"
             if refresh else "")
    disagreements = _disagreements(live, running, group, current, refresh)
    for text in disagreements:
        ui.failure(f"ledger and cloud disagree: {text}")
    if group is None:
        ui.failure(f"Auto Scaling group {env.asg} not found")
        ui.result({"live": live, "group": None, "lock": lock, "unfinished": running, "disagreements": disagreements})
        return
    rows = [(i.instance_id, i.private_ip, versions.get(i.image_id, i.image_id), i.launch_template_version,
             i.lifecycle, i.asg_health, i.target_health) for i in group.instances]
    runs = f"v{current.number} ({versions.get(current.image_id, current.image_id)})" if current else "unknown"
    ui.table(["instance", "address", "version", "LT", "lifecycle", "ASG health", "target"], rows,
             title=f"{env.asg}: desired {group.desired_capacity}, LT {group.launch_template_name} "
                   f"{group.launch_template_version} = {runs}")
    ui.result({"live": live, "in_progress": running, "lock": lock, "refresh": refresh, "group": group,
               "group_template": current, "disagreements": disagreements})


def _disagreements(live: ReleaseRecord | None, running: ReleaseRecord | None, group: GroupState | None,
                   current: TemplateVersion | None, refresh: RefreshState | None) -> list[str]:
    """Where the ledger's story and the cloud differ, each with what to do. The cloud is the truth."""
    out = []
    if live is not None and current is not None and running is None and current.image_id != live.image_id:
        out.append(f"the ledger says {live.version} ({live.image_id}) is live, but the group launches "
                   f"v{current.number} with {current.image_id}; someone changed the group outside Kiln — "
                   "release the version you want (`inv release`) to make them agree")
    if group is not None and current is None:
        out.append(f"the group references launch template version {group.launch_template_version}, which does not "
                   "exist; point it at a numbered version before releasing")
    ours = running is not None and (
        refresh is not None and (refresh.refresh_id in (running.refresh_id, running.rollback_refresh_id)
                                 or refresh.desired_version in (str(running.template_after),
                                                                str(running.template_before))))
    if running is not None and refresh is not None and ours and refresh.refresh_id not in (
            running.refresh_id, running.rollback_refresh_id):
        out.append(f"instance refresh {refresh.refresh_id} ({refresh.status}, to v{refresh.desired_version}) belongs "
                   f"to the unfinished {running.kind} of {running.version} but is not recorded yet; `inv resume` or "
                   "`inv rollback` adopts it")
    if refresh is not None and not ours:
        out.append(f"instance refresh {refresh.refresh_id} ({refresh.status}) runs with no Kiln release behind it; "
                   "wait for it before releasing")
    return out


def history(ctx: Context, *, limit: int) -> None:
    records = ctx.ledger.history(ctx.env.name, limit=limit)
    rows = [(r.started_at, r.kind, r.version, r.image_id, f"v{r.template_before} → v{r.template_after}",
             r.outcome.value, r.actor, (r.reason or "")[:60]) for r in records]
    ctx.ui.table(["started", "kind", "version", "AMI", "LT", "outcome", "who", "reason"], rows,
                 title=f"history of {ctx.env.name}")
    ctx.ui.result({"history": records})


# ---------------------------------------------------------------------------------------------- AMIs


def related_contexts(ctx: Context) -> list[Context]:
    """Every environment reachable with this one's credentials: same sandbox-ness and account."""
    out = []
    for env in ctx.cfg.environments.values():
        if env.sandbox == ctx.env.sandbox and env.account_id == ctx.env.account_id:
            out.append(ctx if env.name == ctx.env.name else
                       Context(ctx.cfg, env, Aws(target_for(env)), ctx.ui, ctx.clock, ctx.project))
    return out


def release_references(contexts: list[Context]) -> dict[str, list[str]]:
    """image id -> "live in prod" / "previous in dev": what each environment may need to return to."""
    refs: dict[str, list[str]] = {}
    for c in contexts:
        good = [r for r in c.ledger.history(c.env.name, limit=200) if r.outcome is Outcome.SUCCEEDED]
        for label, record in zip(("live", "previous"), _distinct_images(good), strict=False):
            refs.setdefault(record.image_id, []).append(f"{label} in {c.env.name}")
    return refs


def _distinct_images(records: list[ReleaseRecord]) -> list[ReleaseRecord]:
    seen: set[str] = set()
    out = []
    for r in records:
        if r.image_id not in seen:
            seen.add(r.image_id)
            out.append(r)
    return out


def cleanup(ctx: Context, *, keep: int, dry_run: bool) -> list[Decision]:
    if keep < 1:
        raise UsageError(f"--keep {keep}: keep at least 1 version", hint="Use --keep 3 (the default) or more.")
    contexts = related_contexts(ctx)
    regions = sorted({r for c in contexts for r in (c.env.region, *c.env.ami_regions)})
    clouds = {region: Cloud(Aws(replace(ctx.aws.target, region=region))) for region in regions}
    images = []
    templates: dict[str, list[str]] = {}
    instances: dict[str, list[str]] = {}
    parameters: dict[str, list[str]] = {}
    for cloud in clouds.values():
        images += [CatalogueImage(ami, snaps) for ami, snaps in cloud.catalogue(ctx.cfg.app.name)]
        t, i, p = cloud.image_references()
        for table, found in ((templates, t), (instances, i), (parameters, p)):
            for image_id, why in found.items():
                table.setdefault(image_id, []).extend(why)
    refs = References(_frozen(release_references(contexts)), _frozen(templates), _frozen(instances),
                      _frozen(parameters))
    decisions = decide(images, refs, keep=keep)
    ctx.ui.table(["action", "AMI", "region", "version", "created", "why"],
                 [(d.action.value, d.image.ami.image_id, d.image.ami.region, d.image.ami.version,
                   d.image.ami.created_at, "; ".join(d.reasons)) for d in decisions],
                 title=f"AMI catalogue of {ctx.cfg.app.name} (keep {keep} versions)")
    doomed = [d for d in decisions if d.action is Action.DELETE]
    if dry_run or not doomed:
        ctx.ui.info(f"{len(doomed)} AMI(s) would be deleted" if dry_run else "nothing to delete")
        ctx.ui.result({"dry_run": dry_run, "decisions": decisions})
        return decisions
    for d in doomed:
        ami = d.image.ami
        clouds[ami.region].delete_image(ami.image_id, d.image.snapshot_ids)
        ctx.ledger.record_event("ami-deleted", ami.image_id, ctx.clock.now(),
                                {"region": ami.region, "version": str(ami.version), "snapshots": d.image.snapshot_ids,
                                 "reason": d.reasons[0], "by": actor()})
        ctx.ui.success(f"deleted {ami.image_id} ({ami.region}, {ami.version}) and {len(d.image.snapshot_ids)} "
                       "snapshot(s)")
    ctx.ui.result({"dry_run": False, "decisions": decisions})
    return decisions


def _frozen(table: dict[str, list[str]]) -> dict[str, tuple[str, ...]]:
    return {k: tuple(v) for k, v in table.items()}


# EC2 refuses a deprecation time in the past and rounds to the minute: "now" is a minute ahead.
DEPRECATE_AHEAD = timedelta(minutes=1)


def _deprecate_now(ctx: Context, cloud: Cloud, image_id: str, reason: str) -> None:
    """A deprecation by hand: the reason tag makes it count for Kiln at once (AmiRef.deprecated),
    EC2's own deprecation time follows a minute later."""
    cloud.tag_image(image_id, {TAG_DEPRECATED_REASON: reason[:250]})
    cloud.deprecate_image(image_id, ctx.clock.now() + DEPRECATE_AHEAD)


def deprecate(ctx: Context, version: Version, *, reason: str) -> list[str]:
    regions = sorted({ctx.env.region, *ctx.env.ami_regions})
    done = []
    for region in regions:
        cloud = Cloud(Aws(replace(ctx.aws.target, region=region)))
        for ami in cloud.app_images(ctx.cfg.app.name, str(version)):
            _deprecate_now(ctx, cloud, ami.image_id, reason)
            ctx.ledger.record_event("ami-deprecated", ami.image_id, ctx.clock.now(),
                                    {"region": region, "version": str(version), "reason": reason, "by": actor()})
            ctx.ui.success(f"deprecated {ami.image_id} ({region}): {reason}")
            done.append(ami.image_id)
    if not done:
        raise NotFound(f"no AMI for {version} in {', '.join(regions)}", hint="See `inv ami.cleanup --dry-run`.")
    ctx.ui.result({"deprecated": done, "version": str(version), "reason": reason})
    return done


def deprecate_foundation(ctx: Context, image_id: str, *, reason: str, children: bool) -> list[str]:
    """Deprecate a foundation: the next bake bakes a new one. The app images baked on it are flagged
    (kiln:foundation-deprecated, which the release plan warns about), or deprecated too."""
    cloud, now = ctx.cloud, ctx.clock.now()
    foundation = cloud.image(image_id)
    if foundation is None or not foundation.is_foundation:
        raise NotFound(f"{image_id} is not a foundation of {ctx.cfg.app.name} in {ctx.env.region}",
                       hint="List them with `inv ami.cleanup --dry-run` (foundations are marked).")
    _deprecate_now(ctx, cloud, image_id, reason)
    ctx.ledger.record_event("ami-deprecated", image_id, now, {"region": ctx.env.region, "layer": "foundation",
                                                              "reason": reason, "by": actor()})
    ctx.ui.success(f"deprecated the foundation {image_id}: {reason}; the next bake bakes a new one")
    built_on = [a for a in cloud.app_images(ctx.cfg.app.name) if a.foundation == image_id]
    for ami in built_on:
        if children:
            _deprecate_now(ctx, cloud, ami.image_id, f"its foundation {image_id}: {reason}")
            ctx.ui.success(f"deprecated {ami.image_id} ({ami.version}), baked on it")
        else:
            cloud.tag_image(ami.image_id, {TAG_FOUNDATION_DEPRECATED: reason[:250]})
            ctx.ui.note(f"flagged {ami.image_id} ({ami.version}), baked on it; `inv release` warns about it")
    ctx.ui.result({"deprecated": [image_id, *([a.image_id for a in built_on] if children else [])],
                   "flagged": [] if children else [a.image_id for a in built_on], "reason": reason})
    return [a.image_id for a in built_on]


def promote(ctx: Context, version: Version, *, to: str) -> str:
    """Give environment `to` the exact AMI that passed in this one: copied to its region (tags kept,
    re-keyed when it names a KMS key) and shared with its account. Never a rebake."""
    target_env = ctx.cfg.environment(to)
    passed = [r for r in ctx.ledger.history(ctx.env.name, limit=200)
              if r.outcome is Outcome.SUCCEEDED and r.version == str(version)]
    if not passed:
        raise UsageError(f"{version} was never released successfully in {ctx.env.name}",
                         hint=f"Release it there first: inv release --env {ctx.env.name} --version {version}.")
    source = ctx.cloud.image(passed[0].image_id)
    if source is None or source.state != "available":
        raise NotFound(f"the AMI {passed[0].image_id} that passed in {ctx.env.name} is gone")
    target = Context(ctx.cfg, target_env, Aws(target_for(target_env)), ctx.ui, ctx.clock, ctx.project)
    if target_env.account_id and target_env.account_id != ctx.env.account_id:
        ctx.cloud.share_image(source.image_id, target_env.account_id)
        ctx.ui.success(f"shared {source.image_id} with account {target_env.account_id}")
    existing = [i for i in target.cloud.app_images(ctx.cfg.app.name, str(version))
                if i.fingerprint == source.fingerprint]
    if target_env.region == source.region and not target_env.kms_key_id:
        image_id = source.image_id
    elif existing:
        image_id = existing[0].image_id
        ctx.ui.note(f"{image_id} in {target_env.region} is already a copy of {source.image_id}")
    else:
        image_id = target.cloud.copy_image(source, target_env.kms_key_id)
        if source.imds_support == "v2.0":  # a copy is a new AMI: make it as IMDSv2-only as its source
            target.cloud.require_imds_v2(image_id)
        ctx.ui.success(f"copied {source.image_id} ({source.region}) to {image_id} ({target_env.region})")
    details = {"from": ctx.env.name, "to": to, "version": str(version), "source": source.image_id,
               "image_id": image_id, "fingerprint": source.fingerprint, "by": actor()}
    for c in (ctx, target):
        c.ledger.record_event("ami-promoted", image_id, ctx.clock.now(), details)
    ctx.ui.result(details)
    return image_id


# ---------------------------------------------------------------------------------------------- fleet


KNOWN_HOSTS = Path(os.environ.get("KILN_KNOWN_HOSTS", "~/.kiln/known_hosts")).expanduser()


def sandbox_key() -> Path | None:
    """The sandbox's launch template key pair, saved by `inv sandbox.up` (None when absent)."""
    from release.sandbox.stack import key_file

    path = key_file(SANDBOX_DIR)
    return path if path.exists() else None


def verify_fleet(ctx: Context, *, parallel: int, key: Path | None) -> fleet.FleetReport:
    from release import fleet

    live = ctx.ledger.live(ctx.env.name)
    if live is None:
        raise UsageError(f"nothing has been released to {ctx.env.name} yet", hint="Release first: inv release.")
    group = ctx.cloud.group(ctx.env.asg, ctx.env.target_groups)
    if group is None:
        raise NotFound(f"Auto Scaling group {ctx.env.asg!r} not found in {ctx.env.region}")
    instances = fleet.in_service(group)
    ctx.ui.info(f"auditing {len(instances)} in-service instance(s) of {ctx.env.asg} against {live.version} "
                f"({live.image_id}, fingerprint {live.fingerprint})")
    with ssh_for(ctx, key=key, record_to=KNOWN_HOSTS) as ssh:
        report = fleet.audit(ssh, fleet.expected_from_live(live.as_live()), instances, parallel=parallel)
    ctx.ui.table(*report.table(), title=f"fleet of {ctx.env.name}")
    ctx.ui.result(report.to_json())
    error = report.error()
    if error is not None:
        raise error
    ctx.ui.success(f"all {len(instances)} instances are what was baked")
    return report


# ---------------------------------------------------------------------------------------------- sandbox


def sandbox_up(cfg: Config, ui: UI, *, time_scale: float, instances: bool) -> None:
    from release.sandbox import stack

    with ui.progress("starting the sandbox") as progress:
        info = stack.up(cfg, SANDBOX_DIR, time_scale=time_scale, dataplane=instances,
                        on_step=progress.update)
    if info.dataplane:
        # The seeded fleet runs the legacy app; adopt it as release 0, as a user would (README).
        for name in info.environments:
            ctx = open_context(cfg, name, ui)
            if not ctx.ledger.history(name, limit=1):
                adopt(ctx, Version(stack.LEGACY_VERSION))
    _show_sandbox(ui, info)


def sandbox_status(ui: UI) -> None:
    from release.sandbox import stack

    info = stack.status(SANDBOX_DIR)
    if info is None:
        ui.check(False, "sandbox", f"not running (state in {SANDBOX_DIR}); start it with `inv sandbox.up`")
        ui.result({"running": False})
        raise SandboxError("the sandbox is not running", hint="Start it with `inv sandbox.up`.")
    _show_sandbox(ui, info)


def sandbox_new_base_image(cfg: Config, ui: UI, clock: Clock | None = None) -> dict[str, str]:
    """Publish a newer base AMI in the running sandbox, the way Debian publishes security updates:
    the next `bake --if-changed` sees the base image move and bakes."""
    from release.sandbox import stack

    base = cfg.base_image
    if base.ami or "*" not in base.name:
        raise UsageError(f"[base_image] pins {base.ami or base.name!r}: a newer base AMI would never be picked up",
                         where=f"{cfg.path}:base_image",
                         hint="Find the base by owners + a name filter with a '*' (README) to follow new images.")
    info = stack.status(SANDBOX_DIR)
    if info is None:
        raise SandboxError("the sandbox is not running", hint="Start it with `inv sandbox.up`.")
    name = base.name.replace("*", f"sandbox-{(clock or SystemClock()).now():%Y%m%d-%H%M%S}")
    images = stack.publish_base_image(info.endpoint, name)
    for region, image_id in sorted(images.items()):
        ui.success(f"published base image {name} in {region} as {image_id}")
    ui.result({"name": name, "images": images})
    return images


def sandbox_down(ui: UI) -> None:
    from release.sandbox import stack

    stopped = stack.down(SANDBOX_DIR)
    ui.success("sandbox stopped" if stopped else "the sandbox was not running")
    ui.result({"stopped": stopped})


def _show_sandbox(ui: UI, info: object) -> None:
    from release.sandbox.stack import StackInfo

    assert isinstance(info, StackInfo)
    ui.success(f"sandbox running at {info.endpoint} ({'real instances' if info.dataplane else 'control plane only'})")
    rows = [("environments", ", ".join(f"{n} ({r})" for n, r in info.environments.items())),
            ("database", info.database_url.split("@")[-1]),
            ("instance SSH key", info.key_file),
            *[(f"bastion {name}", f"ssh -i {info.key_file} {address}") for name, address in info.bastions.items()],
            *[(f"load balancer {lb['load_balancer']}", lb["url"]) for lb in info.load_balancers]]
    ui.table(["", ""], rows)
    ui.info("Point the AWS CLI or boto3 at it:")
    for key, value in info.env.items():
        ui.info(f"  export {key}={value}")
    ui.result(info)


def sandbox_fault(ui: UI, *, operation: str | None = None, service: str | None = None, error: str | None = None,
                  status: str | int | None = None, message: str | None = None,
                  latency: str | float | None = None, timeout: str | float | bool | None = None,
                  count: str | int | None = None, seconds: str | float | None = None, list_rules: bool = False,
                  clear: bool = False, kill: str | None = None, stop: str | None = None,
                  unhealthy: str | None = None, healthy: str | None = None) -> dict[str, object]:
    """Rehearse a failure in the running sandbox (docs/sandbox.md, "Fault injection"): a rule that
    makes AWS calls fail, lag or lose their response after taking effect; an instance killed,
    stopped, or failing its health checks; or list / clear the rules. Every argument is checked
    before the sandbox is touched: bad input is a UsageError and nothing changes."""
    import re

    from release.sandbox import lifecycle, stack

    def number(flag: str, value: str | float | bool, whole: bool = False) -> float:
        try:
            parsed = float(value) if not whole else int(str(value))
        except ValueError:
            raise UsageError(f"{flag} takes a {'whole ' if whole else ''}number, not {value!r}") from None
        if not parsed > 0 or isinstance(value, bool):
            raise UsageError(f"{flag} must be more than 0, not {value!r}")
        return parsed

    rule_flags = [flag for flag, value in (("--service", service), ("--error", error), ("--status", status),
                                           ("--message", message), ("--latency", latency), ("--timeout", timeout),
                                           ("--count", count), ("--seconds", seconds)) if value is not None]
    rule: dict[str, object] = {}
    if operation is None and rule_flags:
        raise UsageError(f"{', '.join(rule_flags)} describe a fault rule: name its --operation (or '*' for all)")
    instance = kill or stop or unhealthy or healthy
    actions = [flag for flag, given in (("--operation", operation), ("--list", list_rules), ("--clear", clear),
                                        ("--kill", kill), ("--stop", stop), ("--unhealthy", unhealthy),
                                        ("--healthy", healthy)) if given]
    if len(actions) != 1:
        raise UsageError("say one thing to do: --operation NAME with --error, --latency or --timeout; --list; "
                         "--clear; or --kill, --stop, --unhealthy or --healthy INSTANCE"
                         + (f" (got {' and '.join(actions)})" if actions else ""))
    if operation is not None:
        if not re.fullmatch(r"\*|[A-Z][A-Za-z0-9]*", operation):
            raise UsageError(f"--operation {operation!r}: an AWS operation as botocore names it "
                             "(DescribeAutoScalingGroups), or '*'")
        kinds = [flag for flag in ("--error", "--latency", "--timeout") if flag in rule_flags]
        if len(kinds) != 1:
            raise UsageError("say what the fault is with exactly one of --error CODE, --latency S or --timeout S"
                             + (f" (got {' and '.join(kinds)})" if kinds else ""))
        if (status is not None or message is not None) and error is None:
            raise UsageError("--status and --message go with --error")
        rule = {"operation": operation, "service": service}
        if error is not None:
            rule.update(error=error, message=message,
                        status=int(number("--status", status, whole=True)) if status is not None else None)
        elif latency is not None:
            rule["latency"] = number("--latency", latency)
        elif timeout is not None:
            rule["timeout"] = True if timeout is True else number("--timeout", timeout)
        rule["count"] = int(number("--count", count, whole=True)) if count is not None else None
        rule["seconds"] = number("--seconds", seconds) if seconds is not None else None
        rule = {key: value for key, value in rule.items() if value is not None}
    if instance is not None and not re.fullmatch(r"i-[0-9a-f]{8,17}", instance):
        raise UsageError(f"{actions[0]} {instance!r}: an instance id such as i-0123456789abcdef0")

    info = lifecycle.status(SANDBOX_DIR)
    if info is None:
        raise SandboxError("the sandbox is not running", hint="Start it with `inv sandbox.up`.")
    outcome: dict[str, object] = {}
    if operation is not None:
        added = stack.add_fault(info.endpoint, rule)
        outcome["added"] = added
        lasts = " and ".join(part for part in (f"{added['count']} call(s)" if added.get("count") else "",
                                               f"{added['seconds']:g} s" if added.get("seconds") else "") if part)
        fault = (f"error {added['error']} ({added['status']})" if added["kind"] == "error"
                 else f"{added['kind']} {added[added['kind']]:g} s")
        ui.success(f"{added['id']}: {added['service']} {added['operation']} -> {fault}, for {lasts}")
    elif clear:
        ui.success(f"cleared {stack.clear_faults(info.endpoint)} fault rule(s)")
    elif (kill or stop) and instance is not None:
        done = stack.instance_fault(info.endpoint, instance, "kill" if kill else "stop")
        outcome["instance"] = done
        ui.success(f"{instance}: {'killed (' + str(done['effect']) + ')' if kill else 'stopped'}")
    elif instance is not None:
        outcome["target_health"] = stack.set_target_health(info.endpoint, instance, healthy=healthy is not None)
        ui.success(f"{instance}: {'passes its health checks again' if healthy else 'fails its health checks'}")
    book = stack.faults(info.endpoint)
    rules = list(book["rules"])
    if rules:
        ui.table(["rule", "service", "operation", "fault", "left", "fired"], [
            (r["id"], r["service"], r["operation"],
             f"error {r['error']} ({r['status']})" if r["kind"] == "error" else f"{r['kind']} {r[r['kind']]:g} s",
             ", ".join(part for part in (f"{r['remaining']} call(s)" if r["remaining"] is not None else "",
                                         f"{r['expires_in']:g} s" if r["expires_in"] is not None else "") if part),
             r["fired"]) for r in rules], title="fault rules in force")
    elif list_rules:
        ui.info("no fault rules in force")
    if list_rules and book["finished"]:
        ui.note("ended: " + ", ".join(f"{r['id']} ({r['ended']}, fired {r['fired']})" for r in book["finished"]))
    result = {**outcome, "rules": rules, "finished": list(book["finished"])}
    ui.result(result)
    return result


# ---------------------------------------------------------------------------------------------- adoption


def adopt(ctx: Context, version: Version, *, force: bool = False) -> ReleaseRecord:
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
