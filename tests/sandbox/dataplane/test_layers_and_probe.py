"""Layer copies on a real overlayfs, the HTTP probe, and the root requirement."""

from __future__ import annotations

import hashlib
import http.server
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from dataplane_helpers import requires_root

from release.errors import SandboxError
from release.sandbox.dataplane import plane as plane_module
from release.sandbox.dataplane.baseimage import build_base_image
from release.sandbox.dataplane.instance import OVERLAY_OPTIONS
from release.sandbox.dataplane.layers import InstanceSpecific, copy_layer
from release.sandbox.dataplane.mounts import mount, mounts_under, unmount_tree
from release.sandbox.dataplane.probe import probe


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """(lower, upper, merged) of a mounted overlay; unmounted afterwards."""
    requires_root()
    lower, upper, work, merged = (tmp_path / d for d in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    (lower / "etc/conf.d").mkdir(parents=True)
    (lower / "etc/conf.d/a").write_text("a")
    (lower / "etc/conf.d/b").write_text("b")
    (lower / "etc/issue").write_text("Debian")
    (lower / "tmp").mkdir(mode=0o1777)
    options = f"lowerdir={lower},upperdir={upper},workdir={work},{OVERLAY_OPTIONS}"
    mount("kiln-test", merged, "overlay", 0, options)
    yield lower, upper, merged
    unmount_tree(tmp_path)
    assert not mounts_under(tmp_path)


@pytest.mark.root
def test_layer_keeps_whiteouts_opaque_dirs_links_and_xattrs(overlay: tuple[Path, Path, Path], tmp_path: Path) -> None:
    lower, upper, merged = overlay
    (merged / "etc/issue").unlink()  # -> whiteout
    for child in (merged / "etc/conf.d").iterdir():
        child.unlink()
    (merged / "etc/conf.d").rmdir()
    (merged / "etc/conf.d").mkdir()  # -> opaque dir
    (merged / "etc/conf.d/only").write_text("only")
    (merged / "usr/bin").mkdir(parents=True)
    (merged / "usr/bin/tool").write_text("#!/bin/sh\n")
    os.chown(merged / "usr/bin/tool", 0, 0)
    os.chmod(merged / "usr/bin/tool", 0o4755)
    os.setxattr(merged / "usr/bin/tool", "security.capability",
                bytes.fromhex("0100000200200000000000000000000000000000"))  # cap_net_bind_service  # fmt: skip
    os.link(merged / "usr/bin/tool", merged / "usr/bin/tool-alias")
    (merged / "tmp/scratch").write_text("x")
    (merged / "etc/machine-id").write_text("abc\n")

    layer = tmp_path / "layer"
    copy_layer(upper, layer, InstanceSpecific({}).excluded)

    assert stat.S_ISCHR((layer / "etc/issue").lstat().st_mode) and (layer / "etc/issue").lstat().st_rdev == 0
    assert os.getxattr(layer / "etc/conf.d", "trusted.overlay.opaque") == b"y"
    tool = (layer / "usr/bin/tool").stat()
    assert stat.S_IMODE(tool.st_mode) == 0o4755 and tool.st_nlink == 2
    assert (layer / "usr/bin/tool-alias").stat().st_ino == tool.st_ino
    assert os.getxattr(layer / "usr/bin/tool", "security.capability")[:4] == bytes.fromhex("01000002")
    assert (layer / "tmp").is_dir() and not (layer / "tmp/scratch").exists()
    assert not (layer / "etc/machine-id").exists()

    # The layer, stacked on the lower, reads like the instance did.
    stacked = tmp_path / "stacked"
    stacked.mkdir()
    mount("kiln-test-ro", stacked, "overlay", 0, f"lowerdir={layer}:{lower}")
    assert not (stacked / "etc/issue").exists()
    assert sorted(p.name for p in (stacked / "etc/conf.d").iterdir()) == ["only"]
    assert (stacked / "usr/bin/tool").read_text() == "#!/bin/sh\n"


@pytest.mark.root
def test_launch_files_are_excluded_only_while_unchanged(tmp_path: Path) -> None:
    requires_root()
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/hosts").write_text("launch\n")
    (upper / "etc/hostname").write_text("changed by the playbook\n")
    hashes = {path: hashlib.sha256(b"launch\n").hexdigest() for path in ("/etc/hosts", "/etc/hostname")}
    layer = tmp_path / "layer"
    copy_layer(upper, layer, InstanceSpecific(hashes).excluded)
    assert not (layer / "etc/hosts").exists()
    assert (layer / "etc/hostname").read_text() == "changed by the playbook\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def test_probe_returns_the_status_or_none(http_server: int) -> None:
    assert probe("127.0.0.1", http_server, "/health", 2.0) == 200
    assert probe("127.0.0.1", http_server, "/broken", 2.0) == 503
    assert probe("127.0.0.1", http_server, "health", 2.0) == 200
    assert probe("127.0.0.1", 1, "/", 0.5) is None


def test_probe_never_leaves_loopback() -> None:
    with pytest.raises(SandboxError, match="loopback"):
        probe("10.0.0.1", 80, "/", 0.1)


def test_data_plane_refuses_to_run_without_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(plane_module.os, "geteuid", lambda: 1000)
    with pytest.raises(SandboxError, match="needs root on Linux"):
        plane_module.LocalDataPlane(tmp_path)
    assert not (tmp_path / "instances").exists()


@pytest.mark.root
def test_a_failed_base_image_build_leaves_no_half_built_image(tmp_path: Path) -> None:
    requires_root()
    # Port 9 (discard) on loopback: nothing serves a Debian archive there, so debootstrap fails fast.
    with pytest.raises(SandboxError, match="debootstrap failed"):
        build_base_image(tmp_path, mirror="http://127.0.0.1:9/debian")
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]
    assert not mounts_under(tmp_path)
