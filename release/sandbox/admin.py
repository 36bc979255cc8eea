"""The sandbox's small JSON admin API, under /_kiln/ (a path no AWS service or moto uses).

  GET    /_kiln/health          {"ok": true, "pid", "time_scale", "started_at", "counts": {...}}
  GET    /_kiln/target-health   the admin health policy: unhealthy instance and image ids
  POST   /_kiln/target-health   {"instance_id": "i-…"} or {"image_id": "ami-…"}, "healthy": bool
  DELETE /_kiln/target-health   every target healthy again
  GET    /_kiln/load-balancers  the local ALB listeners: name, listener port, target group, URL
                                (only with a data plane; an empty list otherwise)
  POST   /_kiln/base-image      {"name": "debian-12-amd64-…"}: publish a newer base AMI under that
                                name in every region (Debian's security updates) -> {"images": {region: id}}

Target health set here feeds the default health check (patches.targets.AdminHealthPolicy): the
target's state still moves through AWS's thresholds and intervals, exactly as with real probes.
Alarm states need no admin call: CloudWatch SetAlarmState does it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from release.sandbox.patches.targets import AdminHealthPolicy

PREFIX = "/_kiln/"

Json = dict[str, Any]


class AdminApi:
    def __init__(
        self,
        *,
        health: Callable[[], Json],
        policy: AdminHealthPolicy,
        load_balancers: Callable[[], list[Json]] = list,
        publish_base_image: Callable[[str], dict[str, str]] | None = None,
    ) -> None:
        self._health = health
        self._policy = policy
        self._load_balancers = load_balancers
        self._publish_base_image = publish_base_image

    def handles(self, path: str) -> bool:
        return path.startswith(PREFIX)

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, Json]:
        route = path[len(PREFIX) :].strip("/")
        if route == "health" and method == "GET":
            return 200, self._health()
        if route == "load-balancers" and method == "GET":
            return 200, {"load_balancers": self._load_balancers()}
        if route == "base-image" and method == "POST" and self._publish_base_image is not None:
            return self._new_base_image(body)
        if route == "target-health":
            if method == "GET":
                return 200, dict(self._policy.snapshot())
            if method == "DELETE":
                self._policy.clear()
                return 200, dict(self._policy.snapshot())
            if method == "POST":
                return self._set_target_health(body)
        return 404, {"error": f"no admin route {method} {path}"}

    def _new_base_image(self, body: bytes) -> tuple[int, Json]:
        assert self._publish_base_image is not None
        try:
            request = json.loads(body or b"{}")
        except json.JSONDecodeError as exc:
            return 400, {"error": f"body is not JSON: {exc}"}
        name = request.get("name") if isinstance(request, Mapping) else None
        if not isinstance(name, str) or not name:
            return 400, {"error": 'send {"name": "<a new AMI name>"}'}
        return 200, {"images": self._publish_base_image(name)}

    def _set_target_health(self, body: bytes) -> tuple[int, Json]:
        try:
            request = json.loads(body or b"{}")
        except json.JSONDecodeError as exc:
            return 400, {"error": f"body is not JSON: {exc}"}
        if not isinstance(request, Mapping) or not isinstance(request.get("healthy"), bool):
            return 400, {"error": 'send {"instance_id" or "image_id": "...", "healthy": true|false}'}
        instance_id, image_id = request.get("instance_id"), request.get("image_id")
        if not (isinstance(instance_id, str) or isinstance(image_id, str)):
            return 400, {"error": "name an instance_id or an image_id"}
        self._policy.set(
            instance_id=instance_id if isinstance(instance_id, str) else None,
            image_id=image_id if isinstance(image_id, str) else None,
            healthy=request["healthy"],
        )
        return 200, dict(self._policy.snapshot())
