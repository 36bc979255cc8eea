"""The real bake, end to end, on this machine: Packer's amazon-ebs against a moto server on
loopback, its ansible provisioner running the real playbooks over SSH against a throwaway
Debian 12 chroot — the foundation layer, then the app layer on top of it, as `inv bake` does —
then the baked rootfs booted by hand the way its units say, and served.

Root only (chroot, overlayfs); slow (a minute or two with the rootfs cached; apt reaches the
Debian mirror and pip builds the wheelhouse from the package index).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from chroot_host import Host, chroot_host, free_port, kill_processes_in, stop, wait_for_port
from imds_server import metadata_service, on_loopback
from moto.ec2.models import ec2_backends
from moto.server import ThreadedMotoServer
from unitfile import parse_unit

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
VERSION = "1.4.2"
FINGERPRINT = "e2e0" + "ab" * 30
FOUNDATION_FINGERPRINT = "f0e2" + "cd" * 30
ACCOUNT = "123456789012"  # moto's default account
GIT_SHA = "c0ffee" + "0" * 34
SECRET = {"JWT_SECRET": 'jwt-e2e-$ecret"`x`', "DATABASE_URL": "postgresql://app:pw@127.0.0.1:9/app"}
# Each sandbox-like instance binds its own loopback address; this one is the test's.
BOOT_ADDRESS = "127.87.0.2"

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.timeout(1200),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, overlayfs)"),
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("packer", "debootstrap", "unshare")),
        reason="needs packer, debootstrap and unshare",
    ),
]


@dataclass
class Bake:
    host: Host
    ami_id: str
    source_ami: str
    foundation_ami: str
    manifest: dict[str, object]
    ec2: object
    endpoint: str
    seconds: float
    log: str
    foundation_log: str


def aws_env(endpoint: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
        "CHECKPOINT_DISABLE": "1",
        "PACKER_CACHE_DIR": "/tmp/kiln-e2e-packer-cache",
    }


def build_wheelhouses(workdir: Path) -> tuple[Path, Path]:
    """The foundation's archive (the app's dependencies and boto3) and the app layer's (its wheel)."""
    wheels = workdir / "wheels"
    subprocess.run([str(VENV_BIN / "pip"), "wheel", "--quiet", "--wheel-dir", str(wheels), str(ROOT / "app"), "boto3"],
                   check=True, capture_output=True, timeout=600)
    dependencies, app = workdir / "wheelhouse-foundation.tar", workdir / "wheelhouse-app.tar"
    with tarfile.open(dependencies, "w") as deps, tarfile.open(app, "w") as own:
        for wheel in sorted(wheels.glob("*.whl")):
            (own if wheel.name.startswith("kiln_webapp-") else deps).add(wheel, arcname=wheel.name)
    return dependencies, app


def agent_package(workdir: Path) -> Path:
    """A package shaped like AWS's amazon-ssm-agent.deb (its name, its unit under /lib/systemd/system),
    for the foundation's ssm_agent role to download, check and install; served on loopback."""
    tree = workdir / "agent-deb"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: amazon-ssm-agent\nVersion: 3.3.0-kiln-test\nArchitecture: all\nMaintainer: Kiln tests\n"
        "Description: stand-in for the SSM agent\n")
    unit = tree / "lib" / "systemd" / "system" / "amazon-ssm-agent.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Unit]\nDescription=amazon-ssm-agent\n\n[Service]\nExecStart=/usr/bin/amazon-ssm-agent\n\n"
                    "[Install]\nWantedBy=multi-user.target\n")
    agent = tree / "usr" / "bin" / "amazon-ssm-agent"
    agent.parent.mkdir(parents=True)
    agent.write_text("#!/bin/sh\nexec sleep infinity\n")
    agent.chmod(0o755)
    served = workdir / "served"
    served.mkdir()
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(served / "amazon-ssm-agent.deb")],
                   check=True, capture_output=True)
    return served / "amazon-ssm-agent.deb"


