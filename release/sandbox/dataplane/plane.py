"""LocalDataPlane: the real machines behind the sandbox's EC2 (contracts.DataPlane).

    state_dir/images.json        the image table (survives a sandbox server restart)
    state_dir/layers/<image id>  layers made by CreateImage
    state_dir/instances/<id>/    one instance (see layout.py)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from release.errors import SandboxError
from release.sandbox.contracts import LaunchedInstance, Script
from release.sandbox.dataplane import agent, cloudinit, layout, peers
from release.sandbox.dataplane.baseimage import DEFAULT_CACHE_DIR, BuiltImage, build_base_image
from release.sandbox.dataplane.cloudinit import Identity
from release.sandbox.dataplane.images import ImageTable
from release.sandbox.dataplane.instance import InstanceProcess, InstanceRecord
from release.sandbox.dataplane.layers import InstanceSpecific, copy_layer
from release.sandbox.dataplane.mounts import mounts_under
from release.sandbox.dataplane.probe import probe as http_probe
from release.sandbox.dataplane.rootfs import processes_rooted_under


def require_root() -> None:
    if sys.platform != "linux" or os.geteuid() != 0:
        raise SandboxError(
            "the sandbox's data plane needs root on Linux (overlayfs mounts, chroot, PID namespaces)",
            hint="Run Kiln's sandbox as root on a Linux machine, or point Kiln at a real AWS account",
        )


class LocalDataPlane:
    def __init__(
        self,
        state_dir: Path,
        cache_dir: Path = DEFAULT_CACHE_DIR,
        *,
        availability_zone: str = "us-east-1a",
        aws_endpoint_url: str = "http://127.0.0.1:5000",
        aws_access_key_id: str = "testing",
        aws_secret_access_key: str = "testing",
    ) -> None:
        require_root()
        self.state_dir = Path(state_dir).absolute()
        self.cache_dir = Path(cache_dir).absolute()
        self.identity = Identity(availability_zone, aws_endpoint_url, aws_access_key_id, aws_secret_access_key)
        (self.state_dir / "instances").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "layers").mkdir(exist_ok=True)
        self.images = ImageTable(self.state_dir)
        self._lock = threading.RLock()  # instance table and layer garbage collection
        self._instance_locks: dict[str, threading.Lock] = {}
        self._processes: dict[str, InstanceProcess] = {}

    # --- images ---------------------------------------------------------------------------------

    def ensure_base_image(self) -> BuiltImage:
        """The cached Debian base rootfs (built on first use); register it with register_image."""
        return build_base_image(self.cache_dir)

    def register_image(self, image_id: str, rootfs: Path, *, parent_image_id: str | None = None) -> None:
        """Make `rootfs` (used in place, never modified or deleted) the content of `image_id`.

        With `parent_image_id`, `rootfs` is a layer on top of that image's layers: a hand-made
        image that adds a few files (a unit, an app) to the base without copying it."""
        rootfs = Path(rootfs).absolute()
        if parent_image_id is None:
            if not (rootfs / "etc").is_dir():
                raise SandboxError(f"RegisterImage {image_id}: {rootfs} does not look like a root filesystem")
            self.images.add(image_id, [rootfs])
        else:
            self.images.add(image_id, [*self.images.layers(parent_image_id), rootfs])

    def create_image(self, instance_id: str, image_id: str) -> None:
        """Freeze the instance as a new layer on top of its image's layers.

        Like CreateImage without NoReboot: a running instance is halted for the copy (so no service
        writes while it is taken) and booted again afterwards."""
        instance_dir = self._existing_dir(instance_id, "CreateImage")
        if image_id in self.images.images():
            raise SandboxError(f"CreateImage: image {image_id} already exists in the data plane")
        with self._instance_lock(instance_id):
            record = InstanceRecord.load(instance_dir)
            process = self._process(instance_id)
            was_running = process.running()
            if was_running:
                process.halt()
            os.sync()
            layer = self.images.layers_dir / image_id
            tmp = self.images.layers_dir / f".building-{image_id}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                copy_layer(layout.upper(instance_dir), tmp, InstanceSpecific(record.launch_files).excluded)
                os.rename(tmp, layer)
                self.images.add(image_id, [Path(p) for p in record.layers] + [layer])
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            finally:
                if was_running:
                    process.boot()

    def copy_image(self, source_image_id: str, image_id: str) -> None:
        """CopyImage: the copy shares the source's frozen layers (they are never written to; a layer
        is deleted only when no image and no instance uses it any more)."""
        with self._lock:
            self.images.add(image_id, self.images.layers(source_image_id))

    def deregister_image(self, image_id: str) -> None:
        with self._lock:
            self.images.remove(image_id)
            self._collect_layers()

    def _collect_layers(self) -> None:
        in_use = self.images.referenced()
        for instance_dir in self._instance_dirs():
            try:
                in_use.update(Path(p) for p in InstanceRecord.load(instance_dir).layers)
            except (OSError, ValueError, KeyError):
                continue
        for layer in self.images.layers_dir.iterdir():
            if layer.name.startswith(".") or layer in in_use or not self.images.owned(layer):
                continue
            shutil.rmtree(layer)

    # --- instances ------------------------------------------------------------------------------

    def launch(self, spec: LaunchedInstance) -> None:
        layers = [str(p) for p in self.images.layers(spec.image_id)]
        instance_dir = self._dir(spec.instance_id)
        with self._instance_lock(spec.instance_id):
            if instance_dir.exists():
                raise SandboxError(f"RunInstances: instance {spec.instance_id} already exists in the data plane")
            instance_dir.mkdir(mode=0o700)
            record = InstanceRecord(spec, layers)
            record.save(instance_dir)
            process = self._process(spec.instance_id)
            try:
                process.mount_root(layers)
                record.launch_files = cloudinit.inject(layout.rootfs(instance_dir), spec, self.identity)
                record.save(instance_dir)
                layout.first_boot(instance_dir).write_text(spec.instance_id)
                process.boot()
            except BaseException:
                self._destroy(spec.instance_id)
                raise

    def stop(self, instance_id: str) -> None:
        instance_dir = self._existing_dir(instance_id, "StopInstances")
        with self._instance_lock(instance_id):
            process = self._process(instance_id)
            process.halt()
            process.unmount()
            record = InstanceRecord.load(instance_dir)
            record.state = "stopped"
            record.save(instance_dir)

    def start(self, instance_id: str) -> None:
        instance_dir = self._existing_dir(instance_id, "StartInstances")
        with self._instance_lock(instance_id):
            process = self._process(instance_id)
            if process.running():
                return
            record = InstanceRecord.load(instance_dir)
            process.mount_root(record.layers)
            process.boot()
            record.state = "running"
            record.save(instance_dir)

    def kill(self, instance_id: str) -> None:
        """A host failure: every process of the instance dies at once, with no shutdown. Its files
        and mounts stay until EC2 stops or terminates it (halt and unmount find nothing running)."""
        self._existing_dir(instance_id, "kill")
        with self._instance_lock(instance_id):
            self._process(instance_id).kill()

    def terminate(self, instance_id: str) -> None:
        with self._instance_lock(instance_id):
            self._destroy(instance_id)
        with self._lock:
            self._collect_layers()

    def _destroy(self, instance_id: str) -> None:
        instance_dir = self._dir(instance_id)
        if not instance_dir.exists():
            with self._lock:  # terminated by another data plane object: just reap our child
                gone = self._processes.pop(instance_id, None)
            if gone is not None and gone.popen is not None:
                gone.popen.poll()
            return
        process = self._process(instance_id)
        process.halt()
        process.unmount()
        if mounts_under(instance_dir) or processes_rooted_under(instance_dir):
            raise SandboxError(f"instance {instance_id}: still in use after halting it; its files are kept")
        shutil.rmtree(instance_dir)
        with self._lock:
            self._processes.pop(instance_id, None)

    def terminate_all(self) -> None:
        """Terminate every instance (sandbox shutdown)."""
        for instance_dir in self._instance_dirs():
            self.terminate(instance_dir.name)

    # --- observation ----------------------------------------------------------------------------

    def console_output(self, instance_id: str) -> str:
        instance_dir = self._existing_dir(instance_id, "GetConsoleOutput")
        try:
            return layout.console(instance_dir).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def probe(self, ip: str, port: int, path: str, timeout: float) -> int | None:
        return http_probe(ip, port, path, timeout)

    def instance_metadata(self, instance_id: str) -> dict[str, Any] | None:
        """What the instance's metadata service answers (written at launch by cloudinit.inject);
        None when the instance is gone or its root is not mounted."""
        path = layout.rootfs(self._dir(instance_id)) / cloudinit.METADATA.lstrip("/")
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return document if isinstance(document, dict) else None

    def connection_source(self, client: tuple[str, int], server: tuple[str, int]) -> str | None:
        """The instance whose process opened the TCP connection from `client` to `server` (as the
        server sees it: its peer's address and port, its own); None for anything else, such as a
        process of the host's or of another sandbox's instance (peers.py)."""
        inode = peers.socket_inode(client, server)
        if inode is None:
            return None
        instances = self.state_dir / "instances"
        root = peers.holder_root(inode, instances)
        if root is None:
            return None
        instance_id = root.relative_to(instances).parts[0]
        return instance_id if layout.rootfs(instances / instance_id) in (root, *root.parents) else None

    # --- Run Command (the SSM agent's side) -------------------------------------------------------

    def agent_online(self, instance_id: str) -> bool:
        """Would the instance's SSM agent take a command now: booted (every unit started) and its
        init still running."""
        if not layout.spec(self._dir(instance_id)).exists():
            return False
        return bool(self.status(instance_id)["phase"] == "running")

    def run_script(self, script: Script) -> agent.ScriptProcess:
        """Start an AWS-RunShellScript script inside the running instance, as root (agent.py)."""
        instance_dir = self._existing_dir(script.instance_id, "SendCommand")
        init_pid = self._process(script.instance_id).init_pid()
        if init_pid is None:
            raise SandboxError(f"SendCommand: instance {script.instance_id} is not running")
        output = self.state_dir / "ssm" / script.command_id / script.instance_id
        return agent.start(script, root=layout.rootfs(instance_dir), init_pid=init_pid, output_dir=output)

    def instance_ids(self) -> list[str]:
        return sorted(d.name for d in self._instance_dirs())

    def rootfs(self, instance_id: str) -> Path:
        return layout.rootfs(self._existing_dir(instance_id, "rootfs"))

    def live_rootfs(self, instance_id: str) -> Path:
        """The running instance's root as its processes see it, /run and /dev included (rootfs()
        is the overlay alone: the instance's tmpfs mounts live in its own mount namespace)."""
        self._existing_dir(instance_id, "live_rootfs")
        live = self._process(instance_id).live_root()
        if live is None:
            raise SandboxError(f"instance {instance_id} is not running")
        return live

    def status(self, instance_id: str) -> dict[str, Any]:
        """The init's unit table: {"phase": booting|running|stopped, "units": {name: {...}}}."""
        path = layout.status(self._existing_dir(instance_id, "status"))
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return {"phase": "pending", "units": {}}
        if data.get("phase") != "stopped" and not self._process(instance_id).running():
            data["phase"] = "stopped"
        return data

    def wait_until_booted(self, instance_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Block until the instance's init has started every unit; returns status()."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(instance_id)
            if status["phase"] in ("running", "stopped"):
                return status
            if time.monotonic() > deadline:
                raise SandboxError(f"instance {instance_id} did not finish booting within {timeout:.0f}s")
            time.sleep(0.05)

    # --- helpers --------------------------------------------------------------------------------

    def _dir(self, instance_id: str) -> Path:
        if not instance_id or "/" in instance_id or instance_id.startswith("."):
            raise SandboxError(f"invalid instance id {instance_id!r}")
        return self.state_dir / "instances" / instance_id

    def _existing_dir(self, instance_id: str, operation: str) -> Path:
        instance_dir = self._dir(instance_id)
        if not layout.spec(instance_dir).exists():
            raise SandboxError(f"{operation}: instance {instance_id} is not known to the data plane")
        return instance_dir

    def _instance_dirs(self) -> list[Path]:
        return sorted(d for d in (self.state_dir / "instances").iterdir() if d.is_dir())

    def _instance_lock(self, instance_id: str) -> threading.Lock:
        with self._lock:
            return self._instance_locks.setdefault(instance_id, threading.Lock())

    def _process(self, instance_id: str) -> InstanceProcess:
        with self._lock:
            if instance_id not in self._processes:
                self._processes[instance_id] = InstanceProcess(self._dir(instance_id))
            return self._processes[instance_id]
