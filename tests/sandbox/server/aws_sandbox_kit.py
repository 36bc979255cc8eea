"""Helpers for the tests against the sandbox server (a module name no other test dir uses)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

from release.sandbox.server_process import SandboxInfo

Clients = Callable[..., Any]


class Kit:
    """What tests use: clients, the admin API, bounded waits, short views of AWS state."""

    def __init__(self, info: SandboxInfo, clients: Clients) -> None:
        self.info = info
        self.client = clients

    def admin(self, method: str, route: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{self.info.endpoint}/_kiln/{route}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status), json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), json.loads(exc.read())

    @staticmethod
    def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.2) -> Any:
        """Poll until `check()` is truthy (the server's own clock drives the change), or fail."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")

    def group(self, name: str) -> dict[str, Any]:
        groups = self.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])
        found: dict[str, Any] = groups["AutoScalingGroups"][0]
        return found

    def target_states(self, tg_arn: str) -> dict[str, dict[str, Any]]:
        described = self.client("elbv2").describe_target_health(TargetGroupArn=tg_arn)["TargetHealthDescriptions"]
        return {d["Target"]["Id"]: d["TargetHealth"] for d in described}

    def instances(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        if not ids:
            return {}
        reservations = self.client("ec2").describe_instances(InstanceIds=ids)["Reservations"]
        return {i["InstanceId"]: i for r in reservations for i in r["Instances"]}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
