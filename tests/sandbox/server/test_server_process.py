"""up / status / down / reset of real sandbox server processes (each test its own state dir)."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from release.errors import SandboxError
from release.sandbox import server_process


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    server_process.stop(tmp_path)  # whatever a test left running


def refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_up_is_fast_idempotent_and_down_leaves_nothing(state_dir: Path) -> None:
    began = time.monotonic()
    info = server_process.start(state_dir)
    cold = time.monotonic() - began
    print(f"sandbox up from cold: {cold:.2f} s")
    assert cold < 15

    assert info.endpoint == f"http://127.0.0.1:{info.port}"
    assert info.env["AWS_ENDPOINT_URL"] == info.endpoint
    assert info.env["AWS_ACCESS_KEY_ID"] == "testing"
    saved = json.loads((state_dir / "server.json").read_text())
    assert (saved["pid"], saved["port"], saved["endpoint"]) == (info.pid, info.port, info.endpoint)
    assert (state_dir / "server.log").exists()

    again = server_process.start(state_dir)
    assert again.pid == info.pid and again.port == info.port
    assert server_process.find(state_dir) == info

    assert server_process.stop(state_dir) is True
    assert not Path(f"/proc/{info.pid}").exists()
    assert refused(info.port)
    assert not (state_dir / "server.json").exists()
    assert server_process.find(state_dir) is None
    assert server_process.stop(state_dir) is False


def test_a_stale_state_file_is_never_trusted(state_dir: Path) -> None:
    # A pid that is alive but not a sandbox server (this test process) must not be signalled.
    stale = {
        "pid": os.getpid(),
        "port": 1,
        "endpoint": "http://127.0.0.1:1",
        "started_at": "2026-01-01T00:00:00+00:00",
        "time_scale": 0.1,
    }
    (state_dir / "server.json").write_text(json.dumps(stale))
    assert server_process.find(state_dir) is None
    assert not (state_dir / "server.json").exists()
    (state_dir / "server.json").write_text(json.dumps(stale))
    assert server_process.stop(state_dir) is False


def test_a_busy_port_is_a_clear_error(state_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SandboxError) as failed:
            server_process.start(state_dir, port=port)
    assert "exited" in str(failed.value) and "server.log" in str(failed.value)
    assert not (state_dir / "server.json").exists()


def test_concurrent_ups_start_one_server(state_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.map(lambda _: server_process.start(state_dir), range(2))
    assert first.pid == second.pid
    servers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_server_of(p, state_dir)]
    assert len(servers) == 1


def _is_server_of(proc: Path, state_dir: Path) -> bool:
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"release.sandbox.server" in argv and str(state_dir.resolve()).encode() in argv
