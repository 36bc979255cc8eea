"""Run Command: SendCommand with AWS-RunShellScript, its invocations, and what they report.

The engine keeps the commands of one account and region and moves their invocations through the
states AWS documents (SSM API reference: SendCommand, GetCommandInvocation, CommandInvocation,
Command, ListCommands, ListCommandInvocations, CancelCommand; user guide "Understanding command
statuses", "Understanding command timeout values"). It knows nothing of moto or processes: which
instances exist and are managed comes from `Nodes`, and scripts run through an `Agent` (the data
plane runs them inside the instance, as the SSM agent would). Time comes from a `Clock`, and every
AWS duration is multiplied by `time_scale`, like everything the sandbox waits out. `tick()` is
called by the server's ticker (and before every read, so a result shows as soon as it exists).

An invocation's StatusDetails, and the Status it reports with it:

  Pending            Pending     not delivered yet (the instance is still booting, or waits for a
                                 MaxConcurrency slot)
  Delayed            Delayed     the instance is stopped or stopping: delivered once it runs again
  InProgress         InProgress  the script runs in the instance
  Success            Success     exit code 0
  Failed             Failed      any other exit code (ResponseCode), or killed by a signal (-1)
  ExecutionTimedOut  TimedOut    still running after executionTimeout: its process group is
                                 killed (SIGKILL), ResponseCode 137, as the agent does
  DeliveryTimedOut   TimedOut    not started within TimeoutSeconds; or still unfinished at
                                 ExpiresAfter (RequestedDateTime + TimeoutSeconds + executionTimeout),
                                 e.g. because the instance stopped or died under the script and
                                 its agent never reported back
  Cancelling/Cancelled           CancelCommand: not started -> Cancelled; running -> Cancelling,
                                 the script is killed -> Cancelled (ResponseCode 137)
  Undeliverable      Failed      the instance was terminated, or there is no agent to deliver to
                                 (a sandbox without a data plane)
  Terminated         Failed      MaxErrors exceeded: invocations not started yet are not sent

Output: StandardOutputContent is the first 24,000 characters of stdout, StandardErrorContent the
first 8,000 of stderr (both empty until the invocation ends); ListCommandInvocations' plugin
Output is stdout and stderr joined and cut to 2,500 characters the way the agent's
TruncateOutput does. ResponseCode is -1 until the script has run.
"""

from __future__ import annotations

import itertools
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from release.clock import Clock
from release.sandbox import paging
from release.sandbox.contracts import Script, ScriptRun
from release.sandbox.engines.errors import ServiceError

DOCUMENT = "AWS-RunShellScript"
DOCUMENT_VERSIONS = ("$DEFAULT", "$LATEST", "1")  # AWS-RunShellScript has one version
PLUGIN = "aws:runShellScript"
STDOUT_LIMIT = 24_000
STDERR_LIMIT = 8_000
PLUGIN_OUTPUT_LIMIT = 2_500  # the agent's MaximumPluginOutputSize
TRUNCATED_OUT = "\n---Output truncated---"
TRUNCATED_ERR = "\n---Error truncated----"
ERROR_TITLE = "\n----------ERROR-------\n"
DEFAULT_TIMEOUT_S = 3600  # SendCommand TimeoutSeconds (delivery)
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 30, 2_592_000
DEFAULT_EXECUTION_TIMEOUT_S = 3600  # AWS-RunShellScript's executionTimeout
MAX_EXECUTION_TIMEOUT_S = 172_800
MAX_INSTANCE_IDS = 50
STOPPED_PREEMPTIVELY = 137  # the agent's exit code for a script it killed (timeout or cancel)
DEFAULT_WORKING_DIRECTORY = "/usr/bin"  # the agent's own (its unit's WorkingDirectory)
PAGE_DEFAULT, PAGE_MAX = 50, 50

