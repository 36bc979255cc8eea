"""The sandbox server as a process: start, find and stop it (a detached process on a loopback
port). stack.py builds the whole sandbox (this server, PostgreSQL, the seed) on top of it.

    info = start(state_dir)       # starts it (or reuses the running one) and waits until it answers
    find(state_dir)               # SandboxInfo, or None when none is running
    stop(state_dir)               # stops the process `start` started and waits until it is gone

Everything the control plane keeps on disk is in `state_dir`: server.json (pid, port, endpoint,
started_at, time scale) and server.log. The pid in server.json is only ever signalled after
checking, in /proc, that it is this state dir's sandbox server — never a recycled pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from release.errors import SandboxError
from release.sandbox.processes import alive

SERVER_MODULE = "release.sandbox.server"
DEFAULT_TIME_SCALE = 0.1  # the server's default: one AWS second lasts 0.1 s
REGION = "us-east-1"
START_TIMEOUT_S = 60.0
DATAPLANE_START_TIMEOUT_S = 900.0  # a cold start debootstraps the base image first
STOP_TIMEOUT_S = 10.0
WHERE = "sandbox"

# Popen objects of servers this process started, kept so they can be reaped on `down`.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class SandboxInfo:
    endpoint: str
    port: int
    pid: int
    started_at: datetime
    time_scale: float
    state_dir: Path
    region: str = REGION
    dataplane: bool = False  # real instances behind EC2 (else control plane only)
    base_image_name: str | None = None  # None: the server's defaults
    base_image_owner: str | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment that points the AWS CLI and boto3 at the sandbox (fake credentials)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }


def _state_file(state_dir: Path) -> Path:
    return state_dir / "server.json"


def log_file(state_dir: Path) -> Path:
    return state_dir / "server.log"


@contextlib.contextmanager
def _exclusive(state_dir: Path) -> Iterator[None]:
    """One up/down/reset at a time per state dir (two `up`s must not start two servers)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / "lifecycle.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)


def _alive(pid: int) -> bool:
    """Running and not a zombie (a child of ours that exited is reaped first)."""
    _reap(pid)
    return alive(pid)


def _is_our_server(pid: int, state_dir: Path) -> bool:
    """Is `pid` the sandbox server of this state dir? (Guards against recycled pids.)"""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    args = [a.decode(errors="replace") for a in argv]
    if SERVER_MODULE not in args or "--state-dir" not in args:
        return False
    given = args[args.index("--state-dir") + 1] if args.index("--state-dir") + 1 < len(args) else ""
    return Path(given).resolve() == state_dir.resolve()


