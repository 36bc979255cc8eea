"""`inv rollback` of an unfinished release right as its dead driver's lease lapses."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from release.commands import deploy
from release.model import Lock
from release.record import ReleaseRecord
from release.ui import UI

START = datetime(2026, 11, 30, 12, 50, 55, tzinfo=UTC)


class SteppingClock:
    """Each reading 0.4 s after the one before, as a busy machine's would be."""

    def __init__(self) -> None:
        self.at = START

    def now(self) -> datetime:
        read, self.at = self.at, self.at + timedelta(seconds=0.4)
        return read

    def sleep(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


class TookOver(Exception):
    """Raised where the driver would be built: the lock check let the rollback through."""


def test_a_lease_that_lapses_while_rollback_checks_it_is_taken_over_not_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record = ReleaseRecord("r-1", "sandbox", "release", "1.1.0", "ami-110", "f110", "ana", START, phase="template")
    lock = Lock("dead-driver", START - timedelta(seconds=5), START + timedelta(seconds=0.5), who="root@vm pid 1")
    ledger = SimpleNamespace(lock=lambda env: lock, in_progress=lambda env: record)
    out = io.StringIO()
    ctx: Any = SimpleNamespace(ui=UI(stdout=out, stderr=out), clock=SteppingClock(), ledger=ledger,
                               env=SimpleNamespace(name="sandbox"))

    def releaser(*args: object) -> Any:
        raise TookOver

    monkeypatch.setattr(deploy, "_releaser", releaser)
    # The lease is live at the first reading and lapsed by the last: never "is being driven by".
    with pytest.raises(TookOver):
        deploy.rollback(ctx, to=None, dry_run=False)
