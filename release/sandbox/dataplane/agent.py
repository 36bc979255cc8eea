"""The SSM agent's part of Run Command: run an AWS-RunShellScript script inside an instance.

What amazon-ssm-agent's runShellScript plugin does on Linux, done from the host:
- writes the commands, one per line, to `_script.sh` in the invocation's orchestration directory
  inside the instance (`/var/lib/amazon/ssm/<instance>/document/orchestration/<command>/
  awsrunShellScript/0.awsrunShellScript/`), executable;
- runs `sh -c <that path>` as root, in the working directory asked for (default `/usr/bin`, the
  agent's own working directory), with the agent's environment: systemd's PATH, no HOME, plus
  AWS_SSM_INSTANCE_ID and AWS_SSM_REGION_NAME;
- in its own process group, so a timeout or a cancel kills the whole group with SIGKILL.

"Inside the instance" is what the instance's own services get (docs/dataplane.md): the process
joins the instance's mount, UTS and PID namespaces (`nsenter --target <its init>`) and chroots
into the instance's root, so it sees the instance's files, /proc, /dev, /run and hostname, is a
process of the instance (its init reaps what it leaves behind, and it dies when the instance is
stopped, terminated or killed), and writes to the instance's copy-on-write root, never the host's.

stdout and stderr go to files on the host, in the data plane's state directory (`ssm/<command>/
<instance>/`), not in the instance, so a running script never keeps the instance's root busy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from release.sandbox.contracts import Finished, Script

AGENT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's default PATH
READ_LIMIT = 1 << 20  # bytes of each stream kept (the API shows 24,000 / 8,000 characters)
# The working directory first (as the agent sets it before starting the shell), then the script.
LAUNCHER = 'cd -- "$1" || exit 1; unset OLDPWD; exec /bin/sh -c "$2"'


def _read(path: Path) -> str:
    try:
        with path.open("rb") as stream:
            return stream.read(READ_LIMIT).decode(errors="replace")
    except OSError:
        return ""


class ScriptProcess:
    """A script started by `start`: its process group on the host, and its output files."""

    def __init__(self, popen: subprocess.Popen[bytes], stdout: Path, stderr: Path) -> None:
        self.popen = popen
        self.stdout = stdout
        self.stderr = stderr

    def poll(self) -> Finished | None:
        code = self.popen.poll()
        if code is None:
            return None
        return Finished(code, _read(self.stdout), _read(self.stderr))

    def kill(self) -> Finished:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        code = self.popen.wait(timeout=10)
        return Finished(code, _read(self.stdout), _read(self.stderr))


def start(script: Script, *, root: Path, init_pid: int, output_dir: Path) -> ScriptProcess:
    """Write the script into the instance at `root` (the host's view of its root filesystem) and
    start it in the namespaces of the instance's init `init_pid`."""
    directory = root / script.directory.lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    script_file = directory / "_script.sh"
    script_file.write_text("".join(f"{line}\n" for line in script.commands))
    script_file.chmod(0o700)
    output_dir.mkdir(parents=True, exist_ok=True)
    stdout, stderr = output_dir / "stdout", output_dir / "stderr"
    env = {"PATH": AGENT_PATH, **script.environment}
    with stdout.open("wb") as out, stderr.open("wb") as err:
        popen = subprocess.Popen(
            ["nsenter", "--target", str(init_pid), "--mount", "--uts", "--pid", "--",
             "chroot", str(root), "/bin/sh", "-c", LAUNCHER, "sh", script.working_directory, script.directory +
             "/_script.sh"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd="/",
            start_new_session=True,  # its own process group: a timeout kills all of it
        )  # fmt: skip
    return ScriptProcess(popen, stdout, stderr)
