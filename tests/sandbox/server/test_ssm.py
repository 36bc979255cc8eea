"""SSM Run Command in the sandbox: scripts run inside real instances, as root, through boto3 and the
AWS CLI; who is managed; what a sandbox without a data plane answers; counting and faults.

The data-plane tests share one sandbox with real instances (root on Linux); the others use the
session's control-plane sandbox.
"""

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
from aws_sandbox_kit import Kit
from botocore.config import Config
from botocore.exceptions import ClientError

from release.sandbox import server_process
from release.sandbox.provision import SeedResources, provision
from release.sandbox.server_process import SandboxInfo

REGION = "us-east-1"
AWS_CLI = Path(sys.executable).parent / "aws"
NO_RETRIES = Config(retries={"total_max_attempts": 1})
TERMINAL = ("Success", "Failed", "TimedOut", "Cancelled")


def send(ssm: Any, instance_ids: list[str], *commands: str, **extra: Any) -> str:
    parameters = {"commands": list(commands), **extra.pop("parameters", {})}
    answer = ssm.send_command(InstanceIds=instance_ids, DocumentName="AWS-RunShellScript", Parameters=parameters,
                              **extra)["Command"]  # fmt: skip
    assert answer["Status"] == "Pending"
    return str(answer["CommandId"])


def wait(ssm: Any, command_id: str, instance_id: str, timeout: float = 30) -> dict[str, Any]:
    """GetCommandInvocation until the invocation ends (the instance may still be booting)."""
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, Any] = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        if found["Status"] in TERMINAL or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# ---- with real instances ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SandboxInfo, Path]]:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("the data plane needs root on Linux")
    state_dir = tmp_path_factory.mktemp("ssm-sandbox")
    info = server_process.start(state_dir, dataplane=True, time_scale=0.1)
    try:
        yield info, state_dir
    finally:
        server_process.stop(state_dir)


@pytest.fixture(scope="module")
def real_client(real: tuple[SandboxInfo, Path]) -> Any:
    def get(service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=real[0].endpoint,
                            aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip

    return get


@pytest.fixture(scope="module")
def fleet(real_client: Any) -> list[str]:
    """The seed group's instances (their profile is SSM-capable), with EC2 health checks so the
    group keeps them (the base image serves no /health)."""
    seed = provision(lambda service, region: real_client(service), REGION)
    real_client("autoscaling").update_auto_scaling_group(AutoScalingGroupName=seed.asg_name, HealthCheckType="EC2")
    group = real_client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[seed.asg_name])
    return [m["InstanceId"] for m in group["AutoScalingGroups"][0]["Instances"]]


@pytest.mark.root
def test_a_script_runs_as_root_inside_the_instance_and_reports_its_output(
    real: tuple[SandboxInfo, Path], real_client: Any, fleet: list[str]
) -> None:
    ssm, instance_id = real_client("ssm"), fleet[0]
    proof = f"/root/ssm-proof-{os.getpid()}"
    command_id = send(ssm, [instance_id], "id -u", f"echo written-inside > {proof}", f"cat {proof}",
                      "hostname", "pwd", "echo to-stderr >&2")  # fmt: skip
    done = wait(ssm, command_id, instance_id)
    assert (done["Status"], done["StatusDetails"], done["ResponseCode"]) == ("Success", "Success", 0), done
    [private_ip] = [i["PrivateIpAddress"] for r in real_client("ec2").describe_instances(InstanceIds=[instance_id])[
        "Reservations"] for i in r["Instances"]]  # fmt: skip
    hostname = "ip-" + private_ip.replace(".", "-")
    assert done["StandardOutputContent"] == f"0\nwritten-inside\n{hostname}\n/usr/bin\n"
    assert done["StandardErrorContent"] == "to-stderr\n"
    # Written in the instance's copy-on-write root, not on this machine.
    assert not Path(proof).exists()
    upper = real[1] / "dataplane" / "instances" / instance_id / "upper"
    assert (upper / proof.lstrip("/")).read_text() == "written-inside\n"
    assert done["ExecutionElapsedTime"].startswith("PT") and done["ExecutionEndDateTime"].endswith("Z")


