"""The bastion channel under an instance's session: a close never overtakes a send under way."""

from __future__ import annotations

import threading

from release.ssh import JumpChannel


class SlowChannel:
    """A channel whose send is held between its open check and the wire, as paramiko's can be."""

    def __init__(self) -> None:
        self.wire: list[str] = []
        self.sending = threading.Event()
        self.release = threading.Event()
        self.timeout: float | None = None

    def send(self, data: bytes) -> int:
        self.sending.set()
        assert self.release.wait(5)
        self.wire.append("data")
        return len(data)

    def close(self) -> None:
        self.wire.append("close")

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout


def test_a_close_waits_for_the_send_under_way() -> None:
    channel = SlowChannel()
    jump = JumpChannel(channel)
    sender = threading.Thread(target=jump.send, args=(b"the last packet",))
    sender.start()
    assert channel.sending.wait(5)
    closer = threading.Thread(target=jump.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive() and channel.wire == []  # the close waits its turn
    channel.release.set()
    sender.join(5)
    closer.join(5)
    assert channel.wire == ["data", "close"]  # OpenSSH drops the connection on data after a close


def test_everything_else_is_the_channels() -> None:
    channel = SlowChannel()
    JumpChannel(channel).settimeout(0.1)
    assert channel.timeout == 0.1
