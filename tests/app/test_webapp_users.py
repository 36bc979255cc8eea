"""GET/POST /users on a real PostgreSQL, and the token POST /users requires."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from webapp import tokens
from webapp.database import Database
from webapp_kit import JWT_SECRET

from release.sandbox.postgres import PostgresServer


def bearer(client: FlaskClient, subject: str = "tester") -> dict[str, str]:
    response = client.post("/session", json={"subject": subject})
    assert response.status_code == 200
    return {"Authorization": f"Bearer {response.get_json()['token']}"}


def test_users_round_trip(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/users").get_json() == {"users": []}

    created = client.post("/users", json={"name": " Ada Lovelace ", "email": "ada@example.org"}, headers=bearer(client))
    assert created.status_code == 201
    row = created.get_json()
    assert row["name"] == "Ada Lovelace"
    assert row["email"] == "ada@example.org"
    assert isinstance(row["id"], int)
    assert row["created_at"].endswith("+00:00")

    client.post("/users", json={"name": "Grace", "email": "grace@example.org"}, headers=bearer(client))
    listed = client.get("/users").get_json()["users"]
    assert [user["email"] for user in listed] == ["ada@example.org", "grace@example.org"]
    assert listed[0] == row


def test_duplicate_email_is_a_conflict_whatever_its_case(app: Flask) -> None:
    client = app.test_client()
    headers = bearer(client)
    first = client.post("/users", json={"name": "Ada", "email": "ada@example.org"}, headers=headers)
    assert first.status_code == 201
    again = client.post("/users", json={"name": "Ada 2", "email": "ADA@example.org"}, headers=headers)
    assert again.status_code == 409
    assert again.get_json() == {"error": "a user with email ADA@example.org already exists"}
    assert len(client.get("/users").get_json()["users"]) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (["ada"], 'body must be a JSON object: {"name": "…", "email": "…"}'),
        ({"email": "ada@example.org"}, "name must be a string of 1 to 100 characters"),
        ({"name": "   ", "email": "ada@example.org"}, "name must be a string of 1 to 100 characters"),
        ({"name": "a" * 101, "email": "ada@example.org"}, "name must be a string of 1 to 100 characters"),
        ({"name": 7, "email": "ada@example.org"}, "name must be a string of 1 to 100 characters"),
        ({"name": "Ada"}, "email must be a string of at most 254 characters"),
        ({"name": "Ada", "email": "ada.example.org"}, "email 'ada.example.org' is not an email address"),
        ({"name": "Ada", "email": "ada@localhost"}, "email 'ada@localhost' is not an email address"),
        ({"name": "Ada", "email": "a@" + "b" * 250 + ".org"}, "email must be a string of at most 254 characters"),
        (
            {"name": "Ada", "email": "ada@example.org", "admin": True},
            "unknown field(s): admin; only name and email are accepted",
        ),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(app: Flask, body: Any, message: str) -> None:
    client = app.test_client()
    response = client.post("/users", json=body, headers=bearer(client))
    assert response.status_code == 400
    assert response.get_json() == {"error": message}


def test_a_body_that_is_not_json_is_refused(app: Flask) -> None:
    client = app.test_client()
    response = client.post("/users", data="name=Ada", headers=bearer(client))
    assert response.status_code == 400
    assert "JSON object" in response.get_json()["error"]


def test_post_users_needs_a_bearer_token(app: Flask) -> None:
    client = app.test_client()
    body = {"name": "Ada", "email": "ada@example.org"}
    for headers in ({}, {"Authorization": "Basic YWRhOnB3"}, {"Authorization": "Bearer "}):
        response = client.post("/users", json=body, headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "POST /session" in response.get_json()["error"]
    assert client.get("/users").get_json() == {"users": []}


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("not-a-token", "malformed token"),
        (tokens.issue("another-secret-" + "y" * 32, "mallory", now=time.time()), "bad signature"),
        (tokens.issue(JWT_SECRET, "late", now=time.time() - 3600), "token expired"),
        # alg "none" with an empty signature: must never be accepted.
        ("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5fQ.", "unsupported algorithm 'none'"),
    ],
)
def test_post_users_refuses_invalid_tokens(app: Flask, token: str, reason: str) -> None:
    response = app.test_client().post(
        "/users", json={"name": "Ada", "email": "ada@example.org"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    assert response.get_json() == {"error": f"invalid token: {reason}"}
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_session_issues_a_token_for_the_subject(app: Flask) -> None:
    response = app.test_client().post("/session", json={"subject": "alice"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == tokens.DEFAULT_TTL_S
    claims = tokens.verify(body["token"], JWT_SECRET, now=time.time())
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == tokens.DEFAULT_TTL_S


def test_session_without_a_body_is_anonymous(app: Flask) -> None:
    token = app.test_client().post("/session").get_json()["token"]
    assert tokens.verify(token, JWT_SECRET, now=time.time())["sub"] == "anonymous"


def test_session_and_post_users_unavailable_without_jwt_secret(
    make_app: Callable[..., Flask], database_url: str
) -> None:
    client = make_app(DATABASE_URL=database_url).test_client()
    assert client.post("/session").get_json() == {"status": "unavailable", "reason": "JWT_SECRET not set"}
    response = client.post("/users", json={"name": "Ada", "email": "ada@example.org"})
    assert response.status_code == 503
    assert client.get("/users").status_code == 200  # reading needs no token, so no secret


def test_users_unavailable_when_the_database_is_down(app: Flask, postgres: PostgresServer) -> None:
    client = app.test_client()
    headers = bearer(client)
    postgres.stop()
    try:
        listed = client.get("/users")
        created = client.post("/users", json={"name": "Ada", "email": "ada@example.org"}, headers=headers)
    finally:
        postgres.start()
    for response in (listed, created):
        assert response.status_code == 503
        assert response.get_json() == {"status": "unavailable", "reason": "database: connection refused"}


def test_users_unavailable_without_database_url(make_app: Callable[..., Flask]) -> None:
    response = make_app(JWT_SECRET=JWT_SECRET).test_client().get("/users")
    assert response.status_code == 503
    assert response.get_json()["reason"] == "DATABASE_URL not set"


def test_schema_creation_is_safe_when_workers_race(database_url: str) -> None:
    """Eight workers (separate Database objects, as in separate gunicorn processes) hit a fresh
    database at the same instant; every one of them must succeed."""
    workers = 8
    barrier = threading.Barrier(workers)
    failures: list[BaseException] = []

    def first_request() -> None:
        database = Database(database_url)
        barrier.wait()
        try:
            database.list_users()
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=first_request) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'users'").fetchone()
    assert row == (1,)
