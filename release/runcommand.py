"""Reading instances through SSM Run Command instead of SSH (environments with access = "ssm").

`SsmReach` is an `audit.Reach`, like ssh.Ssh: the smoke test, the gate's /version and /health
probes and the fleet audit use it unchanged. Every read is one `SendCommand` of the
AWS-RunShellScript document to one instance (run as root by the SSM agent), then
`GetCommandInvocation` until the invocation is finished. No inbound port, bastion or host key is
involved; the instance's role must allow SSM (iam/instance.json) and the caller `ssm:SendCommand`.

AWS semantics followed (SSM API reference, GetCommandInvocation):
- Status Pending, InProgress, Delayed and Cancelling are not final; Success, Failed, TimedOut and
  Cancelled are. StatusDetails says more (Undeliverable: the instance is not managed or not
  running; DeliveryTimedOut; ExecutionTimedOut; Terminated).
- Right after SendCommand the invocation may not exist yet (InvocationDoesNotExist): asked again.
- StandardOutputContent holds the first 24,000 characters only. Files are therefore read in
  slices of 16 KiB, base64-encoded (21,848 characters each); a command whose output fills the
  limit (the audit's checksums of a whole release) is run again with its output kept in a file
  on the instance, which is then read in slices and removed — never a silently short answer.
- Throttling is ridden out by the adapter's retries (aws.Aws, adaptive mode).
"""

from __future__ import annotations

import base64
import json
import shlex
from typing import Any

from release.clock import Clock
from release.cloud import Cloud
from release.errors import KilnError
from release.model import CommandInvocation
from release.ssh import CommandResult, HttpResponse

STDOUT_LIMIT = 24_000  # characters of StandardOutputContent that GetCommandInvocation returns
SLICE_BYTES = 16 * 1024  # base64 of this is 21,848 characters: under the limit with room to spare
FIRST_POLL_S = 0.2
MAX_POLL_S = 2.0

# Runs on the instance (its Python: the image has one): one HTTP GET, answered as one JSON line.
_HTTP_GET = """import base64, json, sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2]))
    status, body = r.status, r.read(12000)
except urllib.error.HTTPError as e:
    status, body = e.code, e.read(12000)
print(json.dumps({"status": status, "body": base64.b64encode(body).decode()}))"""


class RunCommandError(KilnError):
    """A command did not run to an exit code on the instance (undeliverable, timed out, cancelled)."""


