"""Loopback addresses for sandbox instances: 127.100.0.1 … 127.100.255.254.

Every instance gets one as its PrivateIpAddress, so whatever reaches "the instance's private IP"
(Packer's ssh_interface = "private_ip", health checks, the local ALB) reaches a real loopback
address on this machine. 127.0.0.1 is never handed out, and addresses are not reused while the
server runs, so a stale address never points at a newer instance.
"""

from __future__ import annotations

import threading


class LoopbackAddresses:
    FIRST_OCTETS = "127.100"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0

    def allocate(self) -> str:
        with self._lock:
            index = self._next
            self._next += 1
        high, low = divmod(index, 254)
        if high > 255:
            raise RuntimeError("the sandbox ran out of 127.100.x.y addresses (65,024 instances)")
        return f"{self.FIRST_OCTETS}.{high}.{low + 1}"
