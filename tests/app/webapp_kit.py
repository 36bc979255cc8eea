"""What the web app's tests share besides fixtures (a module name no other test dir uses, so
`pytest tests/sandbox tests/app` imports the right one, whichever conftest came first)."""

from __future__ import annotations

import socket
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[2] / "app"
JWT_SECRET = "test-secret-" + "x" * 32


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