class SsmReach:
    """audit.Reach over SSM. `timeout` bounds each command (its executionTimeout and the wait)."""

    def __init__(self, cloud: Cloud, clock: Clock, *, timeout: float = 30.0) -> None:
        self.cloud = cloud
        self.clock = clock
        self.timeout = timeout

    def __enter__(self) -> SsmReach:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to close: no connection is held between commands."""

    def connect(self, address: str, *, instance_id: str | None = None) -> SsmSession:
        return SsmSession(self, _by_id(address, instance_id))

    def http_get(self, address: str, port: int, path: str, *, timeout: float | None = None,
                 instance_id: str | None = None) -> HttpResponse:
        """GET http://address:port/path from the instance itself (nginx listens on its address)."""
        instance_id = _by_id(address, instance_id)
        seconds = timeout or 5.0
        url = f"http://{address}:{port}{path}"
        script = f"python3 -c {shlex.quote(_HTTP_GET)} {shlex.quote(url)} {seconds:g}"
        result = self.run(instance_id, script, timeout=seconds + 10)
        if not result.ok:
            raise KilnError(f"GET {path} on {instance_id} failed: {_first_line(result.stderr or result.stdout)}")
        try:
            answer: dict[str, Any] = json.loads(result.stdout)
            return HttpResponse(int(answer["status"]), base64.b64decode(answer["body"]))
        except (ValueError, KeyError, TypeError):
            raise KilnError(f"GET {path} on {instance_id}: unreadable answer {result.stdout[:120]!r}") from None

    def run(self, instance_id: str, command: str, *, timeout: float | None = None) -> CommandResult:
        """Run a shell command as root on the instance; its exit code and output. A command that
        never ran to an exit code (undeliverable, timed out, cancelled) raises RunCommandError."""
        seconds = max(1, int(timeout or self.timeout))
        command_id = self.cloud.send_shell_command(instance_id, [command], timeout_s=seconds,
                                                   comment=f"kiln: {command.split()[0] if command else ''}")
        invocation = self._wait(command_id, instance_id, deadline_s=seconds + 30)
        if invocation.status not in ("Success", "Failed") or invocation.exit_code < 0:
            raise RunCommandError(
                f"SSM command {command_id} on {instance_id}: {invocation.status}"
                + (f" ({invocation.details})" if invocation.details and invocation.details != invocation.status
                   else ""),
                hint="Is the instance running and managed by SSM (its role allows ssm:UpdateInstanceInformation; "
                     "`aws ssm describe-instance-information`)?" if invocation.details == "Undeliverable" else None)
        if len(invocation.stdout) >= STDOUT_LIMIT:
            return self._run_to_files(instance_id, command, timeout=seconds)
        return CommandResult(invocation.exit_code, invocation.stdout, invocation.stderr)

    def _run_to_files(self, instance_id: str, command: str, *, timeout: float) -> CommandResult:
        """The command again, its output kept in files on the instance, read back in slices."""
        kept = self.run(instance_id, f'o=$(mktemp) && e=$(mktemp) && ( {command} ) >"$o" 2>"$e"; '
                                     'echo "$? $o $e"', timeout=timeout)
        try:
            code, out_path, err_path = kept.stdout.split()
        except ValueError:
            raise RunCommandError(f"could not keep the output of a command on {instance_id}: "
                                  f"{_first_line(kept.stderr) or kept.stdout[:120]}") from None
        session = SsmSession(self, instance_id)
        try:
            return CommandResult(int(code), session.read_file(out_path, timeout=timeout),
                                 session.read_file(err_path, timeout=timeout))
        finally:
            self.run(instance_id, f"rm -f {shlex.quote(out_path)} {shlex.quote(err_path)}", timeout=timeout)

    def _wait(self, command_id: str, instance_id: str, *, deadline_s: float) -> CommandInvocation:
        started = self.clock.now()
        pause = FIRST_POLL_S
        while True:
            invocation = self.cloud.command_invocation(command_id, instance_id)
            if invocation is not None and invocation.finished:
                return invocation
            if (self.clock.now() - started).total_seconds() > deadline_s:
                status = invocation.status if invocation else "not known to SSM"
                raise RunCommandError(f"SSM command {command_id} on {instance_id}: still {status} after "
                                      f"{deadline_s:.0f} s")
            self.clock.sleep(pause)
            pause = min(pause * 2, MAX_POLL_S)


class SsmSession:
    """audit.Session for one instance over SSM."""

    def __init__(self, reach: SsmReach, instance_id: str) -> None:
        self.reach = reach
        self.instance_id = instance_id

    def run(self, command: str, *, timeout: float | None = None) -> CommandResult:
        return self.reach.run(self.instance_id, command, timeout=timeout)

    def read_file(self, path: str, *, timeout: float | None = None) -> str:
        """The file's text, in 16 KiB slices (SSM returns at most 24,000 characters per command)."""
        chunks: list[bytes] = []
        size: int | None = None
        while size is None or sum(map(len, chunks)) < size:
            offset = len(chunks)
            script = (f"f={shlex.quote(path)}; stat -c %s \"$f\" || exit 2; "
                      f"dd if=\"$f\" bs={SLICE_BYTES} skip={offset} count=1 2>/dev/null | base64 -w0")
            result = self.run(script, timeout=timeout)
            if not result.ok:
                raise KilnError(f"cannot read {path} on {self.instance_id}: "
                                f"{_first_line(result.stderr) or f'exit {result.exit_status}'}")
            first, _, encoded = result.stdout.partition("\n")
            size = int(first.strip())
            piece = base64.b64decode(encoded.strip())
            if not piece and sum(map(len, chunks)) < size:
                raise KilnError(f"{path} on {self.instance_id} shrank while it was read")
            chunks.append(piece)
        return b"".join(chunks)[:size].decode("utf-8", errors="replace")

    def close(self) -> None:
        """Nothing to close."""


def _by_id(address: str, instance_id: str | None) -> str:
    if not instance_id:
        raise KilnError(f"SSM reaches instances by id, and none was given for {address}")
    return instance_id


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
