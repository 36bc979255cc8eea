"""What cloud-init would do on an instance's first boot, done by the host before the instance boots.

Writes the instance-specific files (sshd's listen address, the launch key for
the default user, hostname, machine-id, instance metadata). The instance's init makes fresh SSH host
keys on first boot (generate_host_keys: RSA key generation takes a second, which RunInstances
should not wait for) and prints the blocks cloud-init prints to the console, in its format, so
clients can verify host keys strictly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from release.errors import SandboxError
from release.sandbox.contracts import LaunchedInstance
from release.sandbox.dataplane.rootfs import read_account, resolve_in_root
from release.sandbox.engines import imds

DEFAULT_USER = "admin"
HOST_KEY_TYPES = ("rsa", "ecdsa", "ed25519")  # what `ssh-keygen -A` makes on Debian 12
SSHD_DROPIN = "/etc/ssh/sshd_config.d/00-sandbox.conf"
# sshd's AuthorizedKeysCommand for instances whose SSH their security groups decide (ssh_gate.py).
SSH_GATE = "/etc/ssh/sandbox-ssh-gate"
METADATA = "/etc/kiln/instance-metadata.json"  # the sandbox's own record; the image never reads it
# Every service of the instance talks to the sandbox the standard way: the AWS SDKs' own variables
# (endpoint, credentials, where IMDS is) in a drop-in for all services (systemd's service.d/).
AWS_DROPIN = "/etc/systemd/system/service.d/50-sandbox-aws.conf"
# cloud-init's place for a user-data script; the instance's init runs it once, on first boot.
USER_SCRIPT = "/var/lib/cloud/instance/scripts/part-001"

# Files a launch writes: an image made from the instance leaves them out (see images.py), except
# files the instance itself changed afterwards (hash differs), which are the instance's own work.
LAUNCH_FILES = (
    SSHD_DROPIN, SSH_GATE, "/etc/hostname", "/etc/hosts", "/etc/machine-id", "/etc/resolv.conf", METADATA,
    AWS_DROPIN,
    f"/home/{DEFAULT_USER}/.ssh/authorized_keys", "/root/.ssh/authorized_keys",
)  # fmt: skip


@dataclass(frozen=True)
class Identity:
    """The per-instance settings the control plane hands the data plane."""

    availability_zone: str
    aws_endpoint_url: str
    aws_access_key_id: str
    aws_secret_access_key: str


_SSH_BY_SECURITY_GROUPS = (
    "# The instance's security groups decide who may log in: for each connection the control plane\n"
    "# says whether they admit its source; only then does the gate hand sshd the user's keys.\n"
    f"AuthorizedKeysFile none\nAuthorizedKeysCommand {SSH_GATE} %u %h\nAuthorizedKeysCommandUser root\n"
)


def hostname_for(private_ip: str) -> str:
    return "ip-" + private_ip.replace(".", "-")


def _write(root: Path, path: str, text: str, mode: int, owner: tuple[int, int] = (0, 0)) -> str:
    """Write a file inside the instance (never through a symlink out of it); returns its sha256."""
    target = resolve_in_root(root, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chown(target, *owner)
    os.chmod(target, mode)
    return hashlib.sha256(text.encode()).hexdigest()


def generate_host_keys(root: Path, hostname: str) -> None:
    """Fresh host keys, as `ssh-keygen -A` makes them; run by the instance's init on first boot."""
    ssh_dir = resolve_in_root(root, "/etc/ssh")
    ssh_dir.mkdir(parents=True, exist_ok=True)
    for old in ssh_dir.glob("ssh_host_*"):
        old.unlink()
    # In parallel: RSA key generation dominates a launch otherwise.
    jobs = [
        (kind, subprocess.Popen(
            ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{hostname}",
             "-f", str(ssh_dir / f"ssh_host_{kind}_key")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        ))
        for kind in HOST_KEY_TYPES
    ]  # fmt: skip
    for kind, job in jobs:
        _, err = job.communicate()
        if job.returncode != 0:
            raise SandboxError(f"ssh-keygen -t {kind} failed: {err.strip()}")


def host_key_console_blocks(root: Path) -> str:
    """cloud-init's fingerprint and key blocks for the instance's current host keys."""
    pubs = sorted(resolve_in_root(root, "/etc/ssh").glob("ssh_host_*_key.pub"))
    fingerprints = []
    for pub in pubs:
        proc = subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SandboxError(f"ssh-keygen -l {pub} failed: {proc.stderr.strip()}")
        fingerprints.append(proc.stdout.strip())
    keys = [pub.read_text().strip() for pub in pubs]
    return "\n".join(
        ["-----BEGIN SSH HOST KEY FINGERPRINTS-----", *fingerprints, "-----END SSH HOST KEY FINGERPRINTS-----",
         "-----BEGIN SSH HOST KEY KEYS-----", *keys, "-----END SSH HOST KEY KEYS-----"]
    )  # fmt: skip


def parse_host_keys(console_text: str) -> list[tuple[str, str]]:
    """(key type, base64 key) pairs from the last SSH HOST KEY KEYS block of console output.

    Tolerates EC2's "ec2: " line prefix, so it reads real EC2 console output as well.
    """
    lines = [line.removeprefix("ec2: ").strip() for line in console_text.splitlines()]
    try:
        start = len(lines) - 1 - lines[::-1].index("-----BEGIN SSH HOST KEY KEYS-----")
        end = lines.index("-----END SSH HOST KEY KEYS-----", start)
    except ValueError:
        return []
    keys = []
    for line in lines[start + 1 : end]:
        parts = line.split()
        if len(parts) >= 2:
            keys.append((parts[0], parts[1]))
    return keys


