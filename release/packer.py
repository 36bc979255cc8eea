"""Packer: the command line and the manifest (pure), and a thin runner that streams output.

Kiln never scrapes Packer's log for results: the `manifest` post-processor writes the AMI ids,
and `parse_manifest` reads them. Lines of output are only shown to people.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from release import toolcache
from release.errors import BakeError, ToolError

BUILD = "amazon-ebs.app"


@dataclass(frozen=True)
class Artifact:
    region: str
    image_id: str


def command_line(template_dir: Path, var_file: Path, packer: str = "packer") -> list[str]:
    # -color=false: the output is re-printed through Kiln's UI.
    return [packer, "build", "-color=false", "-only", BUILD, f"-var-file={var_file}", str(template_dir)]


def var_file_text(variables: Mapping[str, Any]) -> str:
    """A `.pkrvars.json` file: JSON keeps lists and quoting exact, with no HCL escaping to get wrong."""
    return json.dumps(dict(variables), indent=2, sort_keys=True) + "\n"


def parse_manifest(text: str, *, where: str = "manifest.json") -> list[Artifact]:
    """The AMIs of the *last* run in a Packer manifest ("artifact_id": "region:ami-…,region:ami-…")."""
    try:
        data = json.loads(text)
        run = data["last_run_uuid"]
        builds = [b for b in data["builds"] if b.get("packer_run_uuid") == run]
    except (ValueError, KeyError, TypeError) as err:
        raise BakeError(f"unreadable Packer manifest ({err})", where=where) from None
    artifacts = []
    for build in builds:
        for pair in str(build.get("artifact_id", "")).split(","):
            region, _, image_id = pair.partition(":")
            if not image_id.startswith("ami-"):
                raise BakeError(f"unexpected artifact id {pair!r}", where=where)
            artifacts.append(Artifact(region, image_id))
    if not artifacts:
        raise BakeError("the manifest lists no AMI for the last run", where=where)
    return artifacts


def parse_version(output: str) -> Version | None:
    """`packer version` prints "Packer v1.6.6" (and maybe an update notice)."""
    match = re.search(r"v?(\d+\.\d+\.\d+)", output)
    try:
        return Version(match.group(1)) if match else None
    except InvalidVersion:
        return None


def check_tool(name: str, version_args: Sequence[str], parse: Callable[[str], Version | None],
               accepted: SpecifierSet, *, config_key: str, cache: Path | None = None) -> Version:
    """The tool's version, or one clear ToolError when it is missing or not accepted. `cache`:
    remember the binary's answer there (toolcache) instead of running it every time."""
    # Kiln's own virtualenv first: ansible-core is installed there.
    path = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if path is None:
        raise ToolError(f"{name} not found on PATH", hint="Run ./bootstrap (it installs it) or install it yourself.")
    version = parse(toolcache.version_output(path, version_args, cache=cache))
    if version is None:
        raise ToolError(f"cannot tell the version of {path}", hint=f"Check that `{name} --version` works.")
    if version not in accepted:
        raise ToolError(f"{name} {version} is not accepted ({config_key} = \"{accepted}\")",
                        hint=f"Install an accepted {name}, or change {config_key} in versions.toml.")
    return version


# How long Packer may take to clean up after SIGINT (terminate its build instance, delete its key).
CLEANUP_SECONDS = 300


def run(command: Sequence[str], *, env: Mapping[str, str], cwd: Path, on_line: Callable[[str], None]) -> int:
    """Run Packer, handing each output line to `on_line`; the exit code.

    If Kiln stops while Packer runs (Ctrl-C, SIGTERM from a CI runner cancelling the job, an error),
    Packer is asked to stop the way Ctrl-C asks it (SIGINT: it terminates its build instance and
    deletes its temporary key pair) and waited for, so no build instance or half-made AMI outlives
    the bake."""
    with subprocess.Popen(list(command), cwd=cwd, env=dict(env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                on_line(line.rstrip("\n"))
            return proc.wait()
        except BaseException:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=CLEANUP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise


# Lines like "==> amazon-ebs.app: Launching a source AWS instance..." name Packer's steps, and
# "    amazon-ebs.app: TASK [app : Install the wheelhouse] ****" Ansible's tasks as Packer relays them
# (handlers: "RUNNING HANDLER [proxy : Reload nginx] ****").
_STEP = re.compile(r"^==> [\w.-]+: (.+)$")
_ANSIBLE_TASK = re.compile(r"^\s+[\w.-]+: (TASK|RUNNING HANDLER) \[(.+?)\]")
_LONGEST_STEP = 80


def step_of(line: str) -> str | None:
    """The step a Packer output line announces, for the progress display (display only): Packer's
    own ("Launching a source AWS instance") or Ansible's current task ("ansible [app : Install the
    wheelhouse]", "ansible handler [proxy : Reload nginx]")."""
    task = _ANSIBLE_TASK.match(line)
    if task:
        return f"ansible {'handler ' if task.group(1) != 'TASK' else ''}[{task.group(2)}]"
    match = _STEP.match(line)
    if not match:
        return None
    step = match.group(1).strip().rstrip(".")
    if len(step) > _LONGEST_STEP:
        # "Executing Ansible: ansible-playbook -e … (a whole command line)" -> "Executing Ansible"
        head, colon, _ = step.partition(": ")
        step = head if colon and len(head) <= _LONGEST_STEP else step[:_LONGEST_STEP - 1] + "…"
    return step


# Ansible's failure lines, to name the failing task in the error.
_TASK = re.compile(r"TASK \[(.+?)\]")


def failing_task(lines: Sequence[str]) -> str | None:
    """The last Ansible task before a `fatal:` / `failed:` line, if any."""
    task = None
    for line in lines:
        found = _TASK.search(line)
        if found:
            task = found.group(1)
        elif ("fatal:" in line or "failed:" in line) and task:
            return task
    return None


def first_error(lines: Sequence[str]) -> str:
    """The most telling line of a failed build: Packer's own error, else Ansible's fatal line."""
    for marker in ("Build 'amazon-ebs.app' errored", "fatal:", "Error:", "error"):
        found = next((t.strip() for t in lines if marker in t), None)
        if found:
            return found
    return lines[-1].strip() if lines else "no output"


# Packer 1.6.6's words when its SSH connection to the build instance fails (step_connect_ssh.go),
# and Ansible's when its own ssh cannot reach the host.
_SSH_FAILURES = ("Timeout waiting for SSH", "error when trying to connect via SSH", "Error waiting for SSH",
                 "UNREACHABLE!")


def ssh_failed(lines: Sequence[str]) -> bool:
    """Did the build fail because Packer or Ansible could not log in to the build instance?"""
    return any(marker in line for line in lines for marker in _SSH_FAILURES)
