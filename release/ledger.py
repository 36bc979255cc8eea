"""Release history and the release lock, in one DynamoDB table (pk, sk).

Items:
- lock:     pk "lock#<env>",    sk "lock"                  a lease: holder, who, release, phase, expires_at
- release:  pk "release#<env>", sk "<started_at>#<id>"      one record per release/rollback (record.py)
- event:    pk "event#<kind>",  sk "<at>#<subject>"         promotions, deprecations, deletions
- timeline: pk "timeline#<env>", sk as its release             what the gate saw, for `inv report`
  (timeline.py; up to ~100 KB, so apart from the record, which history reads by the hundred)

The lock is a lease with a fencing token (Chubby, the DynamoDB lock client): the holder is one
process's unique id; it is taken with a conditional put (free or lapsed), renewed by heartbeats
(a conditional update: still ours), and given back with a conditional delete (only by its
holder). Every record write of a release is a transaction that checks the lock is still ours,
so a process whose lease was taken over can no longer write anything: its next heartbeat or
write raises LeaseLost. A live lease is never taken over, except explicitly (`--break-lock`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from release.aws import Aws
from release.errors import AwsError, LeaseLost, LockHeld
from release.model import Lock
from release.record import Lease, Outcome, ReleaseRecord, dump, load

if TYPE_CHECKING:
    from types_boto3_dynamodb.type_defs import AttributeValueTypeDef, ConditionCheckTypeDef

    Item = dict[str, AttributeValueTypeDef]

__all__ = ["KEY_SCHEMA", "Lease", "Ledger", "Outcome", "ReleaseRecord"]

# The table's key: partition key `pk` and sort key `sk`, both strings (the items above).
# iam/kiln.cfn.yaml creates the table with it; tests/unit/test_cloudformation.py holds them together.
KEY_SCHEMA = {"pk": "HASH", "sk": "RANGE"}


class Ledger:
    def __init__(self, aws: Aws, table: str) -> None:
        self.aws = aws
        self.table = table
        self.db = aws.client("dynamodb")

    # The lock
    def acquire(self, env: str, lease: Lease, now: datetime, *, phase: str = "planned",
                take_over: str | None = None) -> Lock:
        """Take the lock when it is free or its lease has lapsed; with `take_over`, take it from
        exactly that holder whatever its lease says (an explicit break). Raises LockHeld."""
        lock = Lock(holder=lease.holder, acquired_at=now, expires_at=now + lease.ttl, who=lease.who,
                    release_id=lease.release_id, kind=lease.kind, version=lease.version, phase=phase)
        values = {":now": _s(now.isoformat())}
        condition = "attribute_not_exists(pk) OR expires_at < :now"
        if take_over is not None:
            condition = "attribute_not_exists(pk) OR holder = :old"
            values = {":old": _s(take_over)}
        try:
            with self.aws.call("PutItem", f"{self.table} lock#{env}", hint=self._hint()):
                self.db.put_item(TableName=self.table, Item=_lock_item(env, lock), ConditionExpression=condition,
                                 ExpressionAttributeValues=values)
        except AwsError as err:
            if err.code != "ConditionalCheckFailedException":
                raise
            held = self.lock(env)
            who = held.describe(now) if held else "someone"
            raise LockHeld(f"{env} is locked by {who}",
                           hint="Wait for it (`inv status`); once its lease lapses `inv resume` or `inv rollback` "
                                "take over; in an emergency `inv rollback --break-lock`.") from None
        return lock

    def renew(self, env: str, holder: str, now: datetime, ttl: timedelta, phase: str) -> None:
        """The heartbeat: extend our lease. Raises LeaseLost when the lock is no longer ours."""
        try:
            with self.aws.call("UpdateItem", f"{self.table} lock#{env}", hint=self._hint()):
                self.db.update_item(
                    TableName=self.table, Key=_lock_key(env), ConditionExpression="holder = :me",
                    UpdateExpression="SET expires_at = :exp, phase = :phase",
                    ExpressionAttributeValues={":me": _s(holder), ":exp": _s((now + ttl).isoformat()),
                                               ":phase": _s(phase)})
        except AwsError as err:
            if err.code != "ConditionalCheckFailedException":
                raise
            raise self._lost(env, now) from None

    def release_lock(self, env: str, holder: str) -> None:
        # If someone took our lock over, it is theirs now: leave it.
        gone = self.db.exceptions.ConditionalCheckFailedException
        with self.aws.call("DeleteItem", f"{self.table} lock#{env}"), contextlib.suppress(gone):
            self.db.delete_item(TableName=self.table, Key=_lock_key(env),
                                ConditionExpression="holder = :me", ExpressionAttributeValues={":me": _s(holder)})

    def lock(self, env: str) -> Lock | None:
        with self.aws.call("GetItem", f"{self.table} lock#{env}", hint=self._hint()):
            item = self.db.get_item(TableName=self.table, Key=_lock_key(env), ConsistentRead=True).get("Item")
        if not item:
            return None

        def text(key: str) -> str | None:
            return item[key]["S"] if key in item else None

        return Lock(holder=item["holder"]["S"], acquired_at=datetime.fromisoformat(item["acquired_at"]["S"]),
                    expires_at=datetime.fromisoformat(item["expires_at"]["S"]), who=text("who") or "",
                    release_id=text("release_id"), kind=text("kind"), version=text("version"), phase=text("phase"))

    def _lost(self, env: str, now: datetime) -> LeaseLost:
        held = self.lock(env)
        who = held.describe(now) if held else "nobody (the lock was removed)"
        return LeaseLost(f"this process no longer holds the lock of {env}; it is now held by {who}",
                         hint="This process stopped without changing anything more; see `inv status`.")

    # Release records
    def save(self, record: ReleaseRecord, *, holder: str | None = None, now: datetime | None = None) -> None:
        """Write a record whole. With `holder`, only while that holder still has the lock (a fenced
        write, in one transaction with the check); otherwise LeaseLost and nothing is written."""
        item = {"pk": _s(f"release#{record.environment}"), "sk": _s(record.sort_key), "body": _s(dump(record))}
        if holder is None:
            with self.aws.call("PutItem", f"{self.table} release {record.release_id}", hint=self._hint()):
                self.db.put_item(TableName=self.table, Item=item)
            return
        check: ConditionCheckTypeDef = {"TableName": self.table, "Key": _lock_key(record.environment),
                                        "ConditionExpression": "holder = :me",
                                        "ExpressionAttributeValues": {":me": _s(holder)}}
        try:
            with self.aws.call("TransactWriteItems", f"{self.table} release {record.release_id}", hint=self._hint()):
                self.db.transact_write_items(TransactItems=[{"ConditionCheck": check},
                                                            {"Put": {"TableName": self.table, "Item": item}}])
        except AwsError as err:
            if err.code != "TransactionCanceledException" or "ConditionalCheckFailed" not in str(err):
                raise
            raise self._lost(record.environment, now or record.started_at) from None

    def history(self, env: str, limit: int = 50) -> list[ReleaseRecord]:
        """Newest first."""
        return [load(item["body"]["S"]) for item in self._newest_first(f"release#{env}", limit)]

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
    def save_timeline(self, record: ReleaseRecord, body: str) -> None:
        """The gate's timeline of a release (timeline.encode()), replaced whole. Not fenced: it only
        ever holds polls a driver really saw."""
        item = {"pk": _s(f"timeline#{record.environment}"), "sk": _s(record.sort_key), "body": _s(body)}
        with self.aws.call("PutItem", f"{self.table} timeline {record.release_id}", hint=self._hint()):
            self.db.put_item(TableName=self.table, Item=item)

    def timeline(self, env: str, sort_key: str) -> str | None:
        with self.aws.call("GetItem", f"{self.table} timeline#{env}", hint=self._hint()):
            item = self.db.get_item(TableName=self.table, Key={"pk": _s(f"timeline#{env}"), "sk": _s(sort_key)},
                                    ConsistentRead=True).get("Item")
        return item["body"]["S"] if item else None

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

    def _newest_first(self, pk: str, limit: int) -> list[Item]:
        """The items under one partition key, newest (highest sort key) first."""
        with self.aws.call("Query", f"{self.table} {pk}", hint=self._hint()):
            pages = self.db.get_paginator("query").paginate(
                TableName=self.table, KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": _s(pk)},
                ScanIndexForward=False, ConsistentRead=True, PaginationConfig={"MaxItems": limit})
            return [item for page in pages for item in page.get("Items", [])]

    def _hint(self) -> str:
        if self.aws.target.is_sandbox:
            return "The sandbox creates this table: is it running? (inv sandbox.status)"
        return (f"Does the DynamoDB table {self.table!r} exist in {self.aws.target.region}? The CloudFormation "
                "template iam/kiln.cfn.yaml creates it (see iam/README.md).")


def _s(text: str) -> AttributeValueTypeDef:
    return {"S": text}


def _lock_key(env: str) -> Item:
    return {"pk": _s(f"lock#{env}"), "sk": _s("lock")}


def _lock_item(env: str, lock: Lock) -> Item:
    item = {**_lock_key(env), "holder": _s(lock.holder), "who": _s(lock.who),
            "acquired_at": _s(lock.acquired_at.isoformat()), "expires_at": _s(lock.expires_at.isoformat())}
    for key in ("release_id", "kind", "version", "phase"):
        value = getattr(lock, key)
        if value:
            item[key] = _s(value)
    return item
