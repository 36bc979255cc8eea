"""The routes. Answers are JSON; 503 answers say why as {"status": "unavailable", "reason": …}."""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, current_app, request

from webapp import tokens
from webapp.buildinfo import BuildInfoError, read_build_info
from webapp.database import Database, DatabaseUnavailable, DuplicateEmail
from webapp.primes import MAX_NUMBER, is_prime
from webapp.settings import Settings

STATE_KEY = "webapp"
MAX_NAME_LENGTH = 100
MAX_EMAIL_LENGTH = 254
# Deliberately loose: one @, no spaces, a dot in the domain. Real validation is a sent email.
EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

Response = tuple[dict[str, Any], int] | tuple[dict[str, Any], int, dict[str, str]]

blueprint = Blueprint("webapp", __name__)


@dataclass(frozen=True)
class AppState:
    settings: Settings
    database: Database | None  # None when DATABASE_URL is not set


def _state() -> AppState:
    state: AppState = current_app.extensions[STATE_KEY]
    return state


def _unavailable(reason: str) -> Response:
    return {"status": "unavailable", "reason": reason}, 503


def _error(status: int, message: str) -> Response:
    return {"error": message}, status


@blueprint.get("/")
def index() -> Response:
    """Which instance answered: refresh behind the load balancer to watch it change."""
    state = _state()
    try:
        version: str | None = read_build_info(state.settings.build_info_path)["version"]
    except BuildInfoError:
        version = None
    body = {"hostname": socket.gethostname(), "instance_id": state.settings.instance_id, "version": version}
    return body, 200


@blueprint.get("/health")
def health() -> Response:
    """200 only when configured and the database answers SELECT 1; the load balancer's check."""
    state = _state()
    problems = state.settings.problems()
    if problems or state.database is None:
        return _unavailable("; ".join(problems))
    try:
        state.database.ping()
    except DatabaseUnavailable as error:
        return _unavailable(f"database: {error}")
    return {"status": "ok"}, 200


@blueprint.get("/version")
def version() -> Response:
    # Read on every request: the file is tiny, and the answer can never be staler than the disk
    # (a cache keyed on mtime would save microseconds and add a way to be wrong).
    try:
        return read_build_info(_state().settings.build_info_path), 200
    except BuildInfoError as error:
        return _unavailable(str(error))


@blueprint.get("/load")
def load() -> Response:
    raw = request.args.get("number")
    if raw is None:
        return _error(400, "number is required: /load?number=N")
    # At most 20 digits before int(): a huge string must not cost time to parse.
    if not re.fullmatch(r"[0-9]{1,20}", raw.strip()):
        return _error(400, f"number must be a whole number from 0 to {MAX_NUMBER}, got {raw[:40]!r}")
    number = int(raw)
    if number > MAX_NUMBER:
        return _error(400, f"number must be at most {MAX_NUMBER} (about a second of CPU), got {number}")
    return {"number": number, "prime": is_prime(number)}, 200


@blueprint.post("/session")
def session() -> Response:
    """A short-lived token for POST /users. Optional body: {"subject": "<who>"}."""
    state = _state()
    problem = state.settings.jwt_problem()
    if problem is not None or state.settings.jwt_secret is None:
        return _unavailable(problem or "JWT_SECRET not set")
    body = request.get_json(silent=True) if request.content_length else {}
    if not isinstance(body, dict):
        return _error(400, 'body must be a JSON object such as {"subject": "alice"}')
    subject = body.get("subject", "anonymous")
    if not isinstance(subject, str) or not 1 <= len(subject.strip()) <= MAX_NAME_LENGTH:
        return _error(400, f"subject must be a string of 1 to {MAX_NAME_LENGTH} characters")
    token = tokens.issue(state.settings.jwt_secret, subject.strip(), now=time.time())
    return {"token": token, "token_type": "Bearer", "expires_in": tokens.DEFAULT_TTL_S}, 200


@blueprint.get("/users")
def list_users() -> Response:
    database = _state().database
    if database is None:
        return _unavailable("DATABASE_URL not set")
    try:
        return {"users": database.list_users()}, 200
    except DatabaseUnavailable as error:
        return _unavailable(f"database: {error}")


@blueprint.post("/users")
def create_user() -> Response:
    state = _state()
    problem = state.settings.jwt_problem()
    if problem is not None or state.settings.jwt_secret is None:
        return _unavailable(problem or "JWT_SECRET not set")
    auth_failure = _check_bearer(state.settings.jwt_secret)
    if auth_failure is not None:
        return auth_failure
    try:
        name, email = _parse_user(request.get_json(silent=True))
    except ValueError as error:
        return _error(400, str(error))
    if state.database is None:
        return _unavailable("DATABASE_URL not set")
    try:
        return state.database.create_user(name, email), 201
    except DuplicateEmail:
        return _error(409, f"a user with email {email} already exists")
    except DatabaseUnavailable as error:
        return _unavailable(f"database: {error}")


def _check_bearer(secret: str) -> Response | None:
    """None when the request carries a valid `Authorization: Bearer <token>`; a 401 otherwise."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return (
            {"error": "POST /users needs Authorization: Bearer <token>; get one from POST /session"},
            401,
            {"WWW-Authenticate": "Bearer"},
        )
    try:
        tokens.verify(token.strip(), secret, now=time.time())
    except tokens.InvalidToken as error:
        return (
            {"error": f"invalid token: {error}"},
            401,
            {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{error}"'},
        )
    return None


def _parse_user(body: object) -> tuple[str, str]:
    """(name, email) from the request body, or ValueError saying what is wrong."""
    if not isinstance(body, dict):
        raise ValueError('body must be a JSON object: {"name": "…", "email": "…"}')
    unknown = sorted(set(body) - {"name", "email"})
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}; only name and email are accepted")
    name, email = body.get("name"), body.get("email")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= MAX_NAME_LENGTH:
        raise ValueError(f"name must be a string of 1 to {MAX_NAME_LENGTH} characters")
    if not isinstance(email, str) or len(email.strip()) > MAX_EMAIL_LENGTH:
        raise ValueError(f"email must be a string of at most {MAX_EMAIL_LENGTH} characters")
    if not EMAIL_PATTERN.fullmatch(email.strip()):
        raise ValueError(f"email {email.strip()!r} is not an email address")
    return name.strip(), email.strip()
