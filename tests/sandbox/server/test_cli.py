"""The real AWS CLI against the sandbox, with nothing but --endpoint-url and fake credentials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aws_sandbox_kit import Kit

from release.sandbox.provision import SeedResources

AWS = Path(sys.executable).parent / "aws"


def aws(kit: Kit, *args: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(kit.info.env)
    env.pop("AWS_ENDPOINT_URL")  # the CLI is told on the command line, as the README shows
    done = subprocess.run(
        [str(AWS), "--endpoint-url", kit.info.endpoint, "--output", "json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@contextmanager
def watch_template_versions(kit: Kit, asg_name: str) -> Iterator[set[tuple[str, ...]]]:
    """Every mix of launch template versions the group shows, sampled every 0.2 s while the block runs.

    A CLI call takes one to several seconds on a busy machine, longer than a batch's scaled warmup,
    so the CLI's own polls can miss the moment half the group is new.
    """
    mixes: set[tuple[str, ...]] = set()
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            instances = kit.group(asg_name)["Instances"]
            mixes.add(tuple(sorted(i["LaunchTemplate"]["Version"] for i in instances)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield mixes
    finally:
        done.set()
        sampler.join(timeout=10)


def test_cli_describes_the_group_and_creates_a_version_from_a_source(kit: Kit, seed: SeedResources) -> None:
    groups = aws(kit, "autoscaling", "describe-auto-scaling-groups", "--auto-scaling-group-names", seed.asg_name)
    [group] = groups["AutoScalingGroups"]
    assert (group["MinSize"], group["DesiredCapacity"], group["MaxSize"]) == (2, 4, 8)
    assert group["LaunchTemplate"]["Version"] == "1"
    assert {i["LaunchTemplate"]["Version"] for i in group["Instances"]} == {"1"}

    created = aws(
        kit,
        "ec2",
        "create-launch-template-version",
        "--launch-template-id",
        seed.launch_template_id,
        "--source-version",
        "1",
        "--launch-template-data",
        json.dumps({"ImageId": "ami-0123456789abcdef0"}),
    )["LaunchTemplateVersion"]
    assert created["VersionNumber"] == 2
    data = created["LaunchTemplateData"]
    assert data["ImageId"] == "ami-0123456789abcdef0"
    assert data["InstanceType"] == "t3.micro"  # inherited from version 1
    assert data["SecurityGroupIds"] == [seed.security_group_ids["app"]]


def test_cli_only_release_with_a_refresh_in_batches(kit: Kit, seed: SeedResources) -> None:
    image = aws(kit, "ec2", "register-image", "--name", f"{seed.asg_name}-1.1.0", "--root-device-name", "/dev/xvda")
    version = aws(
        kit,
        "ec2",
        "create-launch-template-version",
        "--launch-template-id",
        seed.launch_template_id,
        "--source-version",
        "1",
        "--launch-template-data",
        json.dumps({"ImageId": image["ImageId"]}),
    )["LaunchTemplateVersion"]["VersionNumber"]
    started = aws(
        kit,
        "autoscaling",
        "start-instance-refresh",
        "--auto-scaling-group-name",
        seed.asg_name,
        "--preferences",
        json.dumps({"MinHealthyPercentage": 50, "InstanceWarmup": 40}),
        "--desired-configuration",
        json.dumps({"LaunchTemplate": {"LaunchTemplateId": seed.launch_template_id, "Version": str(version)}}),
    )
    statuses: list[str] = []
    with watch_template_versions(kit, seed.asg_name) as mixes:
        for _ in range(60):
            [refresh] = aws(
                kit, "autoscaling", "describe-instance-refreshes", "--auto-scaling-group-name", seed.asg_name
            )["InstanceRefreshes"]
            assert refresh["InstanceRefreshId"] == started["InstanceRefreshId"]
            if not statuses or statuses[-1] != refresh["Status"]:
                statuses.append(refresh["Status"])
            if refresh["Status"] == "Successful":
                break
    assert statuses[-1] == "Successful" and "InProgress" in statuses, statuses
    assert set(statuses) <= {"Pending", "InProgress", "Successful"}
    assert ("1", "1", str(version), str(version)) in mixes, mixes  # two at a time: 50 % stay healthy

    group = aws(kit, "autoscaling", "describe-auto-scaling-groups", "--auto-scaling-group-names", seed.asg_name)
    members = group["AutoScalingGroups"][0]["Instances"]
    assert {m["LaunchTemplate"]["Version"] for m in members} == {str(version)}
    described = aws(kit, "ec2", "describe-instances", "--instance-ids", *[m["InstanceId"] for m in members])
    assert {i["ImageId"] for r in described["Reservations"] for i in r["Instances"]} == {image["ImageId"]}


def test_cli_starts_and_describes_an_instance_refresh(kit: Kit, seed: SeedResources) -> None:
    started = aws(
        kit,
        "autoscaling",
        "start-instance-refresh",
        "--auto-scaling-group-name",
        seed.asg_name,
        "--preferences",
        json.dumps({"MinHealthyPercentage": 50, "InstanceWarmup": 100, "CheckpointPercentages": [50]}),
    )
    described = aws(kit, "autoscaling", "describe-instance-refreshes", "--auto-scaling-group-name", seed.asg_name)
    [refresh] = described["InstanceRefreshes"]
    assert refresh["InstanceRefreshId"] == started["InstanceRefreshId"]
    assert refresh["Preferences"]["MinHealthyPercentage"] == 50
    assert refresh["Preferences"]["CheckpointPercentages"] == [50]
    assert refresh["Status"] in ("Pending", "InProgress")
    aws(kit, "autoscaling", "cancel-instance-refresh", "--auto-scaling-group-name", seed.asg_name)
