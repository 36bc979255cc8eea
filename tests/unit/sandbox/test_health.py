"""Target health follows ELB's rules: thresholds, reasons, draining, fail-open. FakeClock only."""

from __future__ import annotations

import threading

import pytest

from release.clock import FakeClock
from release.errors import UsageError
from release.sandbox.engines.health import (
    REGISTRATION_DELAY_S,
    HealthCheckConfig,
    Probe,
    TargetHealthTracker,
    TargetState,
)

TG = "arn:aws:elasticloadbalancing:eu-central-1:123456789012:targetgroup/web/abc"
FAST = HealthCheckConfig(
    path="/health",
    interval_seconds=10,
    timeout_seconds=5,
    healthy_threshold=3,
    unhealthy_threshold=2,
    matcher="200-299",
)

MISMATCH_503 = TargetState("unhealthy", "Target.ResponseCodeMismatch", "Health checks failed with these codes: [503]")

# One letter per check: P = 200, M = 503 (code mismatch), T = timeout, E = connection error.
_RESULTS: dict[str, tuple[int | None, bool]] = {
    "P": (200, False),
    "M": (503, False),
    "T": (None, True),
    "E": (None, False),
}


def _tracker(*, initial_healthy_checks: int | None = 1, scale: float = 1.0) -> tuple[TargetHealthTracker, FakeClock]:
    clock = FakeClock()
    tracker = TargetHealthTracker(
        clock, time_scale=scale, initial_healthy_checks=initial_healthy_checks, registration_delay_s=0
    )
    tracker.configure(TG, FAST, deregistration_delay_s=30)
    tracker.register(TG, "i-1", "127.0.1.1", 80)
    return tracker, clock


def _run_checks(tracker: TargetHealthTracker, clock: FakeClock, checks: str) -> None:
    for letter in checks:
        probes = tracker.due_probes()
        assert len(probes) == 1, f"one probe due per interval, got {probes}"
        status, timed_out = _RESULTS[letter]
        tracker.record(probes[0], status, timed_out=timed_out)
        clock.advance(10)


@pytest.mark.parametrize(
    ("checks", "expected"),
    [
        ("", TargetState("initial", "Elb.RegistrationInProgress", "Target registration is in progress")),
        # AWS: a newly registered target must pass one health check to be considered healthy.
        ("P", TargetState("healthy")),
        ("M", TargetState("initial", "Elb.InitialHealthChecking", "Initial health checks in progress")),
        ("MM", MISMATCH_503),
        ("MT", TargetState("unhealthy", "Target.Timeout", "Request timed out")),
        ("TE", TargetState("unhealthy", "Target.FailedHealthChecks", "Health checks failed")),
        ("MP", TargetState("healthy")),
        # healthy -> unhealthy needs UnhealthyThresholdCount (2) consecutive failures
        ("PM", TargetState("healthy")),
        ("PMP", TargetState("healthy")),
        ("PMPM", TargetState("healthy")),
        ("PMM", MISMATCH_503),
        # unhealthy -> healthy needs HealthyThresholdCount (3) consecutive passes
        ("MMPP", MISMATCH_503),
        ("MMPPP", TargetState("healthy")),
        ("MMPPMPP", MISMATCH_503),
        # while unhealthy, the latest failure's reason is reported
        ("MMT", TargetState("unhealthy", "Target.Timeout", "Request timed out")),
    ],
)
def test_threshold_transitions(checks: str, expected: TargetState) -> None:
    tracker, clock = _tracker()
    _run_checks(tracker, clock, checks)
    assert tracker.state(TG, "i-1") == expected


@pytest.mark.parametrize(
    ("checks", "expected"),
    [("PP", "initial"), ("PPP", "healthy"), ("PPMPPP", "healthy"), ("PPMP", "initial")],
)
def test_initial_can_require_the_healthy_threshold(checks: str, expected: str) -> None:
    tracker, clock = _tracker(initial_healthy_checks=None)
    _run_checks(tracker, clock, checks)
    assert tracker.state(TG, "i-1").state == expected


@pytest.mark.parametrize(
    ("matcher", "status", "passes"),
    [
        ("200", 200, True),
        ("200", 204, False),
        ("200,302", 302, True),
        ("200,302", 301, False),
        ("200-299", 299, True),
        ("200-299", 300, False),
        ("200-399, 404", 404, True),
    ],
)
def test_matcher(matcher: str, status: int, passes: bool) -> None:
    assert HealthCheckConfig(matcher=matcher).matches(status) is passes


