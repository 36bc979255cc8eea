"""The ledger against moto's DynamoDB: conditional lock, records, history, resume lookups."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from moto import mock_aws

from release.aws import Aws, Target
from release.errors import LeaseLost, LockHeld
from release.ledger import Ledger
from release.record import Lease, Outcome, ReleaseRecord, new_release_id

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
def ledger(monkeypatch: pytest.MonkeyPatch) -> Iterator[Ledger]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        aws = Aws(Target(region="us-east-1"))
        aws.client("dynamodb").create_table(
            TableName="kiln-ledger", BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                  {"AttributeName": "sk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}])
        yield Ledger(aws, "kiln-ledger")


def record(version: str, at: datetime, outcome: Outcome = Outcome.SUCCEEDED, env: str = "sandbox") -> ReleaseRecord:
    return ReleaseRecord(release_id=new_release_id(), environment=env, kind="release", version=version,
                         image_id=f"ami-{version.replace('.', '')}", fingerprint=f"fp{version}", actor="ana@laptop",
                         started_at=at, outcome=outcome)


def lease(holder: str, ttl: int = 60) -> Lease:
    return Lease(holder, f"{holder}@laptop pid 1", timedelta(seconds=ttl), "r-1", "release", "1.1.0")


def test_lock_is_exclusive_while_its_lease_is_live(ledger: Ledger) -> None:
    ledger.acquire("sandbox", lease("ana"), NOW)
    with pytest.raises(LockHeld, match=r"sandbox is locked by ana@laptop pid 1: release 1\.1\.0 \(r-1\), phase "
                                       r"planned; lease expires in 59 s"):
        ledger.acquire("sandbox", lease("bob"), NOW + timedelta(seconds=1))
    ledger.acquire("prod", lease("bob"), NOW)  # locks are per environment
    ledger.release_lock("sandbox", "ana")
    assert ledger.lock("sandbox") is None
    ledger.acquire("sandbox", lease("bob"), NOW)


def test_heartbeats_keep_the_lease_and_a_lapsed_one_is_taken_over(ledger: Ledger) -> None:
    ledger.acquire("sandbox", lease("ana"), NOW)
    ledger.renew("sandbox", "ana", NOW + timedelta(seconds=50), timedelta(seconds=60), "gating")
    with pytest.raises(LockHeld):  # 70 s after taking it, but renewed at 50 s: still live
        ledger.acquire("sandbox", lease("bob"), NOW + timedelta(seconds=70))
    held = ledger.lock("sandbox")
    assert held is not None and held.phase == "gating" and held.live(NOW + timedelta(seconds=100))
    taken = ledger.acquire("sandbox", lease("bob"), NOW + timedelta(seconds=111))
    assert taken.holder == "bob"
    with pytest.raises(LeaseLost, match="no longer holds the lock of sandbox; it is now held by bob@laptop"):
        ledger.renew("sandbox", "ana", NOW + timedelta(seconds=112), timedelta(seconds=60), "gating")


def test_only_the_holder_releases_and_breaking_a_live_lease_is_explicit(ledger: Ledger) -> None:
    ledger.acquire("sandbox", lease("ana"), NOW)
    ledger.release_lock("sandbox", "bob")  # not bob's: nothing happens
    held = ledger.lock("sandbox")
    assert held is not None and held.holder == "ana"
    with pytest.raises(LockHeld):  # taking over from someone else than the holder is refused
        ledger.acquire("sandbox", lease("bob"), NOW, take_over="carol")
    ledger.acquire("sandbox", lease("bob"), NOW, take_over="ana")
    held = ledger.lock("sandbox")
    assert held is not None and held.holder == "bob"


def test_fenced_writes_only_while_the_lock_is_ours(ledger: Ledger) -> None:
    mine = record("1.1.0", NOW, Outcome.IN_PROGRESS)
    ledger.acquire("sandbox", lease("ana"), NOW)
    ledger.save(mine, holder="ana")
    ledger.acquire("sandbox", lease("bob"), NOW, take_over="ana")
    moved = replace(mine, phase="gating")
    with pytest.raises(LeaseLost):
        ledger.save(moved, holder="ana")
    (stored,) = ledger.history("sandbox")
    assert stored.phase == "planned"  # the displaced writer changed nothing
    ledger.save(moved, holder="bob")
    assert ledger.history("sandbox")[0].phase == "gating"


def test_history_live_and_in_progress(ledger: Ledger) -> None:
    first = record("1.0.0", NOW)
    second = record("1.1.0", NOW + timedelta(hours=1), Outcome.ROLLED_BACK)
    third = record("1.2.0", NOW + timedelta(hours=2), Outcome.IN_PROGRESS)
    for r in (first, second, third):
        ledger.save(r)
    assert [r.version for r in ledger.history("sandbox")] == ["1.2.0", "1.1.0", "1.0.0"]
    live = ledger.live("sandbox")
    assert live is not None and live.version == "1.0.0"
    running = ledger.in_progress("sandbox")
    assert running is not None and running.release_id == third.release_id
    assert ledger.history("prod") == []


def test_a_record_round_trips_with_its_journal(ledger: Ledger) -> None:
    r = record("1.0.0", NOW, Outcome.IN_PROGRESS)
    r = r.noted(NOW, "template", "created launch template version 2", template_after=2, template_before=1)
    r = r.noted(NOW + timedelta(seconds=5), "refresh", "started ir-1", refresh_id="ir-1")
    ledger.save(r)
    r = r.noted(NOW + timedelta(minutes=3), "done", "gate passed", outcome=Outcome.SUCCEEDED,
                ended_at=NOW + timedelta(minutes=3))
    ledger.save(r)  # the same item, rewritten
    (loaded,) = ledger.history("sandbox")
    assert loaded == r
    assert [e.phase for e in loaded.journal] == ["template", "refresh", "done"]


def test_passed_environments_by_fingerprint(ledger: Ledger) -> None:
    ledger.save(record("1.1.0", NOW, env="dev"))
    ledger.save(record("1.1.0", NOW, Outcome.ROLLED_BACK, env="stage"))
    passed = ledger.passed_environments("fp1.1.0", set(), ["dev", "stage"])
    assert passed == frozenset({"dev"})


def test_events_are_read_back_newest_first_by_kind(ledger: Ledger) -> None:
    t0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    ledger.record_event("ami-deleted", "ami-1", t0, {"region": "us-east-1", "snapshots": ["snap-1"]})
    ledger.record_event("ami-deleted", "ami-2", t0 + timedelta(minutes=1), {"region": "us-west-2"})
    ledger.record_event("ami-promoted", "ami-3", t0, {"to": "prod"})
    deleted = ledger.events("ami-deleted")
    assert [(e["subject"], e["region"]) for e in deleted] == [("ami-2", "us-west-2"), ("ami-1", "us-east-1")]
    assert deleted[1]["snapshots"] == ["snap-1"] and deleted[1]["at"] == t0.isoformat()
    assert [e["subject"] for e in ledger.events("ami-promoted")] == ["ami-3"]
    assert ledger.events("ami-deprecated") == []
