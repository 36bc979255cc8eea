"""Host key parsing and matching: pure, no server. Console texts are shaped like real EC2 output."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import paramiko
import pytest

from release.errors import HostKeyRejected
from release.hostkeys import (
    KnownHostsRecorder,
    TrustedKeys,
    fingerprint,
    known_hosts_keys,
    parse_console_output,
    verify_host_key,
)


@pytest.fixture(scope="module")
def host_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[paramiko.PKey, str]]:
    """Two generated ed25519 host keys: name -> (public key, `ssh-keygen -l` line)."""
    directory = tmp_path_factory.mktemp("hostkeys")
    keys = {}
    for name in ("one", "two"):
        path = directory / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}", "-f", str(path)],
                       check=True)  # fmt: skip
        kind, blob = path.with_suffix(".pub").read_text().split()[:2]
        public = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
        line = subprocess.run(["ssh-keygen", "-l", "-f", str(path.with_suffix(".pub"))], check=True,
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
        keys[name] = (public, line)
    return keys


def test_fingerprint_is_what_ssh_keygen_prints(host_keys: dict[str, tuple[paramiko.PKey, str]]) -> None:
    public, line = host_keys["one"]
    assert fingerprint(public.asbytes()) == line.split()[1]


def console(*lines: str) -> str:
    return "\n".join(lines) + "\n"


def test_real_ec2_shape_with_prefixes_timestamps_and_crlf(host_keys: dict[str, tuple[paramiko.PKey, str]]) -> None:
    public, line = host_keys["one"]
    text = console(
        "[    0.000000] Linux version 6.1.0-13-cloud-amd64",
        "[   12.345678] cloud-init[612]: Cloud-init v. 22.4.2 running 'modules:final'",
        "ec2: #############################################################",
        "ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----",
        f"ec2: {line}",
        "ec2: -----END SSH HOST KEY FINGERPRINTS-----",
        "ec2: #############################################################",
        "-----BEGIN SSH HOST KEY KEYS-----\r",
        f"{public.get_name()} {public.get_base64()} root@one\r",
        "-----END SSH HOST KEY KEYS-----\r",
        "[   13.000001] cloud-init[612]: Cloud-init v. 22.4.2 finished",
    )
    trusted = parse_console_output(text, source="console output of i-1")
    assert trusted.keys == {(public.get_name(), public.get_base64())}
    assert trusted.fingerprints == {(line.split()[1], "ED25519")}
    assert trusted.looked_in == ("console output of i-1 (1 keys, 1 fingerprints)",)
    assert trusted.accepts(public.get_name(), public.asbytes())
    assert trusted.kinds() == {"ED25519"}


def test_only_the_last_block_counts(host_keys: dict[str, tuple[paramiko.PKey, str]]) -> None:
    """Keys regenerated on a later boot replace the first boot's: the old key is no longer accepted."""
    old, _ = host_keys["one"]
    new, _ = host_keys["two"]
    block = ["-----BEGIN SSH HOST KEY KEYS-----", "", "-----END SSH HOST KEY KEYS-----"]
    text = console(block[0], f"{old.get_name()} {old.get_base64()}", block[2],
                   block[0], f"{new.get_name()} {new.get_base64()}", block[2])  # fmt: skip
    trusted = parse_console_output(text)
    assert trusted.accepts(new.get_name(), new.asbytes())
    assert not trusted.accepts(old.get_name(), old.asbytes())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no cloud-init here\n",
        "-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAAC3Nza\n",  # truncated: no END line
        console("-----BEGIN SSH HOST KEY FINGERPRINTS-----", "2048 MD5:aa:bb root@x (RSA)",
                "-----END SSH HOST KEY FINGERPRINTS-----"),
    ],
    ids=["empty", "no-blocks", "truncated", "md5-only"],
)
def test_console_text_that_proves_nothing(text: str) -> None:
    assert parse_console_output(text).empty


def test_the_sandbox_console_output_is_understood(tmp_path: Path) -> None:
    """Contract with the sandbox: what its instances print is what Kiln parses."""
    from release.sandbox.dataplane.cloudinit import host_key_console_blocks

    ssh_dir = tmp_path / "etc" / "ssh"
    ssh_dir.mkdir(parents=True)
    for kind in ("rsa", "ecdsa", "ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "root@sandbox",
                        "-f", str(ssh_dir / f"ssh_host_{kind}_key")], check=True)  # fmt: skip
    trusted = parse_console_output(host_key_console_blocks(tmp_path))
    assert len(trusted.keys) == 3 and len(trusted.fingerprints) == 3
    assert trusted.kinds() == {"RSA", "ECDSA", "ED25519"}
    for pub in ssh_dir.glob("*.pub"):
        kind, blob = pub.read_text().split()[:2]
        key = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
        trusted_by_fingerprint_only = TrustedKeys(fingerprints=trusted.fingerprints)
        assert trusted_by_fingerprint_only.accepts(key.get_name(), key.asbytes())


def test_known_hosts_lookup_handles_ports_hashes_and_missing_files(
    tmp_path: Path, host_keys: dict[str, tuple[paramiko.PKey, str]]
) -> None:
    one, _ = host_keys["one"]
    two, _ = host_keys["two"]
    hashed = paramiko.HostKeys.hash_host("10.0.0.9")
    path = tmp_path / "known_hosts"
    path.write_text(console(f"[10.0.0.7]:2222 {one.get_name()} {one.get_base64()}",
                            f"{hashed} {two.get_name()} {two.get_base64()}"))  # fmt: skip
    assert known_hosts_keys(path, "10.0.0.7", 2222).accepts(one.get_name(), one.asbytes())
    assert known_hosts_keys(path, "10.0.0.7", 22).empty  # port 22 is a different entry
    assert known_hosts_keys(path, "10.0.0.9").accepts(two.get_name(), two.asbytes())
    missing = known_hosts_keys(tmp_path / "nope", "10.0.0.7")
    assert missing.empty and missing.looked_in == (f"{tmp_path / 'nope'} (missing)",)


def test_verify_refuses_with_where_it_looked(host_keys: dict[str, tuple[paramiko.PKey, str]]) -> None:
    one, _ = host_keys["one"]
    two, _ = host_keys["two"]
    trusted = TrustedKeys(frozenset({(two.get_name(), two.get_base64())}), looked_in=("/k (1 keys for h)",))
    verify_host_key("h", two, trusted)  # known: no exception
    with pytest.raises(HostKeyRejected) as caught:
        verify_host_key("h", one, trusted)
    assert fingerprint(one.asbytes()) in str(caught.value) and "/k (1 keys for h)" in str(caught.value)
    assert caught.value.exit_code != 0


def test_recorder_replaces_the_line_of_a_reused_address(
    tmp_path: Path, host_keys: dict[str, tuple[paramiko.PKey, str]]
) -> None:
    one, _ = host_keys["one"]
    two, _ = host_keys["two"]
    path = tmp_path / "kiln" / "known_hosts"
    recorder = KnownHostsRecorder(path)
    recorder.record("10.0.0.7", 22, one)
    recorder.record("10.0.0.8", 2222, one)
    recorder.record("10.0.0.7", 22, two)  # the instance was replaced; the console vouched for the new key
    assert path.read_text().splitlines() == [
        f"[10.0.0.8]:2222 {one.get_name()} {one.get_base64()}",
        f"10.0.0.7 {two.get_name()} {two.get_base64()}",
    ]
    assert path.stat().st_mode & 0o777 == 0o600
    assert known_hosts_keys(path, "10.0.0.7").accepts(two.get_name(), two.asbytes())