def files_on_loopback(directory: Path) -> contextlib.AbstractContextManager[str]:
    """An HTTP server for the files in `directory` on 127.0.0.1; gives its base URL."""
    return on_loopback(functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory)))


def packer_build(variables: dict[str, str], workdir: Path, endpoint: str) -> tuple[subprocess.CompletedProcess[str],
                                                                                   str]:
    argv = ["packer", "build", "-color=false", "-only", "amazon-ebs.app"]
    for name, value in variables.items():
        argv += ["-var", f"{name}={value}"]
    result = subprocess.run([*argv, str(ROOT / "packer")], cwd=workdir, env=aws_env(endpoint), capture_output=True,
                            text=True, timeout=1200)
    (workdir / f"packer-{variables['layer']}.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    manifest = json.loads(Path(variables["manifest_path"]).read_text())
    region, ami_id = manifest["builds"][-1]["artifact_id"].split(":")
    assert region == "us-east-1"
    return result, ami_id


@pytest.fixture(scope="module")
def bake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bake]:
    workdir = tmp_path_factory.mktemp("bake")
    dependencies, app_wheel = build_wheelhouses(workdir)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port("127.0.0.1"), verbose=False)
    server.start()
    try:
        host_ip, port = server.get_host_and_port()
        endpoint = f"http://{host_ip}:{port}"
        session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
        ec2 = session.client("ec2", endpoint_url=endpoint)
        session.client("secretsmanager", endpoint_url=endpoint).create_secret(
            Name="webapp/e2e", SecretString=json.dumps(SECRET)
        )
        source_ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        agent = agent_package(workdir)
        with chroot_host(workdir / "instance") as host, files_on_loopback(agent.parent) as files:
            ec2.import_key_pair(KeyName="kiln-e2e", PublicKeyMaterial=host.public_key.encode())
            common = {
                "app_version": VERSION,
                "git_sha": GIT_SHA,
                "built_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "builder": "tests/ansible@localhost",
                "root_device_name": "/dev/sda1",
                "ec2_endpoint": endpoint,
                "ssh_interface": "private_ip",
                # moto's made-up private IP is never dialled: the instance is the chroot's sshd.
                "ssh_host": host.address,
                "ssh_port": str(host.port),
                "ssh_keypair_name": "kiln-e2e",
                "ssh_private_key_file": str(host.private_key),
            }
            started = time.monotonic()
            below, foundation_ami = packer_build({
                **common, "layer": "foundation", "fingerprint": FOUNDATION_FINGERPRINT, "source_ami": source_ami,
                "wheelhouse": str(dependencies), "manifest_path": str(workdir / "manifest-foundation.json"),
                # [bake.ssm_agent]: a pinned package and its checksum
                "ssm_agent_url": f"{files}/{agent.name}",
                "ssm_agent_sha256": hashlib.sha256(agent.read_bytes()).hexdigest(),
            }, workdir, endpoint)
            # Plain moto registers CreateImage's AMIs as "standard"-backed, which Packer will not build on;
            # EC2 (and the sandbox) make them EBS-backed like their source.
            ec2_backends[ACCOUNT]["us-east-1"].amis[foundation_ami].root_device_type = "ebs"
            result, ami_id = packer_build({
                **common, "layer": "app", "fingerprint": FINGERPRINT, "source_ami": foundation_ami,
                "base_ami": source_ami, "wheelhouse": str(app_wheel),
                "manifest_path": str(workdir / "manifest.json"),
            }, workdir, endpoint)
            seconds = time.monotonic() - started
            manifest = json.loads((workdir / "manifest.json").read_text())
            yield Bake(host, ami_id, source_ami, foundation_ami, manifest, ec2, endpoint, seconds, result.stdout,
                       below.stdout)
    finally:
        server.stop()


