"""The sandbox's instance metadata service (release/sandbox/engines/imds.py): IMDSv2 as EC2 serves it."""

from __future__ import annotations

import json

from release.clock import FakeClock
from release.sandbox.engines.imds import TOKEN_HEADER, TTL_HEADER, InstanceMetadataService, endpoint_for

META = {"instance_id": "i-1", "image_id": "ami-1", "local_ipv4": "127.100.1.5", "region": "eu-central-1",
        "availability_zone": "eu-central-1a", "user_data": '{"secret_id": "s"}'}


def token(service: InstanceMetadataService, ttl: str = "60", instance: str = "i-1") -> str:
    answer = service.handle("PUT", f"{instance}/latest/api/token", {TTL_HEADER: ttl}, META)
    assert answer.status == 200
    return answer.body.decode()


def test_reads_need_a_live_token_of_this_instance() -> None:
    clock = FakeClock()
    service = InstanceMetadataService(clock)
    path = "i-1/latest/meta-data/instance-id"
    assert service.handle("GET", path, {}, META).status == 401  # IMDSv1: refused
    good = token(service)
    assert service.handle("GET", path, {TOKEN_HEADER: good}, META).body == b"i-1"
    assert service.handle("GET", "i-2/latest/meta-data/instance-id", {TOKEN_HEADER: good}, META).status == 401
    clock.advance(61)
    assert service.handle("GET", path, {TOKEN_HEADER: good}, META).status == 401  # expired


def test_a_token_needs_a_ttl_between_1_and_21600_seconds() -> None:
    service = InstanceMetadataService(FakeClock())
    for ttl in ("", "0", "21601", "soon"):
        assert service.handle("PUT", "i-1/latest/api/token", {TTL_HEADER: ttl}, META).status == 400
    assert service.handle("GET", "i-1/latest/api/token", {TTL_HEADER: "60"}, META).status == 405


def test_identity_document_user_data_and_listing() -> None:
    service = InstanceMetadataService(FakeClock())
    headers = {TOKEN_HEADER: token(service)}
    document = json.loads(service.handle("GET", "i-1/latest/dynamic/instance-identity/document", headers, META).body)
    assert (document["instanceId"], document["privateIp"], document["region"]) == ("i-1", "127.100.1.5",
                                                                                     "eu-central-1")
    assert service.handle("GET", "i-1/latest/user-data", headers, META).body == b'{"secret_id": "s"}'
    assert service.handle("GET", "i-1/latest/user-data", headers, {**META, "user_data": None}).status == 404
    assert b"placement/" in service.handle("GET", "i-1/latest/meta-data/", headers, META).body
    assert service.handle("GET", "i-1/latest/meta-data/iam/info", headers, META).status == 404
    assert service.handle("GET", "i-9/latest/meta-data/", headers, None).status == 404  # no such instance


def test_the_endpoint_an_instance_is_given() -> None:
    assert endpoint_for("http://127.0.0.1:5000", "i-1") == "http://127.0.0.1:5000/_kiln/imds/i-1/"
