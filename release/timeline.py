"""What the gate saw, poll by poll, kept small enough to save with the release. Pure.

Each gate poll becomes a `Sample` (`sample_of(snapshot, verdict, watch, version_of_image)`): the
refresh's status and percentage, every instance of the group (its image and version, lifecycle,
ASG health, target health, /health, served version), the alarms, the gate's checks and its verdict.
A `Timeline` accumulates them as they come and `encode()`s them into one JSON string:

- columnar and by change: each instance is its id, its image and the list of (poll, state) at
  which its state changed; alarms, checks, verdicts, the refresh and the watch likewise. A poll
  that changes nothing costs its time and nothing else.
- bounded (`max_bytes`, 100 KB by default): polls that change nothing a person would see are
  always merged into the poll before them (`Sample.polls` counts what a kept sample stands for).
  When the changes themselves weigh more than the budget (a long flapping fleet), the polls in
  between the ones that matter (first, last, a change of watch, of refresh status or of verdict)
  are thinned evenly until it fits: a state that lasts is still there, dated to the next kept
  poll; only a flap shorter than the kept polls' spacing is lost. As a last resort the instances
  seen last are left out and counted (`omitted_instances`).

`decode(text)` gives the kept samples back, times to the millisecond.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from release.model import Snapshot, Verdict

RELEASE = "release"  # the release's own gate
ROLLBACK = "rollback"  # the watch of the way back
MAX_BYTES = 100_000
FORMAT = 1

_OK = {True: "1", False: "0", None: "?"}
_OK_BACK = {"1": True, "0": False, "?": None}
_ABSENT = "."  # a check the gate did not make at this poll


@dataclass(frozen=True)
class InstanceSample:
    instance_id: str
    image_id: str
    version: str | None  # the version of its image, None when the release does not know the image
    lifecycle: str  # AWS LifecycleState verbatim: Pending, InService, Terminating, Standby, ...
    asg_health: str  # Healthy | Unhealthy
    target_health: str | None  # worst elbv2 state across target groups; None without any
    health_ok: bool | None  # /health answered 200; None: not asked or no answer yet
    served_version: str | None  # what /version said; None: not probed

    @property
    def state(self) -> tuple[str, str, str | None, bool | None, str | None]:
        return (self.lifecycle, self.asg_health, self.target_health, self.health_ok, self.served_version)


@dataclass(frozen=True)
class Sample:
    """One gate poll (or, decoded, a run of polls that looked the same: `polls`)."""

    at: datetime
    watch: str  # RELEASE or ROLLBACK
    refresh_status: str | None  # None: no refresh found
    refresh_percentage: int | None
    instances: tuple[InstanceSample, ...]  # sorted by instance id
    alarms: Mapping[str, str]  # name -> OK | ALARM | INSUFFICIENT_DATA | MISSING
    checks: Mapping[str, bool | None]  # the gate's checks in its order: name -> ok (None: pending)
    verdict: str  # pass | wait | fail
    reason: str = ""  # the verdict's reason once it is decided (pass or fail); "" while waiting
    observed: bool = True  # False: AWS or a probe did not answer this poll (no instances, alarms, refresh)
    polls: int = 1  # how many consecutive polls this sample stands for


def sample_of(snapshot: Snapshot, verdict: Verdict, watch: str, version_of_image: Mapping[str, str]) -> Sample:
    """The sample of one gate poll. `version_of_image` names the images the release knows (the new
    image and the previous one: image id -> version)."""
    refresh = snapshot.refresh
    instances = tuple(sorted(
        (InstanceSample(i.instance_id, i.image_id, version_of_image.get(i.image_id), i.lifecycle, i.asg_health,
                        i.target_health, i.health_ok, i.served_version) for i in snapshot.group.instances),
        key=lambda i: i.instance_id))
    return Sample(at=snapshot.at, watch=watch, refresh_status=refresh.status if refresh else None,
                  refresh_percentage=refresh.percentage_complete if refresh else None, instances=instances,
                  alarms=dict(snapshot.alarms), checks={c.name: c.ok for c in verdict.checks},
                  verdict=str(verdict.kind), reason="" if not verdict.done else verdict.reason)


def unobserved_sample(at: datetime, verdict: Verdict, watch: str) -> Sample:
    """A poll without a snapshot (AWS or a probe did not answer in time): only its verdict."""
    return Sample(at=at, watch=watch, refresh_status=None, refresh_percentage=None, instances=(), alarms={},
                  checks={c.name: c.ok for c in verdict.checks}, verdict=str(verdict.kind),
                  reason="" if not verdict.done else verdict.reason, observed=False)


_State = tuple[str, str, str | None, bool | None, str | None]
_GONE: None = None


@dataclass
class _Instance:
    image_id: str
    version: str | None
    changes: list[tuple[int, _State | None]] = field(default_factory=list)  # (poll, state); None: left the group

    @property
    def last(self) -> _State | None:
        return self.changes[-1][1]


@dataclass(frozen=True)
class _Poll:
    """One poll minus its instances."""

    ms: int
    watch: str
    refresh: tuple[str | None, int | None]
    alarms: tuple[tuple[str, str], ...]
    checks: tuple[tuple[str, bool | None], ...]
    verdict: str
    reason: str
    observed: bool
    polls: int

    def looks_like(self, other: _Poll) -> bool:
        return (self.watch, self.refresh, self.alarms, self.checks, self.verdict, self.reason, self.observed) == (
            other.watch, other.refresh, other.alarms, other.checks, other.verdict, other.reason, other.observed)


class Timeline:
    """The samples of one release, in the order of their polls (both watches in one timeline)."""

    def __init__(self, *, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._t0: datetime | None = None
        self._polls: list[_Poll] = []
        self._instances: dict[str, _Instance] = {}  # in order of first sight
        self._changed: set[int] = set()  # polls at which some instance changed

    def __len__(self) -> int:
        return len(self._polls)

    def add(self, sample: Sample) -> None:
        if self._t0 is None:
            self._t0 = sample.at
        n = len(self._polls)
        ms = round((sample.at - self._t0) / timedelta(milliseconds=1))
        if self._polls:
            # An observation that outlived its poll's time budget is taken up by a later poll and
            # can carry a time before the poll drawn meanwhile: it is drawn at that poll's time.
            ms = max(ms, self._polls[-1].ms)
        self._polls.append(_Poll(ms, sample.watch, (sample.refresh_status, sample.refresh_percentage),
                                 tuple(sorted(sample.alarms.items())), tuple(sample.checks.items()), sample.verdict,
                                 sample.reason, sample.observed, sample.polls))
        if not sample.observed:
            return  # nothing was seen: every instance keeps its last state
        present = set()
        for i in sample.instances:
            present.add(i.instance_id)
            known = self._instances.get(i.instance_id)
            if known is None:
                known = self._instances[i.instance_id] = _Instance(i.image_id, i.version)
            if not known.changes or known.last != i.state:
                known.changes.append((n, i.state))
                self._changed.add(n)
        for instance_id, known in self._instances.items():
            if instance_id not in present and known.changes and known.last is not _GONE:
                known.changes.append((n, _GONE))
                self._changed.add(n)

    def record(self, snapshot: Snapshot, verdict: Verdict, watch: str, version_of_image: Mapping[str, str]) -> None:
        self.add(sample_of(snapshot, verdict, watch, version_of_image))

    def samples(self) -> list[Sample]:
        """What encode() keeps, without the round trip through text."""
        return decode(self.encode())

    # ------------------------------------------------------------------ encoding
    def encode(self) -> str:
        """The timeline as one JSON string of at most `max_bytes` UTF-8 bytes (see the module's doc)."""
        if not self._polls:
            return json.dumps({"v": FORMAT, "t": []}, separators=(",", ":"))
        visible = self._visible()
        text = _joined(*self._parts(visible))
        if _size(text) <= self.max_bytes:
            return text
        anchors = self._anchors(visible)
        others = [p for p in visible if p not in anchors]
        step = 2
        while len(others[::step]) > 1:
            text = _joined(*self._parts(sorted(anchors | set(others[::step]))))
            if _size(text) <= self.max_bytes:
                return text
            step *= 2
        # More instances than the budget holds even with few polls: a coarse timeline (about 50
        # polls) of an even selection of the instances.
        step = max(1, len(others) // max(1, 50 - len(anchors)))
        body, lanes = self._parts(sorted(anchors | set(others[::step])))
        room = self.max_bytes - _size(_joined(body, [])) - 16  # 16: the omitted count
        weights = [_size(json.dumps(lane, separators=(",", ":"), ensure_ascii=False)) + 1 for lane in lanes]
        shown = min(len(lanes), max(0, room) * len(lanes) // max(1, sum(weights)))
        while shown:
            chosen = [lanes[j * len(lanes) // shown] for j in range(shown)]
            if sum(weights[j * len(lanes) // shown] for j in range(shown)) <= room:
                break
            shown -= max(1, shown // 50)
        else:
            chosen = []
        return _joined(body, chosen, omitted=len(lanes) - len(chosen))

    def _visible(self) -> list[int]:
        """The polls that change something a person would see, with the first and the last."""
        last = len(self._polls) - 1
        kept = [0]
        for n in range(1, last + 1):
            if n == last or n in self._changed or not self._polls[n].looks_like(self._polls[kept[-1]]):
                kept.append(n)
        return kept

    def _anchors(self, visible: list[int]) -> set[int]:
        """Polls never thinned: first, last, and where the watch, the refresh's status or the verdict changes."""
        polls = self._polls
        anchors = {visible[0], visible[-1]}
        for a, b in pairwise(visible):
            pa, pb = polls[a], polls[b]
            if (pa.watch, pa.refresh[0], pa.verdict, pa.observed) != (pb.watch, pb.refresh[0], pb.verdict, pb.observed):
                anchors.add(b)
        return anchors

    def _parts(self, kept: Sequence[int]) -> tuple[dict[str, Any], list[list[Any]]]:
        """The encoded timeline at the kept polls: everything but the instances, and one lane per instance."""
        assert self._t0 is not None
        polls = [self._polls[n] for n in kept]
        # Each kept poll stands for itself and the polls merged into it up to the next kept one.
        spans = [sum(p.polls for p in self._polls[a:b]) for a, b in zip(kept, [*kept[1:], len(self._polls)],
                                                                        strict=True)]
        body: dict[str, Any] = {"v": FORMAT, "t0": self._t0.isoformat(), "t": [p.ms for p in polls]}
        if any(s != 1 for s in spans):
            body["n"] = {str(k): s for k, s in enumerate(spans) if s != 1}
        body["w"] = _changes([p.watch for p in polls])
        body["r"] = _changes([list(p.refresh) for p in polls])
        alarm_names = sorted({name for p in polls for name, _ in p.alarms})
        body["a"] = {name: _changes([dict(p.alarms).get(name) for p in polls]) for name in alarm_names}
        check_names = list(dict.fromkeys(name for p in polls for name, _ in p.checks))
        body["k"] = check_names
        body["c"] = _changes([_check_row(p.checks, check_names) for p in polls])
        body["d"] = _changes([[p.verdict, p.reason] for p in polls])
        unobserved = [k for k, p in enumerate(polls) if not p.observed]
        if unobserved:
            body["u"] = unobserved
        states: dict[_State, int] = {}
        images: dict[tuple[str, str | None], int] = {}
        lanes = []
        for instance_id, known in self._instances.items():
            history = _thinned(known.changes, kept)
            if not history:
                continue
            flat: list[int] = []
            for k, state in history:
                flat += [k, -1 if state is None else states.setdefault(state, len(states))]
            lanes.append([instance_id, images.setdefault((known.image_id, known.version), len(images)), flat])
        body["s"] = [list(s) for s in states]
        body["m"] = [list(m) for m in images]
        return body, lanes


def omitted_instances(text: str) -> int:
    """How many instances an encoded timeline left out to stay within its budget."""
    return int(json.loads(text).get("io", 0))


def decode(text: str) -> list[Sample]:
    body = json.loads(text)
    if body.get("v") != FORMAT:
        raise ValueError(f"unknown timeline format {body.get('v')!r}")
    times = body["t"]
    if not times:
        return []
    t0 = datetime.fromisoformat(body["t0"])
    size = len(times)
    spans = [1] * size
    for k, s in body.get("n", {}).items():
        spans[int(k)] = s
    watch = _expand(body["w"], size)
    refresh = _expand(body["r"], size)
    alarms = {name: _expand(changes, size) for name, changes in body["a"].items()}
    names = body["k"]
    checks = _expand(body["c"], size)
    verdicts = _expand(body["d"], size)
    unobserved = set(body.get("u", ()))
    states = [(s[0], s[1], s[2], s[3], s[4]) for s in body["s"]]
    images = body["m"]
    at_poll: list[list[InstanceSample]] = [[] for _ in range(size)]
    for instance_id, image, flat in body["i"]:
        image_id, version = images[image]
        changes = list(zip(flat[::2], flat[1::2], strict=True))
        for j, (k, state) in enumerate(changes):
            if state < 0:
                continue
            end = changes[j + 1][0] if j + 1 < len(changes) else size
            lifecycle, asg, target, health, served = states[state]
            sample = InstanceSample(instance_id, image_id, version, lifecycle, asg, target, health, served)
            for poll in range(k, end):
                at_poll[poll].append(sample)
    out = []
    for k in range(size):
        seen = k not in unobserved
        out.append(Sample(
            at=t0 + timedelta(milliseconds=times[k]), watch=watch[k],
            refresh_status=refresh[k][0] if seen else None, refresh_percentage=refresh[k][1] if seen else None,
            instances=tuple(sorted(at_poll[k], key=lambda i: i.instance_id)) if seen else (),
            alarms={name: states_[k] for name, states_ in alarms.items() if states_[k] is not None} if seen else {},
            checks={name: _OK_BACK[c] for name, c in zip(names, checks[k], strict=True) if c != _ABSENT},
            verdict=verdicts[k][0], reason=verdicts[k][1], observed=seen, polls=spans[k]))
    return out


def _joined(body: dict[str, Any], lanes: list[list[Any]], omitted: int = 0) -> str:
    return json.dumps({**body, "i": lanes, **({"io": omitted} if omitted else {})}, separators=(",", ":"),
                      ensure_ascii=False)


def _size(text: str) -> int:
    return len(text.encode())


def _check_row(checks: tuple[tuple[str, bool | None], ...], names: list[str]) -> str:
    ok = dict(checks)
    return "".join(_OK[ok[n]] if n in ok else _ABSENT for n in names)


def _changes(values: list[Any]) -> list[list[Any]]:
    """[[poll, value], ...] for each poll whose value differs from the poll before."""
    out: list[list[Any]] = []
    for k, value in enumerate(values):
        if not out or out[-1][1] != value:
            out.append([k, value])
    return out


def _expand(changes: list[list[Any]], size: int) -> list[Any]:
    values: list[Any] = [None] * size
    for j, (k, value) in enumerate(changes):
        end = changes[j + 1][0] if j + 1 < len(changes) else size
        values[k:end] = [value] * (end - k)
    return values


def _thinned(changes: list[tuple[int, _State | None]], kept: Sequence[int]) -> list[tuple[int, _State | None]]:
    """An instance's changes seen only at the kept polls: each dated to the first kept poll at or
    after it (as its index among the kept), the last one of a run winning, repeats dropped."""
    out: list[tuple[int, _State | None]] = []
    for poll, state in changes:
        k = bisect_left(kept, poll)
        if k == len(kept):
            break
        if out and out[-1][0] == k:
            out.pop()  # an earlier change of the same run of polls: this one is what the kept poll saw
        if not out or out[-1][1] != state:
            out.append((k, state))
    if out and out[0][1] is None:
        out.pop(0)  # gone before it was ever seen at a kept poll
    return out
