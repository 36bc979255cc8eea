"""The sandbox counts the AWS calls it receives, by service and operation (GET /_kiln/requests)."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from aws_sandbox_kit import Kit
from botocore.config import Config
from botocore.exceptions import ClientError

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def no_faults(kit: Kit) -> Iterator[None]:
    kit.admin("DELETE", "faults")
    yield
    kit.admin("DELETE", "faults")


def test_each_call_counts_once_by_service_and_operation_and_a_reset_starts_from_zero(kit: Kit) -> None:
    kit.admin("DELETE", "requests")
    autoscaling, ec2 = kit.client("autoscaling"), kit.client("ec2")
    autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["none-such"])
    autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["none-such"])
    with pytest.raises(ClientError, match="not found"):  # answered with an error: still a call AWS received
        autoscaling.describe_instance_refreshes(AutoScalingGroupName="none-such")  # served by the sandbox itself
    ec2.describe_instances(InstanceIds=[])
    kit.admin("GET", "faults")  # the admin API is not AWS: never counted

    status, counted = kit.admin("GET", "requests")
    assert status == 200
    assert counted["calls"] == {"autoscaling": {"DescribeAutoScalingGroups": 2, "DescribeInstanceRefreshes": 1},
                                "ec2": {"DescribeInstances": 1}}
    assert (counted["total"], counted["unnamed"]) == (4, 0)

    status, before_reset = kit.admin("DELETE", "requests")  # the counts so far, then zero
    assert status == 200 and before_reset["calls"] == counted["calls"]
    _, after = kit.admin("GET", "requests")
    assert (after["total"], after["calls"]) == (0, {})
    assert after["since"] >= before_reset["since"]


def test_a_call_a_fault_answers_counts_and_so_does_each_retry(kit: Kit) -> None:
    status, _ = kit.admin("POST", "faults", {"operation": "DescribeAlarms", "error": "Throttling", "count": 2})
    assert status == 200
    cloudwatch = boto3.client("cloudwatch", region_name=REGION, endpoint_url=kit.info.endpoint,
                              aws_access_key_id="testing", aws_secret_access_key="testing",
                              config=Config(retries={"mode": "standard", "total_max_attempts": 2}))
    kit.admin("DELETE", "requests")
    with pytest.raises(ClientError):
        cloudwatch.describe_alarms()  # two attempts, both throttled: AWS saw two requests
    cloudwatch.describe_alarms()
    _, counted = kit.admin("GET", "requests")
    assert counted["calls"] == {"cloudwatch": {"DescribeAlarms": 3}}
