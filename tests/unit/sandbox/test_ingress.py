"""The sandbox's security groups for SSH: EC2's ingress rules as a verdict (pure), the admin route
instances' sshd asks, and how the gate and the data plane find a connection's two ends."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import pytest

from release.sandbox.admin import AdminApi
from release.sandbox.dataplane import peers, ssh_gate
from release.sandbox.engines.ingress import Permission, Source, admits
from release.sandbox.patches.targets import AdminHealthPolicy

BASTION_SG, APP_SG, OTHER_SG = "sg-0bastion", "sg-0app", "sg-0other"
APP_GROUPS = {APP_SG: [Permission("tcp", 80, 80, group_id="sg-0alb"), Permission("tcp", 22, 22, group_id=BASTION_SG)]}
HOST = Source("127.0.0.1")
BASTION = Source("127.100.3.6", "i-0bastion", (BASTION_SG,))


@pytest.mark.parametrize(("groups", "source", "allowed"), [
    (APP_GROUPS, BASTION, True),  # the seed architecture: SSH to the app only from the bastion
    (APP_GROUPS, HOST, False),
    (APP_GROUPS, Source("127.100.3.9", "i-0app", (APP_SG,)), False),  # a fleet neighbour is not the bastion
    ({BASTION_SG: [Permission("tcp", 22, 22, cidr="0.0.0.0/0")]}, HOST, True),  # the bastion: from anywhere
    ({"sg-0packer": [Permission("tcp", 22, 22, cidr="0.0.0.0/0")]}, HOST, True),  # Packer's temporary group
    ({APP_SG: [Permission("tcp", 22, 22, cidr="10.40.0.0/16")]}, HOST, False),  # the VPC's range is not here
    ({APP_SG: [Permission("tcp", 22, 22, cidr="127.100.3.6/32")]}, BASTION, True),  # the bastion's address
    ({APP_SG: [Permission("tcp", 1024, 65535, cidr="0.0.0.0/0")]}, HOST, False),  # another port range
    ({APP_SG: [Permission("udp", 22, 22, cidr="0.0.0.0/0")]}, HOST, False),  # another protocol
    ({APP_SG: [Permission("-1", group_id=APP_SG)]}, Source("127.100.3.9", "i-0app", (APP_SG,)), True),  # all traffic
    ({APP_SG: [Permission("-1", group_id=APP_SG)]}, HOST, False),  # a default group: only its own members
    ({APP_SG: [Permission("tcp", 22, 22, cidr="::/0")]}, HOST, False),  # IPv6 only
    ({APP_SG: [], OTHER_SG: [Permission("tcp", 22, 22, group_id=BASTION_SG)]}, BASTION, True),  # any group will do
    ({APP_SG: []}, BASTION, False),  # a group with no rules admits nothing
    ({}, HOST, True),  # no group at all (moto, when a request names none): not restricted
])
def test_ec2s_rules_decide(groups: dict[str, list[Permission]], source: Source, allowed: bool) -> None:
    assert admits(groups, source).allowed is allowed


def test_a_refusal_names_the_groups_the_source_and_what_is_open() -> None:
    labels = {APP_SG: "sg-0app (web-app)", BASTION_SG: "sg-0bastion (web-bastion)"}
    verdict = admits(APP_GROUPS, HOST, labels=labels)
    assert verdict.reason == (
        "the instance's security groups (sg-0app (web-app)) do not admit tcp 22 from this machine (127.0.0.1, "
        "outside every instance): they admit it only from sg-0bastion (web-bastion)"
    )
    assert "none of them opens tcp 22" in admits({APP_SG: []}, HOST).reason
    admitted = admits(APP_GROUPS, BASTION, labels=labels)
    assert admitted.reason == "sg-0app (web-app) admits tcp 22 from sg-0bastion (web-bastion)"


def admin(ssh_ingress: object = None) -> AdminApi:
    def verdict(instance_id: str, client: tuple[str, int], server: tuple[str, int]) -> dict[str, object]:
        return {"allowed": False, "source": f"{client[0]}:{client[1]}", "reason": f"{instance_id} at {server}"}

    return AdminApi(health=dict, policy=AdminHealthPolicy(lambda instance_id: None), ssh_ingress=ssh_ingress or verdict)


def test_the_admin_route_passes_the_connection_on() -> None:
    body = {"instance_id": "i-0123456789abcdef0", "client": "127.0.0.1:40522", "server": "127.100.1.5:22"}
    status, answer = admin().handle("POST", "/_kiln/ssh-ingress", json.dumps(body).encode())
    assert status == 200
    assert answer == {"allowed": False, "source": "127.0.0.1:40522",
                      "reason": "i-0123456789abcdef0 at ('127.100.1.5', 22)"}


@pytest.mark.parametrize("body", [
    b"not json",
    b"[]",
    json.dumps({"instance_id": "i-0123456789abcdef0", "client": "127.0.0.1", "server": "127.100.1.5:22"}).encode(),
    json.dumps({"instance_id": "i-0123456789abcdef0", "client": "127.0.0.1:0", "server": "127.100.1.5:22"}).encode(),
    json.dumps({"instance_id": "vol-1", "client": "127.0.0.1:1", "server": "127.100.1.5:22"}).encode(),
])
def test_the_admin_route_refuses_what_it_cannot_read(body: bytes) -> None:
    status, answer = admin().handle("POST", "/_kiln/ssh-ingress", body)
    assert status == 400 and "error" in answer


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP connection on loopback: (the client's socket, the server's accepted one)."""
    with socket.socket() as listener:
        listener.bind(("127.100.250.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        with client, accepted:
            yield client, accepted


def test_the_client_socket_is_found_from_the_servers_view(connection: tuple[socket.socket, socket.socket]) -> None:
    client, accepted = connection
    peer, own = accepted.getpeername(), accepted.getsockname()
    assert peer[0] == "127.0.0.1"  # whoever connects: this is why addresses cannot tell instances apart
    assert peers.socket_inode(peer, own) == os.fstat(client.fileno()).st_ino
    assert peers.socket_inode(own, peer) == os.fstat(accepted.fileno()).st_ino  # the other end, asked the other way
    assert peers.proc_address("127.0.0.1", 22, six=False) == "0100007F:0016"
    assert peers.proc_address("127.0.0.1", 22, six=True) == "0000000000000000FFFF00000100007F:0016"


def test_the_gate_reads_its_sshds_connection(connection: tuple[socket.socket, socket.socket]) -> None:
    client, accepted = connection
    found = ssh_gate.connection(os.getpid())  # this process holds both ends; either is one connection
    assert found in ((accepted.getpeername(), accepted.getsockname()), (client.getpeername(), client.getsockname()))
    assert ssh_gate.decode("0100007F:0016") == ("127.0.0.1", 22)
    assert ssh_gate.decode("0000000000000000FFFF00000100007F:0016") == ("127.0.0.1", 22)
