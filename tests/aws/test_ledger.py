"""The ledger against moto's DynamoDB: conditional lock, records, history, resume lookups."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from moto import mock_aws

from release.aws import Aws, Target
from release.errors import LockHeld
from release.ledger import Ledger, Outcome, ReleaseRecord, new_release_id

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


def test_lock_is_exclusive_until_released(ledger: Ledger) -> None:
    ledger.acquire("sandbox", "ana", NOW)
    with pytest.raises(LockHeld, match="sandbox is locked by ana since 2026-11-22 12:00:00 UTC"):
        ledger.acquire("sandbox", "bob", NOW + timedelta(minutes=1))
    ledger.acquire("prod", "bob", NOW)  # locks are per environment
    ledger.release_lock("sandbox", "ana")
    assert ledger.lock("sandbox") is None
    ledger.acquire("sandbox", "bob", NOW)


def test_expired_lock_can_be_taken_over(ledger: Ledger) -> None:
    ledger.acquire("sandbox", "ana", NOW)
    taken = ledger.acquire("sandbox", "bob", NOW + timedelta(hours=3))
    assert taken.holder == "bob"
    held = ledger.lock("sandbox")
    assert held is not None and held.holder == "bob"


def test_only_the_holder_releases_and_breaking_is_explicit(ledger: Ledger) -> None:
    ledger.acquire("sandbox", "ana", NOW)
    ledger.release_lock("sandbox", "bob")  # not bob's: nothing happens
    held = ledger.lock("sandbox")
    assert held is not None and held.holder == "ana"
    broken = ledger.break_lock("sandbox")
    assert broken is not None and broken.holder == "ana"
    assert ledger.lock("sandbox") is None


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
