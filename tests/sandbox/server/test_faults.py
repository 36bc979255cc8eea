"""Fault injection in the sandbox server: AWS errors in each service's protocol, responses lost after
the call took effect, windows on the server's clock, instance faults, and `inv sandbox.fault`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_sandbox_kit import Kit, unique
from botocore.config import Config
from botocore.exceptions import ClientError, ReadTimeoutError

from release.sandbox.provision import SeedResources

REGION = "us-east-1"
NO_RETRIES = Config(retries={"total_max_attempts": 1})  # {"max_attempts": 1} would still retry once
ROOT = Path(__file__).resolve().parents[3]
INV = Path(sys.executable).parent / "inv"


@pytest.fixture(autouse=True)
def no_faults(kit: Kit) -> Iterator[None]:
    """The session server is shared: every test starts and ends without fault rules."""
    kit.admin("DELETE", "faults")
    yield
    kit.admin("DELETE", "faults")
    kit.admin("DELETE", "target-health")


def client(kit: Kit, service: str, config: Config = NO_RETRIES) -> Any:
    return boto3.client(service, region_name=REGION, endpoint_url=kit.info.endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing", config=config)


def code_of(call: Any, **kwargs: Any) -> tuple[str, int]:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    return raised.value.response["Error"]["Code"], raised.value.response["ResponseMetadata"]["HTTPStatusCode"]


def add(kit: Kit, **rule: Any) -> dict[str, Any]:
    status, body = kit.admin("POST", "faults", rule)
    assert status == 200, body
    added: dict[str, Any] = body["rule"]
    return added


def test_throttling_fails_the_next_two_calls_then_the_call_succeeds(kit: Kit, seed: SeedResources) -> None:
    autoscaling = client(kit, "autoscaling")
    rule = add(kit, operation="DescribeAutoScalingGroups", error="Throttling", count=2)
    assert (rule["service"], rule["remaining"], rule["status"]) == ("*", 2, 400)
    describe = autoscaling.describe_auto_scaling_groups
    assert code_of(describe, AutoScalingGroupNames=[seed.asg_name]) == ("Throttling", 400)
    assert kit.admin("GET", "faults")[1]["rules"][0]["remaining"] == 1
    assert code_of(describe, AutoScalingGroupNames=[seed.asg_name]) == ("Throttling", 400)
    [group] = describe(AutoScalingGroupNames=[seed.asg_name])["AutoScalingGroups"]
    assert group["AutoScalingGroupName"] == seed.asg_name
    faults = kit.admin("GET", "faults")[1]
    assert faults["rules"] == []
    assert (faults["finished"][-1]["fired"], faults["finished"][-1]["ended"]) == (2, "count used up")


def test_botocore_retries_throttling_and_5xx_as_it_does_on_aws(kit: Kit, seed: SeedResources) -> None:
    retrying = client(kit, "autoscaling", Config(retries={"total_max_attempts": 3, "mode": "standard"}))
    add(kit, operation="DescribeAutoScalingGroups", service="autoscaling", error="Throttling", count=1)
    add(kit, operation="DescribeAutoScalingGroups", error="ServiceUnavailable", count=1)
    found = retrying.describe_auto_scaling_groups(AutoScalingGroupNames=[seed.asg_name])
    assert found["ResponseMetadata"]["RetryAttempts"] == 2
    assert [r["fired"] for r in kit.admin("GET", "faults")[1]["finished"][-2:]] == [1, 1]


def test_errors_speak_each_services_protocol(kit: Kit, seed: SeedResources) -> None:
    add(kit, operation="DescribeTable", service="dynamodb", error="Throttling")
    assert code_of(client(kit, "dynamodb").describe_table, TableName=seed.table_name) == ("ThrottlingException", 400)
    add(kit, operation="GetSecretValue", error="ServiceUnavailable")
    assert code_of(client(kit, "secretsmanager").get_secret_value, SecretId="x") == ("ServiceUnavailable", 503)
    add(kit, operation="DescribeInstances", error="Throttling")
    assert code_of(client(kit, "ec2").describe_instances) == ("RequestLimitExceeded", 400)
    add(kit, operation="DescribeAlarms", error="InternalError")  # CloudWatch: JSON, query-compatible
    assert code_of(client(kit, "cloudwatch").describe_alarms) == ("InternalFailure", 500)
    add(kit, operation="DescribeTargetGroups", error="AccessDenied", status=403, message="not you")
    with pytest.raises(ClientError) as raised:
        client(kit, "elbv2").describe_target_groups()
    assert raised.value.response["Error"] == {"Type": "Sender", "Code": "AccessDenied", "Message": "not you"}
    assert client(kit, "dynamodb").describe_table(TableName=seed.table_name)["Table"]["TableName"] == seed.table_name


def test_a_lost_response_leaves_exactly_one_refresh_and_the_retry_sees_it(kit: Kit, seed: SeedResources) -> None:
    add(kit, operation="StartInstanceRefresh", service="autoscaling", timeout=4, count=1)
    retry_once = {"total_max_attempts": 2, "mode": "standard"}
    impatient = client(kit, "autoscaling", Config(read_timeout=2, retries=retry_once))
    started = time.monotonic()
    code, status = code_of(impatient.start_instance_refresh, AutoScalingGroupName=seed.asg_name,
                           Preferences={"MinHealthyPercentage": 50})
    assert time.monotonic() - started >= 2  # the first attempt's read timed out
    assert (code, status) == ("InstanceRefreshInProgress", 400)  # the retry met the refresh it started
    refreshes = kit.client("autoscaling").describe_instance_refreshes(AutoScalingGroupName=seed.asg_name)
    assert len(refreshes["InstanceRefreshes"]) == 1
    kit.client("autoscaling").cancel_instance_refresh(AutoScalingGroupName=seed.asg_name)


def test_without_retries_the_lost_response_is_a_read_timeout(kit: Kit, seed: SeedResources) -> None:
    add(kit, operation="DescribeAutoScalingGroups", timeout=3)
    impatient = client(kit, "autoscaling", Config(read_timeout=1, retries={"total_max_attempts": 1}))
    with pytest.raises(ReadTimeoutError):
        impatient.describe_auto_scaling_groups(AutoScalingGroupNames=[seed.asg_name])
    # Meanwhile the rest of the cloud answers: the held response does not hold the server's lock.
    assert kit.group(seed.asg_name)["AutoScalingGroupName"] == seed.asg_name


def test_latency_delays_the_answer(kit: Kit, seed: SeedResources) -> None:
    add(kit, operation="DescribeAutoScalingGroups", service="autoscaling", latency=1.0, count=1)
    started = time.monotonic()
    kit.group(seed.asg_name)
    assert time.monotonic() - started >= 1.0


def test_windows_and_delays_follow_the_servers_clock() -> None:
    script = Path(__file__).with_name("faults_clock_run.py")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["window"] == ["RequestLimitExceeded", "RequestLimitExceeded", "ok"]
    assert seen["after_window"]["rules"] == []
    assert seen["after_window"]["finished"][0]["ended"] == "window expired"
    assert seen["after_window"]["finished"][0]["fired"] == 2
    assert seen["sleeps"] == [7.0, 15.0]  # DescribeImages' latency, RunInstances' held response
    instance = seen["instance"]
    assert seen["kill"][0] == 200 and seen["kill"][1]["action"] == "kill"
    assert seen["stop"][0] == 200 and seen["state"]["Name"] == "stopped"
    assert seen["kill_stopped"][0] == 409
    assert ["kill", instance] in seen["events"] and ["stop", instance] in seen["events"]
    assert seen["events"].index(["kill", instance]) < seen["events"].index(["stop", instance])


def test_killed_and_stopped_group_members_are_replaced(kit: Kit, seed: SeedResources) -> None:
    kit.client("autoscaling").update_auto_scaling_group(AutoScalingGroupName=seed.asg_name, HealthCheckGracePeriod=0)
    killed, stopped, *_ = [m["InstanceId"] for m in kit.group(seed.asg_name)["Instances"]]
    status, body = kit.admin("POST", f"instances/{killed}/kill")
    assert status == 200 and body["effect"].startswith("no data plane")  # the session sandbox has none
    status, body = kit.admin("POST", f"instances/{stopped}/stop")
    assert status == 200 and body["state"] == "stopped"

    def replaced() -> bool:
        ids = [m["InstanceId"] for m in kit.group(seed.asg_name)["Instances"]]
        return killed not in ids and stopped not in ids and len(ids) == 4

    kit.wait_for("both replaced", replaced, timeout=60)
    states = kit.instances([killed, stopped])
    assert {states[killed]["State"]["Name"], states[stopped]["State"]["Name"]} == {"terminated"}


def test_the_admin_api_refuses_bad_faults_with_a_reason(kit: Kit) -> None:
    bad: list[dict[str, Any]] = [
        {"operation": "DescribeAutoScalingGroups"},
        {"operation": "DescribeAutoScalingGroups", "error": "Throttling", "latency": 1},
        {"operation": "DescribeAutoScalingGroup", "error": "Throttling"},
        {"operation": "DescribeAutoScalingGroups", "service": "ec2", "error": "Throttling"},
        {"operation": "DescribeAutoScalingGroups", "timeout": -1},
        {"operation": "DescribeAutoScalingGroups", "error": "Throttling", "count": 0},
        {"operation": "DescribeAutoScalingGroups", "error": "Throttling", "when": "now"},
    ]
    for rule in bad:
        status, body = kit.admin("POST", "faults", rule)
        assert status == 400 and body["error"], rule
    assert kit.admin("GET", "faults")[1]["rules"] == []
    assert kit.admin("DELETE", "faults/fault-999")[0] == 404
    assert kit.admin("POST", "instances/not-an-id/kill")[0] == 400
    assert kit.admin("POST", "instances/i-0123456789abcdef0/kill")[0] == 404
    assert kit.admin("POST", "instances/i-0123456789abcdef0/reboot")[0] == 404
    rule = add(kit, operation="*", service="sts", error="Throttling", seconds=60)
    assert 59 < rule["expires_in"] <= 60 and rule["remaining"] is None
    status, body = kit.admin("DELETE", f"faults/{rule['id']}")
    assert status == 200 and body["rules"] == []


# ---- inv sandbox.fault ---------------------------------------------------------------------------


def inv(kit: Kit, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["KILN_SANDBOX_DIR"] = str(kit.info.state_dir)
    return subprocess.run([str(INV), "sandbox.fault", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_cli_adds_lists_and_clears_rules(kit: Kit, seed: SeedResources) -> None:
    added = inv(kit, "--operation", "DescribeAutoScalingGroups", "--error", "Throttling", "--count", "2", "--json")
    assert added.returncode == 0, added.stderr
    document = json.loads(added.stdout)
    assert document["added"]["error"] == "Throttling" and [r["id"] for r in document["rules"]] == [
        document["added"]["id"]
    ]
    assert code_of(client(kit, "autoscaling").describe_auto_scaling_groups) == ("Throttling", 400)

    timeout = inv(kit, "--operation", "StartInstanceRefresh", "--service", "autoscaling", "--timeout",
                  "--seconds", "30")
    assert timeout.returncode == 0, timeout.stderr
    assert "timeout 15 s" in timeout.stdout and "fault rules in force" in timeout.stdout

    listed = json.loads(inv(kit, "--list", "--json").stdout)
    assert [(r["operation"], r["remaining"], r["fired"]) for r in listed["rules"]] == [
        ("DescribeAutoScalingGroups", 1, 1),
        ("StartInstanceRefresh", None, 0),
    ]
    cleared = inv(kit, "--clear")
    assert cleared.returncode == 0 and "cleared 2 fault rule(s)" in cleared.stdout
    assert kit.admin("GET", "faults")[1]["rules"] == []

    sick = kit.group(seed.asg_name)["Instances"][0]["InstanceId"]
    assert inv(kit, "--unhealthy", sick).returncode == 0
    assert kit.admin("GET", "target-health")[1]["unhealthy_instances"] == [sick]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "say one thing to do"),
        (["--list", "--clear"], "--list and --clear"),
        (["--error", "Throttling"], "name its --operation"),
        (["--operation", "DescribeAutoScalingGroups"], "exactly one of --error"),
        (["--operation", "DescribeAutoScalingGroups", "--latency", "1", "--timeout", "2"], "--latency and --timeout"),
        (["--operation", "describe-groups", "--latency", "1"], "--operation 'describe-groups'"),
        (["--operation", "DescribeAutoScalingGroups", "--latency", "soon"], "--latency takes a number"),
        (["--operation", "DescribeAutoScalingGroups", "--latency", "1", "--count", "0"], "--count must be more than 0"),
        (["--operation", "DescribeAutoScalingGroups", "--latency", "1", "--status", "503"], "go with --error"),
        (["--operation", "DescribeAutoScalingGroup", "--error", "Throttling"], "no service Kiln calls"),
        (["--kill", "web-1"], "an instance id"),
    ],
)
def test_the_cli_refuses_bad_input_in_one_line_and_changes_nothing(kit: Kit, args: list[str], says: str) -> None:
    refused = inv(kit, *args)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert says in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert kit.admin("GET", "faults")[1]["rules"] == []


def test_the_cli_says_when_the_sandbox_is_not_running(kit: Kit, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["KILN_SANDBOX_DIR"] = str(tmp_path / unique("none"))
    done = subprocess.run([str(INV), "sandbox.fault", "--list"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 5 and "not running" in done.stderr
