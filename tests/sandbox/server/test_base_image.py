"""The sandbox publishes its base AMI like Debian does, and a newer one on request (security updates)."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from release import config
from release.aws import Aws, Target
from release.cloud import Cloud
from release.commands import sandbox as local_cloud
from release.errors import UsageError
from release.sandbox import server_process, stack
from release.sandbox.server_process import SandboxInfo
from release.ui import UI

ROOT = Path(__file__).parents[3]
OWNER = "136693071363"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SandboxInfo]:
    """A server of its own: publishing a new base image changes it for everyone using that server."""
    info = server_process.start(tmp_path / "sandbox", base_image_name="debian-12-amd64-sandbox", base_image_owner=OWNER)
    try:
        yield info
    finally:
        server_process.stop(tmp_path / "sandbox")


def ec2(info: SandboxInfo, region: str) -> Any:
    return boto3.client("ec2", region_name=region, endpoint_url=info.endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def newest_base(info: SandboxInfo, region: str) -> str:
    cloud = Cloud(Aws(Target(region=region, endpoint_url=info.endpoint)))
    base = config.load(ROOT / "versions.toml").base_image
    found = cloud.base_image(owners=base.owners, name=base.name, pinned=None)
    assert found is not None
    return found.image_id


def test_a_newer_base_ami_is_what_the_filter_finds_in_every_region(server: SandboxInfo) -> None:
    first = {r: newest_base(server, r) for r in ("us-east-1", "us-west-2")}
    published = stack.publish_base_image(server.endpoint, "debian-12-amd64-sandbox-20261122-120000")
    assert set(published) == {"us-east-1", "us-west-2"}  # every region the base was published in
    for region, image_id in published.items():
        assert image_id != first[region] and newest_base(server, region) == image_id
        image = ec2(server, region).describe_images(ImageIds=[image_id])["Images"][0]
        assert image["OwnerId"] == OWNER and image["Public"] is True and image["RootDeviceType"] == "ebs"
        older = ec2(server, region).describe_images(ImageIds=[first[region]])["Images"][0]
        assert image["CreationDate"] > older["CreationDate"]
    # The same name again is the same image, not another one.
    assert stack.publish_base_image(server.endpoint, "debian-12-amd64-sandbox-20261122-120000") == published
    # A region used for the first time afterwards gets the newest base.
    assert newest_base(server, "eu-west-1") != first["us-east-1"]


def test_a_bad_request_is_refused_and_publishes_nothing(server: SandboxInfo) -> None:
    before = newest_base(server, "us-east-1")
    request = urllib.request.Request(f"{server.endpoint}/_kiln/base-image", data=b'{"nom": 1}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400 and "name" in json.loads(refused.value.read())["error"]
    assert newest_base(server, "us-east-1") == before


def test_a_pinned_base_image_cannot_follow_new_ones(tmp_path: Path) -> None:
    text = (ROOT / "versions.toml").read_text().replace('# ami = "ami-0123456789abcdef0"',
                                                          'ami = "ami-0123456789abcdef0"')
    path = tmp_path / "versions.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match="pins 'ami-0123456789abcdef0'"):
        local_cloud.new_base_image(config.load(path), UI(stdout=io.StringIO(), stderr=io.StringIO()))
