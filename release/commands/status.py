"""`inv status`, `inv history` and `inv report`: what is live, what the group really runs, where the
ledger and the cloud disagree (the cloud is the truth), and a picture of one release."""

from __future__ import annotations

from pathlib import Path

from release.commands.context import CommandContext
from release.commands.views import show_unfinished
from release.errors import NotFound
from release.model import TAG_GIT_SHA, GroupState, RefreshState, TemplateVersion
from release.record import ReleaseRecord


def status(ctx: CommandContext) -> None:
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


def history(ctx: CommandContext, *, limit: int) -> None:
    records = ctx.ledger.history(ctx.env.name, limit=limit)
    rows = [(r.started_at, r.release_id, r.kind, r.version, r.image_id, f"v{r.template_before} → v{r.template_after}",
             r.outcome.value, r.actor, (r.reason or "")[:60]) for r in records]
    ctx.ui.table(["started", "release", "kind", "version", "AMI", "LT", "outcome", "who", "reason"], rows,
                 title=f"history of {ctx.env.name}")
    if records:
        ctx.ui.note(f"A release's report (one HTML file): inv report --release {records[0].release_id} "
                    f"--env {ctx.env.name}")
    ctx.ui.result({"history": records})


def report(ctx: CommandContext, *, release_id: str | None, output: Path | None) -> Path:
    """`inv report`: one self-contained HTML file of a release (release_id None: the newest):
    the gate's timeline, each poll's checks, the failure and the rollback, the provenance."""
    from release.report import render
    from release.timeline import decode, omitted_instances

    records = ctx.ledger.history(ctx.env.name, limit=200)
    record = next((r for r in records if r.release_id == release_id), None) if release_id else \
        (records[0] if records else None)
    if record is None:
        raise NotFound(f"no release {release_id + ' ' if release_id else ''}in the history of {ctx.env.name}",
                       hint=f"See `inv history --env {ctx.env.name}` for release ids.")
    body = ctx.ledger.timeline(ctx.env.name, record.sort_key)
    samples = decode(body) if body else []
    image = ctx.cloud.image(record.image_id)
    git_sha = image.tags.get(TAG_GIT_SHA) if image else None
    html = render(record, samples, generated_at=ctx.clock.now(), git_sha=git_sha,
                  omitted_instances=omitted_instances(body) if body else 0)
    path = output or Path(f"kiln-report-{ctx.env.name}-{record.release_id}.html")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    ctx.ui.success(f"wrote {path}: the {record.kind} of {record.version} ({record.outcome.value}), "
                   f"{len(samples)} gate sample(s); open it in a browser")
    ctx.ui.result({"path": str(path), "release_id": record.release_id, "samples": len(samples)})
    return path
