"""The gate's timeline: samples of each poll, encoded small, decoded back."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
from report.synthetic import NEW, NEW_IMAGE, OLD_IMAGE, VERSIONS, release

from release.model import Check, Verdict, VerdictKind
from release.timeline import (
    RELEASE,
    ROLLBACK,
    Sample,
    Timeline,
    decode,
    omitted_instances,
    sample_of,
    unobserved_sample,
)


def timeline(samples: list[Sample], **kw: int) -> Timeline:
    t = Timeline(**kw)
    for s in samples:
        t.add(s)
    return t


def covering(decoded: list[Sample], original: Sample) -> Sample:
    """The decoded sample that stands for this original poll: the last one at or before it."""
    return [d for d in decoded if d.at <= original.at][-1]


def test_sample_of_names_versions_checks_and_the_decided_reason() -> None:
    synthetic = release(4)
    snap, verdict, watch = synthetic.polls[0]
    sample = sample_of(snap, verdict, watch, VERSIONS)
    assert sample.watch == RELEASE and sample.verdict == "wait" and sample.reason == ""
    assert list(sample.checks) == [c.name for c in verdict.checks]
    assert [i.instance_id for i in sample.instances] == sorted(i.instance_id for i in snap.group.instances)
    assert {i.version for i in sample.instances} == {"1.0.0"}
    assert sample.refresh_status == "InProgress" and sample.alarms == snap.alarms
    last = synthetic.samples[-1]
    assert last.verdict == "pass" and last.reason.startswith("all 4 instances serve")
    unknown = sample_of(snap, verdict, watch, {})
    assert {i.version for i in unknown.instances} == {None}


@pytest.mark.parametrize("n", [4, 16, 500])
def test_round_trip_keeps_every_poll_a_person_could_tell_apart(n: int) -> None:
    synthetic = release(n, fail_batch=2, batch_polls=6 if n < 100 else 22)
    samples = synthetic.samples
    decoded = decode(timeline(samples).encode())
    assert sum(d.polls for d in decoded) == len(samples)
    assert decoded[0].at == samples[0].at and decoded[-1].at == samples[-1].at
    for original in samples:
        kept = covering(decoded, original)
        assert replace(original, at=kept.at, polls=kept.polls) == kept, original.at
    # Every change of state of every instance is there, at the poll it happened.
    ids = {i.instance_id for s in samples for i in s.instances}
    assert ids == {i.instance_id for d in decoded for i in d.instances}
    assert [d.watch for d in decoded].count(ROLLBACK) >= 1
    assert next(d for d in decoded if d.verdict == "fail").reason == synthetic.record.reason


def test_size_for_4_16_and_500_instances_over_about_200_polls(capsys: pytest.CaptureFixture[str]) -> None:
    sizes = {}
    for n, batch_polls in ((4, 50), (16, 25), (500, 22)):
        samples = release(n, batch_polls=batch_polls).samples
        text = timeline(samples).encode()
        sizes[n] = (len(samples), len(text.encode()))
        assert omitted_instances(text) == 0
    with capsys.disabled():
        print("\ntimeline bytes (instances: polls, bytes):", sizes)
    assert all(polls >= 190 for polls, _ in sizes.values())
    assert sizes[4][1] < 5_000 and sizes[16][1] < 15_000
    assert sizes[500][1] < 100_000


def test_a_flapping_fleet_is_thinned_to_the_budget_keeping_what_lasts() -> None:
    synthetic = release(500, fail_batch=4, batch_polls=22, flaps=0.2)
    samples = synthetic.samples
    full = timeline(samples, max_bytes=10_000_000).encode()
    text = timeline(samples, max_bytes=60_000).encode()
    assert len(full.encode()) > 60_000 >= len(text.encode())
    assert len(decode(text)) < len(decode(full))
    decoded = decode(text)
    assert omitted_instances(text) == 0
    assert sum(d.polls for d in decoded) == len(samples)
    # The polls that matter are never thinned: first, last, the failure and the start of the rollback.
    times = {d.at for d in decoded}
    first_fail = next(s for s in samples if s.verdict == "fail")
    first_back = next(s for s in samples if s.watch == ROLLBACK)
    assert {samples[0].at, samples[-1].at, first_fail.at, first_back.at} <= times
    # Each instance is there; what it ends as is kept, and what it went through is in order.
    last_seen = {}
    for s in samples:
        for i in s.instances:
            last_seen[i.instance_id] = (s.at, i)
    lanes: dict[str, list[str]] = {}
    for d in decoded:
        for i in d.instances:
            lanes.setdefault(i.instance_id, [])
            if not lanes[i.instance_id] or lanes[i.instance_id][-1] != i.lifecycle:
                lanes[i.instance_id].append(i.lifecycle)
    assert set(lanes) == set(last_seen)
    for instance_id, (at, state) in last_seen.items():
        if at == samples[-1].at:
            assert next(i for i in decoded[-1].instances if i.instance_id == instance_id) == state
    order = ["Pending", "InService", "Terminating"]
    assert all(lanes_ == sorted(lanes_, key=order.index) for lanes_ in lanes.values())


def test_more_instances_than_the_budget_holds_are_left_out_evenly_and_counted() -> None:
    samples = release(60, batch_polls=8).samples
    text = timeline(samples, max_bytes=3_000).encode()
    assert len(text.encode()) <= 3_000
    left_out = omitted_instances(text)
    assert left_out > 0
    decoded = decode(text)
    shown = {i.instance_id for d in decoded for i in d.instances}
    assert len(shown) + left_out == len({i.instance_id for s in samples for i in s.instances})
    # An even selection: both the old and the new instances are still drawn.
    assert {i.image_id for d in decoded for i in d.instances} == {OLD_IMAGE, NEW_IMAGE}


def test_a_poll_without_an_answer_keeps_the_fleet_as_it_was() -> None:
    samples = release(4).samples
    blind = unobserved_sample(samples[3].at + timedelta(milliseconds=500),
                              Verdict(VerdictKind.WAIT, "AWS has not answered within 3 s"), RELEASE)
    with_gap = [*samples[:4], blind, *(replace(s, at=s.at + timedelta(seconds=1)) for s in samples[4:])]
    decoded = decode(timeline(with_gap).encode())
    gap = next(d for d in decoded if not d.observed)
    assert gap == blind
    after = covering(decoded, with_gap[5])
    assert replace(with_gap[5], at=after.at, polls=after.polls) == after


def test_times_are_kept_to_the_millisecond_and_never_go_back() -> None:
    samples = release(4).samples
    odd = [replace(s, at=s.at + timedelta(microseconds=123_456 * k)) for k, s in enumerate(samples)]
    decoded = decode(timeline(odd).encode())
    for d in decoded:
        assert any(abs((d.at - s.at).total_seconds()) < 0.001 for s in odd)
    # A late observation (it outlived its poll's budget) can carry a time before the poll drawn
    # meanwhile: it is drawn at that poll's time, after it, and nothing fails.
    t = timeline(samples[:3])
    t.add(replace(samples[3], at=samples[1].at))
    assert len(t) == 4
    times = [d.at for d in decode(t.encode())]
    assert times == sorted(times) and times[-1] == samples[2].at


def test_an_empty_timeline_and_an_unknown_format() -> None:
    assert decode(Timeline().encode()) == []
    assert Timeline().samples() == []
    with pytest.raises(ValueError, match="format"):
        decode(json.dumps({"v": 99, "t": []}))


def test_encoded_text_is_compact_json_with_short_keys() -> None:
    text = timeline(release(4).samples).encode()
    body = json.loads(text)
    assert set(body) <= {"v", "t0", "t", "n", "w", "r", "a", "k", "c", "d", "u", "s", "m", "i", "io"}
    assert text == json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    assert [c for c in body["k"]] == ["instance refresh", "alarms", "new image", "ASG health", "target health",
                                      "/health", "served version", "load balancer"]
    assert [NEW_IMAGE, NEW] in body["m"]


def test_checks_that_come_and_go_between_polls() -> None:
    samples = release(4).samples[:3]
    fewer = replace(samples[1], checks={"instance refresh": None})
    verdict = Verdict(VerdictKind.FAIL, "x", (Check("alarms", False, "alarm in ALARM"),))
    odd = [samples[0], fewer, replace(samples[2], checks={c.name: c.ok for c in verdict.checks}, verdict="fail",
                                      reason="x")]
    assert decode(timeline(odd).encode()) == odd
