"""sshd's AuthorizedKeysCommand in a sandbox instance whose SSH its security groups decide.

    AuthorizedKeysCommand <this file> %u %h      (the user logging in, and their home)

The launch copies this file into the instance (cloudinit.py) and sets `AuthorizedKeysFile none`,
so sshd knows a user's keys only from here. For every login it asks the sandbox's control plane
(the endpoint in the instance metadata) whether the instance's security groups admit the
connection's source, and prints the user's ~/.ssh/authorized_keys only if they do. A refusal, or a
control plane that does not answer, prints nothing: the login is refused ("Permission denied
(publickey)"), and the reason goes to syslog, which is the instance's console.

Which connection: OpenSSH 9.2 (Debian 12) has no token for it in AuthorizedKeysCommand, so the
gate looks at its parent, the sshd process that serves this one connection and runs the command:
of the sockets it holds, the established TCP one is the connection (its addresses are in
/proc/net/tcp, the host's table, since instances share the host's network).

Runs inside the instance with its python3 and the standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import sys
import syslog
import urllib.request
from pathlib import Path

METADATA = Path("/etc/kiln/instance-metadata.json")
TIMEOUT = 10.0
ESTABLISHED = "01"


def decode(field: str) -> tuple[str, int]:
    """ "0100007F:0016" (or its tcp6 form) -> ("127.0.0.1", 22)."""
    address, port = field.split(":")
    packed = b"".join(struct.pack("=I", int(address[i : i + 8], 16)) for i in range(0, len(address), 8))
    if len(packed) == 4:
        return socket.inet_ntoa(packed), int(port, 16)
    text = socket.inet_ntop(socket.AF_INET6, packed)
    return text.removeprefix("::ffff:") if "." in text else text, int(port, 16)


def connection(pid: int, proc: Path = Path("/proc")) -> tuple[tuple[str, int], tuple[str, int]]:
    """(client, server) of the established TCP connection process `pid` holds."""
    inodes = set()
    for fd in os.listdir(proc / str(pid) / "fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(proc / str(pid) / "fd" / fd)
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (proc / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == ESTABLISHED and fields[9] in inodes:
                    return decode(fields[2]), decode(fields[1])
    raise LookupError(f"process {pid} holds no established TCP connection")


def ask(endpoint: str, request: dict[str, str]) -> dict[str, object]:
    """POST /_kiln/ssh-ingress; never through a proxy (the control plane is on this machine)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    call = urllib.request.Request(f"{endpoint.rstrip('/')}/_kiln/ssh-ingress", data=json.dumps(request).encode(),
                                  headers={"Content-Type": "application/json"}, method="POST")
    with opener.open(call, timeout=TIMEOUT) as response:
        answer = json.loads(response.read())
    return answer if isinstance(answer, dict) else {}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} USER HOME", file=sys.stderr)
        return 2
    user, home = argv[1:]
    syslog.openlog("kiln-sandbox-sshd", 0, syslog.LOG_AUTH)
    try:
        client, server = connection(os.getppid())
        metadata = json.loads(METADATA.read_text())
        verdict = ask(str(metadata["aws_endpoint_url"]), {
            "instance_id": str(metadata["instance_id"]),
            "client": f"{client[0]}:{client[1]}",
            "server": f"{server[0]}:{server[1]}",
        })
    except (OSError, ValueError, KeyError, LookupError) as err:
        syslog.syslog(syslog.LOG_WARNING, f"SSH login as {user} refused: the sandbox did not say whether the "
                                          f"security groups admit it ({err})")
        return 0
    if verdict.get("allowed") is not True:
        syslog.syslog(syslog.LOG_WARNING, f"SSH login as {user} refused by security groups: {verdict.get('reason')}")
        return 0
    with contextlib.suppress(OSError):  # no keys: sshd refuses the login as it would without the file
        sys.stdout.write((Path(home) / ".ssh" / "authorized_keys").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
