"""The sandbox's small JSON admin API, under /_kiln/ (a path no AWS service or moto uses).

  GET    /_kiln/health          {"ok": true, "pid", "time_scale", "started_at", "counts": {...}}
  GET    /_kiln/target-health   the admin health policy: unhealthy instance and image ids
  POST   /_kiln/target-health   {"instance_id": "i-…"} or {"image_id": "ami-…"}, "healthy": bool
  DELETE /_kiln/target-health   every target healthy again
  GET    /_kiln/load-balancers  the local ALB listeners: name, listener port, target group, URL
                                (only with a data plane; an empty list otherwise)
  POST   /_kiln/base-image      {"name": "debian-12-amd64-…"}: publish a newer base AMI under that
                                name in every region (Debian's security updates) -> {"images": {region: id}}
  POST   /_kiln/ssh-ingress     {"instance_id": "i-…", "client": "127.0.0.1:40522", "server": "127.100.1.5:22"}:
                                do the instance's security groups admit that SSH connection's source?
                                -> {"allowed": bool, "source": "…", "reason": "…"} (asked by each
                                instance's sshd at every login; docs/dataplane.md)

  GET    /_kiln/requests        AWS calls received since start or the last reset (calls.py):
                                {"since", "total", "unnamed", "calls": {service: {operation: n}}}
  DELETE /_kiln/requests        the same counts, and counting starts again from zero (one step)

Fault injection (faults.py has the rules' meaning):

  GET    /_kiln/faults          {"rules": [rules in force, oldest first], "finished": [the last 50 that
                                ended, each with "ended": "count used up" | "window expired" | "cleared"
                                | "deleted"]}; a rule: id, service, operation, kind, error/status/message
                                or latency/timeout, count, remaining, seconds, expires_at, expires_in,
                                fired (how many calls it hit), created_at
  POST   /_kiln/faults          {"operation": "StartInstanceRefresh" | "*", "service"?: "autoscaling",
                                 one of "error": "Throttling" (+ "status"?: 400..599, "message"?) |
                                 "latency": seconds | "timeout": seconds or true (15),
                                 "count"?: calls, "seconds"?: window}  -> {"rule": {...}}
                                (neither count nor seconds: one call; both: whichever ends first)
  DELETE /_kiln/faults          end every rule -> {"cleared": n, "rules": []}
  DELETE /_kiln/faults/<id>     end one rule
  POST   /_kiln/instances/<id>/kill  a host failure: the instance's processes die at once (with no
                                data plane: its health checks fail from now on); EC2 still says
                                running, so the load balancer's health checks fail it and an ELB
                                health-checked group replaces it
  POST   /_kiln/instances/<id>/stop  EC2 StopInstances, through moto's backend (a stopped group member
                                is replaced, as on AWS)

An instance that fails its health check while it keeps running: POST /_kiln/target-health.
Bad input is 400 with {"error": what to send instead}; an unknown instance 404; an instance in a
state that cannot take the fault (stopped, terminated) 409.

Target health set here feeds the default health check (patches.targets.AdminHealthPolicy): the
target's state still moves through AWS's thresholds and intervals, exactly as with real probes.
Alarm states need no admin call: CloudWatch SetAlarmState does it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from release.sandbox.calls import CallCounter
from release.sandbox.faults import FaultBook, FaultRequestError
from release.sandbox.patches.targets import AdminHealthPolicy

PREFIX = "/_kiln/"

Json = dict[str, Any]
INSTANCE_ACTIONS = ("kill", "stop")
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")


class AdminError(Exception):
    """An admin request the sandbox refuses: the HTTP status and what is wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdminApi:
    def __init__(
        self,
        *,
        health: Callable[[], Json],
        policy: AdminHealthPolicy,
        load_balancers: Callable[[], list[Json]] = list,
        publish_base_image: Callable[[str], dict[str, str]] | None = None,
        faults: FaultBook | None = None,
        instance_action: Callable[[str, str], Json] | None = None,
        ssh_ingress: Callable[[str, tuple[str, int], tuple[str, int]], Json] | None = None,
        requests: CallCounter | None = None,
    ) -> None:
        self._health = health
        self._policy = policy
        self._load_balancers = load_balancers
        self._publish_base_image = publish_base_image
        self._faults = faults
        self._instance_action = instance_action  # (action, instance id) -> result; raises AdminError
        self._ssh_ingress = ssh_ingress  # (instance id, client, server) -> verdict; raises AdminError
        self._requests = requests

    def handles(self, path: str) -> bool:
        return path.startswith(PREFIX)

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, Json]:
        route = path[len(PREFIX) :].strip("/")
        if route == "health" and method == "GET":
            return 200, self._health()
        if route == "requests" and self._requests is not None and method in ("GET", "DELETE"):
            return 200, self._requests.snapshot() if method == "GET" else self._requests.reset()
        if route == "load-balancers" and method == "GET":
            return 200, {"load_balancers": self._load_balancers()}
        if route == "base-image" and method == "POST" and self._publish_base_image is not None:
            return self._new_base_image(body)
        if (route == "faults" or route.startswith("faults/")) and self._faults is not None:
            return self._fault_rules(method, route, body)
        if route.startswith("instances/") and method == "POST" and self._instance_action is not None:
            return self._instance_fault(route)
        if route == "ssh-ingress" and method == "POST" and self._ssh_ingress is not None:
            return self._ssh_verdict(body)
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

    def _fault_rules(self, method: str, route: str, body: bytes) -> tuple[int, Json]:
        assert self._faults is not None
        rule_id = route[len("faults/") :] if route.startswith("faults/") else None
        if rule_id is not None:
            if method != "DELETE":
                return 404, {"error": f"no admin route {method} /_kiln/{route}"}
            if not self._faults.delete(rule_id):
                return 404, {"error": f"no fault rule {rule_id!r} in force (GET /_kiln/faults lists them)"}
            return 200, {"deleted": rule_id, **self._faults.snapshot()}
        if method == "GET":
            return 200, self._faults.snapshot()
        if method == "DELETE":
            return 200, {"cleared": self._faults.clear(), **self._faults.snapshot()}
        if method == "POST":
            try:
                request = json.loads(body or b"{}")
            except json.JSONDecodeError as exc:
                return 400, {"error": f"body is not JSON: {exc}"}
            try:
                return 200, {"rule": self._faults.add(request)}
            except FaultRequestError as exc:
                return 400, {"error": str(exc)}
        return 404, {"error": f"no admin route {method} /_kiln/{route}"}

    def _ssh_verdict(self, body: bytes) -> tuple[int, Json]:
        assert self._ssh_ingress is not None
        try:
            request = json.loads(body or b"{}")
        except json.JSONDecodeError as exc:
            return 400, {"error": f"body is not JSON: {exc}"}
        usage = 'send {"instance_id": "i-…", "client": "address:port", "server": "address:port"}'
        if not isinstance(request, Mapping):
            return 400, {"error": usage}
        instance_id = request.get("instance_id")
        client, server = _endpoint(request.get("client")), _endpoint(request.get("server"))
        if not (isinstance(instance_id, str) and _INSTANCE_ID.match(instance_id)) or client is None or server is None:
            return 400, {"error": usage}
        try:
            return 200, self._ssh_ingress(instance_id, client, server)
        except AdminError as exc:
            return exc.status, {"error": exc.message}

    def _instance_fault(self, route: str) -> tuple[int, Json]:
        assert self._instance_action is not None
        parts = route.split("/")
        if len(parts) != 3 or parts[2] not in INSTANCE_ACTIONS:
            return 404, {"error": f"no admin route POST /_kiln/{route}; use instances/<id>/kill or instances/<id>/stop"}
        instance_id, action = parts[1], parts[2]
        if not _INSTANCE_ID.match(instance_id):
            return 400, {"error": f"{instance_id!r} is not an instance id (i-0123456789abcdef0)"}
        try:
            return 200, self._instance_action(action, instance_id)
        except AdminError as exc:
            return exc.status, {"error": exc.message}


def _endpoint(value: object) -> tuple[str, int] | None:
    """"127.0.0.1:40522" -> ("127.0.0.1", 40522); None for anything else."""
    if not isinstance(value, str) or ":" not in value:
        return None
    address, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536 or not address:
        return None
    return address.strip("[]"), int(port)
