"""release.ssh against real sshd servers: direct, through the bastion, strict host keys, helpers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest

from release.config import SshSettings
from release.errors import CommandTimeout, HostKeyRejected, SshError
from release.hostkeys import fingerprint
from release.ssh import JumpChannel, Ssh, Timeouts

from .conftest import VersionServer
from .servers import SPARE_ADDRESS, SshServer, free_port, keygen, process_tree, start_sshd, stop_sshd, tcp_socket_owners

FAST = Timeouts(connect=3, banner=3, auth=3, command=10)


def make_ssh(client_key: Path, known: Path, *, bastion: SshServer | None = None, **kwargs: object) -> Ssh:
    settings = SshSettings(
        user="root",
        known_hosts=str(known),
        bastion=bastion.address if bastion else None,
        bastion_port=bastion.port if bastion else 22,
    )
    return Ssh(settings, key_filename=client_key, use_agent=False, timeouts=FAST, **kwargs)  # type: ignore[arg-type]


def offered_fingerprint(server: SshServer) -> str:
    return server.fingerprint_line().split()[1]


def test_direct_connection_runs_commands_with_strict_keys(client_key: Path, instance: SshServer,
                                                          known_hosts: Callable[..., Path]) -> None:  # fmt: skip
    with make_ssh(client_key, known_hosts(instance)) as ssh:
        assert ssh.bastion() is None
        with ssh.connect(instance.address, port=instance.port) as conn:
            result = conn.run("echo out; echo err >&2; exit 3")
            assert (result.exit_status, result.stdout, result.stderr) == (3, "out\n", "err\n")
            assert fingerprint(conn.host_key.asbytes()) == offered_fingerprint(instance)
            assert isinstance(conn.transport.sock, socket.socket)


def test_read_file_returns_text_and_names_a_missing_file(
    client_key: Path, instance: SshServer, known_hosts: Callable[..., Path], tmp_path: Path
) -> None:
    target = tmp_path / "MANIFEST.sha256"
    target.write_text("abc  app.py\n")
    with make_ssh(client_key, known_hosts(instance)) as ssh, ssh.connect(instance.address, port=instance.port) as conn:
        assert conn.read_file(str(target)) == "abc  app.py\n"
        with pytest.raises(SshError, match="cannot read /nonexistent/file"):
            conn.read_file("/nonexistent/file")


def test_command_timeout_raises_and_the_connection_stays_usable(client_key: Path, instance: SshServer,
                                                                known_hosts: Callable[..., Path]) -> None:  # fmt: skip
    with make_ssh(client_key, known_hosts(instance)) as ssh, ssh.connect(instance.address, port=instance.port) as conn:
        started = time.monotonic()
        with pytest.raises(CommandTimeout, match=r"did not finish within 0\.5 s"):
            conn.run("sleep 5", timeout=0.5)
        assert time.monotonic() - started < 3
        assert conn.run("echo still here").stdout == "still here\n"


def test_jump_through_the_bastion_reaches_the_instance_over_a_channel(
    client_key: Path, bastion: SshServer, instance: SshServer, known_hosts: Callable[..., Path]
) -> None:
    with make_ssh(client_key, known_hosts(bastion, instance), bastion=bastion) as ssh:
        jump = ssh.bastion()
        assert jump is not None
        with ssh.connect(instance.address, port=instance.port, instance_id="i-0abc") as conn:
            assert conn.via is jump
            # The instance's session rides a direct-tcpip channel of the bastion's transport.
            assert isinstance(conn.transport.sock, JumpChannel)
            assert isinstance(conn.transport.sock.channel, paramiko.Channel)
            assert fingerprint(conn.host_key.asbytes()) == offered_fingerprint(instance)
            client_ip, client_port, server_ip, server_port = conn.run("echo $SSH_CONNECTION").stdout.split()
            assert (server_ip, server_port) == (instance.address, str(instance.port))
            # The TCP connection the instance sees was made by the bastion's sshd, not by us.
            owners = tcp_socket_owners(client_ip, int(client_port))
            assert owners and owners <= process_tree(bastion)
        # The bastion is shared: a second instance connection reuses the same transport.
        with ssh.connect(instance.address, port=instance.port) as again:
            assert again.via is jump


def test_a_bastion_named_by_its_name_tag_is_found_and_vouched_for_by_its_console_output(
    client_key: Path, bastion: SshServer, instance: SshServer, known_hosts: Callable[..., Path]
) -> None:
    settings = SshSettings(user="root", known_hosts=str(known_hosts(instance)), bastion_instance="web-bastion",
                           bastion_port=bastion.port)
    asked: list[str] = []

    def locate(name: str) -> tuple[str, str]:
        asked.append(name)
        return "i-0bastion", bastion.address

    consoles = {"i-0bastion": bastion.console_output()}
    with Ssh(settings, key_filename=client_key, use_agent=False, timeouts=FAST, locate_bastion=locate,
             console_output=consoles.__getitem__) as ssh, ssh.connect(instance.address, port=instance.port) as conn:
        assert conn.via is not None and conn.via.host == f"i-0bastion ({bastion.address}:{bastion.port})"
        assert conn.run("true").exit_status == 0
    assert asked == ["web-bastion"]
    # Without the cloud to ask, the name alone says nothing: one clear error.
    with Ssh(settings, key_filename=client_key, use_agent=False, timeouts=FAST) as ssh, \
            pytest.raises(SshError, match="cannot find the bastion instance 'web-bastion'"):  # fmt: skip
        ssh.connect(instance.address, port=instance.port)


def test_the_bastion_is_logged_in_to_with_its_own_key(client_key: Path, instance: SshServer, tmp_path: Path,
                                                      known_hosts: Callable[..., Path]) -> None:  # fmt: skip
    bastion_key = tmp_path / "bastion_ed25519"
    keygen(bastion_key, "bastion-only")
    own = start_sshd("own-bastion", SPARE_ADDRESS, bastion_key.with_suffix(".pub").read_text())
    try:
        settings = SshSettings(user="root", known_hosts=str(known_hosts(own, instance)), bastion=own.address,
                               bastion_port=own.port)
        with Ssh(settings, key_filename=client_key, use_agent=False, timeouts=FAST, bastion_key=bastion_key) as ssh, \
                ssh.connect(instance.address, port=instance.port) as conn:  # fmt: skip
            assert conn.run("true").exit_status == 0
        with Ssh(settings, key_filename=client_key, use_agent=False, timeouts=FAST) as ssh, \
                pytest.raises(SshError, match=rf"{own.address}.*login as root refused.*bastion_key"):  # fmt: skip
            ssh.connect(instance.address, port=instance.port)
    finally:
        stop_sshd(own)


def test_the_bastion_host_key_is_verified_too(client_key: Path, bastion: SshServer, instance: SshServer,
                                              known_hosts: Callable[..., Path]) -> None:  # fmt: skip
    ssh = make_ssh(client_key, known_hosts(instance), bastion=bastion)
    with ssh, pytest.raises(HostKeyRejected) as caught:
        ssh.connect(instance.address, port=instance.port)
    assert f"{bastion.address}:{bastion.port}" in str(caught.value)
    assert offered_fingerprint(bastion) in str(caught.value)


def test_unknown_host_key_is_refused_with_one_clear_line(client_key: Path, instance: SshServer,
                                                         tmp_path: Path) -> None:  # fmt: skip
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ssh = make_ssh(client_key, empty, console_output=lambda _id: "no cloud-init here\n")
    with ssh, pytest.raises(HostKeyRejected) as caught:
        ssh.connect(instance.address, port=instance.port, instance_id="i-0abc")
    message = str(caught.value)
    assert "\n" not in message
    assert f"i-0abc ({instance.address}:{instance.port})" in message  # which host
    assert offered_fingerprint(instance) in message  # what it offered
    assert str(empty) in message and "console output of i-0abc" in message  # where Kiln looked
    assert "known_hosts" in message and "get-console-output" in message  # what to do


def test_a_known_hosts_entry_with_another_key_is_refused(client_key: Path, bastion: SshServer, instance: SshServer,
                                                         tmp_path: Path) -> None:  # fmt: skip
    wrong = tmp_path / "known_hosts"
    kind, blob = bastion.host_key_pub.split()[:2]
    wrong.write_text(f"[{instance.address}]:{instance.port} {kind} {blob}\n")
    with make_ssh(client_key, wrong) as ssh, pytest.raises(HostKeyRejected, match="1 keys for"):
        ssh.connect(instance.address, port=instance.port)


@pytest.mark.parametrize(
    "console",
    [
        {"keys": True, "fingerprints": False},
        {"keys": False, "fingerprints": True},
        {"keys": True, "fingerprints": True, "prefix": "ec2: "},
    ],
    ids=["key-block", "fingerprint-block", "ec2-prefixed"],
)
def test_host_key_verified_from_console_output_and_recorded(client_key: Path, instance: SshServer, tmp_path: Path,
                                                            console: dict[str, object]) -> None:  # fmt: skip
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    recorded = tmp_path / "kiln" / "known_hosts"
    calls: list[str] = []

    def console_output(instance_id: str) -> str:
        calls.append(instance_id)
        return instance.console_output(**console)  # type: ignore[arg-type]

    with make_ssh(client_key, empty, console_output=console_output, record_to=recorded) as ssh:
        with ssh.connect(instance.address, port=instance.port, instance_id="i-0abc") as conn:
            assert conn.run("true").ok
        assert calls == ["i-0abc"]
        assert recorded.read_text() == instance.known_hosts_line()
        # Next contact: the recorded key vouches, the console is not asked again.
        with ssh.connect(instance.address, port=instance.port, instance_id="i-0abc") as conn:
            assert conn.run("true").ok
        assert calls == ["i-0abc"]


def test_console_output_of_another_host_does_not_vouch(client_key: Path, bastion: SshServer, instance: SshServer,
                                                       tmp_path: Path) -> None:  # fmt: skip
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ssh = make_ssh(client_key, empty, console_output=lambda _id: bastion.console_output())
    with ssh, pytest.raises(HostKeyRejected, match=r"console output of i-0abc \(1 keys, 1 fingerprints\)"):
        ssh.connect(instance.address, port=instance.port, instance_id="i-0abc")


def test_http_get_through_the_jump(client_key: Path, bastion: SshServer, known_hosts: Callable[..., Path],
                                   version_server: VersionServer) -> None:  # fmt: skip
    address, port, payload = version_server.address, version_server.port, version_server.payload
    with make_ssh(client_key, known_hosts(bastion), bastion=bastion) as ssh:
        response = ssh.http_get(address, port, "/version")
        assert response.status == 200
        assert json.loads(response.body) == payload
        assert response.headers["content-type"] == "application/json"
        assert ssh.http_get(address, port, "/nothing").status == 404
        bastion_processes = process_tree(bastion)  # while the bastion session still exists
    # Both requests came from sockets of the bastion's sshd (direct-tcpip), not from Kiln.
    assert len(version_server.callers) == 2
    assert all(owners and owners <= bastion_processes for owners in version_server.callers)


def test_http_get_directly_without_a_bastion(
    client_key: Path, known_hosts: Callable[..., Path], version_server: VersionServer
) -> None:
    address, port, payload = version_server.address, version_server.port, version_server.payload
    with make_ssh(client_key, known_hosts()) as ssh:
        assert json.loads(ssh.http_get(address, port, "/version").body) == payload


def test_closed_port_is_an_ssh_error_after_three_attempts(client_key: Path, bastion: SshServer,
                                                           known_hosts: Callable[..., Path]) -> None:  # fmt: skip
    port = free_port(SPARE_ADDRESS)
    pauses: list[float] = []
    with make_ssh(client_key, known_hosts(), sleep=pauses.append) as ssh, \
            pytest.raises(SshError, match=r"cannot reach .*refused.*\(3 attempts\)"):  # fmt: skip
        ssh.connect(SPARE_ADDRESS, port=port)
    assert pauses == [1.0, 2.0]
    pauses.clear()  # the same through the bastion: its sshd is refused
    with make_ssh(client_key, known_hosts(bastion), bastion=bastion, sleep=pauses.append) as ssh, \
            pytest.raises(SshError, match=r"could not open a connection to .*\(3 attempts\)"):  # fmt: skip
        ssh.connect(SPARE_ADDRESS, port=port)
    assert pauses == [1.0, 2.0]


def test_an_sshd_that_starts_a_moment_late_is_reached_on_a_later_attempt(
    client_key: Path, instance: SshServer, known_hosts: Callable[..., Path]
) -> None:
    late = socket.socket()
    late.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    port = free_port(SPARE_ADDRESS)

    def relay(client: socket.socket) -> None:  # SPARE_ADDRESS:port -> the instance's sshd
        with client, socket.create_connection((instance.address, instance.port)) as upstream:
            pumps = [threading.Thread(target=pump, args=(a, b), daemon=True)
                     for a, b in ((client, upstream), (upstream, client))]  # fmt: skip
            for thread in pumps:
                thread.start()
            for thread in pumps:
                thread.join()

    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def start_listening(seconds: float) -> None:  # "sshd comes up" during the first pause
        pauses.append(seconds)
        if len(pauses) == 1:
            late.bind((SPARE_ADDRESS, port))
            late.listen(1)
            threading.Thread(target=lambda: relay(late.accept()[0]), daemon=True).start()

    pauses: list[float] = []
    trusted = known_hosts(instance).read_text().replace(f"[{instance.address}]:{instance.port}",
                                                        f"[{SPARE_ADDRESS}]:{port}")  # fmt: skip
    known = known_hosts()
    known.write_text(trusted)
    try:
        with make_ssh(client_key, known, sleep=start_listening) as ssh, ssh.connect(SPARE_ADDRESS, port=port) as conn:
            assert conn.run("true").exit_status == 0
    finally:
        late.close()
    assert pauses == [1.0]


def test_a_silent_server_times_out_on_the_banner(client_key: Path, known_hosts: Callable[..., Path]) -> None:
    with socket.socket() as silent:  # accepts TCP (kernel backlog) but never speaks SSH
        silent.bind((SPARE_ADDRESS, 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        settings = SshSettings(user="root", known_hosts=str(known_hosts()))
        quick = Timeouts(connect=1, banner=0.5, auth=0.5, command=1)
        with Ssh(settings, key_filename=client_key, use_agent=False, timeouts=quick) as ssh:
            started = time.monotonic()
            with pytest.raises(SshError, match=r"handshake failed"):
                ssh.connect(SPARE_ADDRESS, port=port)
            assert time.monotonic() - started < 3


def test_a_dropped_connection_during_a_command_is_an_error_not_a_timeout(
    client_key: Path, instance: SshServer, known_hosts: Callable[..., Path], tmp_path: Path
) -> None:
    pid_file = tmp_path / "orphan.pid"
    with make_ssh(client_key, known_hosts(instance)) as ssh, ssh.connect(instance.address, port=instance.port) as conn:
        started = time.monotonic()
        # $PPID is the sshd process serving this connection: killing it drops the connection.
        try:
            with pytest.raises(SshError, match="connection lost while running") as caught:
                conn.run(f"echo $$ > {pid_file}; kill -9 $PPID; exec sleep 5", timeout=8)
        finally:
            with contextlib.suppress(OSError, ValueError):  # the orphaned sleep: ours, stop it
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        assert not isinstance(caught.value, CommandTimeout)
        assert time.monotonic() - started < 3
