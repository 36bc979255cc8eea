"""GET /health: 200 only when configured and the database answers; 503 with the reason otherwise."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
from flask import Flask
from webapp_kit import JWT_SECRET

from release.sandbox.postgres import PostgresServer
from release.sandbox.server_process import free_port


def test_ok_when_configured_and_database_answers(app: Flask) -> None:
    response = app.test_client().get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_unavailable_when_nothing_is_configured(make_app: Callable[..., Flask]) -> None:
    response = make_app().test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "unavailable",
        "reason": "JWT_SECRET not set; DATABASE_URL not set",
    }


def test_unavailable_without_jwt_secret(make_app: Callable[..., Flask], database_url: str) -> None:
    response = make_app(DATABASE_URL=database_url, JWT_SECRET="  ").test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json()["reason"] == "JWT_SECRET not set"


def test_unavailable_with_a_short_jwt_secret(make_app: Callable[..., Flask], database_url: str) -> None:
    response = make_app(DATABASE_URL=database_url, JWT_SECRET="short").test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json()["reason"] == "JWT_SECRET shorter than 32 bytes"


def test_unavailable_when_nothing_listens_on_the_database_port(make_app: Callable[..., Flask]) -> None:
    url = f"postgresql://web:pw@127.0.0.1:{free_port()}/web"
    response = make_app(DATABASE_URL=url, JWT_SECRET=JWT_SECRET).test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "reason": "database: connection refused"}


def test_follows_the_database_down_and_up(app: Flask, postgres: PostgresServer) -> None:
    client = app.test_client()
    assert client.get("/health").status_code == 200
    postgres.stop()
    try:
        response = client.get("/health")
        assert response.status_code == 503
        assert response.get_json()["reason"] == "database: connection refused"
    finally:
        postgres.start()
    assert client.get("/health").status_code == 200


def test_unavailable_with_a_wrong_password(
    make_app: Callable[..., Flask], postgres: PostgresServer, database_url: str
) -> None:
    user = database_url.split("//")[1].split(":")[0]
    url = postgres.url(user, user, "not-the-password")
    response = make_app(DATABASE_URL=url, JWT_SECRET=JWT_SECRET).test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json()["reason"] == f'database: password authentication failed for user "{user}"'


def test_gives_up_after_the_connect_timeout(make_app: Callable[..., Flask]) -> None:
    """A server that accepts TCP but never speaks must not hang the health check."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"postgresql://web:pw@127.0.0.1:{silent.getsockname()[1]}/web"
        client = make_app(DATABASE_URL=url, JWT_SECRET=JWT_SECRET).test_client()
        started = time.monotonic()
        response = client.get("/health")
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.get_json()["reason"] == "database: connection timeout expired"
    assert 1.5 <= elapsed < 5


@pytest.mark.parametrize(
    "url", ["nonsense", "mysql://web:s3cret@127.0.0.1/web", "postgresql://web:s3cr%t@127.0.0.1/web"]
)
def test_unavailable_with_a_malformed_database_url_without_quoting_it(make_app: Callable[..., Flask], url: str) -> None:
    response = make_app(DATABASE_URL=url, JWT_SECRET=JWT_SECRET).test_client().get("/health")
    assert response.status_code == 503
    assert response.get_json()["reason"] == (
        "database: DATABASE_URL is malformed (expected postgresql://user:password@host:port/database)"
    )
