"""Release history and the release lock, in one DynamoDB table (pk, sk).

Items:
- lock:     pk "lock#<env>",    sk "lock"                  holder, acquired_at, expires_at
- release:  pk "release#<env>", sk "<started_at>#<id>"      one record per release/rollback
- event:    pk "event#<kind>",  sk "<at>#<subject>"         promotions, deprecations, deletions

The lock is taken with a conditional put (free, or expired), so two Kiln processes can never
both hold it; it is given back with a conditional delete (only by its holder). Breaking a
stale lock is explicit. Records are rewritten whole as a release moves through its phases,
so a re-run of Kiln finds the refresh id and resumes instead of starting a second refresh.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from release.aws import Aws
from release.errors import AwsError, LockHeld
from release.model import LiveRelease, Lock

LOCK_TTL = timedelta(hours=2)


class Outcome(StrEnum):
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"  # the gate failed, the fleet is back on the previous release
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
    kind: str  # "release" | "rollback"
    version: str
    image_id: str
    fingerprint: str | None
    actor: str
    started_at: datetime
    outcome: Outcome = Outcome.IN_PROGRESS
    phase: str = "planned"
    template_before: int | None = None
    template_after: int | None = None
    previous_version: str | None = None
    previous_image_id: str | None = None
    refresh_id: str | None = None
    rollback_refresh_id: str | None = None
    ended_at: datetime | None = None
    reason: str | None = None
    journal: tuple[JournalEntry, ...] = field(default=())

    @property
    def sort_key(self) -> str:
        return f"{self.started_at.isoformat()}#{self.release_id}"

    def noted(self, at: datetime, phase: str, message: str, **changes: Any) -> ReleaseRecord:
        """This record one step further: a new phase, a journal line, and any field changes."""
        return replace(self, phase=phase, journal=(*self.journal, JournalEntry(at, phase, message)), **changes)

    def as_live(self) -> LiveRelease:
        return LiveRelease(self.version, self.image_id, self.fingerprint, self.template_after)


def new_release_id() -> str:
    return uuid.uuid4().hex[:12]


class Ledger:
    def __init__(self, aws: Aws, table: str) -> None:
        self.aws = aws
        self.table = table
        self.db = aws.client("dynamodb")

    # The lock
    def acquire(self, env: str, holder: str, now: datetime) -> Lock:
        lock = Lock(holder=holder, acquired_at=now, expires_at=now + LOCK_TTL)
        item = {"pk": _s(f"lock#{env}"), "sk": _s("lock"), "holder": _s(holder),
                "acquired_at": _s(now.isoformat()), "expires_at": _s(lock.expires_at.isoformat())}
        try:
            with self.aws.call("PutItem", f"{self.table} lock#{env}", hint=self._hint()):
                self.db.put_item(TableName=self.table, Item=item,
                                 # Free, expired, or already ours (a resumed release).
                                 ConditionExpression="attribute_not_exists(pk) OR expires_at < :now OR holder = :me",
                                 ExpressionAttributeValues={":now": _s(now.isoformat()), ":me": _s(holder)})
        except AwsError as err:
            if err.code != "ConditionalCheckFailedException":
                raise
            held = self.lock(env)
            who = f"{held.holder} since {held.acquired_at:%Y-%m-%d %H:%M:%S} UTC" if held else "someone"
            raise LockHeld(f"{env} is locked by {who}",
                           hint="Wait for that release, or break a stale lock with --break-lock.") from None
        return lock

    def release_lock(self, env: str, holder: str) -> None:
        # If someone broke our lock explicitly, the lock is theirs now: leave it.
        gone = self.db.exceptions.ConditionalCheckFailedException
        with self.aws.call("DeleteItem", f"{self.table} lock#{env}"), contextlib.suppress(gone):
            self.db.delete_item(TableName=self.table, Key=_lock_key(env),
                                ConditionExpression="holder = :me", ExpressionAttributeValues={":me": _s(holder)})

    def break_lock(self, env: str) -> Lock | None:
        held = self.lock(env)
        with self.aws.call("DeleteItem", f"{self.table} lock#{env}"):
            self.db.delete_item(TableName=self.table, Key=_lock_key(env))
        return held

    def lock(self, env: str) -> Lock | None:
        with self.aws.call("GetItem", f"{self.table} lock#{env}", hint=self._hint()):
            item = self.db.get_item(TableName=self.table, Key=_lock_key(env), ConsistentRead=True).get("Item")
        if not item:
            return None
        return Lock(holder=item["holder"]["S"], acquired_at=datetime.fromisoformat(item["acquired_at"]["S"]),
                    expires_at=datetime.fromisoformat(item["expires_at"]["S"]))

    # Release records
    def save(self, record: ReleaseRecord) -> None:
        item = {"pk": _s(f"release#{record.environment}"), "sk": _s(record.sort_key), "body": _s(_dump(record))}
        with self.aws.call("PutItem", f"{self.table} release {record.release_id}", hint=self._hint()):
            self.db.put_item(TableName=self.table, Item=item)

    def history(self, env: str, limit: int = 50) -> list[ReleaseRecord]:
        """Newest first."""
        return [_load(item["body"]["S"]) for item in self._newest_first(f"release#{env}", limit)]

    def live(self, env: str) -> ReleaseRecord | None:
        """The newest release that succeeded: what the fleet should be running."""
        return next((r for r in self.history(env, limit=200) if r.outcome is Outcome.SUCCEEDED), None)

    def in_progress(self, env: str) -> ReleaseRecord | None:
        newest = self.history(env, limit=1)
        return newest[0] if newest and newest[0].outcome is Outcome.IN_PROGRESS else None

    def passed_environments(self, fingerprint: str | None, image_ids: set[str], envs: list[str]) -> frozenset[str]:
        """Environments where this AMI (same fingerprint, or one of its copies) was released successfully."""
        passed = set()
        for env in envs:
            for record in self.history(env, limit=200):
                same = (fingerprint and record.fingerprint == fingerprint) or record.image_id in image_ids
                if same and record.outcome is Outcome.SUCCEEDED:
                    passed.add(env)
                    break
        return frozenset(passed)

    # Events (promotion, deprecation, deletion)
    def record_event(self, kind: str, subject: str, at: datetime, details: Mapping[str, Any]) -> None:
        item = {"pk": _s(f"event#{kind}"), "sk": _s(f"{at.isoformat()}#{subject}"),
                "body": _s(json.dumps(dict(details), sort_keys=True, default=str))}
        with self.aws.call("PutItem", f"{self.table} event#{kind}", hint=self._hint()):
            self.db.put_item(TableName=self.table, Item=item)

    def events(self, kind: str, limit: int = 200) -> list[dict[str, Any]]:
        """Recorded events of one kind ("ami-promoted", "ami-deleted", …), newest first; each the details
        it was recorded with, plus "at" and "subject"."""
        out = []
        for item in self._newest_first(f"event#{kind}", limit):
            at, _, subject = item["sk"]["S"].partition("#")
            out.append({**json.loads(item["body"]["S"]), "at": at, "subject": subject})
        return out

    def _newest_first(self, pk: str, limit: int) -> list[dict[str, Any]]:
        """The items under one partition key, newest (highest sort key) first."""
        with self.aws.call("Query", f"{self.table} {pk}", hint=self._hint()):
            pages = self.db.get_paginator("query").paginate(
                TableName=self.table, KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": _s(pk)},
                ScanIndexForward=False, ConsistentRead=True, PaginationConfig={"MaxItems": limit})
            return [item for page in pages for item in page.get("Items", [])]

    def _hint(self) -> str:
        if self.aws.target.is_sandbox:
            return "The sandbox creates this table: is it running? (inv sandbox.status)"
        return f"Does the DynamoDB table {self.table!r} exist in {self.aws.target.region}? See README (ledger)."


def _s(text: str) -> dict[str, str]:
    return {"S": text}


def _lock_key(env: str) -> dict[str, dict[str, str]]:
    return {"pk": _s(f"lock#{env}"), "sk": _s("lock")}


def _dump(record: ReleaseRecord) -> str:
    body: dict[str, Any] = {k: v for k, v in record.__dict__.items() if k != "journal"}
    body["journal"] = [{"at": e.at.isoformat(), "phase": e.phase, "message": e.message} for e in record.journal]
    return json.dumps(body, sort_keys=True, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))


def _load(text: str) -> ReleaseRecord:
    body = json.loads(text)
    for key in ("started_at", "ended_at"):
        if body.get(key):
            body[key] = datetime.fromisoformat(body[key])
    body["outcome"] = Outcome(body["outcome"])
    body["journal"] = tuple(JournalEntry(datetime.fromisoformat(e["at"]), e["phase"], e["message"])
                            for e in body.get("journal", []))
    return ReleaseRecord(**body)