@pytest.mark.parametrize(
    "kwargs",
    [
        {"matcher": "100"},
        {"matcher": "200-"},
        {"matcher": "299-200"},
        {"interval_seconds": 4},
        {"timeout_seconds": 30, "interval_seconds": 30},
        {"healthy_threshold": 1},
        {"unhealthy_threshold": 11},
        {"protocol": "HTTPS"},
        {"port": "http"},
        {"path": "health"},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        HealthCheckConfig(**kwargs)  # type: ignore[arg-type]


def test_probes_follow_the_scaled_interval_and_port() -> None:
    tracker, clock = _tracker(scale=0.1)
    tracker.configure(
        TG,
        HealthCheckConfig(path="/health", port="8080", interval_seconds=10, timeout_seconds=5),
        deregistration_delay_s=30,
    )
    [probe] = tracker.due_probes()
    assert (probe.ip, probe.port, probe.path, probe.traffic_port) == ("127.0.1.1", 8080, "/health", 80)
    assert probe.timeout == pytest.approx(0.5)
    tracker.record(probe, 200)
    clock.advance(0.9)
    assert tracker.due_probes() == []  # 10 s * 0.1 = 1 s interval
    clock.advance(0.1)
    assert len(tracker.due_probes()) == 1


def test_outstanding_probe_is_not_handed_out_twice_but_a_lost_one_is_retried() -> None:
    # At this scale the interval (0.1 s) is shorter than the probe timeout floor (0.25 s).
    tracker, clock = _tracker(scale=0.01)
    assert len(tracker.due_probes()) == 1
    clock.advance(0.1)  # next interval, but the first result has not come back
    assert tracker.due_probes() == []
    clock.advance(1.15)  # past timeout + grace: the lost probe is replaced
    assert len(tracker.due_probes()) == 1


def test_draining_lasts_the_deregistration_delay_then_target_is_gone() -> None:
    tracker, clock = _tracker()
    _run_checks(tracker, clock, "P")
    tracker.deregister(TG, "i-1")
    draining = TargetState("draining", "Target.DeregistrationInProgress", "Target deregistration is in progress")
    assert tracker.state(TG, "i-1") == draining
    assert tracker.routing_targets(TG) == []
    clock.advance(29)
    assert tracker.due_probes() == []  # draining targets are not checked
    assert tracker.state(TG, "i-1") == draining
    clock.advance(1)
    assert tracker.state(TG, "i-1") == TargetState(
        "unused", "Target.NotRegistered", "Target is not registered to the target group"
    )
    assert tracker.describe(TG) == []


def test_late_result_for_a_deregistered_target_is_ignored() -> None:
    tracker, _ = _tracker()
    [probe] = tracker.due_probes()
    tracker.deregister(TG, "i-1")
    tracker.record(probe, 200)
    assert tracker.state(TG, "i-1").state == "draining"
    tracker.register(TG, "i-1", "127.0.1.1", 80)  # re-registered: starts over
    tracker.record(probe, 200)  # a result from the earlier registration
    assert tracker.state(TG, "i-1").reason == "Elb.RegistrationInProgress"


def test_zero_deregistration_delay_removes_at_once() -> None:
    tracker, _ = _tracker()
    tracker.configure(TG, FAST, deregistration_delay_s=0)
    tracker.deregister(TG, "i-1")
    assert tracker.state(TG, "i-1").reason == "Target.NotRegistered"


def test_unused_and_unavailable_states() -> None:
    tracker, clock = _tracker()
    _run_checks(tracker, clock, "P")
    tracker.set_stopped("i-1", True)
    assert tracker.state(TG, "i-1") == TargetState("unused", "Target.InvalidState", "Target is in the stopped state")
    assert tracker.due_probes() == []
    tracker.set_stopped("i-1", False)
    assert tracker.state(TG, "i-1").reason == "Elb.RegistrationInProgress"  # checked anew after a start
    tracker.set_in_use(TG, False)
    assert tracker.state(TG, "i-1").reason == "Target.NotInUse"
    assert tracker.due_probes() == []
    tracker.configure(TG, HealthCheckConfig(enabled=False), deregistration_delay_s=30)
    assert tracker.state(TG, "i-1").state == "unused"
    tracker.set_in_use(TG, True)
    assert tracker.state(TG, "i-1") == TargetState(
        "unavailable", "Target.HealthCheckDisabled", "Health checks are disabled"
    )
    assert tracker.routing_targets(TG) == [("127.0.1.1", 80)]


def test_routing_prefers_healthy_and_fails_open_to_unhealthy() -> None:
    tracker, clock = _tracker()
    tracker.register(TG, "i-2", "127.0.1.2", 80)
    tracker.register(TG, "i-3", "127.0.1.3", 80)  # never answers: stays initial
    for probe in tracker.due_probes():
        tracker.record(probe, {"i-1": 200, "i-2": 500}.get(probe.target_id))
    clock.advance(10)
    for probe in tracker.due_probes():
        tracker.record(probe, {"i-1": 200, "i-2": 500}.get(probe.target_id))
    assert tracker.healthy_targets(TG) == [("127.0.1.1", 80)]
    assert tracker.routing_targets(TG) == [("127.0.1.1", 80)]
    assert tracker.host_counts(TG) == (1, 2)  # i-2 unhealthy; i-3 two failures -> unhealthy
    tracker.deregister(TG, "i-1")
    assert tracker.healthy_targets(TG) == []
    assert tracker.routing_targets(TG) == [("127.0.1.2", 80), ("127.0.1.3", 80)]  # fail open


def test_describe_lists_ports_and_health_check_port() -> None:
    tracker, _ = _tracker()
    tracker.register(TG, "i-1", "127.0.1.1", 8080)
    rows = tracker.describe(TG)
    assert [(r.target_id, r.port, r.health_check_port) for r in rows] == [
        ("i-1", 80, 80),
        ("i-1", 8080, 8080),
    ]
    tracker.register(TG, "i-1", "127.0.1.1", 80)  # idempotent
    assert len(tracker.describe(TG)) == 2


def test_unknown_group_is_a_key_error() -> None:
    tracker, _ = _tracker()
    with pytest.raises(KeyError):
        tracker.state("nope", "i-1")


def test_concurrent_recording_is_safe() -> None:
    clock = FakeClock()
    tracker = TargetHealthTracker(clock, registration_delay_s=0)
    tracker.configure(TG, FAST)
    for n in range(50):
        tracker.register(TG, f"i-{n}", f"127.0.2.{n}", 80)
    probes: list[Probe] = tracker.due_probes()
    threads = [threading.Thread(target=tracker.record, args=(p, 200)) for p in probes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(tracker.healthy_targets(TG)) == 50


def test_a_target_marked_unhealthy_fails_its_real_health_check_too() -> None:
    """`inv sandbox.fault --unhealthy` with real instances: the admin mark wins over the probe."""
    from release.sandbox.patches.targets import AdminHealthPolicy, dataplane_probe

    class Plane:
        def __init__(self) -> None:
            self.probed: list[str] = []

        def probe(self, ip: str, port: int, path: str, timeout: float) -> int | None:
            self.probed.append(ip)
            return 200

    plane = Plane()
    policy = AdminHealthPolicy(lambda target: "ami-new" if target == "i-2" else "ami-old")
    check = dataplane_probe(plane, policy)  # type: ignore[arg-type]

    def probe(target: str) -> Probe:
        return Probe("tg", target, 80, f"127.100.0.{target[-1]}", 80, "/health", 5.0, 1)

    assert check(probe("i-1")) == (200, False)
    policy.set(instance_id="i-1", healthy=False)
    policy.set(image_id="ami-new", healthy=False)
    assert check(probe("i-1")) == (503, False) and check(probe("i-2")) == (503, False)
    assert plane.probed == ["127.100.0.1"]  # marked targets are not even asked
    policy.clear()
    assert check(probe("i-2")) == (200, False)


def test_the_admin_policy_looks_an_instance_s_image_up_only_while_an_image_is_marked() -> None:
    """Finding an instance's image walks every reservation in moto: not at every health check."""
    from release.sandbox.patches.targets import AdminHealthPolicy

    looked_up: list[str] = []

    def image_of(target: str) -> str:
        looked_up.append(target)
        return "ami-new" if target == "i-2" else "ami-old"

    policy = AdminHealthPolicy(image_of)
    policy.set(instance_id="i-3", healthy=False)
    assert [policy.failing(t) for t in ("i-1", "i-2", "i-3")] == [False, False, True]
    assert looked_up == []
    policy.set(image_id="ami-new", healthy=False)
    assert [policy.failing(t) for t in ("i-1", "i-2", "i-3")] == [False, True, True]
    assert looked_up == ["i-1", "i-2"]


def test_the_first_check_waits_for_registration_so_a_new_target_reads_initial() -> None:
    clock = FakeClock()
    tracker = TargetHealthTracker(clock, time_scale=0.1)
    tracker.configure(TG, FAST)
    tracker.register(TG, "i-1", "127.0.1.1", 80)
    assert tracker.due_probes() == []
    assert tracker.state(TG, "i-1").reason == "Elb.RegistrationInProgress"
    clock.advance(REGISTRATION_DELAY_S * 0.1)
    (probe,) = tracker.due_probes()
    tracker.record(probe, 200)
    assert tracker.state(TG, "i-1").state == "healthy"