def in_root(bake: Bake, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chroot", str(bake.host.root), *argv], capture_output=True, text=True, timeout=60)


def test_the_bake_produces_a_tagged_ami_and_a_manifest(bake: Bake) -> None:
    print(f"packer build with the real playbook: {bake.seconds:.0f} s")
    for line in bake.log.splitlines():
        if "WARNING" in line or "ok=" in line:
            print(line)
    build = bake.manifest["builds"][-1]  # type: ignore[index]
    assert build["custom_data"]["version"] == VERSION
    assert build["custom_data"]["fingerprint"] == FINGERPRINT
    assert build["custom_data"]["git_sha"] == GIT_SHA

    image = bake.ec2.describe_images(ImageIds=[bake.ami_id])["Images"][0]  # type: ignore[attr-defined]
    tags = {t["Key"]: t["Value"] for t in image["Tags"]}
    assert image["Name"] == build["custom_data"]["ami_name"]
    assert image["Name"].startswith(f"webapp-{VERSION}-{FINGERPRINT[:16]}-")
    assert tags["Name"] == image["Name"]
    assert tags["kiln:version"] == VERSION
    assert tags["kiln:fingerprint"] == FINGERPRINT
    assert tags["kiln:git-sha"] == GIT_SHA
    assert tags["kiln:base-ami"] == bake.source_ami
    assert (tags["kiln:layer"], tags["kiln:foundation"]) == ("app", bake.foundation_ami)
    foundation = bake.ec2.describe_images(ImageIds=[bake.foundation_ami])["Images"][0]  # type: ignore[attr-defined]
    below = {t["Key"]: t["Value"] for t in foundation["Tags"]}
    assert (below["kiln:layer"], below["kiln:base-ami"]) == ("foundation", bake.source_ami)
    assert "kiln:version" not in below and foundation["Name"].startswith("webapp-foundation-")
    assert tags["kiln:builder"] == "tests/ansible@localhost"
    assert tags["kiln:app"] == "webapp"
    assert "kiln:built-at" in tags
    # Packer cleaned up after itself: its build instance is gone.
    reservations = bake.ec2.describe_instances(  # type: ignore[attr-defined]
        Filters=[{"Name": "tag:kiln:fingerprint", "Values": [FINGERPRINT]}]
    )["Reservations"]
    states = {i["State"]["Name"] for r in reservations for i in r["Instances"]}
    assert states <= {"terminated", "shutting-down"}


def test_the_release_is_installed_versioned_and_immutable(bake: Bake) -> None:
    root = bake.host.root
    release = root / f"opt/webapp/releases/{VERSION}"
    assert os.readlink(root / "opt/webapp/current") == f"/opt/webapp/releases/{VERSION}"
    assert (release / "venv/bin/gunicorn").exists()
    info = json.loads((root / "etc/webapp/build-info.json").read_text())
    assert info == {
        "version": VERSION,
        "git_sha": GIT_SHA,
        "fingerprint": FINGERPRINT,
        "built_at": info["built_at"],
        "base_ami": bake.source_ami,
        "foundation_ami": bake.foundation_ami,
    }
    assert stat.S_IMODE((root / "etc/webapp/build-info.json").stat().st_mode) == 0o644
    static_files = [p for p in (release / "static").rglob("*") if p.is_file()]
    assert static_files
    for path in [release, *release.rglob("*")]:
        if path.is_symlink():
            continue
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (0, 0), path
        assert st.st_mode & 0o022 == 0, f"{path} is writable by group or others"
        assert st.st_mode & 0o004, f"{path} is not world-readable"


def test_the_manifest_matches_the_disk_and_catches_a_hotfix(bake: Bake) -> None:
    release = f"/opt/webapp/releases/{VERSION}"
    lines = (bake.host.root / release.lstrip("/") / "MANIFEST.sha256").read_text().splitlines()
    paths = [line.split("  ", 1)[1] for line in lines]
    assert paths == sorted(paths, key=lambda p: p.encode())
    assert not [p for p in paths if p.startswith("/") or "__pycache__" in p or p.endswith(".pyc")]
    assert any(p.startswith("static/") for p in paths)
    assert any(p.startswith("venv/lib/") and p.endswith("webapp/views.py") for p in paths)
    check = in_root(bake, "sh", "-c", f"cd {release} && sha256sum --quiet --strict -c MANIFEST.sha256")
    assert check.returncode == 0, check.stdout + check.stderr

    # What an scp hotfix would do to a baked instance; put the file back afterwards.
    target = next(p for p in paths if p.startswith("static/"))
    path = bake.host.root / release.lstrip("/") / target
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n/* hotfix */\n")
        drift = in_root(bake, "sh", "-c", f"cd {release} && sha256sum --quiet -c MANIFEST.sha256")
        assert drift.returncode != 0
        assert target in drift.stdout
    finally:
        path.write_bytes(original)


def test_the_image_holds_no_secret_and_no_bake_leftovers(bake: Bake) -> None:
    root = bake.host.root
    assert not (root / "etc/webapp/runtime.env").exists()
    assert not (root / "etc/nginx/webapp-listen.conf").exists()
    assert not (root / "var/tmp/kiln-wheelhouse").exists()
    assert not (root / "usr/sbin/policy-rc.d").exists()
    assert not list((root / "var/cache/apt/archives").glob("*.deb"))
    grep = subprocess.run(
        ["grep", "-rlF", SECRET["JWT_SECRET"], "etc", "opt", "usr/local", "var", "home", "root"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert grep.stdout == ""


def test_the_base_role_hardened_sshd_and_set_utc(bake: Bake) -> None:
    effective = in_root(bake, "/usr/sbin/sshd", "-T", "-C", "user=admin,host=x,addr=127.0.0.1")
    assert effective.returncode == 0, effective.stderr
    settings = dict(line.split(" ", 1) for line in effective.stdout.splitlines() if " " in line)
    assert settings["permitrootlogin"] == "no"
    assert settings["passwordauthentication"] == "no"
    assert settings["kbdinteractiveauthentication"] == "no"
    assert settings["authenticationmethods"] == "publickey"
    assert os.readlink(bake.host.root / "etc/localtime") == "/usr/share/zoneinfo/Etc/UTC"
    user = in_root(bake, "getent", "passwd", "webapp").stdout.strip().split(":")
    assert user[6] == "/usr/sbin/nologin"
    assert "webapp" in in_root(bake, "id", "-nG", "www-data").stdout.split()


def test_units_are_enabled_not_started(bake: Bake) -> None:
    wants = bake.host.root / "etc/systemd/system/multi-user.target.wants"
    for unit in ("webapp-boot.service", "webapp.service", "nginx.service"):
        assert (wants / unit).is_symlink(), unit
    survivors = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _root_of(p) == str(bake.host.root)]
    commands = {(p / "comm").read_text().strip() for p in survivors if (p / "comm").exists()}
    assert not commands & {"nginx", "gunicorn"}


def test_the_foundation_installed_the_ssm_agent_it_was_given_and_enabled_it(bake: Bake) -> None:
    status = in_root(bake, "dpkg-query", "-W", "-f", "${Status} ${Version}", "amazon-ssm-agent")
    assert status.stdout == "install ok installed 3.3.0-kiln-test", status.stdout + status.stderr
    wanted = bake.host.root / "etc/systemd/system/multi-user.target.wants/amazon-ssm-agent.service"
    assert os.readlink(wanted) == "/lib/systemd/system/amazon-ssm-agent.service"
    assert not (bake.host.root / "var/cache/apt/archives/amazon-ssm-agent.deb").exists()  # no bake leftovers
    assert "ssm_agent : Download the SSM agent's package, checking its SHA-256" in bake.foundation_log


def _root_of(proc: Path) -> str | None:
    try:
        return os.readlink(proc / "root")
    except OSError:
        return None


def test_the_baked_image_boots_and_serves_through_nginx(bake: Bake) -> None:
    """Boot the baked rootfs the way its units say, in their order, and ask nginx."""
    root = bake.host.root
    units = root / "etc/systemd/system"
    boot_unit = parse_unit((units / "webapp-boot.service").read_text())
    app_unit = parse_unit((units / "webapp.service").read_text())

    # What the sandbox gives an instance: IMDSv2 (its identity and user data) and, in the AWS SDKs'
    # own variables, where its AWS is. The image itself reads IMDS as on EC2.
    identity = {"instance_id": "i-0e2e0000000000001", "local_ipv4": BOOT_ADDRESS, "region": "us-east-1",
                "availability_zone": "us-east-1a",
                "user_data": json.dumps({"secret_id": "webapp/e2e", "region": "us-east-1"})}
    with metadata_service(identity) as imds:
        booted = subprocess.run(
            ["chroot", str(root), *shlex.split(boot_unit["Service"]["ExecStart"][0])], capture_output=True, text=True,
            timeout=60, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds,
                             "AWS_ENDPOINT_URL": bake.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                             "AWS_SECRET_ACCESS_KEY": "testing"})
    assert booted.returncode == 0, booted.stderr
    env_file = root / "etc/webapp/runtime.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert (env_file.stat().st_uid, env_file.stat().st_gid) == (0, 0)

    service = app_unit["Service"]
    user = service["User"][0]
    run_dir = root / "run" / service["RuntimeDirectory"][0]
    run_dir.mkdir()
    subprocess.run(["chroot", str(root), "chown", f"{user}:{service['Group'][0]}", f"/run/{run_dir.name}"], check=True)
    exports = " ".join(f"export {shlex.quote(e)};" for e in service.get("Environment", []))
    # EnvironmentFile is root-only: read it as root, then drop to the unit's user.
    script = (
        f"set -a; . {service['EnvironmentFile'][0]}; set +a; {exports} cd {service['WorkingDirectory'][0]} && "
        f"exec setpriv --reuid={user} --regid={service['Group'][0]} --init-groups {service['ExecStart'][0]}"
    )
    with open(bake.host.root.parent / "gunicorn.log", "wb") as log:
        gunicorn = subprocess.Popen(["chroot", str(root), "sh", "-c", script], stdout=log, stderr=log)
    try:
        socket_path = root / "run/webapp/gunicorn.sock"
        deadline = time.monotonic() + 30
        while not socket_path.exists():
            assert gunicorn.poll() is None, (bake.host.root.parent / "gunicorn.log").read_text()
            assert time.monotonic() < deadline, "gunicorn made no socket"
            time.sleep(0.2)
        sock = socket_path.stat()
        assert stat.S_IMODE(sock.st_mode) == 0o770

        started = in_root(bake, "/usr/sbin/nginx")
        assert started.returncode == 0, started.stderr
        wait_for_port(BOOT_ADDRESS, 80, gunicorn)

        with urllib.request.urlopen(f"http://{BOOT_ADDRESS}/version", timeout=10) as response:
            served = json.loads(response.read())
            assert response.headers["Server"] == "nginx"
        assert served["version"] == VERSION
        assert served["fingerprint"] == FINGERPRINT

        static = next(p for p in (root / f"opt/webapp/releases/{VERSION}/static").rglob("*") if p.is_file())
        relative = static.relative_to(root / f"opt/webapp/releases/{VERSION}/static")
        with urllib.request.urlopen(f"http://{BOOT_ADDRESS}/static/{relative}", timeout=10) as response:
            assert response.read() == static.read_bytes()

        workers = [
            p for p in Path("/proc").iterdir() if p.name.isdigit() and _root_of(p) == str(root)
            and "gunicorn" in (p / "cmdline").read_bytes().decode(errors="replace")
        ]  # fmt: skip
        uid = int(in_root(bake, "id", "-u", user).stdout)
        assert workers
        assert {(p / "status").read_text().split("Uid:")[1].split()[0] for p in workers} == {str(uid)}
    finally:
        stop(gunicorn)
        kill_processes_in(root)
