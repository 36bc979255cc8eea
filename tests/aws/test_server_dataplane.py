"""The server with its data plane: EC2 instances are real machines on their loopback addresses."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from release.sandbox import lifecycle
from release.sandbox.dataplane.mounts import mounts_under
from release.sandbox.dataplane.rootfs import processes_rooted_under
from release.sandbox.provision import BASE_IMAGE_NAME, provision

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0, reason="the data plane needs root on Linux"),
]


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    lifecycle.down(tmp_path)


def answers_ssh(ip: str) -> bool:
    try:
        with socket.create_connection((ip, 22), timeout=1) as sock:
            return sock.recv(8).startswith(b"SSH-2.0")
    except OSError:
        return False


def test_group_instances_boot_from_the_base_image_and_down_leaves_nothing(state_dir: Path) -> None:
    info = lifecycle.up(state_dir, dataplane=True)
    assert info.dataplane

    def client(service: str, region: str) -> object:
        return boto3.client(
            service,
            region_name=region,
            endpoint_url=info.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    seed = provision(client, "us-east-1")
    ec2 = boto3.client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=info.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    base = ec2.describe_images(ImageIds=[seed.base_image_id])["Images"][0]
    assert base["Name"] == BASE_IMAGE_NAME  # the server registered the data plane's rootfs under it

    groups = boto3.client(
        "autoscaling",
        region_name="us-east-1",
        endpoint_url=info.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    ids = [m["InstanceId"] for m in groups.describe_auto_scaling_groups()["AutoScalingGroups"][0]["Instances"]]
    described = [i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]]
    first = described[0]
    deadline = time.monotonic() + 60
    while not answers_ssh(first["PrivateIpAddress"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert answers_ssh(first["PrivateIpAddress"])
    assert "SSH HOST KEY" in ec2.get_console_output(InstanceId=first["InstanceId"])["Output"]

    ec2.terminate_instances(InstanceIds=[first["InstanceId"]])
    assert not answers_ssh(first["PrivateIpAddress"])

    lifecycle.down(state_dir)
    assert not Path(f"/proc/{info.pid}").exists()
    assert processes_rooted_under(state_dir) == []
    assert mounts_under(state_dir) == []
    assert not any(answers_ssh(i["PrivateIpAddress"]) for i in described)
