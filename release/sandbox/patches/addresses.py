"""Loopback addresses for sandbox instances: 127.100.x.y.

Every instance gets one as its PrivateIpAddress, so whatever reaches "the instance's private IP"
(Packer's ssh_interface = "private_ip", health checks, the local ALB) reaches a real loopback
address on this machine. 127.0.0.1 is never handed out, and addresses are not reused while the
server runs, so a stale address never points at a newer instance.

Several sandboxes (and hand-made test instances, which use 127.100.0.x) may share one machine:
each server starts in its own /24 (chosen from its port) and skips any address where something
already listens on the ports instances serve (SSH 22, HTTP 80).
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable

SERVICE_PORTS = (22, 80)


def taken(ip: str) -> bool:
    """Does anything listen on `ip` at a port an instance would use?"""
    for port in SERVICE_PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((ip, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
                raise
    return False


class LoopbackAddresses:
    PREFIX = "127.100"
    HOSTS_PER_BLOCK = 254  # .1 … .254 of each /24

    def __init__(self, first_block: int = 1, in_use: Callable[[str], bool] = taken) -> None:
        if not 1 <= first_block <= 255:
            raise ValueError("first_block must be 1-255 (127.100.0.x is left to hand-made instances)")
        self._lock = threading.Lock()
        self._first_block = first_block
        self._next = 0
        self._in_use = in_use

    @classmethod
    def for_port(cls, port: int) -> LoopbackAddresses:
        return cls(first_block=1 + port % 255)

    def allocate(self) -> str:
        with self._lock:
            for _ in range(255 * self.HOSTS_PER_BLOCK):
                block, host = divmod(self._next, self.HOSTS_PER_BLOCK)
                self._next += 1
                third = (self._first_block - 1 + block) % 255 + 1
                address = f"{self.PREFIX}.{third}.{host + 1}"
                if not self._in_use(address):
                    return address
        raise RuntimeError("the sandbox ran out of free 127.100.x.y addresses")
