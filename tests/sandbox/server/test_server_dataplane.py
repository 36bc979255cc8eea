"""The server with its data plane: EC2 instances are real machines on their loopback addresses."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from release.sandbox import server_process
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
    server_process.stop(tmp_path)


def answers_ssh(ip: str) -> bool:
    try:
        with socket.create_connection((ip, 22), timeout=1) as sock:
            return sock.recv(8).startswith(b"SSH-2.0")
    except OSError:
        return False


def test_group_instances_boot_from_the_base_image_and_down_leaves_nothing(state_dir: Path) -> None:
    info = server_process.start(state_dir, dataplane=True)
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
    # EC2 health checks: the group must not replace the instances this test watches (the base
    # image has no app, so ELB health checks would have them replaced over and over).
    boto3.client(
        "autoscaling",
        region_name="us-east-1",
        endpoint_url=info.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).update_auto_scaling_group(AutoScalingGroupName=seed.asg_name, HealthCheckType="EC2")
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

    # RunInstances answers once its instance has booted (the pending phase EC2 has and the sandbox
    # skips): a client's first connection, as Packer makes right away, is not refused.
    launched = ec2.run_instances(ImageId=seed.base_image_id, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                                 SubnetId=first["SubnetId"])["Instances"][0]
    assert answers_ssh(launched["PrivateIpAddress"])
    ec2.terminate_instances(InstanceIds=[launched["InstanceId"]])

    ec2.terminate_instances(InstanceIds=[first["InstanceId"]])
    deadline = time.monotonic() + 40  # shutting down in the background, as on EC2
    while answers_ssh(first["PrivateIpAddress"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not answers_ssh(first["PrivateIpAddress"])

    # The ALB's listener is a real proxy. The base image serves nothing on port 80, so the targets
    # fail their (real) health checks, the proxy answers 502 itself, and UnHealthyHostCount
    # reaches CloudWatch and raises the seed's unhealthy-hosts alarm.
    with urllib.request.urlopen(f"{info.endpoint}/_kiln/load-balancers", timeout=5) as response:
        [listener] = json.loads(response.read())["load_balancers"]
    assert listener["load_balancer_arn"] == seed.load_balancer_arn and listener["listener_port"] == 80
    # Its DNS name is its own loopback address and the proxy listens there at the listener's port,
    # so http://<DNSName>:<port> works as on AWS (no sandbox-only lookup, no DNS query).
    elbv2 = boto3.client("elbv2", region_name="us-east-1", endpoint_url=info.endpoint,
                         aws_access_key_id="testing", aws_secret_access_key="testing")
    dns = elbv2.describe_load_balancers(LoadBalancerArns=[seed.load_balancer_arn])["LoadBalancers"][0]["DNSName"]
    assert ipaddress.ip_address(dns).is_loopback and listener["url"] == f"http://{dns}:80"
    with pytest.raises(urllib.error.HTTPError) as proxied:
        urllib.request.urlopen(f"http://{dns}:80/version", timeout=5)
    assert proxied.value.code in (502, 503) and proxied.value.headers["Server"] == "awselb/2.0"
    cloudwatch = boto3.client(
        "cloudwatch",
        region_name="us-east-1",
        endpoint_url=info.endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    deadline = time.monotonic() + 60
    state = None
    while time.monotonic() < deadline:
        state = cloudwatch.describe_alarms(AlarmNames=[seed.alarm_names[1]])["MetricAlarms"][0]["StateValue"]
        if state == "ALARM":
            break
        time.sleep(0.5)
    assert state == "ALARM"

    server_process.stop(state_dir)
    assert not Path(f"/proc/{info.pid}").exists()
    assert processes_rooted_under(state_dir) == []
    assert mounts_under(state_dir) == []
    assert not any(answers_ssh(i["PrivateIpAddress"]) for i in described)
