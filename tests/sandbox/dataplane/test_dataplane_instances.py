"""Real instances from real images: SSH with strict host keys, units from a hand-made layer,
CreateImage, stop/start, and terminate leaving nothing behind."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from dataplane_helpers import (
    BASE_IMAGE,
    assert_nothing_left,
    listening_sockets,
    run,
    spec,
    ssh,
    wait_for_port,
)

from release.errors import SandboxError
from release.sandbox.dataplane import LocalDataPlane, parse_host_keys
from release.sandbox.dataplane.baseimage import DEFAULT_CACHE_DIR, build_base_image, tree_size
from release.sandbox.dataplane.mounts import mounts_under
from release.sandbox.dataplane.rootfs import processes_rooted_under

pytestmark = pytest.mark.root

SSH_INSTANCE, SSH_IP = "i-0ssh000000000001", "127.100.0.10"


@pytest.mark.slow
def test_base_image_is_built_once_then_reused(base_rootfs: Path) -> None:
    started = time.monotonic()
    again = build_base_image(DEFAULT_CACHE_DIR)
    warm = time.monotonic() - started
    print(f"base image warm reuse: {warm * 1000:.1f} ms")
    assert not again.built and again.rootfs == base_rootfs and warm < 1
    assert "admin:x:1000" in (base_rootfs / "etc/passwd").read_text()
    assert (base_rootfs / "etc/sudoers.d/90-kiln-default-user").read_text() == "admin ALL=(ALL) NOPASSWD:ALL\n"
    assert "exit 101" in (base_rootfs / "usr/sbin/policy-rc.d").read_text()
    assert not list((base_rootfs / "etc/ssh").glob("ssh_host_*")), "host keys must not be baked in"
    assert not (base_rootfs / "etc/machine-id").exists()
    for program in ("usr/bin/python3", "usr/sbin/sshd", "usr/bin/sudo", "usr/bin/ps", "usr/sbin/ip"):
        assert (base_rootfs / program).exists(), program
    assert not [p for p in base_rootfs.parent.parent.iterdir() if p.name.startswith(".building-")]


@pytest.fixture(scope="module")
def booted(plane: LocalDataPlane, ssh_key: tuple[Path, str]) -> Iterator[str]:
    started = time.monotonic()
    plane.launch(spec(SSH_INSTANCE, SSH_IP, ssh_key[1]))
    launched = time.monotonic() - started
    plane.wait_until_booted(SSH_INSTANCE)
    wait_for_port(SSH_IP, 22)
    client = ssh(plane, SSH_INSTANCE, SSH_IP, ssh_key[0])
    client.close()
    print(f"launch returned in {launched * 1000:.0f} ms; launch to ssh login: {time.monotonic() - started:.2f} s")
    yield SSH_INSTANCE
    plane.terminate(SSH_INSTANCE)
    assert_nothing_left(plane.state_dir, SSH_INSTANCE, SSH_IP)


def test_ssh_as_admin_with_strict_host_keys(plane: LocalDataPlane, booted: str, ssh_key: tuple[Path, str]) -> None:
    with ssh(plane, booted, SSH_IP, ssh_key[0]) as client:
        code, out = run(client, "id -un; hostname; sudo -n id -u; cat /etc/kiln/instance-metadata.json")
        assert run(client, "test -r /sys/devices/system/cpu/online && ! sudo touch /sys/kiln 2>/dev/null")[0] == 0
    assert code == 0, out
    lines = out.splitlines()
    assert lines[:3] == ["admin", "ip-127-100-0-10", "0"]
    metadata = json.loads("\n".join(lines[3:]))
    assert metadata["instance_id"] == booted and metadata["local_ipv4"] == SSH_IP
    assert metadata["region"] == "us-east-1" and metadata["aws_endpoint_url"].startswith("http://127.")


def test_rsa_sha1_logins_as_packer_makes_them_are_accepted(
    plane: LocalDataPlane, booted: str, ssh_key: tuple[Path, str], tmp_path: Path
) -> None:
    rsa = tmp_path / "id_rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)], check=True)
    with ssh(plane, booted, SSH_IP, ssh_key[0]) as client:
        pub = rsa.with_suffix(".pub").read_text().strip()
        add_key = f"cp ~/.ssh/authorized_keys /tmp/launch-keys; echo '{pub}' >> ~/.ssh/authorized_keys"
        assert run(client, add_key)[0] == 0
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("".join(f"{SSH_IP} {t} {k}\n" for t, k in parse_host_keys(plane.console_output(booted))))
    login = subprocess.run(
        ["ssh", "-i", str(rsa), "-o", "IdentitiesOnly=yes", "-o", "PubkeyAcceptedAlgorithms=ssh-rsa",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}", "-o", "BatchMode=yes",
         f"admin@{SSH_IP}", "echo in"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert (login.returncode, login.stdout) == (0, "in\n"), login.stderr
    with ssh(plane, booted, SSH_IP, ssh_key[0]) as client:  # back to the launch key alone
        assert run(client, "cat /tmp/launch-keys > ~/.ssh/authorized_keys")[0] == 0


def test_wrong_host_key_is_rejected(plane: LocalDataPlane, booted: str, ssh_key: tuple[Path, str]) -> None:
    impostor = paramiko.SSHClient()
    other = paramiko.Ed25519Key.from_private_key_file(str(ssh_key[0]))  # any key that is not the host's
    impostor.get_host_keys().add(SSH_IP, "ssh-ed25519", other)
    impostor.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException):
        impostor.connect(SSH_IP, username="admin", key_filename=str(ssh_key[0]), look_for_keys=False,
                         allow_agent=False, timeout=10, disabled_algorithms={"keys": ["rsa-sha2-512",
                         "rsa-sha2-256", "ecdsa-sha2-nistp256"]})  # fmt: skip
    impostor.close()


def command_line(pid: int) -> bytes:
    """A process's command line; empty once it has ended (an instance runs short-lived processes too)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def test_processes_are_confined_to_the_instance(plane: LocalDataPlane, booted: str) -> None:
    rootfs = plane.rootfs(booted)
    seen: dict[int, tuple[bytes, Path, str]] = {}  # pid -> command line, root, pid namespace
    for pid in processes_rooted_under(rootfs):
        try:
            seen[pid] = (Path(f"/proc/{pid}/cmdline").read_bytes(), Path(f"/proc/{pid}/root").readlink(),
                         os.readlink(f"/proc/{pid}/ns/pid"))
        except FileNotFoundError:  # a short-lived process (a health check's, a login's) ended meanwhile
            continue
    assert seen, "the instance runs nothing"
    # The listener's root is the instance's rootfs (its privilege-separated children chroot
    # further, into /run/sshd, which is still inside the instance).
    roots = {root for command, root, _ in seen.values() if b"sshd" in command}
    assert rootfs in roots and all(r == rootfs or rootfs in r.parents for r in roots)
    assert os.readlink("/proc/self/ns/pid") not in {namespace for _, _, namespace in seen.values()}
    # Only the instance's own address: instances share the host's network namespace.
    assert listening_sockets(SSH_IP) == [22]
    assert 22 not in listening_sockets("0.0.0.0")
    # The instance's mounts (proc, dev, run) live in its own mount namespace, not the host's.
    assert mounts_under(plane.state_dir) == [rootfs]