TERMINAL = frozenset(
    {"Success", "Failed", "ExecutionTimedOut", "DeliveryTimedOut", "Cancelled", "Undeliverable", "Terminated"}
)
# StatusDetails -> (invocation Status, plugin Status)
STATUS_OF = {
    "Pending": ("Pending", "Pending"),
    "Delayed": ("Delayed", "Pending"),
    "InProgress": ("InProgress", "InProgress"),
    "Cancelling": ("Cancelling", "InProgress"),
    "Success": ("Success", "Success"),
    "Failed": ("Failed", "Failed"),
    "ExecutionTimedOut": ("TimedOut", "TimedOut"),
    "DeliveryTimedOut": ("TimedOut", "TimedOut"),
    "Cancelled": ("Cancelled", "Cancelled"),
    "Undeliverable": ("Failed", "Failed"),
    "Terminated": ("Failed", "Failed"),
}
GONE = frozenset({"shutting-down", "terminated"})
_EXECUTION_TIMEOUT = re.compile(r"^([1-9][0-9]{0,4}|1[0-6][0-9]{4}|17[0-1][0-9]{3}|172[0-7][0-9]{2}|172800)$")
_MAX_CONCURRENCY = re.compile(r"^([1-9][0-9]*|[1-9][0-9]%|[1-9]%|100%)$")
_MAX_ERRORS = re.compile(r"^([1-9][0-9]*|[0]|[1-9][0-9]%|[0-9]%|100%)$")
_INSTANCE_ID = re.compile(r"^(i|mi)-[0-9a-f]{8,17}$")
FILTER_KEYS = ("InvokedAfter", "InvokedBefore", "Status", "ExecutionStage", "DocumentName")


class SsmError(ServiceError):
    """An SSM error as AWS answers it: code, message, HTTP status."""


@dataclass(frozen=True)
class Node:
    """What Run Command knows of one instance."""

    state: str | None  # EC2 state name (pending, running, stopping, stopped, ...); None: no such instance
    managed: bool = False  # its instance profile's role lets the SSM agent register
    online: bool = False  # its agent answers: the instance has booted and its init runs


class Nodes(Protocol):
    def node(self, instance_id: str) -> Node: ...


class Agent(Protocol):
    """Runs scripts inside instances, as the SSM agent does (as root, in the instance's root).
    The data plane is one (dataplane/agent.py)."""

    def run_script(self, script: Script) -> ScriptRun: ...


# ---- pure helpers --------------------------------------------------------------------------------


def truncate(text: str, limit: int) -> str:
    """The first `limit` characters (StandardOutputContent/StandardErrorContent)."""
    return text[:limit]


def plugin_output(stdout: str, stderr: str, capacity: int = PLUGIN_OUTPUT_LIMIT) -> str:
    """stdout and stderr in one string of at most `capacity` characters, as the agent's
    TruncateOutput joins and cuts them (ListCommandInvocations' CommandPlugins[].Output)."""
    title = ERROR_TITLE if stderr else ""
    available = capacity - len(title)
    if len(stdout) + len(stderr) < available:
        return f"{stdout}{title}{stderr}"
    if len(stdout) > available / 2 and len(stderr) > available / 2:
        half = (available - len(TRUNCATED_ERR) - len(TRUNCATED_OUT)) // 2
        return f"{stdout[:half]}{TRUNCATED_OUT}{title}{stderr[:half]}{TRUNCATED_ERR}"
    if len(stdout) < available / 2:
        room = available - len(TRUNCATED_ERR) - len(stdout)
        return f"{stdout}{title}{stderr[:room]}{TRUNCATED_ERR}"
    room = available - len(TRUNCATED_OUT) - len(stderr)
    return f"{stdout[:room]}{TRUNCATED_OUT}{title}{stderr}"


def iso_duration(seconds: float) -> str:
    """ExecutionElapsedTime: an ISO 8601 duration such as PT0.031S or PT1H0.271S."""
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    return text + f"{rest // 1000}.{rest % 1000:03d}S"


