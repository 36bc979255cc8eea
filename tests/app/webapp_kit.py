"""What the web app's tests share besides fixtures (a module name no other test dir uses, so
`pytest tests/sandbox tests/app` imports the right one, whichever conftest came first)."""

from __future__ import annotations

from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[2] / "app"
JWT_SECRET = "test-secret-" + "x" * 32
