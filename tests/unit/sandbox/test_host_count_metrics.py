"""HealthyHostCount / UnHealthyHostCount as the sandbox's load balancers publish them: sampled at
every tick, one statistic set per period, so an alarm on the Minimum fires only for a target that
stayed unhealthy through whole periods (as on AWS), never for one sample of a booting instance."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from release.clock import FakeClock
from release.sandbox.engines.alarms import AlarmDefinition, evaluate
from release.sandbox.patches.cloudwatch import AlarmEvaluator
from release.sandbox.patches.loadbalancers import NAMESPACE, LoadBalancers, _Proxy

SCALE = 0.1  # a 60 s period lasts 6 s
TICK = 0.2
TG = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/abc"
LB = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/web/def"
START = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)  # a period boundary
# The sandbox's seeded alarm: some host unhealthy through 3 periods of 60 s.
UNHEALTHY_HOSTS = AlarmDefinition(
    alarm_name="web-unhealthy-hosts", namespace=NAMESPACE, metric_name="UnHealthyHostCount",
    dimensions=(("TargetGroup", "targetgroup/web/abc"), ("LoadBalancer", "app/web/def")),
    statistic="Minimum", period=60, evaluation_periods=3, datapoints_to_alarm=None, threshold=1.0,
    comparison_operator="GreaterThanOrEqualToThreshold", treat_missing_data="notBreaching",
)


class _Tracker:
    def __init__(self) -> None:
        self.unhealthy = 0

    def host_counts(self, target_group: str) -> tuple[int, int]:
        assert target_group == TG
        return 4 - self.unhealthy, self.unhealthy


class _Balancer:
    def drain_metrics(self) -> list[Any]:
        return []


class _CloudWatch:
    def __init__(self, evaluator: AlarmEvaluator) -> None:
        self.evaluator = evaluator
        self.put: list[dict[str, Any]] = []

    def put_metric_data(self, namespace: str, data: list[dict[str, Any]]) -> None:
        self.put += data
        self.evaluator.record("123456789012", "us-east-1", namespace, data)


def _world() -> tuple[FakeClock, _Tracker, LoadBalancers, _CloudWatch, AlarmEvaluator]:
    clock, tracker = FakeClock(START), _Tracker()
    evaluator = AlarmEvaluator(clock, SCALE)
    balancers = LoadBalancers(clock, SCALE, tracker)  # type: ignore[arg-type]
    cloudwatch = _CloudWatch(evaluator)
    balancers._proxies["listener"] = _Proxy(_Balancer(), LB, "web", 80, TG, cloudwatch)  # type: ignore[arg-type]
    return clock, tracker, balancers, cloudwatch, evaluator


def _run(seconds: float, clock: FakeClock, balancers: LoadBalancers, tracker: _Tracker,
         unhealthy_at: Any) -> None:
    for step in range(round(seconds / TICK)):
        tracker.unhealthy = unhealthy_at(step * TICK)
        balancers.publish()
        clock.advance(TICK)


def _state(clock: FakeClock, evaluator: AlarmEvaluator) -> str:
    store = evaluator.store("123456789012", "us-east-1")
    return evaluate(UNHEALTHY_HOSTS, store, clock.now(), time_scale=SCALE).state


def test_one_statistic_set_per_finished_period_with_every_tick_sampled() -> None:
    clock, tracker, balancers, cloudwatch, _ = _world()
    _run(6.0, clock, balancers, tracker, lambda t: 2 if t < 1.0 else 0)
    assert cloudwatch.put == []  # the first period is still open
    _run(0.2, clock, balancers, tracker, lambda t: 0)
    unhealthy = next(d for d in cloudwatch.put if d["MetricName"] == "UnHealthyHostCount")
    assert unhealthy["StatisticValues"] == {"SampleCount": 30, "Sum": 10, "Minimum": 0, "Maximum": 2}
    assert START <= unhealthy["Timestamp"] < clock.now()  # in the period it describes
    healthy = next(d for d in cloudwatch.put if d["MetricName"] == "HealthyHostCount")
    assert healthy["StatisticValues"]["Minimum"] == 2 and healthy["StatisticValues"]["Maximum"] == 4


def test_instances_booting_one_after_another_never_raise_the_unhealthy_hosts_alarm() -> None:
    # A refresh: each new instance is unhealthy for its first 3 s, a new one every 4 s, for 30 s.
    # One sample per period would catch an unhealthy host in most periods and fire the alarm.
    clock, tracker, balancers, _, evaluator = _world()
    _run(30.0, clock, balancers, tracker, lambda t: 2 if t % 4.0 < 3.0 else 0)
    assert _state(clock, evaluator) == "OK"


def test_a_host_unhealthy_through_three_periods_raises_it() -> None:
    clock, tracker, balancers, _, evaluator = _world()
    _run(6.0, clock, balancers, tracker, lambda t: 0)
    _run(19.0, clock, balancers, tracker, lambda t: 1)
    assert _state(clock, evaluator) == "ALARM"
