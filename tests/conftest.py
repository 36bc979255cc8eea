"""Tests never reach AWS, whatever the machine they run on has configured.

Loaded before any test module: the AWS credential and config variables are cleared (so boto3
finds no keys, profiles or SSO cache, and the instance metadata service is never asked), and any
connection from the test process to an address outside loopback fails at once with an error
naming it. Subprocesses inherit the cleared environment; tests that run `inv` name the sandbox
environment explicitly (`--env sandbox`), so nothing falls back to `default_environment`.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

for _name in [n for n in os.environ if n.startswith("AWS_")]:
    del os.environ[_name]
os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = "/nonexistent/kiln-tests/aws"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # botocore's last resort is 169.254.169.254


class OffLoopback(OSError):
    """A test tried to connect outside 127.0.0.0/8 and ::1."""


def _check(address: Any) -> None:
    if not isinstance(address, tuple):  # AF_UNIX paths and the like
        return
    host = str(address[0])
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None  # a name: connect() resolves it; so check what it resolves to
        infos = socket.getaddrinfo(host, address[1], proto=socket.IPPROTO_TCP)
        if all(ipaddress.ip_address(str(info[4][0])).is_loopback for info in infos):
            return
    if ip is not None and ip.is_loopback:
        return
    raise OffLoopback(f"tests connect only to loopback; refused {host}:{address[1]}")


_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check(address)
    _connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check(address)
    return _connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
