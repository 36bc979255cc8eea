"""The web app Kiln bakes into its images: Flask on gunicorn behind nginx, PostgreSQL behind it."""

from __future__ import annotations

import os
from collections.abc import Mapping

from flask import Flask
from werkzeug.exceptions import HTTPException

from webapp.database import Database
from webapp.settings import Settings
from webapp.views import STATE_KEY, AppState, blueprint

__all__ = ["create_app"]

MAX_BODY_BYTES = 64 * 1024


def create_app(environ: Mapping[str, str] | None = None) -> Flask:
    """Build the app from `environ` (default: the process environment)."""
    settings = Settings.from_environ(os.environ if environ is None else environ)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    database = Database(settings.database_url) if settings.database_url else None
    app.extensions[STATE_KEY] = AppState(settings, database)
    app.register_blueprint(blueprint)
    app.register_error_handler(HTTPException, _json_error)
    return app


def _json_error(error: HTTPException) -> tuple[dict[str, str], int]:
    """Errors as JSON like every other answer, not Werkzeug's HTML pages."""
    return {"error": error.description or error.name}, error.code or 500
