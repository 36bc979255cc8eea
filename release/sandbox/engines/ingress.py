"""Security groups for SSH in the sandbox: may this connection reach port 22 of this instance?

EC2 drops packets its security groups do not admit. Sandbox instances share the host's network and
every connection between them leaves from 127.0.0.1, so no packet filter could tell the bastion's
connection from anybody else's; the data plane finds which instance opened a connection instead
(dataplane/peers.py), and each instance's sshd asks the control plane, at every login, whether the
instance's security groups admit that source (docs/dataplane.md, "SSH and security groups").

This module is the verdict, pure: EC2's rules for ingress, as AWS documents them. A connection is
admitted when any rule of any of the instance's groups covers the protocol and port and names the
source — a CIDR block that contains the source's address, or a security group the source instance
is in. A process on the host, not in an instance, is "outside": its address is the connection's
(127.0.0.1), which 0.0.0.0/0 contains and a VPC's private CIDR does not.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Permission:
    """One ingress rule of a security group, as EC2 describes it (IpPermissions, one source each)."""

    protocol: str  # "tcp", "udp", "icmp", or "-1" (everything)
    from_port: int | None = None
    to_port: int | None = None
    cidr: str | None = None
    group_id: str | None = None

    def covers(self, protocol: str, port: int) -> bool:
        if self.protocol == "-1":
            return True
        if self.protocol != protocol or self.from_port is None or self.to_port is None:
            return False
        return self.from_port <= port <= self.to_port

    def names(self, source: Source) -> bool:
        if self.group_id is not None:
            return self.group_id in source.groups
        if self.cidr is None:
            return False
        try:
            return ipaddress.ip_address(source.address) in ipaddress.ip_network(self.cidr, strict=False)
        except ValueError:  # an IPv6 block and an IPv4 address, or a malformed value: no match
            return False

    def describe(self, labels: Mapping[str, str]) -> str:
        if self.group_id is not None:
            return labels.get(self.group_id, self.group_id)
        return self.cidr or "nothing"


@dataclass(frozen=True)
class Source:
    """Who opened the connection: an instance (its private address and groups) or the host."""

    address: str
    instance_id: str | None = None
    groups: tuple[str, ...] = ()

    def describe(self, labels: Mapping[str, str] | None = None) -> str:
        if self.instance_id is None:
            return f"this machine ({self.address}, outside every instance)"
        groups = ", ".join((labels or {}).get(g, g) for g in self.groups) or "no security group"
        return f"{self.instance_id} ({self.address}, in {groups})"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str


def admits(groups: Mapping[str, Sequence[Permission]], source: Source, *, protocol: str = "tcp",
           port: int = 22, labels: Mapping[str, str] | None = None) -> Verdict:
    """Do the instance's security groups (group id -> its ingress rules) admit `source` on port?
    `labels` name groups in the reason ("sg-0a1b… (web-app)").

    An instance in no security group at all (moto launches one so when a request names none, where
    EC2 would use the VPC's default group) is admitted from anywhere."""
    labels = labels or {}
    if not groups:
        return Verdict(True, "the instance is in no security group")
    opened = []
    for group_id, permissions in groups.items():
        for permission in permissions:
            if not permission.covers(protocol, port):
                continue
            if permission.names(source):
                return Verdict(True, f"{labels.get(group_id, group_id)} admits {protocol} {port} from "
                                     f"{permission.describe(labels)}")
            opened.append(permission.describe(labels))
    what = f"{protocol} {port}"
    names = ", ".join(labels.get(g, g) for g in groups)
    rules = f"they admit it only from {', '.join(opened)}" if opened else f"none of them opens {what}"
    return Verdict(False, f"the instance's security groups ({names}) do not admit {what} from "
                          f"{source.describe(labels)}: {rules}")
