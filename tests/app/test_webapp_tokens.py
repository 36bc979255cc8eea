"""The HS256 tokens, checked with explicit times (no sleeping)."""

from __future__ import annotations

import base64
import json

import pytest
from webapp import tokens

SECRET = "s" * 32
NOW = 1_800_000_000.0


def test_round_trip_before_expiry() -> None:
    token = tokens.issue(SECRET, "alice", now=NOW, ttl_s=60)
    claims = tokens.verify(token, SECRET, now=NOW + 59)
    assert claims == {"sub": "alice", "iat": int(NOW), "exp": int(NOW) + 60}


def test_header_is_standard_hs256() -> None:
    header = tokens.issue(SECRET, "alice", now=NOW).split(".")[0]
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "HS256", "typ": "JWT"}


def test_expired_at_exp() -> None:
    token = tokens.issue(SECRET, "alice", now=NOW, ttl_s=60)
    with pytest.raises(tokens.InvalidToken, match="token expired"):
        tokens.verify(token, SECRET, now=NOW + 60)


def test_wrong_secret() -> None:
    token = tokens.issue(SECRET, "alice", now=NOW)
    with pytest.raises(tokens.InvalidToken, match="bad signature"):
        tokens.verify(token, "t" * 32, now=NOW)


def test_tampered_claims() -> None:
    header, _, signature = tokens.issue(SECRET, "alice", now=NOW).split(".")
    forged = base64.urlsafe_b64encode(b'{"sub":"admin","exp":9999999999}').rstrip(b"=").decode()
    with pytest.raises(tokens.InvalidToken, match="bad signature"):
        tokens.verify(f"{header}.{forged}.{signature}", SECRET, now=NOW)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!.??.**", "e30.e30.e30"])
def test_malformed(token: str) -> None:
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(token, SECRET, now=NOW)


def test_token_without_expiry_is_refused() -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"HS256"}').rstrip(b"=").decode()
    claims = base64.urlsafe_b64encode(b'{"sub":"x"}').rstrip(b"=").decode()
    signature = tokens._b64encode(tokens._sign(SECRET, f"{header}.{claims}"))
    with pytest.raises(tokens.InvalidToken, match="token has no expiry"):
        tokens.verify(f"{header}.{claims}.{signature}", SECRET, now=NOW)
