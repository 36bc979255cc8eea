"""What the bake relies on: the wheel, its console script, collectstatic, and gunicorn serving
webapp.wsgi:app against a real database."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from webapp.collectstatic import collect, main
from webapp_kit import APP_DIR, JWT_SECRET

from release.sandbox.server_process import free_port

STATIC_SOURCE = APP_DIR / "src" / "webapp" / "static"


def test_collectstatic_copies_every_static_file(tmp_path: Path) -> None:
    destination = tmp_path / "srv" / "static"
    written = collect(destination)
    assert sorted(path.name for path in written) == ["index.html", "style.css"]
    for path in written:
        assert path.read_bytes() == (STATIC_SOURCE / path.name).read_bytes()
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(destination.stat().st_mode) == 0o755
    assert 'href="/static/style.css"' in (destination / "index.html").read_text()


def test_collectstatic_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out == f"copied 2 static files to {tmp_path / 'out'}\n"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main([str(blocker / "out")]) == 1
    assert "cannot write to" in capsys.readouterr().err


def test_flask_serves_the_same_static_files(make_app: Callable[..., Flask]) -> None:
    response = make_app().test_client().get("/static/style.css")
    assert response.status_code == 200
    assert response.data == (STATIC_SOURCE / "style.css").read_bytes()
    response.close()


def test_the_wheel_holds_code_static_files_and_the_console_script(tmp_path: Path) -> None:
    # The bake's own command. Built from a copy so the source tree gets no build/ or *.egg-info
    # (which would change the bake's fingerprint of app/).
    source = tmp_path / "app"
    shutil.copytree(APP_DIR, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", source],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("kiln_webapp-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert {"webapp/wsgi.py", "webapp/static/index.html", "webapp/static/style.css"} <= names
    assert "webapp-collectstatic = webapp.collectstatic:main" in entry_points
    for requirement in ("flask<4,>=3.1", "gunicorn<28,>=23", "psycopg[binary]<4,>=3.3"):
        assert f"Requires-Dist: {requirement}" in metadata.replace("; extra", "")


@pytest.fixture
def gunicorn(database_url: str, tmp_path: Path) -> Iterator[str]:
    """gunicorn serving webapp.wsgi:app on a loopback port, as the image's unit runs it."""
    port = free_port()
    build_info = tmp_path / "build-info.json"
    build_info.write_text(
        json.dumps({"version": "9.9.9", "git_sha": "abc", "fingerprint": "f", "built_at": "2026-11-22T00:00:00Z"})
    )
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(APP_DIR / "src"),
        "DATABASE_URL": database_url,
        "JWT_SECRET": JWT_SECRET,
        "WEBAPP_BUILD_INFO": str(build_info),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2", "webapp.wsgi:app"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr.decode()[-2000:]


def get_json(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_gunicorn_serves_the_wsgi_app(gunicorn: str) -> None:
    deadline = time.monotonic() + 60
    while True:  # gunicorn needs a moment to bind and boot its workers (longer on a busy machine)
        try:
            status, body = get_json(gunicorn + "/health")
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):  # bound, its worker still booting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert (status, body) == (200, {"status": "ok"})
    assert get_json(gunicorn + "/version")[1]["version"] == "9.9.9"
    assert get_json(gunicorn + "/users") == (200, {"users": []})
