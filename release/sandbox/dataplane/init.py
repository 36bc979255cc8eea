"""The init of one sandbox instance: PID 1 of the instance's PID, mount and UTS namespaces.

Started by the host as `unshare --pid --mount --uts --fork python -m release.sandbox.dataplane.init
<instance dir>`. It mounts the instance's /proc, /dev, /run, boots the units the image enables
(the subset of systemd semantics in docs/dataplane.md), supervises them, and on SIGTERM stops
them in reverse order. Every service process is chrooted into the instance's root filesystem.
When this process exits the kernel kills whatever is left in the namespace and drops its mounts,
so nothing an instance started can outlive it.

Single-threaded: one loop waits on a self-pipe (signals) and the instance's /dev/log socket.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from release.sandbox.dataplane import cloudinit, layout
from release.sandbox.dataplane.mounts import (
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    mount,
)
from release.sandbox.dataplane.rootfs import read_account, read_group_id, resolve_in_root, supplementary_groups
from release.sandbox.dataplane.units import (
    DEFAULT_PATH,
    MAX_START_TIMEOUT_S,
    MAX_STOP_TIMEOUT_S,
    BootPlan,
    Command,
    Unit,
    boot_plan,
    parse_environment,
    parse_environment_file,
    parse_seconds,
)
from release.sandbox.processes import alive

FINAL_KILL_GRACE_S = 3.0
USER_SCRIPT_TIMEOUT_S = 600.0
EXIT_EXEC_FAILED = 203  # systemd's status for "could not execute the command"
CLEAN_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}


@dataclass
class UnitState:
    unit: Unit
    state: str = "inactive"  # inactive | activating | active | deactivating | failed
    sub: str = "dead"
    result: str = ""
    main_pid: int | None = None
    restarts: list[float] = field(default_factory=list)
    restart_at: float | None = None


class Init:
    def __init__(self, instance_dir: Path) -> None:
        self.dir = instance_dir
        self.root = layout.rootfs(instance_dir)
        self.console_fd = os.open(layout.console(instance_dir), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.units: dict[str, UnitState] = {}
        self.order: list[str] = []
        self.exited: dict[int, int] = {}  # pid -> wait status, for processes someone waits on
        self.waiting: set[int] = set()
        self.stopping = False
        self.phase = "booting"
        self.syslog: socket.socket | None = None
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # --- console and status -------------------------------------------------------------------

    def log(self, text: str) -> None:
        os.write(self.console_fd, (text.rstrip("\n") + "\n").encode(errors="replace"))

    def write_status(self, phase: str | None = None) -> None:
        """Record the units' states; `phase` moves booting -> running -> stopped."""
        self.phase = phase or self.phase
        status = {
            "phase": self.phase,
            "units": {
                name: {"state": s.state, "sub": s.sub, "result": s.result, "main_pid": s.main_pid}
                for name, s in self.units.items()
            },
        }
        path = layout.status(self.dir)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=1))
        tmp.rename(path)

    # --- the instance's kernel-ish filesystems ------------------------------------------------

    def mount_system(self) -> None:
        mount("none", Path("/"), None, MS_REC | MS_PRIVATE)  # nothing we mount leaks to the host
        root = self.root
        for mount_point in ("proc", "sys", "dev", "run"):  # a hand-made rootfs may lack them
            (root / mount_point).mkdir(mode=0o755, exist_ok=True)
        mount("proc", root / "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        # Read-only, as containers have it: fact gathering and `nproc`-style probes read it.
        mount("sysfs", root / "sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        dev = root / "dev"
        mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=0755,size=4m")
        for name, (major, minor) in DEVICES.items():
            os.mknod(dev / name, 0o666 | 0o020000, os.makedev(major, minor))
            os.chmod(dev / name, 0o666)
        for name, target in {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
                             "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}.items():  # fmt: skip
            os.symlink(target, dev / name)
        (dev / "pts").mkdir()
        mount("devpts", dev / "pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5")
        (dev / "shm").mkdir()
        mount("tmpfs", dev / "shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
        mount("tmpfs", root / "run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        (root / "run/lock").mkdir(mode=0o1777)
        os.chmod(root / "run/lock", 0o1777)
        # A /dev/log that lands on the console, so sshd's and sudo's syslog lines are visible.
        self.syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # Bound by a relative name: a socket path may not exceed 107 bytes, a state dir might.
        os.chdir(dev)
        self.syslog.bind("log")
        os.chdir("/")
        os.chmod(dev / "log", 0o666)
        self.syslog.setblocking(False)

    # --- processes ------------------------------------------------------------------------------

    def environment(self, unit: Unit, user: str | None) -> dict[str, str]:
        env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
        account = read_account(self.root, user or "root")
        if account:
            env.update(HOME=account.home, USER=account.name, LOGNAME=account.name, SHELL=account.shell)
        env.update(parse_environment(unit.specifiers(v) for v in unit.settings.get("Service.Environment", [])))
        for value in unit.settings.get("Service.EnvironmentFile", []):
            optional = value.startswith("-")
            path = resolve_in_root(self.root, unit.specifiers(value.lstrip("-")))
            if path.is_file():
                env.update(parse_environment_file(path.read_text(errors="replace")))
            elif not optional:
                raise RuntimeError(f"EnvironmentFile {value} not found")
        runtime = unit.all("Service.RuntimeDirectory")
        if runtime:
            env["RUNTIME_DIRECTORY"] = ":".join(f"/run/{d}" for d in runtime)
        return env

    def credentials(self, unit: Unit) -> tuple[int, int, list[int], str]:
        """(uid, gid, supplementary gids, home) for the unit's User=/Group=."""
        user = unit.get("Service.User")
        if not user:
            return 0, 0, [], "/root"
        account = read_account(self.root, user)
        if account is None:
            raise RuntimeError(f"User={user} does not exist in the image")
        gid = account.gid
        group = unit.get("Service.Group")
        if group:
            found = read_group_id(self.root, group)
            if found is None:
                raise RuntimeError(f"Group={group} does not exist in the image")
            gid = found
        groups = supplementary_groups(self.root, account.name)
        for extra in unit.all("Service.SupplementaryGroups"):
            found = read_group_id(self.root, extra)
            if found is not None:
                groups.append(found)
        return account.uid, gid, sorted(set(groups)), account.home

    def spawn(self, unit: Unit, command: Command, env: dict[str, str]) -> int | None:
        """fork + chroot + drop privileges + exec. None when the command could not be executed."""
        uid, gid, groups, home = self.credentials(unit)
        if command.privileged:
            uid, gid, groups = 0, 0, []
        workdir = unit.specifiers(unit.get("Service.WorkingDirectory", "/") or "/")
        workdir_optional = workdir.startswith("-")
        workdir = workdir.lstrip("-")
        workdir = home if workdir == "~" else workdir
        umask = int(unit.get("Service.UMask", "0022") or "0022", 8)
        args = command.expand(env)
        if not args:
            self.log(f"{unit.name}: empty command line after variable expansion")
            return None
        program, argv = (args[0], args[1:]) if command.argv0_separate else (args[0], args)
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # the child: never return into the init's code
            try:
                os.close(report_r)
                for sig in (signal.SIGPIPE, signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                            signal.SIGXFSZ):  # fmt: skip
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                os.setsid()
                os.chroot(self.root)
                try:
                    os.chdir(workdir)
                except OSError:
                    if not workdir_optional:
                        raise
                    os.chdir("/")
                null = os.open("/dev/null", os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(self.console_fd, 1)
                os.dup2(self.console_fd, 2)
                os.umask(umask)
                if uid or gid:
                    os.setgroups(groups)
                    os.setgid(gid)
                    os.setuid(uid)
                os.execvpe(program, argv, env)
            except BaseException as err:  # report why, then die with systemd's EXEC status
                os.write(report_w, f"{program}: {err}".encode(errors="replace"))
            finally:
                os._exit(EXIT_EXEC_FAILED)
        os.close(report_w)
        with os.fdopen(report_r, "rb") as report:
            problem = report.read().decode(errors="replace")
        if problem:
            self.log(f"{unit.name}: failed to execute {problem}")
            self.waiting.add(pid)
            self.wait_for(pid, 5)
            return None
        return pid

    def pump(self, timeout: float) -> None:
        """Wait up to `timeout` for a signal or a syslog line, then reap every exited child."""
        sources: list[int | socket.socket] = [self.wake_r]
        if self.syslog is not None:
            sources.append(self.syslog)
        try:
            readable, _, _ = select.select(sources, [], [], max(timeout, 0))
        except InterruptedError:
            readable = []
        if self.wake_r in readable:
            try:
                while os.read(self.wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        if self.syslog is not None and self.syslog in readable:
            self.drain_syslog()
        self.reap()

    def drain_syslog(self) -> None:
        assert self.syslog is not None
        while True:
            try:
                data = self.syslog.recv(8192)
            except (BlockingIOError, OSError):
                return
            text = data.decode(errors="replace").rstrip("\x00\n")
            if text.startswith("<") and ">" in text[:5]:
                text = text[text.index(">") + 1 :]  # drop the priority, keep "Mon DD hh:mm:ss prog[pid]: msg"
            self.log(text)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.waiting:
                self.exited[pid] = status
            for state in self.units.values():
                if state.main_pid == pid:
                    state.main_pid = None
                    self.main_exited(state, status)

    def wait_for(self, pid: int, timeout: float) -> int | None:
        """The wait status of a child we spawned, or None if it is still running at the deadline."""
        deadline = time.monotonic() + timeout
        while pid not in self.exited:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.pump(min(remaining, 0.5))
        self.waiting.discard(pid)
        return self.exited.pop(pid)

    def run_control(self, state: UnitState, command: Command, env: dict[str, str], timeout: float) -> bool:
        """Run an ExecStartPre/ExecStart(oneshot, forking)/ExecStartPost/ExecStop command to the end."""
        pid = self.spawn(state.unit, command, env)
        if pid is None:
            return command.ignore_failure
        self.waiting.add(pid)
        status = self.wait_for(pid, timeout)
        if status is None:
            self.log(f"{state.unit.name}: {' '.join(command.argv)} timed out after {timeout:.0f}s, killing it")
            _kill(-pid, signal.SIGKILL)
            _kill(pid, signal.SIGKILL)
            self.wait_for(pid, 5)
            return command.ignore_failure
        ok = os.waitstatus_to_exitcode(status) == 0
        if not ok and not command.ignore_failure:
            self.log(f"{state.unit.name}: {' '.join(command.argv)} {describe_status(status)}")
        return ok or command.ignore_failure

    # --- unit lifecycle -----------------------------------------------------------------------

    def make_runtime_dirs(self, unit: Unit) -> None:
        names = unit.all("Service.RuntimeDirectory")
        if not names:
            return
        uid, gid, _, _ = self.credentials(unit)
        mode = int(unit.get("Service.RuntimeDirectoryMode", "0755") or "0755", 8)
        for name in names:
            path = self.root / "run" / name.strip("/")
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, uid, gid)
            os.chmod(path, mode)

    def remove_runtime_dirs(self, unit: Unit) -> None:
        for name in unit.all("Service.RuntimeDirectory"):
            path = self.root / "run" / name.strip("/")
            if path.is_dir() and not path.is_symlink():
                _rmtree(path)

    def start_unit(self, state: UnitState) -> None:
        unit = state.unit
        if unit.is_target:
            state.state, state.sub = "active", "active"
            if unit.name == self.order[-1] or unit.name.startswith("multi-user"):
                self.log(f"[  OK  ] Reached target {unit.name}.")
            return
        unmet = unit.unmet_condition(self.root)
        if unmet:
            state.state, state.sub, state.result = "inactive", "dead", f"condition: {unmet}"
            self.log(f"[ SKIP ] {unit.name}: {unmet} not met.")
            return
        state.state, state.sub = "activating", "start"
        try:
            ok = self.activate(state)
        except (RuntimeError, OSError) as err:
            self.log(f"{unit.name}: {err}")
            ok = False
        description = unit.get("Unit.Description")
        label = f"{unit.name} - {description}" if description else unit.name
        if ok:
            self.log(f"[  OK  ] Started {label}.")
        else:
            state.state, state.sub = "failed", "failed"
            state.result = state.result or "exit-code"
            self.log(f"[FAILED] Failed to start {label}.")
            self.cleanup_after_failure(state)

    def activate(self, state: UnitState) -> bool:
        unit = state.unit
        kind = unit.type
        timeout = min(parse_seconds(unit.get("Service.TimeoutStartSec") or unit.get("Service.TimeoutSec"),
                                    MAX_START_TIMEOUT_S), MAX_START_TIMEOUT_S)  # fmt: skip
        env = self.environment(unit, unit.get("Service.User"))
        self.make_runtime_dirs(unit)
        for command in unit.commands("ExecStartPre"):
            if not self.run_control(state, command, env, timeout):
                return False
        starts = unit.commands("ExecStart")
        if kind == "oneshot":
            for command in starts:
                if not self.run_control(state, command, env, timeout):
                    return False
            state.state, state.sub = ("active", "exited") if unit.flag("Service.RemainAfterExit") else (
                "inactive", "dead")  # fmt: skip
        elif kind == "forking":
            if not starts or not self.run_control(state, starts[0], env, timeout):
                return False
            state.main_pid = self.read_pid_file(unit, timeout)
            state.state, state.sub = "active", "running"
        elif kind in ("simple", "exec", "notify", "notify-reload", "dbus", "idle"):
            if not starts:
                self.log(f"{unit.name}: Type={kind} needs ExecStart=")
                return False
            pid = self.spawn(unit, starts[0], env)
            if pid is None:
                return False
            state.main_pid = pid
            state.state, state.sub = "active", "running"
        else:
            self.log(f"{unit.name}: Type={kind} is not supported by the sandbox")
            return False
        post_env = {**env, "MAINPID": str(state.main_pid or "")}
        return all(self.run_control(state, command, post_env, timeout) for command in unit.commands("ExecStartPost"))

    def read_pid_file(self, unit: Unit, timeout: float) -> int | None:
        pid_file = unit.get("Service.PIDFile")
        if not pid_file:
            return None
        path = resolve_in_root(self.root, unit.specifiers(pid_file))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # a daemon may write it just after its parent exits
            try:
                pid = int(path.read_text().split()[0])
                os.kill(pid, 0)
                return pid
            except (OSError, ValueError, IndexError):
                self.pump(0.05)
        self.log(f"{unit.name}: PID file {pid_file} not readable")
        return None

    def main_exited(self, state: UnitState, status: int) -> None:
        unit = state.unit
        if state.state == "deactivating" or self.stopping:
            return
        code = os.waitstatus_to_exitcode(status)
        clean = code == 0 or (code < 0 and -code in CLEAN_SIGNALS)
        self.log(f"{unit.name}: main process {describe_status(status)}")
        policy = unit.get("Service.Restart", "no") or "no"
        prevented = str(code) in unit.all("Service.RestartPreventExitStatus")
        restart = not prevented and (
            policy == "always"
            or (policy == "on-success" and clean)
            or (policy == "on-failure" and not clean)
            or (policy == "on-abnormal" and code < 0 and not clean)
            or (policy == "on-abort" and code < 0 and -code not in CLEAN_SIGNALS)
        )
        if restart:
            now = time.monotonic()
            window = parse_seconds(unit.get("Unit.StartLimitIntervalSec"), 10.0)
            burst = int(unit.get("Unit.StartLimitBurst", "5") or "5")
            state.restarts = [t for t in state.restarts if now - t < window] + [now]
            if len(state.restarts) <= burst:
                state.state, state.sub = "activating", "auto-restart"
                state.restart_at = now + parse_seconds(unit.get("Service.RestartSec"), 0.1)
                return
            self.log(f"{unit.name}: start request repeated too quickly")
            state.result = "start-limit-hit"
        state.state, state.sub = ("inactive", "dead") if clean else ("failed", "failed")
        if not clean:
            state.result = state.result or "exit-code"
            self.log(f"[FAILED] {unit.name} failed.")
        self.remove_runtime_dirs(unit)
        self.write_status()

    def run_due_restarts(self) -> None:
        for state in self.units.values():
            if state.restart_at is not None and time.monotonic() >= state.restart_at:
                state.restart_at = None
                self.log(f"{state.unit.name}: scheduled restart")
                self.start_unit(state)
                self.write_status()

    def cleanup_after_failure(self, state: UnitState) -> None:
        if state.main_pid:
            _kill(state.main_pid, signal.SIGKILL)
            state.main_pid = None
        self.remove_runtime_dirs(state.unit)

    def stop_unit(self, state: UnitState) -> None:
        unit = state.unit
        if unit.is_target or state.state not in ("active", "activating"):
            return
        state.state, state.sub = "deactivating", "stop"
        timeout = min(parse_seconds(unit.get("Service.TimeoutStopSec") or unit.get("Service.TimeoutSec"),
                                    MAX_STOP_TIMEOUT_S), MAX_STOP_TIMEOUT_S)  # fmt: skip
        try:
            env = {**self.environment(unit, unit.get("Service.User")), "MAINPID": str(state.main_pid or "")}
            for command in unit.commands("ExecStop"):
                self.run_control(state, command, env, timeout)
        except (RuntimeError, OSError) as err:
            self.log(f"{unit.name}: {err}")
        main, proc = state.main_pid, self.root / "proc"  # the instance's own procfs: its PIDs
        if main and alive(main, proc):
            kill_signal = _signal_named(unit.get("Service.KillSignal", "SIGTERM") or "SIGTERM")
            mode = unit.get("Service.KillMode", "control-group")
            _kill(main, kill_signal)
            if mode == "control-group":
                _kill(-main, kill_signal)  # its process group: what setsid() gave the service
            deadline = time.monotonic() + timeout
            while alive(main, proc) and time.monotonic() < deadline:
                self.pump(0.05)
            if alive(main, proc):
                self.log(f"{unit.name}: did not stop within {timeout:.0f}s, killing it")
                _kill(main, signal.SIGKILL)
            if mode in ("control-group", "mixed"):
                _kill(-main, signal.SIGKILL)
        state.main_pid = None
        try:
            for command in unit.commands("ExecStopPost"):
                self.run_control(state, command, self.environment(unit, unit.get("Service.User")), timeout)
        except (RuntimeError, OSError) as err:
            self.log(f"{unit.name}: {err}")
        self.remove_runtime_dirs(unit)
        state.state, state.sub = "inactive", "dead"
        description = unit.get("Unit.Description")
        self.log(f"[  OK  ] Stopped {unit.name}{f' - {description}' if description else ''}.")

    # --- boot and shutdown --------------------------------------------------------------------

    def boot(self, plan: BootPlan) -> None:
        self.order = plan.order
        self.units = {name: UnitState(plan.units[name]) for name in plan.order}
        for note in plan.notes:
            self.log(f"[ WARN ] {note}")
        for name in sorted(plan.missing):
            self.log(f"[ WARN ] {name} is wanted but the image has no such unit.")
        for name in self.order:
            if self.stopping:
                return
            state = self.units[name]
            unit = state.unit
            failed_deps = [
                dep for dep in unit.requires
                if dep in plan.missing or (dep in self.units and self.units[dep].state == "failed")
            ]  # fmt: skip
            if failed_deps:
                state.state, state.sub, state.result = "failed", "failed", "dependency"
                self.log(f"[DEPEND] Dependency failed for {unit.name}: {', '.join(failed_deps)}.")
                continue
            self.start_unit(state)
            self.write_status()

    def run_user_script(self) -> None:
        """cloud-init's scripts-user: the user-data script, as root, once, after the units."""
        script = self.root / cloudinit.USER_SCRIPT.lstrip("/")
        if not script.is_file():
            return
        state = UnitState(Unit("cloud-final.service", None))
        env = self.environment(state.unit, None)
        if self.run_control(state, Command((cloudinit.USER_SCRIPT,)), env, USER_SCRIPT_TIMEOUT_S):
            self.log("[  OK  ] Finished cloud-final.service - user data script.")
        else:
            self.log("[FAILED] cloud-final.service: the user data script failed.")

    def shutdown(self) -> None:
        self.log("Stopping the instance.")
        self.stopping = True
        for name in reversed(self.order):
            if name in self.units:
                self.stop_unit(self.units[name])
        # What no unit owns any more (sessions, daemons' helpers): SIGTERM, then SIGKILL.
        _kill(-1, signal.SIGTERM)
        deadline = time.monotonic() + FINAL_KILL_GRACE_S
        while time.monotonic() < deadline and _has_children():
            self.pump(0.05)
        _kill(-1, signal.SIGKILL)
        while _has_children():
            self.pump(0.05)
        self.write_status("stopped")
        self.log("Reached target shutdown.")

    def run(self) -> int:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._request_stop)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.log(f"Kiln sandbox init starting {self.dir.name}")
        hostname = layout.read_hostname(self.root)
        if hostname:
            socket.sethostname(hostname)
        self.mount_system()
        self.write_status("booting")
        first_boot = layout.first_boot(self.dir)
        if first_boot.exists():  # cloud-init's per-instance work: before sshd starts
            cloudinit.generate_host_keys(self.root, hostname or "localhost")
        self.boot(boot_plan(self.root))
        if not self.stopping:
            if first_boot.exists():
                self.run_user_script()
                self.log(cloudinit.first_boot_text(self.root, first_boot.read_text().strip()))
                first_boot.unlink()
            self.write_status("running")
        while not self.stopping:
            self.pump(0.5)
            self.run_due_restarts()
        self.shutdown()
        return 0

    def _request_stop(self, signum: int, frame: object) -> None:
        self.stopping = True


def describe_status(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:  # a real-time signal has no name
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _signal_named(name: str) -> signal.Signals:
    name = name.upper()
    if name.isdigit():
        return signal.Signals(int(name))
    return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _has_children() -> bool:
    """Reaps whatever already exited; True while some child is still running."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _rmtree(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            _rmtree(child)
        else:
            child.unlink()
    path.rmdir()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m release.sandbox.dataplane.init <instance dir>", file=sys.stderr)
        return 2
    if os.getpid() != 1:
        print("init must run as PID 1 of a fresh PID namespace", file=sys.stderr)
        return 2
    try:
        return Init(Path(argv[1])).run()
    except OSError as err:
        if err.errno == errno.EPERM:
            print(f"init: {err} (root is required)", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv))
