"""Which instance opened a TCP connection on this machine.

Instances share the host's network namespace, and a connection to another loopback address leaves
from 127.0.0.1 whoever opens it, so the address says nothing. The kernel knows more: the client's
socket is a line of /proc/net/tcp (local and remote address, inode), and the process holding it has
that inode among its file descriptors; an instance's processes have the instance's root as their
root directory (/proc/<pid>/root). Read from the host, as root.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

PROC = Path("/proc")
ESTABLISHED = "01"


def proc_address(ip: str, port: int, *, six: bool) -> str:
    """An address as /proc/net/tcp (six=False) or /proc/net/tcp6 prints it: the address's 32-bit
    words as the machine stores them, in hex, then the port ("0100007F:0016" is 127.0.0.1:22)."""
    packed = socket.inet_pton(socket.AF_INET6, ip if ":" in ip else f"::ffff:{ip}") if six else socket.inet_aton(ip)
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{word:08X}" for word in words) + f":{port:04X}"


def socket_inode(local: tuple[str, int], remote: tuple[str, int], proc: Path = PROC) -> int | None:
    """The inode of the established TCP socket whose own end is `local` and whose peer is `remote`
    (the client's end of a connection, seen from the client); None when there is none."""
    for table, six in (("net/tcp", False), ("net/tcp6", True)):
        try:
            lines = (proc / table).read_text().splitlines()[1:]
        except OSError:
            continue
        try:
            wanted = (proc_address(*local, six=six), proc_address(*remote, six=six))
        except OSError:  # not an address of that family
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and (fields[1], fields[2]) == wanted and fields[3] == ESTABLISHED:
                return int(fields[9])
    return None


def holder_root(inode: int, under: Path, proc: Path = PROC) -> Path | None:
    """The root directory of a process that holds socket `inode`, among the processes whose root
    is below `under` (the data plane's instances); None when no such process holds it."""
    under = Path(os.path.abspath(under))
    link = f"socket:[{inode}]"
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            root = Path(os.readlink(proc / entry / "root"))
        except OSError:
            continue
        if under not in root.parents:
            continue
        try:
            descriptors = os.listdir(proc / entry / "fd")
        except OSError:
            continue
        for fd in descriptors:
            try:
                if os.readlink(proc / entry / "fd" / fd) == link:
                    return root
            except OSError:
                continue
    return None