WEB_UNIT = """\
[Unit]
Description=Test web server
Requires=prepare.service
After=prepare.service network-online.target

[Service]
User=admin
WorkingDirectory=/srv/www
Environment=GREETING=unused "LABEL=kiln web"
EnvironmentFile=/etc/default/kiln-web
EnvironmentFile=-/etc/default/does-not-exist
RuntimeDirectory=kiln-web
RuntimeDirectoryMode=0750
ExecStartPre=-/bin/false
ExecStart=/usr/bin/python3 /usr/local/bin/kiln-web ${PORT}
Restart=on-failure
"""
WEB_SCRIPT = """\
import http.server, json, os, sys
ip = json.load(open("/etc/kiln/instance-metadata.json"))["local_ipv4"]
open(os.environ["RUNTIME_DIRECTORY"] + "/who", "w").write(os.environ["LABEL"] + " as " + os.environ["USER"])
http.server.ThreadingHTTPServer((ip, int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
"""
PREPARE_UNIT = """\
[Unit]
Before=web.service

[Service]
Type=oneshot
RemainAfterExit=yes
Environment="GREETING=hello from the layer"
ExecStart=/bin/sh -c 'mkdir -p /srv/www && echo "$GREETING" > /srv/www/index.html'
"""
DAEMON_SCRIPT = """\
import os, time
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
open("/run/kiln-daemon.pid", "w").write(str(os.getpid()))
while True:
    time.sleep(60)
"""
DAEMON_UNIT = """\
[Service]
Type=forking
PIDFile=/run/kiln-daemon.pid
ExecStart=/usr/bin/python3 /usr/local/bin/kiln-daemon
ExecStop=/bin/sh -c 'echo stopping $MAINPID; kill $MAINPID'
"""
FLAKY_UNIT = """\
[Service]
ExecStart=/bin/sh -c 'if [ ! -e /var/tmp/flaky-once ]; then touch /var/tmp/flaky-once; exit 3; fi; exec sleep 600'
Restart=on-failure
RestartSec=100ms
"""
CRASHLOOP_UNIT = """\
[Unit]
StartLimitBurst=3
StartLimitIntervalSec=30s

[Service]
ExecStart=/bin/false
Restart=always
RestartSec=50ms
"""
BROKEN_UNIT = "[Service]\nType=oneshot\nExecStart=/bin/false\n"
DEPENDENT_UNIT = "[Unit]\nRequires=broken.service\nAfter=broken.service\n[Service]\nExecStart=/bin/sleep 600\n"


