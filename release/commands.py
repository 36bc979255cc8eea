"""What each `inv` command does, behind the thin tasks: wire config, AWS, ledger, clock and UI
together, and render results. Every user mistake is a KilnError (one line, an exit code)."""

from __future__ import annotations

import getpass
import ipaddress
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from packaging.version import InvalidVersion, Version

from release import fleet
from release.aws import Aws, Cloud, Target, credentials_configured
from release.bake import BakePlan, Baker, BakeResult
from release.catalogue import Action, CatalogueImage, Decision, References, decide
from release.clock import Clock, SystemClock
from release.config import Config, Environment, select_environment
from release.errors import BakeError, NotFound, SandboxError, UsageError
from release.ledger import Ledger, Outcome, ReleaseRecord, new_release_id
from release.machine import Event, Probes, Releaser
from release.model import (
    TAG_APP,
    TAG_DEPRECATED_REASON,
    TAG_FINGERPRINT,
    TAG_VALIDATED,
    TAG_VALIDATION_REASON,
    TAG_VERSION,
    InstanceState,
)
from release.plan import Observed, Plan, Request, make_plan
from release.smoke import smoke_test
from release.ssh import Ssh, Timeouts
from release.ui import UI

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

    @property
    def cloud(self) -> Cloud:
        return Cloud(self.aws)

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.aws, self.env.ledger_table)


def open_context(cfg: Config, env_name: str | None, ui: UI, *, clock: Clock | None = None,
                 project: Path | None = None) -> Context:
    env, why = select_environment(cfg, env_name, aws_credentials=bool(env_name) or credentials_configured())
    if why:
        ui.once(why)
    return Context(cfg, env, Aws(target_for(env)), ui, clock or SystemClock(), project or PROJECT)


def target_for(env: Environment) -> Target:
    if not env.sandbox:
        return Target(region=env.region, profile=env.profile, role_arn=env.role_arn)
    from release.sandbox import lifecycle  # the sandbox is only loaded when it is used

    info = lifecycle.status(SANDBOX_DIR)
    if info is None:
        raise SandboxError(f"environment {env.name!r} is the sandbox, and the sandbox is not running",
                           hint="Start it with `inv sandbox.up`.")
    return Target(region=env.region, endpoint_url=info.endpoint, time_scale=info.time_scale)


