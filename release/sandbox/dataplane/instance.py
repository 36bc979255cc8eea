"""One instance seen from the host: its overlay, its init process, its files.

Boot = mount the overlay, then start the instance's init (init.py) as PID 1 of new PID, mount and
UTS namespaces via unshare(1). Halt = SIGTERM that init, which stops the units; if it does not
finish in time, SIGKILL it, and the kernel kills everything left in the PID namespace.
Kill (a host failure) = that SIGKILL at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from release.errors import SandboxError
from release.sandbox.contracts import LaunchedInstance
from release.sandbox.dataplane import layout
from release.sandbox.dataplane.mounts import mount, mounts_under, unmount_tree
from release.sandbox.dataplane.rootfs import processes_rooted_under
from release.sandbox.dataplane.units import MAX_STOP_TIMEOUT_S

# Options that keep the upper dir self-contained (no metacopy or redirects pointing into lower
# layers), so it can be copied into a layer on its own.
OVERLAY_OPTIONS = "redirect_dir=off,metacopy=off,index=off,xino=off"
INIT_START_TIMEOUT_S = 10.0
# The init stops units one by one, each bounded by MAX_STOP_TIMEOUT_S; past this it is killed.
HALT_TIMEOUT_S = 3 * MAX_STOP_TIMEOUT_S


@dataclass
class InstanceRecord:
    spec: LaunchedInstance
    layers: list[str]  # the image's layers when launched (base first)
    launch_files: dict[str, str] = field(default_factory=dict)
    state: str = "running"  # running | stopped

    def save(self, instance_dir: Path) -> None:
        data = {"spec": asdict(self.spec), "layers": self.layers, "launch_files": self.launch_files,
                "state": self.state}  # fmt: skip
        tmp = layout.spec(instance_dir).with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, layout.spec(instance_dir))

    @classmethod
    def load(cls, instance_dir: Path) -> InstanceRecord:
        data = json.loads(layout.spec(instance_dir).read_text())
        return cls(LaunchedInstance(**data["spec"]), data["layers"], data["launch_files"], data["state"])


class InstanceProcess:
    """The running init of one instance (found again from init.pid after a server restart)."""

    def __init__(self, instance_dir: Path) -> None:
        self.dir = instance_dir
        self.popen: subprocess.Popen[bytes] | None = None

    def mount_root(self, layers: list[str]) -> None:
        root = layout.rootfs(self.dir)
        if root in mounts_under(root):
            return
        for d in (layout.upper(self.dir), layout.work(self.dir), root):
            d.mkdir(exist_ok=True)
        lower = ":".join(reversed(layers))  # overlayfs lists the top-most lower layer first
        options = (
            f"lowerdir={lower},upperdir={layout.upper(self.dir)},workdir={layout.work(self.dir)},{OVERLAY_OPTIONS}"
        )
        mount(f"kiln-{self.dir.name}", root, "overlay", 0, options)

    def boot(self) -> None:
        package_parent = Path(__file__).resolve().parents[3]  # the directory holding `release/`
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(package_parent),
               "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
        layout.status(self.dir).unlink(missing_ok=True)  # the last boot's "stopped" must not read as booted
        with layout.console(self.dir).open("ab") as console:
            self.popen = subprocess.Popen(
                ["unshare", "--pid", "--mount", "--uts", "--fork", "--kill-child", "--propagation", "private",
                 sys.executable, "-m", "release.sandbox.dataplane.init", str(self.dir)],
                stdin=subprocess.DEVNULL, stdout=console, stderr=console, env=env, cwd="/",
                start_new_session=True,  # a Ctrl-C in the controlling terminal is not an instance halt
            )  # fmt: skip
        init_pid = self._child_of(self.popen.pid)
        layout.pids(self.dir).write_text(json.dumps({"unshare": self.popen.pid, "init": init_pid}))

    def _child_of(self, pid: int) -> int:
        deadline = time.monotonic() + INIT_START_TIMEOUT_S
        children = Path(f"/proc/{pid}/task/{pid}/children")
        while time.monotonic() < deadline:
            try:
                found = children.read_text().split()
            except OSError:
                found = []
            if found:
                return int(found[0])
            if self.popen is not None and self.popen.poll() is not None:
                break
            time.sleep(0.005)
        raise SandboxError(
            f"instance {self.dir.name}: its init did not start",
            hint=f"See {layout.console(self.dir)}",
        )

    def _recorded(self) -> tuple[int | None, int | None]:
        """(unshare pid, init pid) if they still run and still belong to this instance."""
        try:
            data = json.loads(layout.pids(self.dir).read_text())
        except (OSError, ValueError):
            return None, None

        def ours(pid: int | None) -> int | None:
            if not pid:
                return None
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                return None
            return pid if os.fsencode(str(self.dir)) in cmdline else None

        return ours(data.get("unshare")), ours(data.get("init"))

    def init_pid(self) -> int | None:
        """The host pid of the instance's init (PID 1 of its namespaces), None when not running."""
        return self._recorded()[1]

    def live_root(self) -> Path | None:
        """The rootfs as the instance sees it (with its /run, /dev, /proc), via its init's mount
        namespace; None when the instance is not running."""
        _, init_pid = self._recorded()
        return Path(f"/proc/{init_pid}/root{layout.rootfs(self.dir)}") if init_pid else None

    def running(self) -> bool:
        unshare_pid, init_pid = self._recorded()
        return bool(unshare_pid or init_pid)

    def halt(self, timeout: float = HALT_TIMEOUT_S) -> None:
        """Stop every process of the instance; returns when none is left."""
        unshare_pid, init_pid = self._recorded()
        deadline = time.monotonic() + timeout
        next_signal = 0.0
        while self._alive(unshare_pid, init_pid) and time.monotonic() < deadline:
            # Repeated: the kernel drops signals sent to a namespace's PID 1 before it installed
            # a handler, which is the case for an init that is still starting up.
            if init_pid and time.monotonic() >= next_signal:
                _signal(init_pid, signal.SIGTERM)
                next_signal = time.monotonic() + 0.25
            time.sleep(0.02)
        if self._alive(unshare_pid, init_pid):
            # PID 1 of the namespace dies -> the kernel kills everything else in it.
            for pid in (init_pid, unshare_pid):
                if pid:
                    _signal(pid, signal.SIGKILL)
            while self._alive(unshare_pid, init_pid):
                time.sleep(0.02)
        # Anything chrooted into the instance from outside its namespace (e.g. a debugging shell).
        for _ in range(50):
            strays = processes_rooted_under(layout.rootfs(self.dir))
            if not strays:
                break
            for pid in strays:
                _signal(pid, signal.SIGKILL)
            time.sleep(0.02)
        layout.pids(self.dir).unlink(missing_ok=True)

    def kill(self, timeout: float = HALT_TIMEOUT_S) -> None:
        """SIGKILL the instance's init (PID 1 of its namespace: the kernel kills every other process
        in it) and unshare; returns when they are gone. No unit is stopped, nothing is unmounted."""
        unshare_pid, init_pid = self._recorded()
        for pid in (init_pid, unshare_pid):
            if pid:
                _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while self._alive(unshare_pid, init_pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _alive(self, unshare_pid: int | None, init_pid: int | None) -> bool:
        if self.popen is not None:
            if self.popen.poll() is None:
                return True
            return bool(init_pid and _exists(init_pid))
        return any(pid and _exists(pid) for pid in (unshare_pid, init_pid))

    def unmount(self) -> None:
        unmount_tree(self.dir)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
