"""release.ssh and the fleet audit against a real sandbox instance (chroot, own PID namespace, own sshd).

Host keys come only from the instance's console output, as on first contact with an EC2 instance;
`pgrep` inside the SSH session must see the instance's processes and not the host's.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from release.audit import ExpectedRelease, Finding, FleetInstance, ServiceCheck, audit
from release.config import SshSettings
from release.sandbox.contracts import LaunchedInstance
from release.ssh import Ssh, Timeouts

from .conftest import serve_version
from .servers import write_manifest_like_the_bake

pytestmark = pytest.mark.root

BASE_IMAGE = "ami-0base0000000000000"
INSTANCE_ID = "i-0f1ee7000000000001"
ADDRESS = f"127.100.250.{os.getpid() % 200 + 20}"
EXPECTED = ExpectedRelease(version="1.4.2", fingerprint="sha256:abc", image_id=BASE_IMAGE, template_version="1")
HOST_MARKER = f"kiln-host-only-{os.getpid()}"
SERVICES = (
    ServiceCheck("sshd", ("-x", "sshd")),
    # A process of the host's: an instance's PID namespace must not show it.
    ServiceCheck("host process", ("-f", f"[{HOST_MARKER[0]}]{HOST_MARKER[1:]}")),
)


@pytest.fixture
def host_process() -> Iterator[int]:
    """A host process with a unique command line (what pgrep inside the instance must not find)."""
    process = subprocess.Popen(["bash", "-c", f"exec -a {HOST_MARKER} sleep 300"])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def sandbox_instance(tmp_path_factory: pytest.TempPathFactory, client_key: Path) -> Iterator[tuple[object, str]]:
    from release.sandbox.dataplane import LocalDataPlane
    from release.sandbox.dataplane.baseimage import DEFAULT_CACHE_DIR, build_base_image
    from release.sandbox.dataplane.mounts import mounts_under
    from release.sandbox.dataplane.rootfs import processes_rooted_under

    state_dir = tmp_path_factory.mktemp("dataplane")
    plane = LocalDataPlane(state_dir, DEFAULT_CACHE_DIR)
    plane.register_image(BASE_IMAGE, build_base_image(DEFAULT_CACHE_DIR).rootfs)
    public_key = client_key.with_suffix(".pub").read_text().strip()
    try:
        plane.launch(LaunchedInstance(INSTANCE_ID, BASE_IMAGE, ADDRESS, "kiln-test", public_key, None, "us-east-1"))
        plane.wait_until_booted(INSTANCE_ID)
        yield plane, INSTANCE_ID
    finally:
        plane.terminate_all()
        assert not mounts_under(state_dir)
        assert not processes_rooted_under(state_dir)


def connect_ssh(plane: object, tmp_path: Path, client_key: Path) -> Ssh:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    settings = SshSettings(user="admin", known_hosts=str(empty))
    return Ssh(settings, key_filename=client_key, use_agent=False, record_to=tmp_path / "kiln_known_hosts",
               console_output=plane.console_output, timeouts=Timeouts(connect=5, banner=5, auth=5, command=20))  # type: ignore[attr-defined]  # fmt: skip


def wait_for_sshd(address: str, deadline_s: float = 30) -> None:
    import socket

    deadline = time.monotonic() + deadline_s
    while True:  # the instance's sshd starts during boot: wait for its listener, not logic under test
        try:
            socket.create_connection((address, 22), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"no sshd on {address}:22 after {deadline_s} s")
            time.sleep(0.1)


def test_first_contact_is_verified_from_console_output(sandbox_instance: tuple[object, str], tmp_path: Path,
                                                       client_key: Path) -> None:  # fmt: skip
    plane, instance_id = sandbox_instance
    wait_for_sshd(ADDRESS)
    with connect_ssh(plane, tmp_path, client_key) as ssh, ssh.connect(ADDRESS, instance_id=instance_id) as conn:
        assert conn.run("id -un").stdout.strip() == "admin"
        assert conn.run("hostname").stdout.strip() == "ip-" + ADDRESS.replace(".", "-")
    recorded = (tmp_path / "kiln_known_hosts").read_text()
    assert recorded.startswith(f"{ADDRESS} ") and recorded.split()[2] in plane.console_output(instance_id)  # type: ignore[attr-defined]


def test_audit_of_a_sandbox_instance_sees_an_scp_hotfix(sandbox_instance: tuple[object, str], tmp_path: Path,
                                                        client_key: Path, host_process: int) -> None:  # fmt: skip
    plane, instance_id = sandbox_instance
    wait_for_sshd(ADDRESS)
    # A baked release directory inside the instance's filesystem, with the bake's manifest.
    release = plane.rootfs(instance_id) / "opt" / "webapp" / "releases" / EXPECTED.version  # type: ignore[attr-defined]
    (release / "webapp").mkdir(parents=True)
    (release / "webapp" / "views.py").write_text("VERSION = '1.4.2'\n")
    write_manifest_like_the_bake(release)
    instance = FleetInstance(instance_id, ADDRESS, BASE_IMAGE, "1")

    # /version is served from the host on the instance's loopback address (no app in the base image).
    with connect_ssh(plane, tmp_path, client_key) as ssh, serve_version(ADDRESS) as version:
        probe = audit(ssh, EXPECTED, [instance], services=SERVICES, http_port=version.port).verdicts[0]
        # The instance's PID namespace shows its own sshd and hides the host's processes.
        assert subprocess.run(["pgrep", "-f", HOST_MARKER], capture_output=True).returncode == 0  # on the host
        assert probe.details() == ["not running: host process"]

        clean = audit(ssh, EXPECTED, [instance], services=SERVICES[:1], http_port=version.port)
        assert clean.ok, clean.verdicts[0].details()

        # The old deploy script's way: copy a file onto the running instance.
        (release / "webapp" / "views.py").write_text("VERSION = 'hotfix'\n")
        after = audit(ssh, EXPECTED, [instance], services=SERVICES[:1], http_port=version.port)
    verdict = after.verdicts[0]
    assert verdict.outcome is Finding.DRIFT
    assert verdict.details() == ["changed: webapp/views.py"]
    assert after.exit_code == 12
