"""EC2's instance metadata service (IMDSv2) for sandbox instances.

An instance on AWS reads its identity from http://169.254.169.254. A sandbox instance shares the
host's network, where that address does not exist, so the sandbox serves each instance's metadata
on the control plane's port under /_kiln/imds/<instance-id>/ and hands the instance that base URL
as AWS_EC2_METADATA_SERVICE_ENDPOINT — the variable the AWS SDKs and CLI read to find IMDS — in
a systemd drop-in only the sandbox writes (dataplane/cloudinit.py). The baked image has no
sandbox-only path: it reads IMDS the way it does on EC2.

Followed (EC2 User Guide, "Use the Instance Metadata Service to access instance metadata"):
- PUT /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds (1-21600) answers a token;
  a missing or out-of-range TTL is 400.
- Every GET needs X-aws-ec2-metadata-token with a live token of this instance: otherwise 401
  (IMDSv2 only, as Kiln's images ask with ImdsSupport v2.0).
- GET /latest/dynamic/instance-identity/document (JSON: instanceId, imageId, privateIp, region,
  availabilityZone, accountId, architecture, pendingTime, version), /latest/user-data (404
  without user data), /latest/meta-data/ and the keys it lists.
Not followed: IAM role credentials (the drop-in gives the sandbox's fake keys instead), tags,
network interfaces, the hop limit.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from release.clock import Clock

PREFIX = "/_kiln/imds/"
MAX_TTL_S = 21600
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain"


def endpoint_for(control_plane: str, instance_id: str) -> str:
    """The instance's AWS_EC2_METADATA_SERVICE_ENDPOINT."""
    return f"{control_plane.rstrip('/')}{PREFIX}{instance_id}/"


class InstanceMetadataService:
    """Thread-safe. `metadata` is what the sandbox wrote for the instance at launch (cloudinit)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._tokens: dict[str, tuple[str, datetime]] = {}  # token -> (instance id, expires at)
        self._lock = threading.Lock()

    def handle(self, method: str, path: str, headers: Mapping[str, str],
               metadata: Mapping[str, Any] | None) -> Answer:
        """`path` is what follows /_kiln/imds/: "<instance-id>/latest/…"."""
        instance_id, _, rest = path.partition("/")
        if metadata is None:
            return Answer(404, b"Not Found")
        rest = "/" + rest
        if rest == "/latest/api/token":
            return self._token(method, instance_id, headers)
        if method != "GET":
            return Answer(405, b"Method Not Allowed")
        if not self._valid(headers.get(TOKEN_HEADER, ""), instance_id):
            return Answer(401, b"Unauthorized")
        return _read(rest, metadata)

    def _token(self, method: str, instance_id: str, headers: Mapping[str, str]) -> Answer:
        if method != "PUT":
            return Answer(405, b"Method Not Allowed")
        try:
            ttl = int(headers.get(TTL_HEADER, ""))
        except ValueError:
            return Answer(400, b"Bad Request")
        if not 1 <= ttl <= MAX_TTL_S:
            return Answer(400, b"Bad Request")
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = self._clock.now()
            self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now}
            self._tokens[token] = (instance_id, now + timedelta(seconds=ttl))
        return Answer(200, token.encode())

    def _valid(self, token: str, instance_id: str) -> bool:
        with self._lock:
            held = self._tokens.get(token)
            return held is not None and held[0] == instance_id and held[1] > self._clock.now()


_META_DATA = {
    "instance-id": "instance_id",
    "ami-id": "image_id",
    "local-ipv4": "local_ipv4",
    "local-hostname": "local_hostname",
    "placement/availability-zone": "availability_zone",
    "placement/region": "region",
}


def _read(path: str, metadata: Mapping[str, Any]) -> Answer:
    if path == "/latest/dynamic/instance-identity/document":
        document = {
            "instanceId": metadata.get("instance_id"), "imageId": metadata.get("image_id"),
            "privateIp": metadata.get("local_ipv4"), "region": metadata.get("region"),
            "availabilityZone": metadata.get("availability_zone"), "accountId": metadata.get("account_id"),
            "architecture": "x86_64", "pendingTime": metadata.get("launched_at"), "version": "2017-09-30",
        }
        return Answer(200, json.dumps(document, indent=2).encode(), "application/json")
    if path == "/latest/user-data":
        user_data = metadata.get("user_data")
        return Answer(200, str(user_data).encode()) if user_data else Answer(404, b"Not Found")
    if path in ("/latest/meta-data", "/latest/meta-data/"):
        listing = sorted({key.split("/")[0] + ("/" if "/" in key else "") for key in _META_DATA})
        return Answer(200, "\n".join(listing).encode())
    key = path.removeprefix("/latest/meta-data/")
    if key in _META_DATA and metadata.get(_META_DATA[key]):
        return Answer(200, str(metadata[_META_DATA[key]]).encode())
    return Answer(404, b"Not Found")
