"""Short-lived HS256 JSON Web Tokens (RFC 7519), with the standard library only.

Every instance of the fleet gets the same JWT_SECRET at boot, so a token issued by one instance
is accepted by any other behind the load balancer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

ALGORITHM = "HS256"
DEFAULT_TTL_S = 15 * 60


class InvalidToken(Exception):
    """The token is malformed, not signed with our key, or expired. str() says which."""


def issue(secret: str, subject: str, now: float, ttl_s: int = DEFAULT_TTL_S) -> str:
    header = {"alg": ALGORITHM, "typ": "JWT"}
    claims = {"sub": subject, "iat": int(now), "exp": int(now) + ttl_s}
    signing_input = _encode_json(header) + "." + _encode_json(claims)
    return signing_input + "." + _b64encode(_sign(secret, signing_input))


def verify(token: str, secret: str, now: float) -> dict[str, Any]:
    """The token's claims, if it is an unexpired HS256 token signed with `secret`."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("malformed token")
    header = _decode_json(parts[0])
    # Only HS256: never let the token choose "none" or another algorithm.
    if header.get("alg") != ALGORITHM:
        raise InvalidToken(f"unsupported algorithm {header.get('alg')!r}")
    signature = _b64decode(parts[2])
    if not hmac.compare_digest(signature, _sign(secret, parts[0] + "." + parts[1])):
        raise InvalidToken("bad signature")
    claims = _decode_json(parts[1])
    expires = claims.get("exp")
    if not isinstance(expires, int) or isinstance(expires, bool):
        raise InvalidToken("token has no expiry")
    if now >= expires:
        raise InvalidToken("token expired")
    return claims


def _sign(secret: str, signing_input: str) -> bytes:
    return hmac.new(secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()


def _encode_json(value: dict[str, Any]) -> str:
    return _b64encode(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


def _decode_json(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(segment))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidToken("malformed token") from None
    if not isinstance(value, dict):
        raise InvalidToken("malformed token")
    return value


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token") from None
