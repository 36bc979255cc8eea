"""The error every engine raises when AWS would answer with one: its code, message and HTTP status
(the server puts it on the service's wire)."""

from __future__ import annotations


class ServiceError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
