"""How many AWS calls the sandbox has received, by service and operation.

Every AWS request counts once, when it arrives: the ones a fault rule answers with an error or
delays too (they reached "AWS"), a client's retries each on their own (botocore's attempts are
separate requests, as AWS counts them against its rate limits). Requests the sandbox cannot name
(REST services such as S3, unsigned requests without an `Action`) count as `unnamed`; the admin
API (/_kiln/) is not AWS and never counts.

Read through the admin API: `GET /_kiln/requests`; `DELETE /_kiln/requests` answers the same and
starts counting again from zero in one step, so that nothing arriving in between is lost or counted
twice (a bench measures "calls per poll" that way).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from release.clock import Clock
from release.sandbox.faults import Call


class CallCounter:
    """Thread-safe counts of AWS calls since the server started or the last reset."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._unnamed = 0
        self._since = clock.now()

    def count(self, call: Call | None) -> None:
        """One request arrived: `call` names it, None when the sandbox cannot name it."""
        with self._lock:
            if call is None:
                self._unnamed += 1
            else:
                self._counts[(call.service or "?", call.operation)] += 1

    def snapshot(self) -> dict[str, Any]:
        """{"since", "total", "unnamed", "calls": {service: {operation: n}}}, operations sorted."""
        with self._lock:
            return self._snapshot()

    def reset(self) -> dict[str, Any]:
        """The counts so far (as `snapshot`), then zero from now on: one step, under the lock."""
        with self._lock:
            counted = self._snapshot()
            self._counts.clear()
            self._unnamed = 0
            self._since = self._clock.now()
            return counted

    def _snapshot(self) -> dict[str, Any]:
        calls: dict[str, dict[str, int]] = {}
        for (service, operation), n in sorted(self._counts.items()):
            calls.setdefault(service, {})[operation] = n
        return {
            "since": self._since.isoformat(),
            "total": sum(self._counts.values()) + self._unnamed,
            "unnamed": self._unnamed,
            "calls": calls,
        }
