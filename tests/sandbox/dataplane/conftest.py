"""Fixtures for the data plane's tests: the cached base image, a data plane in a temp state dir,
a fresh SSH key. Every fixture that starts instances terminates them and checks nothing is left."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from dataplane_helpers import BASE_IMAGE, requires_root

from release.sandbox.dataplane import LocalDataPlane
from release.sandbox.dataplane.baseimage import DEFAULT_CACHE_DIR, build_base_image
from release.sandbox.dataplane.mounts import mounts_under
from release.sandbox.dataplane.rootfs import processes_rooted_under


@pytest.fixture(scope="session")
def base_rootfs() -> Path:
    """The machine's cached base image (built here on a machine that has none)."""
    requires_root()
    return build_base_image(DEFAULT_CACHE_DIR).rootfs


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, base_rootfs: Path) -> Iterator[LocalDataPlane]:
    state_dir = tmp_path_factory.mktemp("dataplane")
    dp = LocalDataPlane(state_dir, DEFAULT_CACHE_DIR)
    dp.register_image(BASE_IMAGE, base_rootfs)
    yield dp
    dp.terminate_all()
    assert not mounts_under(state_dir)
    assert not processes_rooted_under(state_dir)


@pytest.fixture(scope="module")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(private key file, OpenSSH public key line) of a fresh ed25519 key."""
    path = tmp_path_factory.mktemp("keys") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kiln-test", "-f", str(path)], check=True)
    return path, path.with_suffix(".pub").read_text().strip()
