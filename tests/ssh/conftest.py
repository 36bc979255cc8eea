"""Fixtures: a client key, a "bastion" and an "instance" sshd, known_hosts files, a /version server."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .servers import (
    BASTION_ADDRESS,
    INSTANCE_ADDRESS,
    SSHD,
    SshServer,
    keygen,
    start_sshd,
    stop_sshd,
    tcp_socket_owners,
)


@pytest.fixture(scope="session")
def client_key() -> Iterator[Path]:
    if os.geteuid() != 0 or not SSHD.exists():
        pytest.skip("the SSH tests run real sshd servers: they need root and /usr/sbin/sshd (openssh-server)")
    directory = Path(tempfile.mkdtemp(prefix="kiln-ssh-client-"))
    keygen(directory / "id_ed25519", "kiln-tests")
    yield directory / "id_ed25519"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def bastion(client_key: Path) -> Iterator[SshServer]:
    server = start_sshd("bastion", BASTION_ADDRESS, client_key.with_suffix(".pub").read_text())
    yield server
    stop_sshd(server)


@pytest.fixture(scope="session")
def instance(client_key: Path) -> Iterator[SshServer]:
    server = start_sshd("instance", INSTANCE_ADDRESS, client_key.with_suffix(".pub").read_text())
    yield server
    stop_sshd(server)


@pytest.fixture
def known_hosts(tmp_path: Path) -> Callable[..., Path]:
    """Write a known_hosts file listing the given servers' keys."""

    def write(*servers: SshServer) -> Path:
        path = tmp_path / "known_hosts"
        path.write_text("".join(server.known_hosts_line() for server in servers))
        return path

    return write


@dataclass
class VersionServer:
    address: str
    port: int
    payload: dict[str, str]
    callers: list[set[int]] = field(default_factory=list)  # per request: PIDs owning the client socket


@contextmanager
def serve_version(address: str) -> Iterator[VersionServer]:
    """A tiny HTTP server on `address` answering GET /version and /health, like the app."""
    payload = {"version": "1.4.2", "fingerprint": "sha256:abc", "git_sha": "3f2c", "built_at": "2026-11-22T02:10:00Z"}
    callers: list[set[int]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            callers.append(tcp_socket_owners(*self.client_address))
            answers = {"/version": json.dumps(payload).encode(), "/health": b'{"status": "ok"}'}
            status, body = (200, answers[self.path]) if self.path in answers else (404, b"not found")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((address, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield VersionServer(address, int(server.server_address[1]), payload, callers)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def version_server() -> Iterator[VersionServer]:
    with serve_version(INSTANCE_ADDRESS) as server:
        yield server
