"""The fleet audit over real SSH: through the bastion, drift in a baked release directory, unreachable hosts.

The "instance" is a real sshd; its release directory is a temporary app root whose MANIFEST.sha256
is written by the very shell command the bake's Ansible task runs, so the audit is checked against
the manifest format the image really carries.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from release.audit import (
    MANIFEST_NAME,
    ExpectedRelease,
    Finding,
    FleetInstance,
    ServiceCheck,
    audit,
    probe_release,
)
from release.config import SshSettings
from release.smoke import smoke_check
from release.ssh import Ssh, Timeouts

from .conftest import VersionServer
from .servers import LOOPBACK_NET, SPARE_ADDRESS, SshServer, write_manifest_like_the_bake

REFUSING_ADDRESS = f"{LOOPBACK_NET}.4"  # nothing listens here

EXPECTED = ExpectedRelease(version="1.4.2", fingerprint="sha256:abc", image_id="ami-0new", template_version="7")
# The test sshd runs on this host: it stands in for the instance's services.
SERVICES = (ServiceCheck("sshd", ("-x", "sshd")), )  # fmt: skip


@pytest.fixture
def app_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "opt-webapp"
    release = root / "releases" / EXPECTED.version
    (release / "webapp" / "__pycache__").mkdir(parents=True)
    (release / "static").mkdir()
    (release / "venv" / "bin").mkdir(parents=True)
    (release / "webapp" / "views.py").write_text("def version():\n    return 'baked'\n")
    (release / "webapp" / "__init__.py").write_text("")
    (release / "static" / "site.css").write_text("body { color: black }\n")
    (release / "venv" / "bin" / "python3").symlink_to("/usr/bin/python3")
    write_manifest_like_the_bake(release)
    # Byte-code appears at run time, after the bake: never drift.
    (release / "webapp" / "__pycache__" / "views.cpython-311.pyc").write_bytes(b"\x00compiled")
    yield root


@pytest.fixture
def fleet_ssh(client_key: Path, bastion: SshServer, instance: SshServer,
              known_hosts: Callable[..., Path]) -> Iterator[Ssh]:  # fmt: skip
    """Through the bastion; the bastion is in known_hosts, instances are verified from console output."""
    settings = SshSettings(user="root", known_hosts=str(known_hosts(bastion)), bastion=bastion.address,
                           bastion_port=bastion.port)  # fmt: skip
    consoles = {"i-good": instance.console_output(prefix="ec2: "), "i-imposter": bastion.console_output()}
    timeouts = Timeouts(connect=2, banner=1, auth=1, command=10)
    with Ssh(settings, key_filename=client_key, use_agent=False, timeouts=timeouts, port=instance.port,
             console_output=lambda instance_id: consoles.get(instance_id, "")) as ssh:  # fmt: skip
        yield ssh


def good(instance: SshServer, instance_id: str = "i-good") -> FleetInstance:
    return FleetInstance(instance_id, instance.address, "ami-0new", "7")


def test_an_unchanged_release_matches(fleet_ssh: Ssh, instance: SshServer, app_root: Path,
                                      version_server: VersionServer) -> None:  # fmt: skip
    report = audit(fleet_ssh, EXPECTED, [good(instance)], services=SERVICES, app_root=str(app_root),
                   http_port=version_server.port)  # fmt: skip
    assert [v.details() for v in report.verdicts] == [[]]
    assert report.ok and report.exit_code == 0


def test_an_scp_hotfix_is_drift_naming_the_changed_and_added_files(
    fleet_ssh: Ssh, instance: SshServer, app_root: Path, version_server: VersionServer
) -> None:
    release = app_root / "releases" / EXPECTED.version
    (release / "webapp" / "views.py").write_text("def version():\n    return 'patched by hand'\n")
    (release / "webapp" / "hotfix.py").write_text("PATCHED = True\n")
    (release / "static" / "site.css").unlink()
    report = audit(fleet_ssh, EXPECTED, [good(instance)], services=SERVICES, app_root=str(app_root),
                   http_port=version_server.port)  # fmt: skip
    verdict = report.verdicts[0]
    assert verdict.outcome is Finding.DRIFT
    assert verdict.changed_files == ("webapp/views.py",)
    assert verdict.added_files == ("webapp/hotfix.py",)
    assert verdict.missing_files == ("static/site.css",)
    assert verdict.fields == ()  # version, image and services are all fine: only the files drifted
    assert report.exit_code == 12
    assert "webapp/hotfix.py" in report.table()[1][0][4]


def test_version_and_services_are_compared_too(fleet_ssh: Ssh, instance: SshServer, app_root: Path,
                                               version_server: VersionServer) -> None:  # fmt: skip
    version_server.payload["version"] = "1.4.1"
    services = (*SERVICES, ServiceCheck("nginx", ("-x", "kiln-no-such-process")))
    report = audit(fleet_ssh, EXPECTED, [good(instance)], services=services, app_root=str(app_root),
                   http_port=version_server.port)  # fmt: skip
    verdict = report.verdicts[0]
    assert [str(f) for f in verdict.fields] == ["version: expected 1.4.2, found 1.4.1"]
    assert verdict.services_down == ("nginx",)


def test_a_missing_manifest_is_drift(fleet_ssh: Ssh, instance: SshServer, app_root: Path,
                                     version_server: VersionServer) -> None:  # fmt: skip
    (app_root / "releases" / EXPECTED.version / MANIFEST_NAME).unlink()
    report = audit(fleet_ssh, EXPECTED, [good(instance)], services=SERVICES, app_root=str(app_root),
                   http_port=version_server.port)  # fmt: skip
    assert [f.name for f in report.verdicts[0].fields] == ["manifest"]
    assert "No such file" in report.verdicts[0].fields[0].actual


def test_unreachable_hosts_are_reported_and_the_rest_still_audited(
    fleet_ssh: Ssh, instance: SshServer, app_root: Path, version_server: VersionServer
) -> None:
    with socket.socket() as silent:  # accepts TCP but never speaks SSH: a hung host
        silent.bind((SPARE_ADDRESS, instance.port))
        silent.listen(8)
        instances = [
            good(instance),
            FleetInstance("i-refusing", REFUSING_ADDRESS, "ami-0new", "7"),
            FleetInstance("i-hung", SPARE_ADDRESS, "ami-0new", "7"),
            good(instance, "i-imposter"),  # its console output lists another host's key
        ]
        started = time.monotonic()
        report = audit(fleet_ssh, EXPECTED, instances, parallel=4, services=SERVICES, app_root=str(app_root),
                       http_port=version_server.port)  # fmt: skip
        elapsed = time.monotonic() - started
    outcomes = {v.instance_id: v.outcome for v in report.verdicts}
    assert outcomes == {"i-good": Finding.MATCH, "i-refusing": Finding.UNREACHABLE,
                        "i-hung": Finding.UNREACHABLE, "i-imposter": Finding.UNREACHABLE}  # fmt: skip
    reasons = {v.instance_id: v.reason or "" for v in report.verdicts}
    assert f"could not open a connection to {REFUSING_ADDRESS}:{instance.port}" in reasons["i-refusing"]
    assert "no SSH banner within 1 s" in reasons["i-hung"]
    assert "is not known" in reasons["i-imposter"] and "console output of i-imposter" in reasons["i-imposter"]
    assert report.exit_code == 12
    assert elapsed < 8  # per-host timeouts, in parallel: the hung host costs its own timeout, once


def test_smoke_check_of_a_fresh_instance_through_the_jump(fleet_ssh: Ssh, instance: SshServer, app_root: Path,
                                                           version_server: VersionServer) -> None:  # fmt: skip
    fresh = replace(EXPECTED, template_version=None)  # a smoke-test instance is launched outside the group
    checks = smoke_check(fleet_ssh, FleetInstance("i-good", instance.address, "ami-0new", None), fresh,
                         services=SERVICES, app_root=str(app_root), http_port=version_server.port)  # fmt: skip
    assert [(c.name, c.ok) for c in checks] == [
        ("ssh", True), ("image", True), ("services", True), ("/version", True), ("files", True), ("/health", True)
    ]
    imposter = smoke_check(fleet_ssh, FleetInstance("i-imposter", instance.address, "ami-0new", None), fresh,
                           services=SERVICES, app_root=str(app_root), http_port=version_server.port)  # fmt: skip
    assert [(c.name, c.ok) for c in imposter] == [("ssh", False)]
    assert "is not known" in imposter[0].detail


def test_the_gate_probe_through_the_jump(fleet_ssh: Ssh, version_server: VersionServer) -> None:
    version, _, _ = probe_release(fleet_ssh, version_server.address, http_port=version_server.port)
    assert version == "1.4.2"
    version, healthy, detail = probe_release(fleet_ssh, REFUSING_ADDRESS, http_port=version_server.port)
    assert version is None and healthy is None and "could not open a connection" in detail
