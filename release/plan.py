"""(config, observed state) -> Plan. Pure: reads nothing, changes nothing.

The executor (rollout.py) refuses a plan with blockers; `--dry-run` prints it. Every blocker is
one line saying what is wrong and what to do.

Which AMI a version means (written down because two bakes of one version can exist):
an AMI tagged with the app and `kiln:version` = X, in the environment's region, `available`,
not deprecated, smoke-tested `kiln:validated = true`; among several, the newest creation date
wins (so a rebake of the same version with new inputs supersedes the old one). `--force`
admits unvalidated or deprecated images, never unavailable ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from packaging.version import Version

from release.config import Environment
from release.model import (
    TAG_FOUNDATION_DEPRECATED,
    AmiRef,
    GroupState,
    LiveRelease,
    Lock,
    RefreshState,
    TemplateVersion,
)
from release.record import ReleaseRecord

# What an instance refresh costs per batch beyond the warmup on AWS: launch, boot and the
# ELB health checks (FACTS: ELB health adds ~90 s per batch).
BATCH_OVERHEAD_SECONDS = 90
# AWS's default warmup when neither the refresh nor the group sets one.
DEFAULT_WARMUP_SECONDS = 300

PINNED_ALIASES = ("$Latest", "$Default")


@dataclass(frozen=True)
class Observed:
    images: Sequence[AmiRef]
    # What the group launches now: its launch template version as AWS resolves the group's
    # reference ("7", "$Latest", "$Default"). None: the template or that version does not exist.
    group_template: TemplateVersion | None
    default_template: TemplateVersion | None  # the template's default version; None: no template
    group: GroupState | None  # None: the group does not exist
    active_refresh: RefreshState | None
    live: LiveRelease | None
    lock: Lock | None
    # Environments where the chosen AMI's fingerprint was released successfully (ledger).
    passed_environments: frozenset[str] = frozenset()
    warmup_default: int | None = None  # the group's DefaultInstanceWarmup / grace period
    missing_alarms: tuple[str, ...] = ()  # watched alarms CloudWatch does not know
    interrupted: ReleaseRecord | None = None  # an unfinished release in the ledger


@dataclass(frozen=True)
class Request:
    version: Version
    now: datetime
    allow_downgrade: bool = False
    force: bool = False  # unvalidated / deprecated AMI, missing lower-environment passes


@dataclass(frozen=True)
class Change:
    field: str
    old: str
    new: str


@dataclass(frozen=True)
class Plan:
    environment: str
    version: str
    ami: AmiRef | None
    live: LiveRelease | None
    base_template: TemplateVersion | None  # what the group launches now: the new version derives from it
    previous_version: str | None  # what the base template's image is, as far as Kiln knows
    group_ref: str | None  # the group's reference as it stands ("7", "$Latest", "$Default")
    default_version: int | None  # the template's default version, restored on failure
    changes: tuple[Change, ...]
    batches: tuple[int, ...]
    expected_seconds: int
    preferences: dict[str, object]
    rollback_preferences: dict[str, object]
    gate_checks: tuple[str, ...]
    on_failure: str
    blockers: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    noop: bool = False

    @property
    def ok(self) -> bool:
        return not self.blockers


def choose_ami(images: Sequence[AmiRef], version: Version, now: datetime, *, force: bool) -> tuple[AmiRef | None, str]:
    """The AMI `version` means (see module docstring), or None and why not."""
    of_version = [i for i in images if i.version == version]
    if not of_version:
        return None, f"no AMI for {version}; run `inv bake` (with [app] version = \"{version}\") or check `inv history`"
    available = [i for i in of_version if i.state == "available"]
    if not available:
        states = ", ".join(sorted({i.state for i in of_version}))
        return None, f"the AMI for {version} is not available ({states}); wait for it or rebake"
    usable = [i for i in available if force or (i.validated is True and not i.deprecated(now))]
    if not usable:
        newest = max(available, key=lambda i: i.created_at)
        if newest.deprecated(now):
            why = f"{newest.image_id} is deprecated"
        elif newest.validated is False:
            why = f"{newest.image_id} failed its smoke test ({newest.tags.get('kiln:validation-reason', 'no reason')})"
        else:
            why = f"{newest.image_id} has not been smoke-tested"
        return None, f"no usable AMI for {version}: {why}; rebake with `inv bake`, or pass --force"
    return max(usable, key=lambda i: i.created_at), ""


def batches(desired: int, min_healthy: int, max_healthy: int) -> tuple[int, ...]:
    """How many instances each batch replaces, as AWS sizes them (an estimate).

    At most floor(desired × max%) instances may run and at least ceil(desired × min%) must stay
    healthy, so one batch replaces (max capacity − min healthy) instances, at least one.
    """
    if desired <= 0:
        return ()
    keep = math.ceil(desired * min_healthy / 100)
    ceiling = math.floor(desired * max_healthy / 100)
    size = max(1, min(desired, ceiling - keep))
    full, rest = divmod(desired, size)
    return (size,) * full + ((rest,) if rest else ())


def make_plan(env: Environment, request: Request, observed: Observed) -> Plan:
    blockers: list[str] = []
    warnings: list[str] = []
    notes: list[str] = []
    version = str(request.version)
    where = f"{env.name} ({env.region})"

    ami, why = choose_ami(observed.images, request.version, request.now, force=request.force)
    if ami is None:
        blockers.append(f"While releasing {version} to {where}: {why}.")
    elif request.force and (ami.validated is not True or ami.deprecated(request.now)):
        warnings.append(f"--force: releasing {ami.image_id}, which is unvalidated or deprecated.")
    if ami is not None and ami.tags.get(TAG_FOUNDATION_DEPRECATED):
        warnings.append(f"{ami.image_id} was baked on the foundation {ami.foundation}, since deprecated "
                        f"({ami.tags[TAG_FOUNDATION_DEPRECATED]}); rebake {version} to move it to a new foundation.")

    group = observed.group
    base = observed.group_template
    ref = group.launch_template_version if group else None
    if group is None:
        blockers.append(f"Auto Scaling group {env.asg!r} not found in {where}; check [environments.{env.name}] asg.")
    elif group.launch_template_name is None and group.launch_template_id is None:
        blockers.append(f"Auto Scaling group {env.asg!r} launches no launch template (a launch configuration?); "
                        f"give it launch template {env.launch_template!r} at a numbered version first.")
    elif group.launch_template_name not in (None, env.launch_template):
        blockers.append(f"Auto Scaling group {env.asg!r} launches template {group.launch_template_name!r}, not "
                        f"{env.launch_template!r}; fix [environments.{env.name}] launch_template.")
    elif observed.default_template is None:
        blockers.append(f"launch template {env.launch_template!r} not found in {where}; "
                        f"check [environments.{env.name}] launch_template.")
    elif base is None:
        blockers.append(f"Auto Scaling group {env.asg!r} references {env.launch_template} version {ref}, which does "
                        "not exist; point the group at an existing numbered version "
                        f"(aws autoscaling update-auto-scaling-group --auto-scaling-group-name {env.asg} "
                        f"--launch-template LaunchTemplateName={env.launch_template},Version=N) and plan again.")
    if base is not None and ref in PINNED_ALIASES:
        notes.append(f"The group references {ref} (now v{base.number}): the refresh pins it to the new numbered "
                     "version (applied by AWS only on success). AWS cannot roll back from an alias, so on failure "
                     f"Kiln cancels and refreshes back to v{base.number}, which pins the group there.")
    if base is not None and ami is not None:
        imds = imdsv1_risk(env, base, ami)
        if imds:
            (warnings if env.imdsv1 == "warn" else blockers).append(imds)
    for alarm in observed.missing_alarms:
        blockers.append(f"alarm {alarm!r} does not exist in {where}: an alarm that cannot fire guards nothing; "
                        f"create it or remove it from [environments.{env.name}] alarms.")
    interrupted = observed.interrupted
    if interrupted is not None:
        blockers.append(f"an unfinished {interrupted.kind} of {interrupted.version} ({interrupted.release_id}, phase "
                        f"{interrupted.phase}) holds {env.name}: `inv resume` finishes it, `inv rollback` undoes it.")

    live = observed.live
    if ami is not None and live is not None:
        if live.image_id == ami.image_id:
            notes.append(f"{version} ({ami.image_id}) is already live in {env.name}.")
        elif Version(live.version) > request.version and not request.allow_downgrade:
            blockers.append(f"{live.version} is live in {env.name}; {version} is older. "
                            "Pass --allow-downgrade, or use `inv rollback`.")

    missing = [e for e in env.requires if e not in observed.passed_environments]
    if missing and ami is not None:
        text = (f"{ami.image_id} has not passed {', '.join(missing)} (required by [environments.{env.name}] "
                f"requires); release it there first")
        if request.force:
            warnings.append(f"--force: {text}.")
        else:
            blockers.append(f"{text}, or pass --force.")

    refresh = observed.active_refresh
    if refresh is not None:
        blockers.append(f"instance refresh {refresh.refresh_id} is already {refresh.status} on {env.asg}; "
                        "wait for it (`inv status`) — Kiln never starts a second refresh over a running one.")
    lock = observed.lock
    if lock is not None and lock.live(request.now) and interrupted is None:
        blockers.append(f"{env.name} is locked by {lock.describe(request.now)}; wait for it (`inv status`).")
    elif lock is not None and interrupted is None:
        warnings.append(f"a lapsed lock by {lock.who or lock.holder} (no release in progress) will be taken over.")

    alias_group = ref in PINNED_ALIASES
    preferences = env.refresh.as_aws(env.alarms)
    if alias_group and preferences.get("AutoRollback"):
        # AWS rejects AutoRollback while the group's current configuration is an alias.
        preferences["AutoRollback"] = False
        preferences.pop("AlarmSpecification", None)
        notes.append("AutoRollback is off for this refresh (the group uses an alias); Kiln's gate rolls back.")

    changes: tuple[Change, ...] = ()
    if base is not None and ami is not None:
        changes = (Change("ImageId", base.image_id, ami.image_id),)
    desired = group.desired_capacity if group else 0
    sizes = batches(desired, env.refresh.min_healthy_percentage, env.refresh.max_healthy_percentage)
    return Plan(
        environment=env.name,
        version=version,
        ami=ami,
        live=live,
        base_template=base,
        previous_version=_version_of(base.image_id, observed, live) if base else None,
        group_ref=ref,
        default_version=observed.default_template.number if observed.default_template else None,
        changes=changes,
        batches=sizes,
        expected_seconds=_expected_seconds(env, sizes, observed.warmup_default),
        preferences=preferences,
        rollback_preferences=rollback_preferences(env),
        gate_checks=_gate_checks(env),
        on_failure=_on_failure(env, alias_group),
        blockers=tuple(blockers),
        warnings=tuple(warnings),
        notes=tuple(notes),
        noop=bool(ami and live and live.image_id == ami.image_id),
    )


def imdsv1_risk(env: Environment, base: TemplateVersion, ami: AmiRef) -> str:
    """Why instances of the new template version would answer IMDSv1 requests ("" when they would
    not). The new version inherits the group's MetadataOptions; HttpTokens unset means the AMI
    decides, and an AMI with ImdsSupport=v2.0 requires tokens (EC2 user guide, "Configure the AMI")."""
    fix = (f"set MetadataOptions HttpTokens=required in launch template {base.template_name} "
           f"(aws ec2 create-launch-template-version … --launch-template-data "
           f"'{{\"MetadataOptions\":{{\"HttpTokens\":\"required\"}}}}' and point the group at it), "
           f"or accept it with imdsv1 = \"warn\" in [environments.{env.name}]")
    if base.http_tokens == "required" or (base.http_tokens is None and ami.imds_support == "v2.0"):
        return ""
    if base.http_tokens == "optional":
        return (f"launch template {base.template_name} v{base.number} sets HttpTokens=optional: new instances "
                f"would answer IMDSv1 requests (credentials readable through any SSRF); {fix}.")
    return (f"{ami.image_id} is not IMDSv2-only (no ImdsSupport=v2.0; rebake it with this Kiln) and launch template "
            f"{base.template_name} v{base.number} does not require tokens: new instances would answer IMDSv1; {fix}.")


def rollback_preferences(env: Environment) -> dict[str, object]:
    """The refresh back: the environment's preferences, without AutoRollback or alarms (going back
    must not itself be rolled back by an alarm that is still firing)."""
    prefs = env.refresh.as_aws(())
    prefs["AutoRollback"] = False
    return prefs


def _expected_seconds(env: Environment, sizes: tuple[int, ...], warmup_default: int | None) -> int:
    prefs = env.refresh
    warmup = prefs.instance_warmup if prefs.instance_warmup is not None else (warmup_default or DEFAULT_WARMUP_SECONDS)
    pauses = [p for p in prefs.checkpoint_percentages if p < 100]
    return len(sizes) * (warmup + BATCH_OVERHEAD_SECONDS) + len(pauses) * prefs.checkpoint_delay + prefs.bake_time


def _gate_checks(env: Environment) -> tuple[str, ...]:
    checks = ["instance refresh reaches Successful",
              "the group's desired capacity InService on the new image and Healthy in the ASG",
              "new instances registered and healthy in every target group" if env.target_groups
              else "no target groups to check",
              "each new instance answers /health and serves the version on /version"
              + (" (asked through SSM Run Command: no inbound port, bastion or host keys)" if env.access == "ssm"
                 else " (asked over SSH" + (", through the bastion)" if env.ssh.bastion or env.ssh.bastion_instance
                                             else ")")),
              "the load balancer serves only the new version" if env.target_groups else "no load balancer to sample",
              "no new instance taken out of service by the group"]
    checks.append(f"alarms stay OK: {', '.join(env.alarms)}" if env.alarms else "no alarms configured")
    return tuple(checks)


def _on_failure(env: Environment, alias_group: bool) -> str:
    if alias_group:
        return "cancel the refresh, refresh back to the previous numbered version, record the failure"
    how = "AWS rolls back on alarm (AutoRollback); otherwise " if env.refresh.auto_rollback else ""
    return (f"{how}Kiln calls RollbackInstanceRefresh (or refreshes back when the refresh has ended), "
            "waits until the fleet is back on the previous version and healthy, records the failure")


def _version_of(image_id: str, observed: Observed, live: LiveRelease | None) -> str | None:
    if live is not None and live.image_id == image_id:
        return live.version
    ami = next((i for i in observed.images if i.image_id == image_id), None)
    return str(ami.version) if ami and ami.version else None
