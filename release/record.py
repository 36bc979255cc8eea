"""A release as it is saved: the plan decided once (the exact steps and the way back), and the
journal of what was done. Pure: the ledger stores it, the state machine follows it.

The record is written before the first change and after every step, so a process that dies
leaves behind exactly what it decided and how far it got. `inv resume` and `inv rollback`
follow the saved steps; they never re-derive them from versions.toml or the cloud's defaults.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from release.model import LiveRelease


class Outcome(StrEnum):
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"  # the fleet is back on what the group ran before the release
    ROLLBACK_FAILED = "rollback_failed"
    FAILED = "failed"  # failed before anything changed in the fleet


@dataclass(frozen=True)
class JournalEntry:
    at: datetime
    phase: str
    message: str


@dataclass(frozen=True)
class ReleaseRecord:
    release_id: str
    environment: str
    kind: str  # "release" | "rollback" | "adopt"
    version: str
    image_id: str
    fingerprint: str | None
    actor: str
    started_at: datetime
    outcome: Outcome = Outcome.IN_PROGRESS
    phase: str = "planned"
    # The plan, decided once. "Before" is what the group really launched when the release was
    # planned: its launch template version (aliases resolved) and that version's image.
    group: str | None = None
    template: str | None = None
    template_before: int | None = None
    group_ref_before: str | None = None  # as the group named it: "7", "$Latest", "$Default"
    default_before: int | None = None  # the template's default version, restored on failure
    previous_version: str | None = None
    previous_image_id: str | None = None
    client_token: str | None = None  # CreateLaunchTemplateVersion's idempotency token
    preferences: dict[str, Any] = field(default_factory=dict)  # StartInstanceRefresh, exactly
    rollback_preferences: dict[str, Any] = field(default_factory=dict)  # the refresh back, if needed
    # What was done.
    template_after: int | None = None
    refresh_id: str | None = None
    rollback_refresh_id: str | None = None
    ended_at: datetime | None = None
    reason: str | None = None
    journal: tuple[JournalEntry, ...] = field(default=())

    @property
    def sort_key(self) -> str:
        return f"{self.started_at.isoformat()}#{self.release_id}"

    @property
    def description(self) -> str:
        """The new launch template version's description: it names the release, so a version whose
        creation was never written down can still be found and tied to its release."""
        return f"kiln {self.kind} {self.version} ({self.fingerprint or self.image_id}) [{self.release_id}]"

    def noted(self, at: datetime, phase: str, message: str, **changes: Any) -> ReleaseRecord:
        """This record one step further: a new phase, a journal line, and any field changes."""
        return replace(self, phase=phase, journal=(*self.journal, JournalEntry(at, phase, message)), **changes)

    def as_live(self) -> LiveRelease:
        return LiveRelease(self.version, self.image_id, self.fingerprint, self.template_after)

    def steps(self) -> list[tuple[bool, str]]:
        """The saved plan as concrete steps, each with whether it is done."""
        t = self.template or "?"
        return [
            (self.template_after is not None,
             f"create {t} v{self.template_after or 'N'} from v{self.template_before} with {self.image_id} "
             f"(ClientToken {self.client_token})"),
            (self.refresh_id is not None,
             f"start instance refresh of {self.group} to v{self.template_after or 'N'} "
             f"({_preferences(self.preferences)})" + (f": {self.refresh_id}" if self.refresh_id else "")),
            (self.outcome is Outcome.SUCCEEDED,
             f"gate: every instance on {self.image_id} serving {self.version}; then make v"
             f"{self.template_after or 'N'} the template's default"),
        ]

    def way_back(self) -> str:
        """What going back means for this release, in one line."""
        return (f"back to {t} v{self.template_before} ({self.previous_version or 'unknown version'}, "
                f"{self.previous_image_id}); default version v{self.default_before or self.template_before}"
                if (t := self.template) else "nothing recorded to go back to")


@dataclass(frozen=True)
class Lease:
    """Who asks for an environment's lock, for how long, and for which release."""

    holder: str  # unique per process: the fencing token
    who: str  # user@host pid N, for people
    ttl: timedelta
    release_id: str | None = None
    kind: str | None = None
    version: str | None = None


def new_release_id() -> str:
    return uuid.uuid4().hex[:12]


def client_token(release_id: str) -> str:
    return f"kiln-{release_id}-template"


def _preferences(prefs: dict[str, Any]) -> str:
    keys = ("MinHealthyPercentage", "MaxHealthyPercentage", "InstanceWarmup", "AutoRollback", "SkipMatching")
    return ", ".join(f"{k}={prefs[k]}" for k in keys if k in prefs) or "AWS defaults"


def dump(record: ReleaseRecord) -> str:
    body: dict[str, Any] = {k: v for k, v in record.__dict__.items() if k != "journal"}
    body["journal"] = [{"at": e.at.isoformat(), "phase": e.phase, "message": e.message} for e in record.journal]
    return json.dumps(body, sort_keys=True, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))


def load(text: str) -> ReleaseRecord:
    body = json.loads(text)
    for key in ("started_at", "ended_at"):
        if body.get(key):
            body[key] = datetime.fromisoformat(body[key])
    body["outcome"] = Outcome(body["outcome"])
    body["journal"] = tuple(JournalEntry(datetime.fromisoformat(e["at"]), e["phase"], e["message"])
                            for e in body.get("journal", []))
    known = set(ReleaseRecord.__dataclass_fields__)
    return ReleaseRecord(**{k: v for k, v in body.items() if k in known})
