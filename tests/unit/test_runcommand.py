"""SSM Run Command as a way to reach instances (release/runcommand.py): AWS's statuses, the wait
on an injected clock, the 24,000-character output limit, files read in slices, HTTP from the
instance. The "instance" here is this machine's shell: the scripts Kiln sends really run."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from release.clock import FakeClock
from release.cloud import Cloud
from release.errors import KilnError
from release.model import CommandInvocation
from release.runcommand import STDOUT_LIMIT, RunCommandError, SsmReach


@dataclass
class ShellCloud:
    """send_shell_command runs the script with bash here; invocations go Pending -> InProgress ->
    the script's outcome, one step per GetCommandInvocation (or stay at `stuck`)."""

    stuck: CommandInvocation | None = None
    sent: list[list[str]] = field(default_factory=list)
    polls: int = 0
    _results: dict[str, CommandInvocation] = field(default_factory=dict)

    def send_shell_command(self, instance_id: str, lines: list[str], *, timeout_s: int, comment: str) -> str:
        self.sent.append(lines)
        done = subprocess.run(["bash", "-c", "\n".join(lines)], capture_output=True, text=True, timeout=timeout_s)
        status = "Success" if done.returncode == 0 else "Failed"
        command_id = f"c-{len(self.sent)}"
        self._results[command_id] = CommandInvocation(status, status, done.returncode, done.stdout[:STDOUT_LIMIT],
                                                      done.stderr[:8000])
        return command_id

    def command_invocation(self, command_id: str, instance_id: str) -> CommandInvocation | None:
        self.polls += 1
        if self.stuck is not None:
            return self.stuck
        if self.polls % 3 == 1:
            return None  # InvocationDoesNotExist right after SendCommand
        if self.polls % 3 == 2:
            return CommandInvocation("InProgress", "InProgress", -1, "", "")
        return self._results[command_id]


def reach(cloud: ShellCloud, clock: FakeClock | None = None) -> SsmReach:
    return SsmReach(cast(Cloud, cloud), clock or FakeClock(), timeout=10)


def test_a_command_runs_to_its_exit_code_and_output() -> None:
    cloud = ShellCloud()
    session = reach(cloud).connect("10.0.0.5", instance_id="i-1")
    ok = session.run("echo hello; echo warn >&2")
    assert (ok.exit_status, ok.stdout, ok.stderr) == (0, "hello\n", "warn\n")
    failed = session.run("exit 3")
    assert failed.exit_status == 3 and not failed.ok


@pytest.mark.parametrize("status, details", [("Failed", "Undeliverable"), ("TimedOut", "ExecutionTimedOut"),
                                             ("Cancelled", "Cancelled")])
def test_a_command_that_never_ran_to_an_exit_code_is_an_error(status: str, details: str) -> None:
    cloud = ShellCloud(stuck=CommandInvocation(status, details, -1, "", ""))
    with pytest.raises(RunCommandError, match=status) as caught:
        reach(cloud).run("i-1", "true")
    assert (caught.value.hint is not None) == (details == "Undeliverable")


def test_waiting_backs_off_on_the_clock_and_gives_up_at_the_deadline() -> None:
    clock = FakeClock()
    cloud = ShellCloud(stuck=CommandInvocation("Delayed", "Delayed", -1, "", ""))
    with pytest.raises(RunCommandError, match="still Delayed after 40 s"):
        reach(cloud, clock).run("i-1", "true", timeout=10)
    assert 40 <= (clock.now() - FakeClock().now()).total_seconds() <= 45
    assert cloud.polls < 30  # backed off to MAX_POLL_S, not hammering GetCommandInvocation


def test_output_past_ssms_limit_is_kept_in_a_file_and_read_back_whole() -> None:
    """The audit's checksums of a whole release outgrow 24,000 characters: never a short answer."""
    cloud = ShellCloud()
    big = reach(cloud).run("i-1", f"head -c {3 * STDOUT_LIMIT} /dev/zero | tr '\\0' x; echo oops >&2; exit 4")
    assert (big.exit_status, len(big.stdout), big.stderr) == (4, 3 * STDOUT_LIMIT, "oops\n")
    assert "rm -f" in cloud.sent[-1][0]  # the files on the instance are removed


@pytest.mark.parametrize("size", [0, 5, 16 * 1024, 16 * 1024 + 1, 100_000])
def test_files_are_read_in_slices_under_the_limit(tmp_path: Path, size: int) -> None:
    path = tmp_path / "MANIFEST.sha256"
    text = ("0123456789abcdef" * (size // 16 + 1))[:size]
    path.write_text(text)
    cloud = ShellCloud()
    assert reach(cloud).connect("10.0.0.5", instance_id="i-1").read_file(str(path)) == text
    assert len(cloud.sent) == max(1, -(-size // (16 * 1024)))


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(KilnError, match="cannot read"):
        reach(ShellCloud()).connect("a", instance_id="i-1").read_file(str(tmp_path / "nope"))


def test_http_get_runs_on_the_instance_and_returns_status_and_body(tmp_path: Path) -> None:
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = 200 if self.path == "/version" else 503
            body = b'{"version": "1.2.0"}' if code == 200 else b"not ready"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        ssm = reach(ShellCloud())
        ok = ssm.http_get("127.0.0.1", port, "/version", instance_id="i-1")
        assert (ok.status, ok.body) == (200, b'{"version": "1.2.0"}')
        assert ssm.http_get("127.0.0.1", port, "/health", instance_id="i-1").status == 503
    finally:
        server.shutdown()


def test_ssm_needs_the_instance_id() -> None:
    with pytest.raises(KilnError, match="by id"):
        reach(ShellCloud()).connect("10.0.0.5")
