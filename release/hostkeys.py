"""Strict SSH host keys: which keys Kiln trusts for a host, and checking an offered key.

Keys come from known_hosts files and, for an instance, from its EC2 console output (the blocks
cloud-init prints at first boot). A server's key is accepted only if it equals a known key for
that host or its SHA256 fingerprint matches one; anything else is HostKeyRejected, never
"accepted and remembered". A key first verified through console output may be recorded into a
Kiln-owned known_hosts file (KnownHostsRecorder). ssh.py connects with what this module trusts.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import paramiko

from release.errors import HostKeyRejected, SshError

KEYS_BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
KEYS_END = "-----END SSH HOST KEY KEYS-----"
FINGERPRINTS_BEGIN = "-----BEGIN SSH HOST KEY FINGERPRINTS-----"
FINGERPRINTS_END = "-----END SSH HOST KEY FINGERPRINTS-----"

# The host key algorithms that can present a key of each kind, in paramiko's names. Used to make
# the server offer a kind of key Kiln already knows, rather than one it would have to refuse.
ALGORITHMS_BY_KIND = {
    "ED25519": ("ssh-ed25519",),
    "ECDSA": ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"),
    "RSA": ("rsa-sha2-512", "rsa-sha2-256"),
}
_KIND_BY_KEY_TYPE = {
    "ssh-ed25519": "ED25519",
    "ecdsa-sha2-nistp256": "ECDSA",
    "ecdsa-sha2-nistp384": "ECDSA",
    "ecdsa-sha2-nistp521": "ECDSA",
    "ssh-rsa": "RSA",
}




def fingerprint(key_blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob: "SHA256:" + unpadded base64."""
    digest = hashlib.sha256(key_blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class TrustedKeys:
    """The host keys Kiln accepts for one host, and where it looked for them (for messages)."""

    keys: frozenset[tuple[str, str]] = frozenset()  # (key type, base64 blob)
    fingerprints: frozenset[tuple[str, str]] = frozenset()  # ("SHA256:…", kind such as "ED25519")
    looked_in: tuple[str, ...] = ()

    def __or__(self, other: TrustedKeys) -> TrustedKeys:
        return TrustedKeys(
            self.keys | other.keys, self.fingerprints | other.fingerprints, self.looked_in + other.looked_in
        )

    @property
    def empty(self) -> bool:
        return not self.keys and not self.fingerprints

    def accepts(self, key_type: str, key_blob: bytes) -> bool:
        encoded = base64.b64encode(key_blob).decode()
        if any(blob == encoded for _, blob in self.keys):
            return True
        offered = fingerprint(key_blob)
        return any(fp == offered for fp, _ in self.fingerprints)

    def kinds(self) -> set[str]:
        """Key kinds (ED25519, ECDSA, RSA) this trust can verify."""
        kinds = {_KIND_BY_KEY_TYPE.get(key_type, key_type) for key_type, _ in self.keys}
        return kinds | {kind for _, kind in self.fingerprints}


# What may precede cloud-init's text on a console line: a kernel timestamp, a syslog-style tag, and
# the "ec2:" prefix cloud-init puts on the fingerprint block.
_CONSOLE_PREFIX = re.compile(r"^(\[\s*\d+\.\d+\]\s*)?(cloud-init\[\d+\]:\s*)?(ec2:\s*)?")


def _last_block(lines: list[str], begin: str, end: str) -> list[str]:
    """The lines of the last begin…end block (cloud-init prints again on every boot)."""
    if begin not in lines:
        return []
    start = len(lines) - 1 - lines[::-1].index(begin)
    try:
        stop = lines.index(end, start)
    except ValueError:
        return []  # a truncated block proves nothing
    return lines[start + 1 : stop]


def parse_console_output(text: str, *, source: str = "console output") -> TrustedKeys:
    """Host keys and fingerprints from cloud-init's blocks in an instance's console output.

    Reads the last `SSH HOST KEY KEYS` block ("ssh-ed25519 AAAA… root@host") and the last
    `SSH HOST KEY FINGERPRINTS` block ("256 SHA256:xxxx root@host (ED25519)"); tolerates EC2's
    "ec2: " line prefix, kernel timestamps, "cloud-init[pid]:" tags and carriage returns.
    """
    lines = [_CONSOLE_PREFIX.sub("", line.strip()).strip() for line in text.splitlines()]
    keys = set()
    for line in _last_block(lines, KEYS_BEGIN, KEYS_END):
        parts = line.split()
        if len(parts) >= 2 and parts[1].startswith("AAAA"):
            keys.add((parts[0], parts[1]))
    fingerprints = set()
    for line in _last_block(lines, FINGERPRINTS_BEGIN, FINGERPRINTS_END):
        parts = line.split()
        found = next((p for p in parts if p.startswith("SHA256:")), None)
        if found is None:
            continue  # an MD5 fingerprint from an old cloud-init cannot be matched safely
        kind = parts[-1].strip("()").upper() if parts[-1].startswith("(") else ""
        fingerprints.add((found, kind))
    summary = f"{source} ({len(keys)} keys, {len(fingerprints)} fingerprints)"
    return TrustedKeys(frozenset(keys), frozenset(fingerprints), (summary,))


def host_label(address: str, port: int) -> str:
    """The host name known_hosts uses: `addr` on port 22, `[addr]:port` otherwise."""
    return address if port == 22 else f"[{address}]:{port}"


def known_hosts_keys(path: Path, address: str, port: int = 22) -> TrustedKeys:
    """The keys a known_hosts file lists for address:port (hashed entries included)."""
    label = host_label(address, port)
    if not path.is_file():
        return TrustedKeys(looked_in=(f"{path} (missing)",))
    host_keys = paramiko.HostKeys()
    try:
        host_keys.load(str(path))
    except (OSError, paramiko.SSHException) as err:
        raise SshError(f"cannot read known_hosts {path}: {err}", hint="Fix or remove that file.") from err
    found = host_keys.lookup(label)
    keys = frozenset((key.get_name(), key.get_base64()) for key in found.values()) if found else frozenset()
    return TrustedKeys(keys=keys, looked_in=(f"{path} ({len(keys)} keys for {label})",))


def verify_host_key(host: str, key: paramiko.PKey, trusted: TrustedKeys) -> None:
    """Accept `key` only if `trusted` lists it or its fingerprint; raise HostKeyRejected otherwise."""
    if trusted.accepts(key.get_name(), key.asbytes()):
        return
    looked = "; ".join(trusted.looked_in) or "nowhere (no known_hosts file and no console output)"
    raise HostKeyRejected(
        f"offered host key {fingerprint(key.asbytes())} ({key.get_name()}) is not known; looked in: {looked}",
        where=f"ssh {host}",
        hint="Compare it with the instance's console output (`aws ec2 get-console-output`) and add the key to "
        "known_hosts if it is right; if the instance was just replaced, wait for its console output",
    )


class KnownHostsRecorder:
    """A Kiln-owned known_hosts file: keys verified through console output are written here.

    One line per host: a newer verified key for the same address (an instance replaced on a reused
    private IP) replaces the old line, because the console output that vouched for it is newer.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def record(self, address: str, port: int, key: paramiko.PKey) -> None:
        label = host_label(address, port)
        line = f"{label} {key.get_name()} {key.get_base64()}\n"
        with self._lock:
            kept = []
            if self.path.is_file():
                kept = [old for old in self.path.read_text().splitlines(keepends=True) if old.split(" ", 1)[0] != label]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(self.path.name + ".tmp")
            temporary.write_text("".join(kept) + line)
            temporary.chmod(0o600)
            os.replace(temporary, self.path)