def make_layer(directory: Path) -> Path:
    """A hand-made image layer: a few units and their programs, enabled like `systemctl enable`."""
    units = {"web.service": WEB_UNIT, "prepare.service": PREPARE_UNIT, "kiln-daemon.service": DAEMON_UNIT,
             "broken.service": BROKEN_UNIT, "needs-broken.service": DEPENDENT_UNIT, "flaky.service": FLAKY_UNIT,
             "crashloop.service": CRASHLOOP_UNIT}  # fmt: skip
    lib = directory / "usr/lib/systemd/system"
    wants = directory / "etc/systemd/system/multi-user.target.wants"
    lib.mkdir(parents=True)
    wants.mkdir(parents=True)
    for name, text in units.items():
        (lib / name).write_text(text)
        if name != "prepare.service":  # pulled in by web.service's Requires=
            (wants / name).symlink_to(f"/lib/systemd/system/{name}")
    (directory / "usr/local/bin").mkdir(parents=True)
    (directory / "usr/local/bin/kiln-web").write_text(WEB_SCRIPT)
    (directory / "usr/local/bin/kiln-daemon").write_text(DAEMON_SCRIPT)
    (directory / "etc/default").mkdir()
    (directory / "etc/default/kiln-web").write_text("# port of the test server\nPORT=8080\n")
    return directory


def test_units_from_a_hand_made_layer_boot_and_serve(plane: LocalDataPlane, tmp_path: Path) -> None:
    plane.register_image("ami-0web", make_layer(tmp_path / "layer"), parent_image_id=BASE_IMAGE)
    instance, ip = "i-0web000000000001", "127.100.0.11"
    script = "#!/bin/sh\necho \"user data ran as $(id -un)\" > /var/tmp/user-data-ran\n"
    plane.launch(spec(instance, ip, None, "ami-0web", base64.b64encode(script.encode()).decode()))
    try:
        status = plane.wait_until_booted(instance)
        units = status["units"]
        assert units["prepare.service"]["state"] == "active" and units["prepare.service"]["sub"] == "exited"
        assert units["web.service"]["state"] == "active"
        assert units["kiln-daemon.service"]["state"] == "active"
        assert units["broken.service"]["state"] == "failed"
        assert units["needs-broken.service"]["result"] == "dependency"
        wait_for_port(ip, 8080)
        assert plane.probe(ip, 8080, "/index.html", 2.0) == 200
        assert plane.probe(ip, 8080, "/nope", 2.0) == 404
        assert plane.probe(ip, 8081, "/", 0.5) is None
        with urllib.request.urlopen(f"http://{ip}:8080/", timeout=5) as response:
            assert response.read().decode() == "hello from the layer\n"
        root, live = plane.rootfs(instance), plane.live_rootfs(instance)
        assert (live / "run/kiln-web/who").read_text() == "kiln web as admin"
        assert oct((live / "run/kiln-web").stat().st_mode & 0o777) == "0o750"
        assert not (root / "run/kiln-web").exists(), "/run is the instance's own tmpfs"
        web = [p for p in processes_rooted_under(root) if b"kiln-web" in command_line(p)]
        assert len(web) == 1 and "Uid:\t1000" in Path(f"/proc/{web[0]}/status").read_text()
        console = plane.console_output(instance)
        assert "[  OK  ] Started web.service - Test web server." in console
        assert "[FAILED] Failed to start broken.service." in console
        assert "[DEPEND] Dependency failed for needs-broken.service: broken.service." in console
        assert (root / "var/tmp/user-data-ran").read_text() == "user data ran as root\n"
        assert "[  OK  ] Finished cloud-final.service" in console
        # Restart=: the flaky unit comes back once; the crash loop hits its start limit.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            units = plane.status(instance)["units"]
            if units["flaky.service"]["sub"] == "running" and units["crashloop.service"]["state"] == "failed":
                break
            time.sleep(0.05)
        assert units["flaky.service"]["state"] == "active" and units["flaky.service"]["main_pid"]
        assert units["crashloop.service"]["result"] == "start-limit-hit"
        assert "flaky.service: main process exited with status 3" in plane.console_output(instance)
        daemon_pid = int((live / "run/kiln-daemon.pid").read_text())
        assert units["kiln-daemon.service"]["main_pid"] == daemon_pid
        plane.stop(instance)
        assert "stopping " + str(daemon_pid) in plane.console_output(instance)
        assert plane.status(instance)["phase"] == "stopped"
    finally:
        plane.terminate(instance)
    assert_nothing_left(plane.state_dir, instance, ip)
    plane.deregister_image("ami-0web")
    assert (tmp_path / "layer/usr/local/bin/kiln-web").exists(), "a registered layer is never deleted"


