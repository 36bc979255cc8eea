"""Configuration, from environment variables only.

At boot the image writes them into a root-only env file that systemd hands to gunicorn; the
image itself holds no secret.

    DATABASE_URL        libpq URL of the PostgreSQL database (secret)
    JWT_SECRET          HS256 key that signs session tokens, at least 32 bytes (secret)
    WEBAPP_BUILD_INFO   path of the build-info JSON the bake wrote (default below)
    WEBAPP_INSTANCE_ID  the EC2 instance id, shown by `GET /` (optional)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BUILD_INFO = Path("/etc/webapp/build-info.json")
# RFC 7518 section 3.2: an HS256 key must be at least as long as the hash output (256 bits).
MIN_JWT_SECRET_BYTES = 32


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    jwt_secret: str | None
    build_info_path: Path
    instance_id: str | None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        def value(name: str) -> str | None:
            # An empty value (e.g. `JWT_SECRET=` in the env file) counts as not set.
            return environ.get(name, "").strip() or None

        return cls(
            database_url=value("DATABASE_URL"),
            jwt_secret=value("JWT_SECRET"),
            build_info_path=Path(value("WEBAPP_BUILD_INFO") or DEFAULT_BUILD_INFO),
            instance_id=value("WEBAPP_INSTANCE_ID"),
        )

    def jwt_problem(self) -> str | None:
        if self.jwt_secret is None:
            return "JWT_SECRET not set"
        if len(self.jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
            return f"JWT_SECRET shorter than {MIN_JWT_SECRET_BYTES} bytes"
        return None

    def problems(self) -> list[str]:
        """Why the app is not configured; empty when it is."""
        database_problem = "DATABASE_URL not set" if self.database_url is None else None
        return [problem for problem in (self.jwt_problem(), database_problem) if problem is not None]
