"""The AMI catalogue: `inv ami.cleanup`, `inv ami.deprecate` and `inv ami.promote`."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from packaging.version import Version

from release.aws import Aws
from release.catalogue import Action, CatalogueImage, Decision, References, decide
from release.cloud import Cloud
from release.commands.context import CommandContext, actor, check_account, target_for
from release.errors import NotFound, UsageError
from release.model import TAG_DEPRECATED_REASON, TAG_FOUNDATION_DEPRECATED
from release.promotion import plan_promotion
from release.record import Outcome, ReleaseRecord


def related_contexts(ctx: CommandContext) -> list[CommandContext]:
    """Every environment reachable with this one's credentials: same sandbox-ness and account."""
    out = []
    for env in ctx.cfg.environments.values():
        if env.sandbox == ctx.env.sandbox and env.account_id == ctx.env.account_id:
            out.append(ctx if env.name == ctx.env.name else
                       CommandContext(ctx.cfg, env, Aws(target_for(env)), ctx.ui, ctx.clock, ctx.project))
    return out


def release_references(contexts: list[CommandContext]) -> dict[str, list[str]]:
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


def cleanup(ctx: CommandContext, *, keep: int, dry_run: bool) -> list[Decision]:
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


def _deprecate_now(ctx: CommandContext, cloud: Cloud, image_id: str, reason: str) -> None:
    """A deprecation by hand: the reason tag makes it count for Kiln at once (AmiRef.deprecated),
    EC2's own deprecation time follows a minute later."""
    cloud.tag_image(image_id, {TAG_DEPRECATED_REASON: reason[:250]})
    cloud.deprecate_image(image_id, ctx.clock.now() + DEPRECATE_AHEAD)


def deprecate(ctx: CommandContext, version: Version, *, reason: str) -> list[str]:
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


def deprecate_foundation(ctx: CommandContext, image_id: str, *, reason: str, children: bool) -> list[str]:
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


def promote(ctx: CommandContext, version: Version, *, to: str) -> str:
    """Give environment `to` the exact AMI that passed in this one, never a rebake: the same AMI,
    or a copy in its region or account with Kiln's tags (promotion.py says which)."""
    target_env = ctx.cfg.environment(to)
    passed = [r for r in ctx.ledger.history(ctx.env.name, limit=200)
              if r.outcome is Outcome.SUCCEEDED and r.version == str(version)]
    if not passed:
        raise UsageError(f"{version} was never released successfully in {ctx.env.name}",
                         hint=f"Release it there first: inv release --env {ctx.env.name} --version {version}.")
    source = ctx.cloud.image(passed[0].image_id)
    if source is None or source.state != "available":
        raise NotFound(f"the AMI {passed[0].image_id} that passed in {ctx.env.name} is gone")
    target = CommandContext(ctx.cfg, target_env, Aws(target_for(target_env)), ctx.ui, ctx.clock, ctx.project)
    # The target's account is guarded like any command's (its own role and account_id).
    target_account = (check_account(target) if not target_env.sandbox or target_env.account_id
                      else target.cloud.caller_account())
    how = plan_promotion(source_region=source.region, source_account=ctx.account or ctx.cloud.caller_account(),
                         target_region=target_env.region, target_account=target_account,
                         target_kms_key=target_env.kms_key_id)
    if how.share_with:
        shared = ctx.cloud.share_image(source.image_id, how.share_with)
        ctx.ui.success(f"shared {source.image_id} and its snapshots ({', '.join(shared) or 'none'}) with "
                       f"account {how.share_with}")
    existing = [i for i in target.cloud.app_images(ctx.cfg.app.name, str(version))
                if i.fingerprint == source.fingerprint and i.image_id != source.image_id]
    if not how.copy:
        image_id = source.image_id
        ctx.ui.note(f"{to} uses {image_id} itself: {how.why}")
    elif existing:
        image_id = existing[0].image_id
        ctx.ui.note(f"{image_id} in {target_env.region} is already a copy of {source.image_id}")
    else:
        image_id = target.cloud.copy_image(source, target_env.kms_key_id, cross_account=bool(how.share_with))
        if source.imds_support == "v2.0":  # a copy is a new AMI: make it as IMDSv2-only as its source
            target.cloud.require_imds_v2(image_id)
        ctx.ui.success(f"copied {source.image_id} ({source.region}) to {image_id} ({target_env.region}): {how.why}")
    details = {"from": ctx.env.name, "to": to, "version": str(version), "source": source.image_id,
               "image_id": image_id, "fingerprint": source.fingerprint, "by": actor()}
    for c in (ctx, target):
        c.ledger.record_event("ami-promoted", image_id, ctx.clock.now(), details)
    ctx.ui.result(details)
    return image_id