def iso_time(moment: datetime | None) -> str:
    """ExecutionStartDateTime/EndDateTime: ISO 8601 with milliseconds, or "" when not reached."""
    if moment is None:
        return ""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def count_of(value: str, targets: int, *, at_least_one: bool) -> int:
    """MaxConcurrency/MaxErrors ("10" or "10%") as a number of instances."""
    if value.endswith("%"):
        share = int(value[:-1]) * targets / 100
        number = math.ceil(share) if at_least_one else math.floor(share)
    else:
        number = int(value)
    return max(1, number) if at_least_one else number


# ---- state -----------------------------------------------------------------------------------------


@dataclass
class Invocation:
    command_id: str
    instance_id: str
    details: str = "Pending"
    response_code: int = -1
    started_at: datetime | None = None
    ended_at: datetime | None = None
    stdout: str = ""
    stderr: str = ""
    run: ScriptRun | None = None
    stranded: bool = False  # its instance stopped or died under the script: the agent cannot report
    killed_for: str | None = None  # "timeout" | "cancel": the engine killed the script

    @property
    def terminal(self) -> bool:
        return self.details in TERMINAL

    @property
    def status(self) -> str:
        return STATUS_OF[self.details][0]


@dataclass
class Command:
    command_id: str
    sequence: int
    document_version: str
    comment: str
    parameters: dict[str, list[str]]
    instance_ids: list[str]
    commands: tuple[str, ...]
    working_directory: str
    execution_timeout: int  # AWS seconds
    timeout_seconds: int  # AWS seconds
    max_concurrency: str
    max_errors: str
    requested_at: datetime
    deliver_by: datetime  # real time: requested + TimeoutSeconds (scaled)
    expires_at: datetime  # real time: requested + TimeoutSeconds + executionTimeout (scaled)
    region: str
    invocations: dict[str, Invocation] = field(default_factory=dict)
    cancelled: bool = False

    def counts(self) -> dict[str, int]:
        found = {details: 0 for details in STATUS_OF}
        for invocation in self.invocations.values():
            found[invocation.details] += 1
        return found

    def status(self) -> tuple[str, str]:
        """(Status, StatusDetails) of the whole command."""
        invocations = list(self.invocations.values())
        counts = self.counts()
        if not all(i.terminal for i in invocations):
            if self.cancelled:
                return "Cancelling", "Cancelling"
            if not any(i.terminal or i.started_at for i in invocations):
                return "Pending", "Pending"
            return "InProgress", "InProgress"
        if self.cancelled or counts["Cancelled"]:
            return "Cancelled", "Cancelled"
        allowed = count_of(self.max_errors, len(invocations), at_least_one=False)
        errors = counts["Failed"] + counts["ExecutionTimedOut"]
        if errors > allowed:
            if counts["ExecutionTimedOut"] > counts["Failed"]:
                return "TimedOut", "ExecutionTimedOut"
            return "Failed", "Failed"
        if counts["DeliveryTimedOut"] > allowed:
            return "TimedOut", "DeliveryTimedOut"
        counted = [i for i in invocations if i.details != "Undeliverable"]
        if counted and all(i.details == "Success" for i in counted):
            return "Success", "Success"
        return "Failed", "Incomplete"


# ---- the engine --------------------------------------------------------------------------------------