def actor() -> str:
    return os.environ.get("KILN_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


# ---------------------------------------------------------------------------------------------- bake


def bake(ctx: Context, *, force: bool, dry_run: bool, if_changed: bool) -> BakeResult | BakePlan:
    ui = ctx.ui
    baker = Baker(ctx.cfg, ctx.env, ctx.aws, ctx.project, ctx.clock, on_step=lambda s: ui.note(f"  {s}"),
                  on_line=lambda line: None)
    plan = baker.plan(force=force)
    fp = plan.fingerprint.value
    ui.info(f"{ctx.cfg.app.name} {plan.version}: fingerprint {fp}, base image {plan.base_image.image_id}")
    if not plan.needed:
        assert plan.existing is not None
        ui.success(f"nothing changed: {plan.existing.image_id} ({plan.existing.name}) already has fingerprint {fp}")
        ui.result({"needed": False, "fingerprint": fp, "image_id": plan.existing.image_id, "version": plan.version})
        return plan
    ui.info(f"inputs changed since the newest bake: {', '.join(plan.changed)}")
    if dry_run:
        ui.info("would run: " + " ".join(plan.command))
        ui.result({"needed": True, "fingerprint": fp, "changed": plan.changed, "command": plan.command,
                   "variables": plan.variables})
        return plan
    del if_changed  # the fingerprint check above is what --if-changed asks for; baking is the default
    with ui.progress(f"baking {plan.version}") as status:
        baker.on_step = lambda s: status.update(f"baking {plan.version}: {s}")
        result = baker.bake(plan)
        ui.success(f"packer built {result.image_id} in {result.seconds:.0f} s")
        status.update(f"smoke-testing {result.image_id}")
        checks = smoke_test(ctx.cloud, ctx.env, result.image_id, plan.version, fp, ctx.clock,
                            lambda key, timeouts: ssh_for(ctx, key=key, use_agent=False, timeouts=timeouts),
                            on_step=lambda s: status.update(s))
    result = replace(result, smoke=checks)
    baker.record_validation(result.image_id, checks)
    for check in checks:
        ui.check(bool(check.ok), check.name, check.detail)
    summary = {"needed": True, "version": plan.version, "fingerprint": fp, "image_id": result.image_id,
               "copies": result.copies, "seconds": round(result.seconds, 1), "validated": result.validated}
    ui.table(["region", "AMI"], sorted(result.copies.items()), title=f"{ctx.cfg.app.name} {plan.version} ({fp})")
    ui.result(summary)
    if not result.validated:
        raise BakeError(f"{result.image_id} failed its smoke test and is tagged kiln:validated=false",
                        hint="Fix the image and bake again; `inv release` refuses it unless --force.")
    ui.success(f"{result.image_id} validated")
    return result


# ---------------------------------------------------------------------------------------------- release


def observe_for_plan(ctx: Context, version: Version) -> Observed:
    env, cloud, ledger = ctx.env, ctx.cloud, ctx.ledger
    images = cloud.app_images(ctx.cfg.app.name)
    chosen = [i for i in images if i.version == version]
    live = ledger.live(env.name)
    fingerprint = chosen[0].fingerprint if chosen else None
    return Observed(
        images=images,
        template_versions=cloud.template_versions(env.launch_template),
        group=cloud.group(env.asg, env.target_groups),
        active_refresh=cloud.active_refresh(env.asg),
        live=live.as_live() if live else None,
        lock=ledger.lock(env.name),
        passed_environments=_passed(ctx, fingerprint, {i.image_id for i in chosen}),
    )


def _passed(ctx: Context, fingerprint: str | None, image_ids: set[str]) -> frozenset[str]:
    """The environments of `requires` whose own ledgers record a success with this AMI's lineage."""
    passed: set[str] = set()
    for name in ctx.env.requires:
        lower = ctx.cfg.environment(name)
        ledger = Ledger(Aws(target_for(lower)), lower.ledger_table)
        passed |= ledger.passed_environments(fingerprint, image_ids, [name])
    return frozenset(passed)


def parse_version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise UsageError(f"--version {text!r} is not a PEP 440 version", hint='Use e.g. --version 1.4.2.') from None


def release(ctx: Context, version: Version, *, dry_run: bool, allow_downgrade: bool, force: bool,
            break_lock: bool, kind: str = "release") -> ReleaseRecord | Plan:
    ui = ctx.ui
    resumed = _resume_if_interrupted(ctx)
    if resumed is not None:
        return resumed
    if break_lock and not dry_run:
        broken = ctx.ledger.break_lock(ctx.env.name)
        ui.warn(f"broke the lock held by {broken.holder}" if broken else "there was no lock to break")
    observed = observe_for_plan(ctx, version)
    plan = make_plan(ctx.env, Request(version, ctx.clock.now(), allow_downgrade=allow_downgrade, force=force),
                     observed)
    show_plan(ui, plan)
    if dry_run or not plan.ok or plan.noop:
        ui.result({"plan": plan})
        if not plan.ok:
            raise UsageError(plan.blockers[0])
        return plan
    with _releaser(ctx) as releaser:
        record = releaser.release(plan, kind=kind)
    ui.success(f"{kind} of {record.version} to {ctx.env.name} succeeded: {record.reason or record.journal[-1].message}")
    ui.result({"record": record})
    return record


def rollback(ctx: Context, *, to: str | None, dry_run: bool) -> ReleaseRecord | Plan:
    """A new gated release of the previous good version (or --to VERSION)."""
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
    return release(ctx, target, dry_run=dry_run, allow_downgrade=True, force=False, break_lock=False, kind="rollback")


def _deprecated(ctx: Context, version: str) -> bool:
    """Rollback never picks a version whose AMIs are all deprecated."""
    images = [i for i in ctx.cloud.app_images(ctx.cfg.app.name, version) if i.state == "available"]
    return bool(images) and all(i.deprecated(ctx.clock.now()) for i in images)


def _resume_if_interrupted(ctx: Context) -> ReleaseRecord | None:
    record = ctx.ledger.in_progress(ctx.env.name)
    if record is None:
        return None
    ctx.ui.warn(f"found an unfinished {record.kind} of {record.version} ({record.release_id}, phase {record.phase}); "
                "resuming it — Kiln never starts a second refresh over a running one")
    with _releaser(ctx) as releaser:
        done = releaser.resume(record)
    ctx.ui.success(f"resumed {record.kind} of {record.version}: {done.outcome}")
    ctx.ui.result({"record": done})
    return done


@contextmanager
def _releaser(ctx: Context) -> Iterator[Releaser]:
    """A Releaser whose SSH (and bastion connection) is closed when the release is over."""
    with ssh_for(ctx) as ssh:
        yield Releaser(ctx.env, ctx.cloud, ctx.ledger, ctx.clock, probes_for(ctx, ssh), _printer(ctx.ui),
                       actor=actor(), time_scale=ctx.aws.target.time_scale)


def ssh_for(ctx: Context, *, key: Path | None = None, use_agent: bool = True, record_to: Path | None = None,
            timeouts: Timeouts | None = None) -> Ssh:
    """SSH to the environment's instances: strict host keys (known_hosts, then the console output)
    and the environment's bastion, found through the cloud when it is named by its Name tag."""
    sandbox = sandbox_key() if ctx.env.sandbox else None
    return Ssh(ctx.env.ssh, key_filename=key or sandbox, use_agent=use_agent, console_output=ctx.cloud.console_output,
               record_to=record_to, timeouts=timeouts, locate_bastion=ctx.cloud.running_instance_named,
               bastion_key=sandbox)


def probes_for(ctx: Context, ssh: Ssh) -> Probes:
    lb = _load_balancer_url(ctx)

    def served(instance: InstanceState) -> str | None:
        if not instance.private_ip:
            return None
        answer = fleet.served_versions(ssh, [instance.private_ip])[instance.private_ip]
        return answer.version

    def through_lb() -> dict[str, int]:
        return sample_versions(lb, LB_SAMPLES) if lb else {"(no load balancer)": 1}

    return Probes(served, through_lb)


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
            with urllib.request.urlopen(f"{url}/version", timeout=5) as response:
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


def _printer(ui: UI) -> Callable[[Event], None]:
    """Print phase changes as lines and gate verdicts as notes, skipping repeats."""
    last: dict[str, str] = {}

    def on_event(event: Event) -> None:
        text = event.message
        if event.snapshot is not None and event.verdict is not None:
            group = event.snapshot.group
            by_image = Counter(i.image_id for i in group.instances if i.lifecycle == "InService")
            text = (f"[{event.at:%H:%M:%S}] {event.verdict.kind}: {event.verdict.reason} "
                    f"| in service: {', '.join(f'{n}×{img}' for img, n in sorted(by_image.items()))}")
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
            ("launch template", f"v{plan.base_template.number} → v{plan.new_template_number}"
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
    env, cloud, ledger, ui = ctx.env, ctx.cloud, ctx.ledger, ctx.ui
    live = ledger.live(env.name)
    running = ledger.in_progress(env.name)
    group = cloud.group(env.asg, env.target_groups)
    refresh = cloud.active_refresh(env.asg)
    versions = {i.image_id: str(i.version) for i in cloud.app_images(ctx.cfg.app.name)}
    ui.check(live is not None, "live release", f"{live.version} ({live.image_id}, {live.ended_at:%Y-%m-%d %H:%M})"
             if live and live.ended_at else "none recorded")
    ui.check(running is None, "no release in progress",
             f"{running.kind} {running.version} in phase {running.phase}: `inv release` resumes it" if running else "")
    ui.check(refresh is None, "no instance refresh running",
             f"{refresh.refresh_id} {refresh.status} {refresh.percentage_complete}%" if refresh else "")
    if group is None:
        ui.failure(f"Auto Scaling group {env.asg} not found")
        ui.result({"live": live, "group": None})
        return
    rows = [(i.instance_id, i.private_ip, versions.get(i.image_id, i.image_id), i.launch_template_version,
             i.lifecycle, i.asg_health, i.target_health) for i in group.instances]
    ui.table(["instance", "address", "version", "LT", "lifecycle", "ASG health", "target"], rows,
             title=f"{env.asg}: desired {group.desired_capacity}, LT {group.launch_template_name} "
                   f"v{group.launch_template_version}")
    ui.result({"live": live, "in_progress": running, "refresh": refresh, "group": group})


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


def deprecate(ctx: Context, version: Version, *, reason: str) -> list[str]:
    regions = sorted({ctx.env.region, *ctx.env.ami_regions})
    done = []
    for region in regions:
        cloud = Cloud(Aws(replace(ctx.aws.target, region=region)))
        for ami in cloud.app_images(ctx.cfg.app.name, str(version)):
            cloud.deprecate_image(ami.image_id, ctx.clock.now())
            cloud.tag_image(ami.image_id, {TAG_DEPRECATED_REASON: reason[:250]})
            ctx.ledger.record_event("ami-deprecated", ami.image_id, ctx.clock.now(),
                                    {"region": region, "version": str(version), "reason": reason, "by": actor()})
            ctx.ui.success(f"deprecated {ami.image_id} ({region}): {reason}")
            done.append(ami.image_id)
    if not done:
        raise NotFound(f"no AMI for {version} in {', '.join(regions)}", hint="See `inv ami.cleanup --dry-run`.")
    ctx.ui.result({"deprecated": done, "version": str(version), "reason": reason})
    return done


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
                        on_step=lambda s: progress.update(f"sandbox: {s}"))
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


# ---------------------------------------------------------------------------------------------- adoption


def adopt(ctx: Context, version: Version, *, force: bool = False) -> ReleaseRecord:
    """Make what the group runs now release `version` in the ledger (release 0 of a fleet Kiln did
    not build): tag its AMI as the app's, validated by adoption, and record a successful release."""
    env = ctx.env
    if ctx.ledger.history(env.name, limit=1) and not force:
        raise UsageError(f"{env.name} already has a release history; adoption is for a fleet Kiln never released",
                         hint="See `inv history`; pass --force to adopt anyway.")
    group = ctx.cloud.group(env.asg, env.target_groups)
    versions = ctx.cloud.template_versions(env.launch_template)
    if group is None or not versions:
        raise NotFound(f"Auto Scaling group {env.asg!r} or launch template {env.launch_template!r} not found",
                       hint=f"Check [environments.{env.name}] in versions.toml.")
    ref = group.launch_template_version
    current = next((v for v in versions if str(v.number) == ref), None) or \
        next((v for v in versions if v.is_default), versions[-1])
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
