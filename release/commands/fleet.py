"""`inv fleet.verify`: audit every in-service instance against what was baked (audit.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from release.commands.context import KNOWN_HOSTS, CommandContext, reach_for
from release.errors import NotFound, UsageError

if TYPE_CHECKING:
    from release import audit

def verify(ctx: CommandContext, *, parallel: int, key: Path | None) -> audit.FleetReport:
    from release import audit

    live = ctx.ledger.live(ctx.env.name)
    if live is None:
        raise UsageError(f"nothing has been released to {ctx.env.name} yet", hint="Release first: inv release.")
    group = ctx.cloud.group(ctx.env.asg, ctx.env.target_groups)
    if group is None:
        raise NotFound(f"Auto Scaling group {ctx.env.asg!r} not found in {ctx.env.region}")
    instances = audit.in_service(group)
    ctx.ui.info(f"auditing {len(instances)} in-service instance(s) of {ctx.env.asg} against {live.version} "
                f"({live.image_id}, fingerprint {live.fingerprint})")
    with reach_for(ctx, key=key, record_to=KNOWN_HOSTS) as reach:
        report = audit.audit(reach, audit.expected_from_live(live.as_live()), instances, parallel=parallel)
    ctx.ui.table(*report.table(), title=f"fleet of {ctx.env.name}")
    ctx.ui.result(report.to_json())
    error = report.error()
    if error is not None:
        raise error
    ctx.ui.success(f"all {len(instances)} instances are what was baked")
    return report