def _health(endpoint: str, timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{endpoint}/_kiln/health", timeout=timeout) as response:
            payload = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _read_info(state_dir: Path) -> SandboxInfo | None:
    try:
        raw = json.loads(_state_file(state_dir).read_text())
        return SandboxInfo(
            endpoint=str(raw["endpoint"]),
            port=int(raw["port"]),
            pid=int(raw["pid"]),
            started_at=datetime.fromisoformat(raw["started_at"]),
            time_scale=float(raw["time_scale"]),
            state_dir=state_dir,
            region=str(raw.get("region", REGION)),
            dataplane=bool(raw.get("dataplane", False)),
            base_image_name=raw.get("base_image_name"),
            base_image_owner=raw.get("base_image_owner"),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise SandboxError(
            f"{_state_file(state_dir)} is unreadable ({exc})",
            where=WHERE,
            hint=f"Stop any sandbox server by hand if one runs, then delete {_state_file(state_dir)}.",
        ) from exc


def _write_info(info: SandboxInfo) -> None:
    payload = {
        "pid": info.pid,
        "port": info.port,
        "endpoint": info.endpoint,
        "started_at": info.started_at.isoformat(),
        "time_scale": info.time_scale,
        "region": info.region,
        "dataplane": info.dataplane,
        "base_image_name": info.base_image_name,
        "base_image_owner": info.base_image_owner,
    }
    target = _state_file(info.state_dir)
    temporary = target.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n")
    temporary.replace(target)


def find(state_dir: Path) -> SandboxInfo | None:
    """The running sandbox of `state_dir`, or None. Clears a stale server.json."""
    info = _read_info(state_dir)
    if info is None:
        return None
    if not (_alive(info.pid) and _is_our_server(info.pid, state_dir)):
        _state_file(state_dir).unlink(missing_ok=True)
        return None
    health = _health(info.endpoint)
    if health is None or health.get("pid") != info.pid:
        raise SandboxError(
            f"the sandbox server (pid {info.pid}) runs but does not answer on {info.endpoint}",
            where=WHERE,
            hint=f"See {log_file(state_dir)}; `inv sandbox.down` then `inv sandbox.up` restarts it.",
        )
    return info


def start(
    state_dir: Path,
    *,
    port: int | None = None,
    time_scale: float = DEFAULT_TIME_SCALE,
    dataplane: bool = False,
    base_image_name: str | None = None,
    base_image_owner: str | None = None,
    on_step: Callable[[str], None] = lambda s: None,
) -> SandboxInfo:
    """Start the sandbox server (or return the running one) and wait until it answers.

    `dataplane=True` runs real instances (root on Linux); the first start then also builds the
    Debian base image (minutes; cached per machine afterwards). The server publishes its base AMI
    under `base_image_name`, owned by `base_image_owner` (versions.toml's [base_image] name and
    owners[0]); the defaults are provision.BASE_IMAGE_NAME and DEBIAN_OWNER_ID. While the base
    image is being built, `on_step` hears debootstrap's stage as it changes."""
    state_dir = state_dir.resolve()
    with _exclusive(state_dir):
        running = find(state_dir)
        if running is not None:
            return running
        chosen = port or free_port()
        endpoint = f"http://127.0.0.1:{chosen}"
        if _health(endpoint, timeout=0.5) is not None:
            raise SandboxError(
                f"another sandbox already answers on {endpoint}",
                where=WHERE,
                hint="Stop it (with the state dir it was started with) or choose another port.",
            )
        command = [
            sys.executable,
            "-m",
            SERVER_MODULE,
            "--port",
            str(chosen),
            "--state-dir",
            str(state_dir),
            "--time-scale",
            repr(time_scale),
            *(["--dataplane"] if dataplane else []),
            *(["--base-image-name", base_image_name] if base_image_name else []),
            *(["--base-image-owner", base_image_owner] if base_image_owner else []),
        ]
        project_root = Path(__file__).resolve().parents[2]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project_root), env.get("PYTHONPATH")]))
        with log_file(state_dir).open("ab") as log:
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=project_root,
                env=env,
                start_new_session=True,  # survives the invoking shell; its own process group
            )
        _children[child.pid] = child
        timeout = DATAPLANE_START_TIMEOUT_S if dataplane else START_TIMEOUT_S
        deadline = time.monotonic() + timeout
        watch = _BaseImageWatch(on_step) if dataplane else None
        while time.monotonic() < deadline:
            if watch is not None:
                watch.look()
            if child.poll() is not None:
                _children.pop(child.pid, None)
                raise SandboxError(
                    f"the sandbox server exited with code {child.returncode} while starting: {_log_tail(state_dir)}",
                    where=WHERE,
                    hint=f"See {log_file(state_dir)}.",
                )
            health = _health(endpoint, timeout=0.5)
            if health is not None and health.get("pid") == child.pid:
                info = SandboxInfo(
                    endpoint,
                    chosen,
                    child.pid,
                    datetime.now(UTC),
                    time_scale,
                    state_dir,
                    dataplane=dataplane,
                    base_image_name=base_image_name,
                    base_image_owner=base_image_owner,
                )
                _write_info(info)
                return info
            time.sleep(0.05)
        _stop_pid(child.pid)
        raise SandboxError(
            f"the sandbox server did not answer on {endpoint} within {timeout:.0f} s",
            where=WHERE,
            hint=f"See {log_file(state_dir)}.",
        )


class _BaseImageWatch:
    """Says what the server's base image build is doing (debootstrap's stage), about once a second."""

    def __init__(self, on_step: Callable[[str], None]) -> None:
        self.on_step = on_step
        self.said: str | None = None
        self.next_look = 0.0

    def look(self) -> None:
        if time.monotonic() < self.next_look:
            return
        self.next_look = time.monotonic() + 1.0
        from release.sandbox.dataplane import baseimage  # only a data plane builds one

        stage = baseimage.build_stage()
        if stage is not None and stage != self.said:
            self.said = stage
            self.on_step(f"building the base image (once per machine): debootstrap: {stage}")


def stop(state_dir: Path) -> bool:
    """Stop the sandbox server of `state_dir`; True if one was running. Waits until it is gone."""
    state_dir = state_dir.resolve()
    if not state_dir.exists():
        return False
    with _exclusive(state_dir):
        return _down(state_dir)


def _down(state_dir: Path) -> bool:
    info = _read_info(state_dir)
    if info is None:
        return False
    stopped = False
    if _alive(info.pid) and _is_our_server(info.pid, state_dir):
        _stop_pid(info.pid)
        stopped = True
    _state_file(state_dir).unlink(missing_ok=True)
    return stopped



def _stop_pid(pid: int) -> None:
    """SIGTERM, wait; SIGKILL the server's own process group if it lingers; wait until gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if _wait_gone(pid, STOP_TIMEOUT_S):
        return
    try:
        os.killpg(pid, signal.SIGKILL)  # the group `up` created for this server (pgid == pid)
    except ProcessLookupError:
        return
    if not _wait_gone(pid, STOP_TIMEOUT_S):
        raise SandboxError(f"the sandbox server (pid {pid}) did not stop", where=WHERE, hint=f"Kill pid {pid}.")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child = _children.get(pid)
        if child is not None:
            try:
                child.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            _children.pop(pid, None)
            return True
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _log_tail(state_dir: Path, lines: int = 5) -> str:
    try:
        text = log_file(state_dir).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:])
