"""How the release commands show things: the plan, an unfinished release, the gate's progress."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from release.model import Lock
from release.plan import Plan
from release.record import ReleaseRecord
from release.ui import UI, Progress

if TYPE_CHECKING:
    from release.commands.context import CommandContext
    from release.rollout import Event

def event_printer(ui: UI, progress: Progress) -> Callable[[Event], None]:
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


def show_unfinished(ctx: CommandContext, record: ReleaseRecord, lock: Lock | None) -> None:
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
    ui.note(f"`inv resume` would {next_step(record)}")
    ui.note("`inv rollback` would " + (f"finish the rollback to {record.version}" if record.kind == "rollback"
                                       else f"go {record.way_back()}"))

def next_step(record: ReleaseRecord) -> str:
    if record.phase == "rolling_back":
        return f"carry on going {record.way_back()}"
    todo = next((text for done, text in record.steps() if not done), "record the outcome")
    return todo
