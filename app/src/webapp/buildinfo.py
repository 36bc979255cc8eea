"""The build-info file: what was baked into this image.

The bake writes it (JSON, one object) into the image; `/version` serves it. It is never read
from the repository, so an instance reports what it is, not what the code checkout says:

    {"version": "1.4.2", "git_sha": "3f2c…", "fingerprint": "sha256:…",
     "built_at": "2026-11-22T02:10:00Z"}

All four keys are required non-empty strings and `built_at` is ISO 8601 with a timezone;
other keys are ignored.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

FIELDS = ("version", "git_sha", "fingerprint", "built_at")


class BuildInfoError(Exception):
    """The file is missing or malformed; str() says which, naming the path."""


def read_build_info(path: Path) -> dict[str, str]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuildInfoError(f"build info {path} not found") from None
    except OSError as error:
        raise BuildInfoError(f"build info {path} unreadable: {error.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BuildInfoError(f"build info {path} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise BuildInfoError(f"build info {path} must hold a JSON object")
    problems = [key for key in FIELDS if not isinstance(document.get(key), str) or not document[key].strip()]
    if problems:
        raise BuildInfoError(f"build info {path} lacks {', '.join(problems)} (non-empty strings)")
    try:
        built_at = datetime.fromisoformat(document["built_at"])
    except ValueError:
        raise BuildInfoError(f"build info {path}: built_at is not an ISO 8601 time") from None
    if built_at.tzinfo is None:
        raise BuildInfoError(f"build info {path}: built_at has no timezone")
    return {key: document[key] for key in FIELDS}