def test_create_image_freezes_changes_into_a_layer(
    plane: LocalDataPlane, booted: str, ssh_key: tuple[Path, str]
) -> None:
    with ssh(plane, booted, SSH_IP, ssh_key[0]) as client:
        code, out = run(client, "sudo sh -ec 'echo baked > /etc/kiln-release; rm /etc/issue.net; "
                                "rm -rf /etc/apt/apt.conf.d; mkdir /etc/apt/apt.conf.d; "
                                "echo only > /etc/apt/apt.conf.d/only; echo log > /var/log/kiln.log'")  # fmt: skip
    assert code == 0, out
    parent_keys = parse_host_keys(plane.console_output(booted))
    plane.create_image(booted, "ami-0child")
    plane.wait_until_booted(booted)  # CreateImage reboots a running instance, as AWS does by default
    layer = plane.images.layers("ami-0child")[-1]
    print(f"image layer for a small change: {tree_size(layer) / 1024:.0f} KiB")
    assert (layer / "etc/issue.net").is_char_device(), "the deletion is a whiteout in the layer"
    assert os.getxattr(layer / "etc/apt/apt.conf.d", "trusted.overlay.opaque") == b"y"
    for excluded in ("etc/ssh/ssh_host_ed25519_key", "etc/machine-id", "var/log/kiln.log",
                     "etc/kiln/instance-metadata.json", "home/admin/.ssh/authorized_keys"):  # fmt: skip
        assert not (layer / excluded).exists(), excluded

    child, child_ip = "i-0child00000000001", "127.100.0.12"
    sibling, sibling_ip = "i-0sibling000000001", "127.100.0.13"
    plane.launch(spec(child, child_ip, ssh_key[1], "ami-0child"))
    plane.launch(spec(sibling, sibling_ip, None))
    try:
        plane.wait_until_booted(child)
        plane.wait_until_booted(sibling)
        child_root, sibling_root = plane.rootfs(child), plane.rootfs(sibling)
        assert (child_root / "etc/kiln-release").read_text() == "baked\n"
        assert not (child_root / "etc/issue.net").exists()
        assert sorted(p.name for p in (child_root / "etc/apt/apt.conf.d").iterdir()) == ["only"]
        assert not (sibling_root / "etc/kiln-release").exists()
        assert (sibling_root / "etc/issue.net").exists()
        assert len(list((sibling_root / "etc/apt/apt.conf.d").iterdir())) > 1
        assert parse_host_keys(plane.console_output(child)) != parent_keys, "the child has its own host keys"
        wait_for_port(child_ip, 22)
        with ssh(plane, child, child_ip, ssh_key[0]) as client:
            assert run(client, "cat /etc/kiln-release; hostname") == (0, "baked\nip-127-100-0-12\n")
        plane.copy_image("ami-0child", "ami-0copy")  # CopyImage (to any region) shares the frozen layers
        plane.deregister_image("ami-0child")
        assert layer.exists(), "a layer stays while an instance still runs on it"
    finally:
        plane.terminate(child)
        plane.terminate(sibling)
    assert plane.images.layers("ami-0copy")[-1] == layer and layer.exists(), "the copy still uses the layer"
    plane.deregister_image("ami-0copy")
    assert not layer.exists(), "the layer is freed once no image or instance uses it"
    assert_nothing_left(plane.state_dir, sibling, sibling_ip)