class RunCommand:
    """The Run Command service of one account and region."""

    def __init__(
        self,
        clock: Clock,
        nodes: Nodes,
        agent: Agent | None,
        *,
        account_id: str,
        region: str,
        time_scale: float = 1.0,
    ) -> None:
        self.clock = clock
        self.nodes = nodes
        self.agent = agent
        self.account_id = account_id
        self.region = region
        self.time_scale = time_scale
        self.commands: dict[str, Command] = {}
        self._sequence = itertools.count(1)

    def _scaled(self, aws_seconds: float) -> timedelta:
        return timedelta(seconds=aws_seconds * self.time_scale)

    # ---- SendCommand -------------------------------------------------------------------------

    def send(self, params: Mapping[str, Any]) -> dict[str, Any]:
        document = str(params.get("DocumentName") or "")
        if document not in (DOCUMENT, f"arn:aws:ssm:{self.region}::document/{DOCUMENT}"):
            raise SsmError("InvalidDocument", f"Document with name {document} does not exist. "
                           f"(The sandbox runs {DOCUMENT} only.)")  # fmt: skip
        version = str(params.get("DocumentVersion") or "$DEFAULT")
        if version not in DOCUMENT_VERSIONS:
            raise SsmError("InvalidDocumentVersion", f"Document {DOCUMENT} has no version {version}.")
        instance_ids = self._instance_ids(params)
        commands, working_directory, execution_timeout, parameters = _document_parameters(params.get("Parameters"))
        timeout = params.get("TimeoutSeconds")
        timeout_seconds = DEFAULT_TIMEOUT_S if timeout is None else int(timeout)
        if not MIN_TIMEOUT_S <= timeout_seconds <= MAX_TIMEOUT_S:
            raise _validation(timeout_seconds, "timeoutSeconds",
                              f"Member must have value between {MIN_TIMEOUT_S} and {MAX_TIMEOUT_S}")  # fmt: skip
        max_concurrency = str(params.get("MaxConcurrency") or "50")
        max_errors = str(params.get("MaxErrors") or "0")
        if not _MAX_CONCURRENCY.match(max_concurrency):
            raise _validation(max_concurrency, "maxConcurrency", f"Member must satisfy regular expression pattern: "
                              f"{_MAX_CONCURRENCY.pattern}")  # fmt: skip
        if not _MAX_ERRORS.match(max_errors):
            raise _validation(max_errors, "maxErrors",
                              f"Member must satisfy regular expression pattern: {_MAX_ERRORS.pattern}")  # fmt: skip
        comment = str(params.get("Comment") or "")
        if len(comment) > 100:
            raise _validation(comment, "comment", "Member must have length less than or equal to 100")
        self._check_managed(instance_ids)

        now = self.clock.now()
        command = Command(
            command_id=str(uuid.uuid4()),
            sequence=next(self._sequence),
            document_version=version,
            comment=comment,
            parameters=parameters,
            instance_ids=instance_ids,
            commands=commands,
            working_directory=working_directory,
            execution_timeout=execution_timeout,
            timeout_seconds=timeout_seconds,
            max_concurrency=max_concurrency,
            max_errors=max_errors,
            requested_at=now,
            deliver_by=now + self._scaled(timeout_seconds),
            expires_at=now + self._scaled(timeout_seconds + execution_timeout),
            region=self.region,
        )
        command.invocations = {i: Invocation(command.command_id, i) for i in instance_ids}
        self.commands[command.command_id] = command
        answer = self._command_view(command)  # Pending, as AWS answers SendCommand
        if self.agent is None:  # control plane only: nothing could ever run the script
            for invocation in command.invocations.values():
                self._finish(invocation, "Undeliverable", now)
        else:
            self._step(command, now)  # a ready instance gets it at once
        return {"Command": answer}

    def _instance_ids(self, params: Mapping[str, Any]) -> list[str]:
        ids = [str(i) for i in params.get("InstanceIds") or []]
        for target in params.get("Targets") or []:
            if target.get("Key") != "InstanceIds":
                key = target.get("Key")
                raise SsmError("ValidationException", f"Targets with Key={key} are not supported by the sandbox; "
                               "name the instances with InstanceIds (or Targets Key=InstanceIds).")  # fmt: skip
            ids += [str(v) for v in target.get("Values") or []]
        if not ids:
            raise SsmError("ValidationException", "Either InstanceIds or Targets must be specified.")
        if len(ids) > MAX_INSTANCE_IDS:
            raise _validation(ids, "instanceIds", f"Member must have length less than or equal to {MAX_INSTANCE_IDS}")
        if len(set(ids)) != len(ids):
            raise SsmError("DuplicateInstanceId", "Instance IDs must be unique.")
        return ids

    def _check_managed(self, instance_ids: Sequence[str]) -> None:
        """SendCommand's InvalidInstanceId: an instance that does not exist, is shutting down or
        terminated, or whose agent could not register (its role does not allow SSM)."""
        invalid = []
        for instance_id in instance_ids:
            node = self.nodes.node(instance_id) if _INSTANCE_ID.match(instance_id) else Node(None)
            if node.state is None or node.state in GONE or not node.managed:
                invalid.append(instance_id)
        if invalid:
            listed, account = ", ".join(invalid), self.account_id
            raise SsmError("InvalidInstanceId", f"Instances [[{listed}]] not in a valid state for account {account}")

    # ---- time --------------------------------------------------------------------------------

    def tick(self) -> None:
        """Deliver, poll, time out: one step of every command that has not ended."""
        now = self.clock.now()
        for command in list(self.commands.values()):
            if not all(i.terminal for i in command.invocations.values()):
                self._step(command, now)

    def _step(self, command: Command, now: datetime) -> None:
        for invocation in command.invocations.values():
            if not invocation.terminal:
                self._advance(command, invocation, now)
        self._dispatch(command, now)

    def _advance(self, command: Command, invocation: Invocation, now: datetime) -> None:
        node = self.nodes.node(invocation.instance_id)
        if node.state is None or node.state in GONE:
            if invocation.run is not None:
                invocation.run.kill()
                invocation.run = None
            self._finish(invocation, "Undeliverable", now)
            return
        if invocation.run is not None:
            self._watch(command, invocation, node, now)
            return
        if invocation.details in ("InProgress", "Cancelling"):  # stranded: nobody will report
            if now >= command.expires_at:
                self._finish(invocation, "DeliveryTimedOut", now)
            return
        # Pending or Delayed: not delivered yet.
        if now >= command.deliver_by or now >= command.expires_at:
            self._finish(invocation, "DeliveryTimedOut", now)
        elif node.state in ("stopping", "stopped"):
            invocation.details = "Delayed"

    def _watch(self, command: Command, invocation: Invocation, node: Node, now: datetime) -> None:
        run = invocation.run
        assert run is not None and invocation.started_at is not None
        done = run.poll()
        if done is None and now >= invocation.started_at + self._scaled(command.execution_timeout):
            invocation.killed_for = invocation.killed_for or "timeout"
            done = run.kill()
        if done is None:
            return
        invocation.run = None
        invocation.stdout, invocation.stderr = done.stdout, done.stderr
        if invocation.killed_for == "cancel":
            self._finish(invocation, "Cancelled", now, STOPPED_PREEMPTIVELY)
        elif invocation.killed_for == "timeout":
            self._finish(invocation, "ExecutionTimedOut", now, STOPPED_PREEMPTIVELY)
        elif done.returncode >= 0:
            self._finish(invocation, "Success" if done.returncode == 0 else "Failed", now, done.returncode)
        elif node.state == "running" and node.online:  # killed by something in the instance
            self._finish(invocation, "Failed", now, -1)
        else:  # the instance stopped or died under it, and its agent with it: no report comes
            invocation.stranded = True
            invocation.stdout = invocation.stderr = ""

    def _dispatch(self, command: Command, now: datetime) -> None:
        """Start what may start: MaxErrors not exceeded, MaxConcurrency not reached, agent online."""
        if command.cancelled or self.agent is None:
            return
        invocations = list(command.invocations.values())
        counts = command.counts()
        allowed_errors = count_of(command.max_errors, len(invocations), at_least_one=False)
        if counts["Failed"] + counts["ExecutionTimedOut"] > allowed_errors:
            for invocation in invocations:
                if invocation.details in ("Pending", "Delayed"):
                    self._finish(invocation, "Terminated", now)
            return
        slots = count_of(command.max_concurrency, len(invocations), at_least_one=True)
        running = sum(1 for i in invocations if i.details in ("InProgress", "Cancelling") and not i.stranded)
        for invocation in invocations:
            if running >= slots:
                break
            if invocation.details not in ("Pending", "Delayed"):
                continue
            node = self.nodes.node(invocation.instance_id)
            if node.state != "running" or not node.online:
                continue
            self._start(command, invocation, now)
            running += 1

    def _start(self, command: Command, invocation: Invocation, now: datetime) -> None:
        assert self.agent is not None
        script = Script(
            command_id=command.command_id,
            instance_id=invocation.instance_id,
            commands=command.commands,
            working_directory=command.working_directory or DEFAULT_WORKING_DIRECTORY,
            environment={"AWS_SSM_INSTANCE_ID": invocation.instance_id, "AWS_SSM_REGION_NAME": command.region},
        )
        invocation.started_at = now
        invocation.details = "InProgress"
        try:
            invocation.run = self.agent.run_script(script)
        except Exception as exc:  # the agent could not even start the shell
            invocation.stderr = f"failed to run commands: {exc}"
            self._finish(invocation, "Failed", now, 1)

    def _finish(self, invocation: Invocation, details: str, now: datetime, code: int | None = None) -> None:
        invocation.details = details
        invocation.ended_at = now if invocation.started_at else None
        if code is not None:
            invocation.response_code = code

    # ---- CancelCommand -----------------------------------------------------------------------

    def cancel(self, params: Mapping[str, Any]) -> dict[str, Any]:
        command = self._command(str(params.get("CommandId") or ""))
        wanted = [str(i) for i in params.get("InstanceIds") or []]
        if len(set(wanted)) != len(wanted):
            raise SsmError("DuplicateInstanceId", "Instance IDs must be unique.")
        unknown = [i for i in wanted if i not in command.invocations]
        if unknown:
            raise SsmError("InvalidInstanceId", f"Instances [[{', '.join(unknown)}]] are not targets of command "
                           f"{command.command_id}")  # fmt: skip
        now = self.clock.now()
        chosen = [command.invocations[i] for i in wanted] if wanted else list(command.invocations.values())
        if not wanted:
            command.cancelled = True
        for invocation in chosen:
            if invocation.terminal:
                continue
            if invocation.run is not None:
                invocation.details = "Cancelling"
                invocation.killed_for = "cancel"
                invocation.run.kill()  # reported by the next poll
            elif invocation.details in ("InProgress", "Cancelling"):
                invocation.details = "Cancelling"  # stranded: stays so until it expires
            else:
                self._finish(invocation, "Cancelled", now)
        self._step(command, now)
        return {}

    # ---- reads -------------------------------------------------------------------------------

    def get_invocation(self, params: Mapping[str, Any]) -> dict[str, Any]:
        self.tick()
        command_id, instance_id = str(params.get("CommandId") or ""), str(params.get("InstanceId") or "")
        plugin = params.get("PluginName")
        if plugin is not None and plugin != PLUGIN:
            raise SsmError("InvalidPluginName", f"Plugin {plugin} is not a plugin of {DOCUMENT}.")
        command = self.commands.get(command_id)
        invocation = command.invocations.get(instance_id) if command else None
        if command is None or invocation is None:
            raise SsmError("InvocationDoesNotExist", "The command ID and managed node ID you specified didn't match "
                           "any invocations. Verify the command ID and the managed node ID and try again.")  # fmt: skip
        done = invocation.terminal and invocation.started_at is not None
        elapsed = (invocation.ended_at or self.clock.now()) - invocation.started_at if invocation.started_at else None
        return {
            "CommandId": command.command_id,
            "InstanceId": invocation.instance_id,
            "Comment": command.comment,
            "DocumentName": DOCUMENT,
            "DocumentVersion": command.document_version,
            "PluginName": PLUGIN,
            "ResponseCode": invocation.response_code,
            "ExecutionStartDateTime": iso_time(invocation.started_at),
            "ExecutionElapsedTime": iso_duration(elapsed.total_seconds()) if elapsed is not None else "",
            "ExecutionEndDateTime": iso_time(invocation.ended_at),
            "Status": invocation.status,
            "StatusDetails": invocation.details,
            "StandardOutputContent": truncate(invocation.stdout, STDOUT_LIMIT) if done else "",
            "StandardOutputUrl": "",
            "StandardErrorContent": truncate(invocation.stderr, STDERR_LIMIT) if done else "",
            "StandardErrorUrl": "",
            "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False},
        }

    def list_invocations(self, params: Mapping[str, Any]) -> dict[str, Any]:
        self.tick()
        instance_id = params.get("InstanceId")
        commands = self._matching(params, "ListCommandInvocations")
        details = bool(params.get("Details"))
        rows = [
            (command, invocation)
            for command in commands
            for invocation in command.invocations.values()
            if not instance_id or invocation.instance_id == instance_id
        ]
        order = {id(inv): n for n, (_, inv) in enumerate(rows)}
        page = self._page(rows, params, "ListCommandInvocations",
                          key=lambda row: (-row[0].sequence, order[id(row[1])]))  # fmt: skip
        result: dict[str, Any] = {
            "CommandInvocations": [self._invocation_view(c, i, details) for c, i in page.items]
        }
        if page.next_token:
            result["NextToken"] = page.next_token
        return result

    def list_commands(self, params: Mapping[str, Any]) -> dict[str, Any]:
        self.tick()
        commands = self._matching(params, "ListCommands")
        instance_id = params.get("InstanceId")
        if instance_id:
            commands = [c for c in commands if instance_id in c.invocations]
        page = self._page(commands, params, "ListCommands", key=lambda c: (-c.sequence,))
        result: dict[str, Any] = {"Commands": [self._command_view(c) for c in page.items]}
        if page.next_token:
            result["NextToken"] = page.next_token
        return result

    def _matching(self, params: Mapping[str, Any], operation: str) -> list[Command]:
        """The commands a List call names (CommandId), filtered by its Filters."""
        command_id = params.get("CommandId")
        commands = [self._command(str(command_id))] if command_id else list(self.commands.values())
        for entry in params.get("Filters") or []:
            key, value = str(entry.get("key", "")), str(entry.get("value", ""))
            if key not in FILTER_KEYS:
                raise SsmError("InvalidFilterKey", f"The filter key {key} is not valid for {operation}.")
            if key == "Status":
                commands = [c for c in commands if c.status()[0] == value]
            elif key == "DocumentName":
                commands = [c for c in commands if value == DOCUMENT]
            elif key in ("InvokedAfter", "InvokedBefore"):
                moment = _filter_time(value, key)
                after = key == "InvokedAfter"
                commands = [c for c in commands if (c.requested_at >= moment) == after]
            elif key == "ExecutionStage":
                running = value == "Executing"
                active = ("Pending", "InProgress", "Cancelling")
                commands = [c for c in commands if (c.status()[0] in active) == running]
        return commands

    def _page(self, items: list[Any], params: Mapping[str, Any], operation: str, key: Any) -> paging.Page[Any]:
        def invalid(_message: str) -> Exception:
            return _validation(params.get("MaxResults"), "maxResults",
                               f"Member must have value between 1 and {PAGE_MAX}")  # fmt: skip

        size = paging.page_size(params.get("MaxResults"), default=PAGE_DEFAULT, low=1, high=PAGE_MAX, invalid=invalid)
        try:
            return paging.paginate(items, key=key, size=size, token=params.get("NextToken"),
                                   query=paging.query_of(operation, params))  # fmt: skip
        except paging.PageTokenError:
            raise SsmError("InvalidNextToken", "The specified token isn't valid.") from None

    def _command(self, command_id: str) -> Command:
        command = self.commands.get(command_id)
        if command is None:
            raise SsmError("InvalidCommandId", f"Command {command_id} does not exist.")
        return command

    def _command_view(self, command: Command) -> dict[str, Any]:
        status, details = command.status()
        counts = command.counts()
        return {
            "CommandId": command.command_id,
            "DocumentName": DOCUMENT,
            "DocumentVersion": command.document_version,
            "Comment": command.comment,
            "ExpiresAfter": command.expires_at,
            "Parameters": command.parameters,
            "InstanceIds": list(command.instance_ids),
            "Targets": [],
            "RequestedDateTime": command.requested_at,
            "Status": status,
            "StatusDetails": details,
            "OutputS3Region": command.region,
            "OutputS3BucketName": "",
            "OutputS3KeyPrefix": "",
            "MaxConcurrency": command.max_concurrency,
            "MaxErrors": command.max_errors,
            "TargetCount": len(command.invocations),
            "CompletedCount": sum(1 for i in command.invocations.values() if i.terminal),
            "ErrorCount": counts["Failed"] + counts["ExecutionTimedOut"],
            "DeliveryTimedOutCount": counts["DeliveryTimedOut"],
            "ServiceRole": "",
            "NotificationConfig": {"NotificationArn": "", "NotificationEvents": [], "NotificationType": ""},
            "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False},
            "TimeoutSeconds": command.timeout_seconds,
        }

    def _invocation_view(self, command: Command, invocation: Invocation, details: bool) -> dict[str, Any]:
        plugins: list[dict[str, Any]] = []
        if details:
            done = invocation.terminal and invocation.started_at is not None
            plugins.append({
                "Name": PLUGIN,
                "Status": STATUS_OF[invocation.details][1],
                "StatusDetails": invocation.details,
                "ResponseCode": invocation.response_code,
                "ResponseStartDateTime": invocation.started_at,
                "ResponseFinishDateTime": invocation.ended_at,
                "Output": plugin_output(invocation.stdout, invocation.stderr) if done else "",
                "StandardOutputUrl": "",
                "StandardErrorUrl": "",
                "OutputS3Region": command.region,
                "OutputS3BucketName": "",
                "OutputS3KeyPrefix": "",
            })  # fmt: skip
        return {
            "CommandId": command.command_id,
            "InstanceId": invocation.instance_id,
            "InstanceName": "",
            "Comment": command.comment,
            "DocumentName": DOCUMENT,
            "DocumentVersion": command.document_version,
            "RequestedDateTime": command.requested_at,
            "Status": invocation.status,
            "StatusDetails": invocation.details,
            "TraceOutput": "",
            "StandardOutputUrl": "",
            "StandardErrorUrl": "",
            "CommandPlugins": plugins,
            "ServiceRole": "",
            "NotificationConfig": {"NotificationArn": "", "NotificationEvents": [], "NotificationType": ""},
            "CloudWatchOutputConfig": {"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": False},
        }


