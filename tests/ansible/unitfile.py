"""A reader for the systemd unit files the roles install, enough for the tests."""

from __future__ import annotations


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> directive -> values, in file order (repeatable directives keep every value)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None:
            raise ValueError(f"directive outside a section: {line}")
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"not a Key=value line: {line}")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections
