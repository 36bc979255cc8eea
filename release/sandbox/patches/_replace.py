"""The one way the patches change moto: replace a class attribute, keeping the original."""

from __future__ import annotations

from typing import Any


def replace(owner: Any, name: str, value: Any) -> Any:
    """Set `owner.name = value` and return what was there before."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    return original
