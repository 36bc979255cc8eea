"""The gate, table-driven: each JSON file in gate_cases/ is an observed snapshot and a verdict."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from release.gate import Expectation, judge
from release.model import GroupState, InstanceState, RefreshState, Snapshot, VerdictKind

CASES = sorted((Path(__file__).parent / "gate_cases").glob("*.json"))
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
EXPECT = Expectation(version="1.1.0", image_id="ami-new")


def snapshot(case: dict[str, Any]) -> Snapshot:
    r = case["refresh"]
    refresh = None if r is None else RefreshState(
        refresh_id="ir-1", status=r["status"], status_reason=r["status_reason"],
        percentage_complete=r["percentage_complete"], instances_to_update=r["instances_to_update"])
    instances = tuple(
        InstanceState(instance_id=i["id"], image_id=i["image"], launch_template_version="2",
                      lifecycle=i["lifecycle"], asg_health=i["asg_health"], target_health=i["target_health"],
                      served_version=i["served"], health_ok=i.get("health", True),
                      health_detail=i.get("health_detail", ""),
                      launched_at=NOW - timedelta(seconds=i["launched_ago"]) if "launched_ago" in i else None)
        for i in case["instances"])
    group = GroupState(name="web", min_size=2, max_size=4, desired_capacity=case.get("desired", len(instances)),
                       launch_template_id="lt-1", launch_template_name="web", launch_template_version="1",
                       instances=instances)
    return Snapshot(at=NOW, refresh=refresh, group=group, alarms=case["alarms"], served_through_lb=case["lb"],
                    vanished=tuple(case.get("vanished", ())))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_gate_case(path: Path) -> None:
    case = json.loads(path.read_text())
    deadline = NOW - timedelta(seconds=1) if case["past_deadline"] else NOW + timedelta(minutes=10)
    expect = Expectation(EXPECT.version, EXPECT.image_id, case.get("done_status", "Successful"),
                         grace_seconds=case.get("grace", 0), health_required=case.get("health_required", True),
                         fail_fast=case.get("fail_fast", True))
    verdict = judge(snapshot(case), expect, deadline)
    assert verdict.kind == VerdictKind(case["verdict"]), verdict
    assert case["reason_contains"] in verdict.reason, verdict.reason


def test_checks_cover_every_signal() -> None:
    case = json.loads((CASES[0].parent / "all_good_passes.json").read_text())
    verdict = judge(snapshot(case), EXPECT, NOW + timedelta(minutes=1))
    names = [c.name for c in verdict.checks]
    assert names == ["instance refresh", "alarms", "new image", "ASG health", "target health",
                     "/health", "served version", "load balancer"]
    assert all(c.ok for c in verdict.checks)