def test_stop_keeps_the_disk_and_start_boots_again(
    plane: LocalDataPlane, booted: str, ssh_key: tuple[Path, str]
) -> None:
    with ssh(plane, booted, SSH_IP, ssh_key[0]) as client:
        assert run(client, "echo kept > /home/admin/note")[0] == 0
    keys = parse_host_keys(plane.console_output(booted))
    plane.stop(booted)
    assert plane.status(booted)["phase"] == "stopped"
    assert not processes_rooted_under(plane.state_dir / "instances" / booted)
    assert not listening_sockets(SSH_IP)
    assert not mounts_under(plane.state_dir / "instances" / booted)
    plane.stop(booted)  # stopping a stopped instance is harmless
    plane.start(booted)
    plane.wait_until_booted(booted)
    wait_for_port(SSH_IP, 22)
    assert parse_host_keys(plane.console_output(booted)) == keys, "host keys survive a stop/start"
    with ssh(plane, booted, SSH_IP, ssh_key[0]) as client:
        assert run(client, "cat /home/admin/note") == (0, "kept\n")


def test_terminate_kills_lingering_sessions_and_leaves_nothing(
    plane: LocalDataPlane, ssh_key: tuple[Path, str]
) -> None:
    instance, ip = "i-0term00000000001", "127.100.0.14"
    plane.launch(spec(instance, ip, ssh_key[1]))
    plane.wait_until_booted(instance)
    wait_for_port(ip, 22)
    # An open session plus a detached background process, like an Ansible ControlPersist master.
    client = ssh(plane, instance, ip, ssh_key[0])
    assert run(client, "setsid nohup sleep 1000 >/dev/null 2>&1 < /dev/null & echo started")[1] == "started\n"
    started = time.monotonic()
    plane.terminate(instance)
    print(f"terminate: {time.monotonic() - started:.2f} s")
    client.close()
    assert_nothing_left(plane.state_dir, instance, ip)
    plane.terminate(instance)  # idempotent
    with pytest.raises(SandboxError):
        plane.console_output(instance)


def test_unknown_image_is_a_clear_error(plane: LocalDataPlane) -> None:
    with pytest.raises(SandboxError, match="ami-0nothere"):
        plane.launch(spec("i-0none", "127.100.0.99", None, "ami-0nothere"))
    assert not (plane.state_dir / "instances/i-0none").exists()


def test_a_restarted_data_plane_finds_images_and_instances(plane: LocalDataPlane) -> None:
    instance, ip = "i-0restart00000001", "127.100.0.15"
    plane.launch(spec(instance, ip, None))
    plane.wait_until_booted(instance)
    again = LocalDataPlane(plane.state_dir, DEFAULT_CACHE_DIR)  # as after a sandbox server restart
    assert again.images.layers(BASE_IMAGE) == plane.images.layers(BASE_IMAGE)
    assert instance in again.instance_ids()
    assert again.status(instance)["phase"] == "running"
    again.terminate(instance)  # finds the instance's init from its pid file, not from a child handle
    plane.terminate(instance)
    assert_nothing_left(plane.state_dir, instance, ip)


def test_terminate_right_after_launch_does_not_wait_for_the_halt_timeout(plane: LocalDataPlane) -> None:
    # The kernel drops a SIGTERM sent to a namespace's init before it set its handler; the halt
    # must keep asking rather than sit out its timeout.
    instance, ip = "i-0quick0000000001", "127.100.0.16"
    plane.launch(spec(instance, ip, None))
    started = time.monotonic()
    plane.terminate(instance)
    assert time.monotonic() - started < 10
    assert_nothing_left(plane.state_dir, instance, ip)


def test_a_long_state_dir_path_boots(tmp_path: Path, base_rootfs: Path) -> None:
    # Unix socket paths are limited to 107 bytes; the instance's /dev/log must not depend on it.
    state_dir = tmp_path / ("deep-" * 20) / "state"
    dp = LocalDataPlane(state_dir, DEFAULT_CACHE_DIR)
    dp.register_image(BASE_IMAGE, base_rootfs)
    instance, ip = "i-0longpath0000001", "127.100.0.17"
    dp.launch(spec(instance, ip, None))
    try:
        assert dp.wait_until_booted(instance)["phase"] == "running", dp.console_output(instance)
    finally:
        dp.terminate(instance)
    assert_nothing_left(state_dir, instance, ip)
