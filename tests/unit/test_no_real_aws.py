"""The session-wide guard in tests/conftest.py: no credentials, no connection off loopback."""

from __future__ import annotations

import os
import socket

import botocore.session
import pytest

from release.aws import credentials_configured


def test_no_aws_credentials_are_visible_to_tests() -> None:
    assert not [n for n in os.environ if n.startswith("AWS_") and ("KEY" in n or "TOKEN" in n or n == "AWS_PROFILE")]
    assert botocore.session.Session().get_credentials() is None
    assert not credentials_configured()


@pytest.mark.parametrize("address", [("10.1.2.3", 443), ("203.0.113.9", 80), ("2001:db8::1", 443)])
def test_connections_off_loopback_are_refused(address: tuple[str, int]) -> None:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock, pytest.raises(OSError, match="only to loopback"):
        sock.connect(address)


def test_loopback_still_connects() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=2):
            pass
