"""One HTTP health-check request, as an ELB target group would send it."""

from __future__ import annotations

import http.client
import ipaddress

from release.errors import SandboxError


def probe(ip: str, port: int, path: str, timeout: float) -> int | None:
    """GET http://ip:port/path; the status code, or None when nothing answered in time.

    Only loopback addresses are ever dialled: sandbox instances live on 127.0.0.0/8.
    """
    if not ipaddress.ip_address(ip).is_loopback:
        raise SandboxError(f"refusing to probe {ip}: sandbox targets are loopback addresses only")
    connection = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        connection.request("GET", path if path.startswith("/") else f"/{path}",
                           headers={"User-Agent": "ELB-HealthChecker/2.0"})  # fmt: skip
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
