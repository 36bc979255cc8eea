"""The loopback address pool instances get their private IPs from."""

from __future__ import annotations

from release.sandbox.patches.addresses import LoopbackAddresses


def test_loopback_addresses_skip_what_is_taken_and_never_give_out_127_0_0_1() -> None:
    busy = {"127.100.7.2"}
    pool = LoopbackAddresses(first_block=7, in_use=lambda ip: ip in busy)
    assert [pool.allocate() for _ in range(3)] == ["127.100.7.1", "127.100.7.3", "127.100.7.4"]
    last_block = LoopbackAddresses(first_block=255, in_use=lambda ip: False)
    addresses = [last_block.allocate() for _ in range(255)]
    assert addresses[253:] == ["127.100.255.254", "127.100.1.1"]  # wraps past 255, never to .0.x
    assert len(set(addresses)) == 255
