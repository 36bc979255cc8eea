"""Debian's own nginx.service (Type=forking, PIDFile, ExecStop with start-stop-daemon) boots in an
instance, the way the baked images run nginx in front of gunicorn. Installs nginx from the Debian
mirror, so it is slow."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dataplane_helpers import assert_nothing_left, listening_sockets, run, spec, ssh, wait_for_port

from release.sandbox.dataplane import LocalDataPlane

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_debian_nginx_unit_boots_serves_and_stops(plane: LocalDataPlane, ssh_key: tuple[Path, str]) -> None:
    instance, ip = "i-0nginx0000000001", "127.100.0.20"
    plane.launch(spec(instance, ip, ssh_key[1]))
    try:
        plane.wait_until_booted(instance)
        wait_for_port(ip, 22)
        with ssh(plane, instance, ip, ssh_key[0]) as client:
            started = time.monotonic()
            code, out = run(client, "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx 2>&1 | tail -3")
            print(f"apt-get install nginx: {time.monotonic() - started:.1f} s")
            assert code == 0 and "Setting up nginx" in out, out
            assert run(client, "pgrep -x nginx")[0] != 0, "policy-rc.d must keep package installs from starting it"
            # Instances share the host's network: nginx must listen on this instance's address only.
            code, out = run(client, f"sudo sed -i -e 's/listen 80 default_server;/listen {ip}:80 default_server;/' "
                                    "-e '/listen \\[::\\]:80/d' /etc/nginx/sites-enabled/default")  # fmt: skip
            assert code == 0, out
        assert (plane.rootfs(instance) / "etc/systemd/system/multi-user.target.wants/nginx.service").is_symlink()
        plane.stop(instance)
        plane.start(instance)
        status = plane.wait_until_booted(instance)
        nginx = status["units"]["nginx.service"]
        assert nginx["state"] == "active", plane.console_output(instance)
        assert nginx["main_pid"] == int((plane.live_rootfs(instance) / "run/nginx.pid").read_text())
        # "Booted" means every unit was started; sshd may still be binding its socket.
        wait_for_port(ip, 80)
        wait_for_port(ip, 22)
        assert plane.probe(ip, 80, "/", 2.0) == 200
        assert sorted(listening_sockets(ip)) == [22, 80]
        plane.stop(instance)
        assert "[  OK  ] Stopped nginx.service" in plane.console_output(instance)
        assert not listening_sockets(ip)
    finally:
        plane.terminate(instance)
    assert_nothing_left(plane.state_dir, instance, ip)
