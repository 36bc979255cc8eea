"""The sandbox's base image: a debootstrapped Debian bookworm root filesystem, built once per machine.

Cached under `cache_dir/<name>/rootfs`, where <name> carries a hash of everything that shapes the
build (suite, packages, mirror, customisation), so changing the recipe builds a new image rather
than reusing a stale one. A build happens in a temporary directory next to the cache entry and is
renamed into place only when complete, so a half-built image is never used; an flock serialises
concurrent builders on one machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from release.errors import SandboxError, ToolError
from release.sandbox.dataplane.mounts import mounts_under, unmount_tree
from release.sandbox.dataplane.rootfs import processes_rooted_under

DEFAULT_CACHE_DIR = Path("/var/cache/kiln/images")
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "openssh-server", "sudo", "ca-certificates", "iproute2", "procps")
DEFAULT_USER = "admin"
SOURCES_FILE = Path("/etc/apt/sources.list.d/debian.sources")
LEGACY_SOURCES_FILE = Path("/etc/apt/sources.list")
# Bump when the customisation below changes, so existing caches are not reused.
RECIPE_VERSION = "3"

# Package maintainer scripts call invoke-rc.d, which asks policy-rc.d; 101 = "action forbidden",
# so installing a package into an image never tries to start its service.
POLICY_RC_D = "#!/bin/sh\n# Kiln sandbox image: never start services while installing packages.\nexit 101\n"
SUDOERS = f"{DEFAULT_USER} ALL=(ALL) NOPASSWD:ALL\n"
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


@dataclass(frozen=True)
class BuiltImage:
    rootfs: Path
    built: bool  # False when the cache was reused
    seconds: float
    size_bytes: int


def debian_mirror(sources: Path = SOURCES_FILE, legacy: Path = LEGACY_SOURCES_FILE) -> str:
    """The host's Debian mirror for the main archive (not -security), from deb822 or one-line sources."""
    if sources.exists():
        for stanza in sources.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            suites = fields.get("suites", "").split()
            if "deb" in fields.get("types", "").split() and SUITE in suites and fields.get("uris"):
                return fields["uris"].split()[0]
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                return parts[1] if not parts[1].startswith("[") else parts[2]
    raise ToolError(
        f"no Debian {SUITE} mirror found in {sources} or {legacy}",
        hint="Add the Debian archive to apt's sources, as on a stock Debian 12 install",
    )


def image_name(mirror: str) -> str:
    recipe = "|".join([SUITE, "minbase", ",".join(PACKAGES), mirror, RECIPE_VERSION])
    return f"debian-{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def tree_size(path: Path) -> int:
    """Bytes allocated on disk under `path`, counting hard links once (like du)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _run(argv: list[str], what: str, log: Path) -> None:
    with log.open("ab") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise SandboxError(f"{what} failed (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(tail))


def _kill_strays(rootfs: Path) -> None:
    # Maintainer scripts must not leave daemons running in the image; kill any that did.
    for pid in processes_rooted_under(rootfs):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def customise(rootfs: Path, log: Path) -> None:
    """Turn a fresh debootstrap into an image: default user, no service starts, nothing instance-specific."""
    policy = rootfs / "usr/sbin/policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    _run(["chroot", str(rootfs), "useradd", "--create-home", "--shell", "/bin/bash",
          "--groups", "sudo", DEFAULT_USER], "useradd", log)  # fmt: skip
    # "*" = no password login, but not a locked account ("!"), which sshd without PAM refuses.
    _run(["chroot", str(rootfs), "usermod", "--password", "*", DEFAULT_USER], "usermod", log)
    sudoers = rootfs / "etc/sudoers.d/90-kiln-default-user"
    sudoers.write_text(SUDOERS)
    sudoers.chmod(0o440)
    (rootfs / "etc/hosts").write_text(HOSTS)
    # Instance-specific files are written at launch, never baked in.
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    for path in ("etc/machine-id", "var/lib/dbus/machine-id", "etc/hostname", "etc/resolv.conf"):
        (rootfs / path).unlink(missing_ok=True)
    _run(["chroot", str(rootfs), "apt-get", "clean"], "apt-get clean", log)
    for leftover in ("var/log/bootstrap.log",):
        (rootfs / leftover).unlink(missing_ok=True)


# debootstrap's lines about one package ("I: Retrieving libc6 2.36-9+deb12u10", "I: Unpacking adduser...")
# rather than a stage ("I: Unpacking required packages...").
_PER_PACKAGE = re.compile(r"^(Retrieving|Validating|Extracting|Unpacking|Configuring) "
                          r"(?!(?:required|base|the) )[a-z0-9][a-z0-9.+-]*(?::[a-z0-9]+)?(?: \S+)?$")


def debootstrap_stage(log_text: str) -> str | None:
    """debootstrap's latest stage in its output, from the last "I: …" line ("Retrieving Packages",
    "Unpacking the base system"; one package's line reads "Retrieving packages"), for people watching
    a first `sandbox.up` (display only)."""
    for line in reversed(log_text.splitlines()):
        if line.startswith("I: "):
            stage = line[3:].strip().rstrip(".")
            per_package = _PER_PACKAGE.match(stage)
            return f"{per_package.group(1)} packages" if per_package else stage or None
    return None


def build_stage(cache_dir: Path = DEFAULT_CACHE_DIR) -> str | None:
    """What a base image build under way on this machine is doing (from the newest build's log),
    or None when none is under way."""
    try:
        logs = sorted(cache_dir.glob(".building-*/build.log"), key=lambda p: p.stat().st_mtime)
        if not logs:
            return None
        with logs[-1].open("rb") as log:
            log.seek(max(0, logs[-1].stat().st_size - 4096))
            tail = log.read().decode(errors="replace")
    except OSError:  # the build finished (renamed into place) while we looked
        return None
    return debootstrap_stage(tail) or "starting debootstrap"


def build_base_image(cache_dir: Path = DEFAULT_CACHE_DIR, *, mirror: str | None = None) -> BuiltImage:
    """The cached base image, building it first if this machine has none."""
    if shutil.which("debootstrap") is None:
        raise ToolError("debootstrap is not installed", hint="Run `apt-get install -y debootstrap`")
    mirror = mirror or debian_mirror()
    cache_dir.mkdir(parents=True, exist_ok=True)
    entry = cache_dir / image_name(mirror)
    started = time.monotonic()
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (entry / "rootfs").is_dir():
            return BuiltImage(entry / "rootfs", False, time.monotonic() - started, 0)
        work = Path(tempfile.mkdtemp(prefix=f".building-{entry.name}-", dir=cache_dir))
        try:
            rootfs = work / "rootfs"
            log = work / "build.log"
            _run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
                 str(rootfs), mirror],
                "debootstrap", log,
            )  # fmt: skip
            _kill_strays(rootfs)
            customise(rootfs, log)
            _kill_strays(rootfs)
            if mounts_under(work):
                unmount_tree(work)
            size = tree_size(rootfs)
            (work / "SOURCE").write_text(f"debootstrap --variant=minbase {SUITE} {mirror}\n")
            work.chmod(0o755)  # mkdtemp made it private; the finished image is not
            os.rename(work, entry)
        except BaseException:
            _kill_strays(work)
            unmount_tree(work)
            shutil.rmtree(work, ignore_errors=True)
            raise
    return BuiltImage(entry / "rootfs", True, time.monotonic() - started, size)