@pytest.mark.root
def test_a_failing_script_reports_failed_with_its_exit_code(real_client: Any, fleet: list[str]) -> None:
    ssm = real_client("ssm")
    command_id = send(ssm, [fleet[1]], "echo before", "ls /no/such/dir", "exit 3")
    done = wait(ssm, command_id, fleet[1])
    assert (done["Status"], done["StatusDetails"], done["ResponseCode"]) == ("Failed", "Failed", 3)
    assert done["StandardOutputContent"] == "before\n" and "/no/such/dir" in done["StandardErrorContent"]
    listed = ssm.list_command_invocations(CommandId=command_id, Details=True)["CommandInvocations"]
    [plugin] = listed[0]["CommandPlugins"]
    assert plugin["Name"] == "aws:runShellScript" and plugin["ResponseCode"] == 3
    assert plugin["Output"].startswith("before\n\n----------ERROR-------\n")
    assert ssm.list_commands(CommandId=command_id)["Commands"][0]["Status"] == "Failed"


@pytest.mark.root
def test_the_execution_timeout_kills_the_script(real_client: Any, fleet: list[str]) -> None:
    ssm = real_client("ssm")
    started = time.monotonic()
    # executionTimeout 10 AWS seconds: 1 s at time scale 0.1.
    command_id = send(ssm, [fleet[2]], "echo started", "sleep 300", parameters={"executionTimeout": ["10"]})
    done = wait(ssm, command_id, fleet[2])
    assert (done["Status"], done["StatusDetails"], done["ResponseCode"]) == ("TimedOut", "ExecutionTimedOut", 137)
    assert time.monotonic() - started < 10
    # The whole process group died: no sleep is left in the instance.
    check = send(ssm, [fleet[2]], "ps -e -o comm= | grep -c '^sleep$' || true")
    assert wait(ssm, check, fleet[2])["StandardOutputContent"] == "0\n"


@pytest.mark.root
def test_output_is_cut_at_24000_characters(real_client: Any, fleet: list[str]) -> None:
    ssm = real_client("ssm")
    command_id = send(ssm, [fleet[3]], "head -c 30000 /dev/zero | tr '\\0' a",
                      "head -c 9000 /dev/zero | tr '\\0' e >&2")
    done = wait(ssm, command_id, fleet[3])
    assert done["Status"] == "Success"
    assert done["StandardOutputContent"] == "a" * 24_000 and done["StandardErrorContent"] == "e" * 8_000


@pytest.mark.root
def test_an_instance_without_an_ssm_capable_profile_is_refused(real_client: Any, fleet: list[str]) -> None:
    ec2, ssm = real_client("ec2"), real_client("ssm")
    image = ec2.describe_instances(InstanceIds=[fleet[0]])["Reservations"][0]["Instances"][0]["ImageId"]
    bare = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    try:
        with pytest.raises(ClientError) as refused:
            ssm.send_command(InstanceIds=[fleet[0], bare], DocumentName="AWS-RunShellScript",
                             Parameters={"commands": ["true"]})  # fmt: skip
        assert refused.value.response["Error"]["Code"] == "InvalidInstanceId"
        assert refused.value.response["Error"]["Message"] == (
            f"Instances [[{bare}]] not in a valid state for account 123456789012")
    finally:
        ec2.terminate_instances(InstanceIds=[bare])


@pytest.mark.root
def test_terminating_the_instance_under_a_command_makes_it_undeliverable(real_client: Any, fleet: list[str]) -> None:
    ssm, ec2 = real_client("ssm"), real_client("ec2")
    image = ec2.describe_instances(InstanceIds=[fleet[0]])["Reservations"][0]["Instances"][0]["ImageId"]
    template = ec2.describe_launch_templates()["LaunchTemplates"][0]["LaunchTemplateName"]
    # A launch from the seed's template gets its instance profile (as the bake's smoke test does).
    spare = ec2.run_instances(LaunchTemplate={"LaunchTemplateName": template}, ImageId=image, MinCount=1,
                              MaxCount=1)["Instances"][0]["InstanceId"]  # fmt: skip
    command_id = send(ssm, [spare], "echo up", "sleep 300")
    deadline = time.monotonic() + 30
    while ssm.get_command_invocation(CommandId=command_id, InstanceId=spare)["Status"] != "InProgress":
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.05)
    ec2.terminate_instances(InstanceIds=[spare])
    done = wait(ssm, command_id, spare)
    assert (done["Status"], done["StatusDetails"]) == ("Failed", "Undeliverable")


