"""Run Command's engine (release/sandbox/engines/ssm.py) and who is managed (managed.py), on a fake clock.

Nodes and the agent are fakes: a test says which instances exist, are managed and online, and
when (and how) each script ends. No process runs and nothing sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from release.clock import FakeClock
from release.sandbox.contracts import Finished, Script
from release.sandbox.engines import ssm
from release.sandbox.engines.ssm import Node, RunCommand, SsmError
from release.sandbox.patches import managed

A, B, C = "i-0aaaaaaaaaaaaaaa1", "i-0bbbbbbbbbbbbbbb2", "i-0ccccccccccccccc3"
SCALE = 0.1


@dataclass
class FakeRun:
    script: Script
    result: Finished | None = None
    killed: bool = False

    def poll(self) -> Finished | None:
        return self.result

    def kill(self) -> Finished:
        self.killed = True
        if self.result is None:
            self.result = Finished(-9, "partial\n", "")
        return self.result


@dataclass
class FakeAgent:
    runs: dict[str, FakeRun] = field(default_factory=dict)  # instance id -> its latest run

    def run_script(self, script: Script) -> FakeRun:
        self.runs[script.instance_id] = FakeRun(script)
        return self.runs[script.instance_id]

    def finish(self, instance_id: str, code: int = 0, stdout: str = "", stderr: str = "") -> None:
        self.runs[instance_id].result = Finished(code, stdout, stderr)


@dataclass
class FakeNodes:
    nodes: dict[str, Node] = field(default_factory=dict)

    def node(self, instance_id: str) -> Node:
        return self.nodes.get(instance_id, Node(None))

    def set(self, instance_id: str, state: str = "running", *, managed: bool = True, online: bool = True) -> None:
        self.nodes[instance_id] = Node(state, managed, online and state == "running")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def nodes() -> FakeNodes:
    found = FakeNodes()
    for instance_id in (A, B, C):
        found.set(instance_id)
    return found


@pytest.fixture
def agent() -> FakeAgent:
    return FakeAgent()


@pytest.fixture
def engine(clock: FakeClock, nodes: FakeNodes, agent: FakeAgent) -> RunCommand:
    return RunCommand(clock, nodes, agent, account_id="123456789012", region="us-east-1", time_scale=SCALE)


def send(engine: RunCommand, *ids: str, commands: tuple[str, ...] = ("echo hi",), **extra: Any) -> str:
    params: dict[str, Any] = {"DocumentName": "AWS-RunShellScript", "InstanceIds": list(ids or (A,)),
                              "Parameters": {"commands": list(commands), **extra.pop("parameters", {})}, **extra}
    return str(engine.send(params)["Command"]["CommandId"])


def invocation(engine: RunCommand, command_id: str, instance_id: str = A) -> dict[str, Any]:
    return engine.get_invocation({"CommandId": command_id, "InstanceId": instance_id})


def command(engine: RunCommand, command_id: str) -> dict[str, Any]:
    found: dict[str, Any] = engine.list_commands({"CommandId": command_id})["Commands"][0]
    return found


# ---- the happy path ---------------------------------------------------------------------------------


def test_send_answers_pending_then_the_script_runs_and_succeeds(engine: RunCommand, agent: FakeAgent,
                                                                clock: FakeClock) -> None:
    answer = engine.send({"DocumentName": "AWS-RunShellScript", "InstanceIds": [A], "Comment": "hello",
                          "Parameters": {"commands": ["echo hi", "id -u"]}})["Command"]  # fmt: skip
    assert (answer["Status"], answer["StatusDetails"], answer["TargetCount"]) == ("Pending", "Pending", 1)
    assert answer["DocumentVersion"] == "$DEFAULT" and answer["TimeoutSeconds"] == 3600
    # ExpiresAfter: TimeoutSeconds + executionTimeout (3600 + 3600 AWS seconds), scaled.
    assert (answer["ExpiresAfter"] - answer["RequestedDateTime"]).total_seconds() == pytest.approx(7200 * SCALE)
    command_id = answer["CommandId"]
    run = agent.runs[A]  # delivered at once: the instance is online
    assert run.script.commands == ("echo hi", "id -u")
    assert run.script.working_directory == "/usr/bin"
    assert run.script.environment == {"AWS_SSM_INSTANCE_ID": A, "AWS_SSM_REGION_NAME": "us-east-1"}
    assert run.script.directory.startswith(f"/var/lib/amazon/ssm/{A}/document/orchestration/{command_id}/")
    running = invocation(engine, command_id)
    assert (running["Status"], running["ResponseCode"], running["StandardOutputContent"]) == ("InProgress", -1, "")
    assert running["ExecutionEndDateTime"] == ""

    clock.advance(0.25)
    agent.finish(A, 0, "hi\n0\n", "")
    done = invocation(engine, command_id)
    assert (done["Status"], done["StatusDetails"], done["ResponseCode"]) == ("Success", "Success", 0)
    assert done["StandardOutputContent"] == "hi\n0\n" and done["StandardErrorContent"] == ""
    assert done["ExecutionElapsedTime"] == "PT0.250S"
    assert done["ExecutionStartDateTime"].endswith("Z") and done["PluginName"] == "aws:runShellScript"
    summary = command(engine, command_id)
    assert (summary["Status"], summary["CompletedCount"], summary["ErrorCount"], summary["Comment"]) == (
        "Success", 1, 0, "hello")


def test_a_failing_script_is_failed_with_its_exit_code(engine: RunCommand, agent: FakeAgent) -> None:
    command_id = send(engine, commands=("echo oops >&2", "exit 3"))
    agent.finish(A, 3, "", "oops\n")
    done = invocation(engine, command_id)
    assert (done["Status"], done["StatusDetails"], done["ResponseCode"]) == ("Failed", "Failed", 3)
    assert done["StandardErrorContent"] == "oops\n"
    assert (command(engine, command_id)["Status"], command(engine, command_id)["ErrorCount"]) == ("Failed", 1)


def test_the_execution_timeout_kills_the_script(engine: RunCommand, agent: FakeAgent, clock: FakeClock) -> None:
    command_id = send(engine, commands=("sleep 600",), parameters={"executionTimeout": ["10"]})
    clock.advance(10 * SCALE - 0.01)
    engine.tick()
    assert invocation(engine, command_id)["Status"] == "InProgress" and not agent.runs[A].killed
    clock.advance(0.02)
    engine.tick()
    done = invocation(engine, command_id)
    assert agent.runs[A].killed
    assert (done["Status"], done["StatusDetails"], done["ResponseCode"]) == ("TimedOut", "ExecutionTimedOut", 137)
    assert done["StandardOutputContent"] == "partial\n"  # what it wrote before the kill
    assert (command(engine, command_id)["Status"], command(engine, command_id)["StatusDetails"]) == (
        "TimedOut", "ExecutionTimedOut")


def test_a_script_killed_inside_a_running_instance_is_failed_with_minus_one(
    engine: RunCommand, agent: FakeAgent
) -> None:
    command_id = send(engine)
    agent.finish(A, -15)
    assert (invocation(engine, command_id)["Status"], invocation(engine, command_id)["ResponseCode"]) == ("Failed", -1)


def test_output_is_cut_at_24000_and_8000_characters(engine: RunCommand, agent: FakeAgent) -> None:
    command_id = send(engine)
    agent.finish(A, 0, "o" * 30_000, "e" * 9_000)
    done = invocation(engine, command_id)
    assert len(done["StandardOutputContent"]) == 24_000 and len(done["StandardErrorContent"]) == 8_000
    plugin = engine.list_invocations({"CommandId": command_id, "Details": True})["CommandInvocations"][0][
        "CommandPlugins"][0]
    assert len(plugin["Output"]) <= 2_500 and "---Output truncated---" in plugin["Output"]


# ---- delivery -----------------------------------------------------------------------------------------


def test_unmanaged_unknown_or_terminated_instances_refuse_the_whole_command(
    engine: RunCommand, nodes: FakeNodes, agent: FakeAgent
) -> None:
    nodes.set(B, managed=False)
    nodes.set(C, "terminated")
    with pytest.raises(SsmError) as refused:
        send(engine, A, B, C, "i-0ddddddddddddddd4")
    assert refused.value.code == "InvalidInstanceId"
    assert refused.value.message == (f"Instances [[{B}, {C}, i-0ddddddddddddddd4]] not in a valid state for "
                                     "account 123456789012")  # fmt: skip
    assert not agent.runs and not engine.commands


def test_a_stopped_instance_is_delayed_and_gets_the_command_once_it_runs(
    engine: RunCommand, nodes: FakeNodes, agent: FakeAgent, clock: FakeClock
) -> None:
    nodes.set(A, "stopped")
    command_id = send(engine)
    assert (invocation(engine, command_id)["Status"], command(engine, command_id)["Status"]) == ("Delayed", "Pending")
    nodes.set(A, "running", online=False)  # started, still booting: the agent is not up yet
    engine.tick()
    assert invocation(engine, command_id)["Status"] == "Delayed" and A not in agent.runs
    nodes.set(A, "running")
    engine.tick()
    assert invocation(engine, command_id)["Status"] == "InProgress" and A in agent.runs


def test_an_instance_that_never_comes_back_times_out_delivery(
    engine: RunCommand, nodes: FakeNodes, clock: FakeClock
) -> None:
    nodes.set(A, "stopped")
    command_id = send(engine, TimeoutSeconds=60)
    clock.advance(60 * SCALE)
    done = invocation(engine, command_id)
    assert (done["Status"], done["StatusDetails"], done["ResponseCode"]) == ("TimedOut", "DeliveryTimedOut", -1)
    summary = command(engine, command_id)
    assert (summary["Status"], summary["StatusDetails"], summary["DeliveryTimedOutCount"]) == (
        "TimedOut", "DeliveryTimedOut", 1)


def test_a_terminated_instance_makes_its_invocation_undeliverable(
    engine: RunCommand, nodes: FakeNodes, agent: FakeAgent
) -> None:
    command_id = send(engine, A, B)
    nodes.set(A, "terminated")
    agent.finish(B, 0)
    engine.tick()
    assert agent.runs[A].killed
    done = invocation(engine, command_id, A)
    assert (done["Status"], done["StatusDetails"]) == ("Failed", "Undeliverable")
    # Undeliverable invocations do not count against the command's Success.
    assert command(engine, command_id)["Status"] == "Success"


def test_an_instance_stopped_under_its_script_never_reports_and_expires(
    engine: RunCommand, nodes: FakeNodes, agent: FakeAgent, clock: FakeClock
) -> None:
    command_id = send(engine, TimeoutSeconds=30, parameters={"executionTimeout": ["20"]})
    nodes.set(A, "stopped")
    agent.finish(A, -15, "half", "")  # SIGTERM from the instance's shutdown
    engine.tick()
    assert invocation(engine, command_id)["Status"] == "InProgress"
    clock.advance(50 * SCALE)  # ExpiresAfter: TimeoutSeconds + executionTimeout
    done = invocation(engine, command_id)
    assert (done["Status"], done["StatusDetails"]) == ("TimedOut", "DeliveryTimedOut")
    assert done["StandardOutputContent"] == ""  # the agent died with the instance: nothing reported


def test_without_an_agent_every_invocation_is_undeliverable(clock: FakeClock, nodes: FakeNodes) -> None:
    engine = RunCommand(clock, nodes, None, account_id="123456789012", region="us-east-1", time_scale=SCALE)
    answer = engine.send({"DocumentName": "AWS-RunShellScript", "InstanceIds": [A, B],
                          "Parameters": {"commands": ["true"]}})["Command"]  # fmt: skip
    assert answer["Status"] == "Pending"
    assert invocation(engine, answer["CommandId"])["StatusDetails"] == "Undeliverable"
    assert (command(engine, answer["CommandId"])["Status"], command(engine, answer["CommandId"])["StatusDetails"]) == (
        "Failed", "Incomplete")


# ---- concurrency, errors, cancel ----------------------------------------------------------------------


def test_max_concurrency_runs_one_at_a_time_and_max_errors_stops_the_rest(
    engine: RunCommand, agent: FakeAgent
) -> None:
    command_id = send(engine, A, B, C, MaxConcurrency="1", MaxErrors="0")
    assert list(agent.runs) == [A]
    agent.finish(A, 0)
    engine.tick()
    assert list(agent.runs) == [A, B]
    agent.finish(B, 1)
    engine.tick()
    assert C not in agent.runs
    assert invocation(engine, command_id, C)["StatusDetails"] == "Terminated"
    assert command(engine, command_id)["Status"] == "Failed"


def test_cancel_stops_what_runs_and_what_waits(engine: RunCommand, agent: FakeAgent, nodes: FakeNodes) -> None:
    nodes.set(B, "stopped")
    command_id = send(engine, A, B)
    assert invocation(engine, command_id, B)["Status"] == "Delayed"
    engine.cancel({"CommandId": command_id})
    assert agent.runs[A].killed
    assert invocation(engine, command_id, B)["Status"] == "Cancelled"
    done = invocation(engine, command_id, A)
    assert (done["Status"], done["ResponseCode"]) == ("Cancelled", 137)
    assert command(engine, command_id)["Status"] == "Cancelled"


# ---- requests AWS refuses -------------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "code"), [
    ({"DocumentName": "AWS-RunPowerShellScript"}, "InvalidDocument"),
    ({"DocumentVersion": "7"}, "InvalidDocumentVersion"),
    ({"InstanceIds": [A, A]}, "DuplicateInstanceId"),
    ({"InstanceIds": [f"i-{n:017x}" for n in range(51)]}, "ValidationException"),
    ({"InstanceIds": []}, "ValidationException"),
    ({"Parameters": {"commands": []}}, "InvalidParameters"),
    ({"Parameters": {"commands": ["true"], "sudo": ["yes"]}}, "InvalidParameters"),
    ({"Parameters": {"commands": ["true"], "executionTimeout": ["0"]}}, "InvalidParameters"),
    ({"Parameters": {"commands": ["true"], "executionTimeout": ["172801"]}}, "InvalidParameters"),
    ({"TimeoutSeconds": 29}, "ValidationException"),
    ({"MaxConcurrency": "0"}, "ValidationException"),
    ({"MaxErrors": "-1"}, "ValidationException"),
])  # fmt: skip
def test_send_refuses_what_aws_refuses(engine: RunCommand, params: dict[str, Any], code: str) -> None:
    request: dict[str, Any] = {"DocumentName": "AWS-RunShellScript", "InstanceIds": [A],
                               "Parameters": {"commands": ["true"]}, **params}  # fmt: skip
    with pytest.raises(SsmError) as refused:
        engine.send(request)
    assert refused.value.code == code


def test_reads_of_what_does_not_exist(engine: RunCommand) -> None:
    command_id = send(engine)
    with pytest.raises(SsmError) as missing:
        invocation(engine, command_id, B)
    assert missing.value.code == "InvocationDoesNotExist"
    with pytest.raises(SsmError) as unknown:
        invocation(engine, "00000000-0000-0000-0000-000000000000")
    assert unknown.value.code == "InvocationDoesNotExist"
    with pytest.raises(SsmError) as plugin:
        engine.get_invocation({"CommandId": command_id, "InstanceId": A, "PluginName": "aws:runPowerShellScript"})
    assert plugin.value.code == "InvalidPluginName"
    with pytest.raises(SsmError) as listed:
        engine.list_commands({"CommandId": "00000000-0000-0000-0000-000000000000"})
    assert listed.value.code == "InvalidCommandId"


def test_lists_are_newest_first_and_paged(engine: RunCommand, agent: FakeAgent) -> None:
    sent = [send(engine, A, B) for _ in range(3)]
    first = engine.list_commands({"MaxResults": 2})
    second = engine.list_commands({"MaxResults": 2, "NextToken": first["NextToken"]})
    assert [c["CommandId"] for c in first["Commands"] + second["Commands"]] == sent[::-1]
    assert "NextToken" not in second
    invocations = engine.list_invocations({"CommandId": sent[0]})["CommandInvocations"]
    assert [i["InstanceId"] for i in invocations] == [A, B] and invocations[0]["CommandPlugins"] == []
    assert [c["CommandId"] for c in engine.list_commands({"InstanceId": B})["Commands"]] == sent[::-1]
    with pytest.raises(SsmError) as bad:
        engine.list_commands({"Filters": [{"key": "Colour", "value": "red"}]})
    assert bad.value.code == "InvalidFilterKey"


# ---- pure helpers --------------------------------------------------------------------------------------


def test_plugin_output_joins_and_cuts_like_the_agent() -> None:
    assert ssm.plugin_output("out", "") == "out"
    assert ssm.plugin_output("out", "err") == "out\n----------ERROR-------\nerr"
    both = ssm.plugin_output("o" * 3000, "e" * 3000)
    assert both.endswith("---Error truncated----") and "---Output truncated---" in both and len(both) <= 2500
    long_err = ssm.plugin_output("short", "e" * 3000)
    assert long_err.startswith("short\n----------ERROR-------\n") and len(long_err) <= 2500
    long_out = ssm.plugin_output("o" * 3000, "boom")
    assert long_out.endswith("---Output truncated---\n----------ERROR-------\nboom") and len(long_out) <= 2500


def test_durations_and_times_as_aws_writes_them() -> None:
    assert ssm.iso_duration(0.031) == "PT0.031S"
    assert ssm.iso_duration(3600.271) == "PT1H0.271S"
    assert ssm.iso_duration(75) == "PT1M15.000S"
    assert ssm.count_of("10%", 5, at_least_one=True) == 1 and ssm.count_of("10%", 5, at_least_one=False) == 0
    assert ssm.count_of("50", 5, at_least_one=True) == 50


# ---- who is managed --------------------------------------------------------------------------------------

INSTANCE_ARN = f"arn:aws:ec2:us-east-1:123456789012:instance/{A}"
CORE = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["ssm:DescribeAssociation", "ssm:UpdateInstanceInformation"], "Resource": "*"},
    {"Effect": "Allow", "Action": ["ec2messages:GetMessages"], "Resource": "*"},
]}  # fmt: skip


def test_a_role_is_ssm_capable_when_a_policy_allows_the_agent_to_register() -> None:
    assert managed.allows([CORE], managed.REGISTER_ACTION, INSTANCE_ARN)
    assert managed.allows(['{"Statement": {"Effect": "Allow", "Action": "ssm:*", "Resource": "*"}}'],
                          managed.REGISTER_ACTION, INSTANCE_ARN)  # fmt: skip
    assert not managed.allows([], managed.REGISTER_ACTION, INSTANCE_ARN)
    secrets_only = {"Statement": [{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]}
    assert not managed.allows([secrets_only], managed.REGISTER_ACTION, INSTANCE_ARN)
    deny = {"Statement": [{"Effect": "Deny", "Action": "ssm:Update*", "Resource": "*"}]}
    assert not managed.allows([CORE, deny], managed.REGISTER_ACTION, INSTANCE_ARN)
    not_action = {"Statement": [{"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}]}
    assert managed.allows([not_action], managed.REGISTER_ACTION, INSTANCE_ARN)
    elsewhere = {"Statement": [{"Effect": "Allow", "Action": "ssm:UpdateInstanceInformation",
                                "Resource": "arn:aws:ec2:*:*:instance/i-0other"}]}  # fmt: skip
    assert not managed.allows([elsewhere], managed.REGISTER_ACTION, INSTANCE_ARN)