def _document_parameters(given: Any) -> tuple[tuple[str, ...], str, int, dict[str, list[str]]]:
    """AWS-RunShellScript's parameters: (commands, workingDirectory, executionTimeout, as echoed)."""
    params = {str(k): [str(v) for v in (vs or [])] for k, vs in dict(given or {}).items()}
    unknown = sorted(set(params) - {"commands", "workingDirectory", "executionTimeout"})
    if unknown:
        raise SsmError("InvalidParameters", f"Parameters {unknown} are not defined in {DOCUMENT}: it takes "
                       "commands, workingDirectory and executionTimeout.")  # fmt: skip
    commands = tuple(params.get("commands") or ())
    if not commands:
        raise SsmError("InvalidParameters", "Parameter \"commands\" is required.")
    timeout = params.get("executionTimeout") or [str(DEFAULT_EXECUTION_TIMEOUT_S)]
    if len(timeout) != 1 or not _EXECUTION_TIMEOUT.match(timeout[0]):
        raise SsmError("InvalidParameters", f"Parameter \"executionTimeout\" must be one number of seconds between "
                       f"1 and {MAX_EXECUTION_TIMEOUT_S}; got {timeout}.")  # fmt: skip
    directory = params.get("workingDirectory") or [""]
    if len(directory) != 1:
        raise SsmError("InvalidParameters", "Parameter \"workingDirectory\" takes one value.")
    return commands, directory[0], int(timeout[0]), params


def _validation(value: Any, member: str, constraint: str) -> SsmError:
    return SsmError("ValidationException",
                    f"1 validation error detected: Value '{value}' at '{member}' failed to satisfy constraint: "
                    f"{constraint}")  # fmt: skip


def _filter_time(value: str, key: str) -> datetime:
    from datetime import UTC

    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SsmError("InvalidFilterValue", f"{key} needs an ISO 8601 time, got {value!r}.") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