@pytest.mark.root
def test_the_aws_cli_sends_and_lists_commands(real: tuple[SandboxInfo, Path], real_client: Any,
                                              fleet: list[str]) -> None:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}

    def aws(*args: str) -> Any:
        done = subprocess.run([str(AWS_CLI), "ssm", *args, "--endpoint-url", real[0].endpoint, "--output", "json"],
                              capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    sent = aws("send-command", "--instance-ids", fleet[1], "--document-name", "AWS-RunShellScript",
               "--comment", "from the CLI", "--parameters", "commands=echo from-the-cli")["Command"]  # fmt: skip
    assert sent["Status"] == "Pending" and sent["Comment"] == "from the CLI"
    done = wait(real_client("ssm"), sent["CommandId"], fleet[1])
    assert done["StandardOutputContent"] == "from-the-cli\n"
    listed = aws("list-commands")["Commands"]
    assert listed[0]["CommandId"] == sent["CommandId"] and listed[0]["Status"] == "Success"
    invocation = aws("get-command-invocation", "--command-id", sent["CommandId"], "--instance-id", fleet[1])
    assert (invocation["Status"], invocation["StandardOutputContent"]) == ("Success", "from-the-cli\n")
    details = aws("list-command-invocations", "--command-id", sent["CommandId"], "--details")
    assert details["CommandInvocations"][0]["CommandPlugins"][0]["Output"] == "from-the-cli\n"


# ---- the control plane alone ------------------------------------------------------------------------------


def test_without_a_data_plane_a_managed_instance_is_undeliverable(kit: Kit, seed: SeedResources) -> None:
    ssm = kit.client("ssm")
    instance_id = kit.group(seed.asg_name)["Instances"][0]["InstanceId"]
    command_id = send(ssm, [instance_id], "true")
    done = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
    assert (done["Status"], done["StatusDetails"], done["ResponseCode"]) == ("Failed", "Undeliverable", -1)
    assert ssm.list_commands(CommandId=command_id)["Commands"][0]["StatusDetails"] == "Incomplete"


def test_run_command_calls_are_counted_and_faulted_like_any_other(kit: Kit, seed: SeedResources) -> None:
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=kit.info.endpoint, aws_access_key_id="testing",
                       aws_secret_access_key="testing", config=NO_RETRIES)  # fmt: skip
    instance_id = kit.group(seed.asg_name)["Instances"][0]["InstanceId"]
    kit.admin("DELETE", "faults")
    status, _ = kit.admin("POST", "faults", {"operation": "SendCommand", "service": "ssm", "error": "Throttling"})
    assert status == 200
    before = kit.admin("GET", "requests")[1]["calls"].get("ssm", {}).get("SendCommand", 0)
    with pytest.raises(ClientError) as throttled:
        ssm.send_command(InstanceIds=[instance_id], DocumentName="AWS-RunShellScript",
                         Parameters={"commands": ["true"]})  # fmt: skip
    assert throttled.value.response["Error"]["Code"] == "ThrottlingException"
    send(ssm, [instance_id], "true")
    assert kit.admin("GET", "requests")[1]["calls"]["ssm"]["SendCommand"] == before + 2
    with pytest.raises(ClientError) as unknown:
        ssm.get_command_invocation(CommandId="00000000-0000-0000-0000-000000000000", InstanceId=instance_id)
    assert unknown.value.response["Error"]["Code"] == "InvocationDoesNotExist"
    with pytest.raises(ClientError) as other:
        ssm.send_command(InstanceIds=[instance_id], DocumentName="AWS-RunPowerShellScript",
                         Parameters={"commands": ["true"]})  # fmt: skip
    assert other.value.response["Error"]["Code"] == "InvalidDocument"