def user_script(user_data: str | None) -> str | None:
    """The script in user data ("#!" first line, plain or base64 as the EC2 API carries it);
    None for anything else (cloud-config and MIME multipart are not supported)."""
    if not user_data:
        return None
    if user_data.startswith("#!"):
        return user_data
    try:
        decoded = base64.b64decode(user_data, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded if decoded.startswith("#!") else None


def inject(root: Path, spec: LaunchedInstance, identity: Identity) -> dict[str, str]:
    """Write the instance-specific files into `root`. Returns {path inside the instance: sha256}."""
    hostname = hostname_for(spec.private_ip)
    written: dict[str, str] = {}
    written[SSHD_DROPIN] = _write(
        root,
        SSHD_DROPIN,
        "# Written at launch by the Kiln sandbox: instances share the host's network, so sshd listens\n"
        "# on this instance's own loopback address only. PAM's session modules expect a real boot.\n"
        f"ListenAddress {spec.private_ip}\nUsePAM no\n"
        "# Key logins only, as cloud-init configures cloud images.\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "# Packer 1.6.6's SSH client signs with RSA/SHA-1 (ssh-rsa), which OpenSSH 9 refuses by default.\n"
        "PubkeyAcceptedAlgorithms +ssh-rsa\n"
        + (_SSH_BY_SECURITY_GROUPS if spec.ssh_by_security_groups else ""),
        0o644,
    )
    if spec.ssh_by_security_groups:
        gate = (Path(__file__).with_name("ssh_gate.py")).read_text()
        written[SSH_GATE] = _write(root, SSH_GATE, "#!/usr/bin/python3\n" + gate, 0o755)
    written["/etc/hostname"] = _write(root, "/etc/hostname", f"{hostname}\n", 0o644)
    hosts = f"127.0.0.1\tlocalhost\n{spec.private_ip}\t{hostname}\n::1\tlocalhost ip6-localhost\n"
    written["/etc/hosts"] = _write(root, "/etc/hosts", hosts, 0o644)
    written["/etc/machine-id"] = _write(root, "/etc/machine-id", uuid.uuid4().hex + "\n", 0o444)
    resolv = Path("/etc/resolv.conf")
    if resolv.is_file():  # instances share the host's network, so they share its resolver
        written["/etc/resolv.conf"] = _write(root, "/etc/resolv.conf", resolv.read_text(), 0o644)
    metadata = {
        "instance_id": spec.instance_id,
        "image_id": spec.image_id,
        "local_ipv4": spec.private_ip,
        "local_hostname": hostname,
        "region": spec.region,
        "availability_zone": identity.availability_zone,
        "user_data": spec.user_data,
        "aws_endpoint_url": identity.aws_endpoint_url,
        "aws_access_key_id": identity.aws_access_key_id,
        "aws_secret_access_key": identity.aws_secret_access_key,
    }
    # Readable by every local user, as the EC2 metadata service is.
    written[METADATA] = _write(root, METADATA, json.dumps(metadata, indent=2) + "\n", 0o644)
    imds_url = imds.endpoint_for(identity.aws_endpoint_url, spec.instance_id)
    written[AWS_DROPIN] = _write(root, AWS_DROPIN, (
        "# Written at launch by the Kiln sandbox: where this instance's AWS is, in the AWS SDKs' own\n"
        "# variables (on EC2 none is needed: IMDS at 169.254.169.254 and the instance role).\n[Service]\n"
        f"Environment=AWS_ENDPOINT_URL={identity.aws_endpoint_url}\n"
        f"Environment=AWS_EC2_METADATA_SERVICE_ENDPOINT={imds_url}\n"
        f"Environment=AWS_ACCESS_KEY_ID={identity.aws_access_key_id}\n"
        f"Environment=AWS_SECRET_ACCESS_KEY={identity.aws_secret_access_key}\n"), 0o644)
    if spec.public_key:
        account = read_account(root, DEFAULT_USER) or read_account(root, "root")
        if account is None:
            raise SandboxError(f"image {spec.image_id} has neither a {DEFAULT_USER} nor a root user")
        ssh_dir = resolve_in_root(root, f"{account.home}/.ssh")
        ssh_dir.mkdir(parents=True, exist_ok=True)
        os.chown(ssh_dir, account.uid, account.gid)
        ssh_dir.chmod(0o700)
        path = f"{account.home}/.ssh/authorized_keys"
        written[path] = _write(root, path, spec.public_key.strip() + "\n", 0o600, (account.uid, account.gid))
    script = user_script(spec.user_data)
    if script is not None:
        _write(root, USER_SCRIPT, script, 0o700)
    return written


def first_boot_text(root: Path, instance_id: str) -> str:
    """What cloud-init prints at the end of an instance's first boot."""
    return (
        f"Cloud-init (Kiln sandbox) running modules for instance {instance_id}\n"
        + host_key_console_blocks(root)
        + f"\nCloud-init (Kiln sandbox) finished: instance {instance_id} is up.\n"
    )
