"""GET /version from the build-info file baked into the image; GET / for which instance answered."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

BUILD_INFO = {
    "version": "1.4.2",
    "git_sha": "3f2c9e1d0a4b5c6d7e8f90a1b2c3d4e5f6a7b8c9",
    "fingerprint": "sha256:9b1c0f",
    "built_at": "2026-11-22T02:10:00Z",
}


def test_version_serves_the_build_info(make_app: Callable[..., Flask], build_info_path: Path) -> None:
    build_info_path.write_text(json.dumps({**BUILD_INFO, "packer_build": "ignored"}))
    response = make_app().test_client().get("/version")
    assert response.status_code == 200
    assert response.get_json() == BUILD_INFO


def test_version_follows_the_file_on_disk(make_app: Callable[..., Flask], build_info_path: Path) -> None:
    client = make_app().test_client()
    build_info_path.write_text(json.dumps(BUILD_INFO))
    assert client.get("/version").get_json()["version"] == "1.4.2"
    build_info_path.write_text(json.dumps({**BUILD_INFO, "version": "1.4.3"}))
    assert client.get("/version").get_json()["version"] == "1.4.3"


def test_version_unavailable_without_the_file(make_app: Callable[..., Flask], build_info_path: Path) -> None:
    response = make_app().test_client().get("/version")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "reason": f"build info {build_info_path} not found"}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "is not valid JSON"),
        ('["1.4.2"]', "must hold a JSON object"),
        (json.dumps({**BUILD_INFO, "git_sha": ""}), "lacks git_sha (non-empty strings)"),
        (json.dumps({"version": "1.4.2"}), "lacks git_sha, fingerprint, built_at (non-empty strings)"),
        (json.dumps({**BUILD_INFO, "version": 142}), "lacks version (non-empty strings)"),
        (json.dumps({**BUILD_INFO, "built_at": "yesterday"}), "built_at is not an ISO 8601 time"),
        (json.dumps({**BUILD_INFO, "built_at": "2026-11-22T02:10:00"}), "built_at has no timezone"),
    ],
)
def test_version_unavailable_when_the_file_is_malformed(
    make_app: Callable[..., Flask], build_info_path: Path, content: str, reason: str
) -> None:
    build_info_path.write_text(content)
    response = make_app().test_client().get("/version")
    assert response.status_code == 503
    assert response.get_json()["status"] == "unavailable"
    assert str(build_info_path) in response.get_json()["reason"]
    assert reason in response.get_json()["reason"]


def test_index_names_the_instance(make_app: Callable[..., Flask], build_info_path: Path) -> None:
    build_info_path.write_text(json.dumps(BUILD_INFO))
    response = make_app(WEBAPP_INSTANCE_ID="i-0123456789abcdef0").test_client().get("/")
    assert response.status_code == 200
    assert response.get_json() == {
        "hostname": socket.gethostname(),
        "instance_id": "i-0123456789abcdef0",
        "version": "1.4.2",
    }


def test_index_still_answers_without_build_info(make_app: Callable[..., Flask]) -> None:
    body = make_app().test_client().get("/").get_json()
    assert body["instance_id"] is None
    assert body["version"] is None


def test_unknown_routes_answer_json(make_app: Callable[..., Flask]) -> None:
    response = make_app().test_client().get("/nope")
    assert response.status_code == 404
    assert "not found" in response.get_json()["error"]
