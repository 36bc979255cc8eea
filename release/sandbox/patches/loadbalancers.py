"""Give every Application Load Balancer's HTTP listener a data path: a `LocalLoadBalancer` proxy.

Every load balancer's DNSName is a loopback address of its own (127.100.x.y, from the pool instance
addresses come from), so `http://<DNSName>:<listener port>` works unchanged from boto3, the AWS
CLI or Kiln, with no sandbox-only lookup and no DNS query leaving the machine.

moto's elbv2 is configuration only. With real instances behind EC2 (a data plane), each HTTP
listener whose default action forwards to a target group gets a real reverse proxy listening on
that address at the listener's port, routing to the target group's routable targets as the health
tracker sees them (healthy ones; all unhealthy ones when none is healthy — ALB fails open). Its
metrics, and the target group's HealthyHostCount and UnHealthyHostCount, go into CloudWatch
under namespace AWS/ApplicationELB with the LoadBalancer and the TargetGroup+LoadBalancer
dimensions, as ELB publishes them, where the alarm evaluator sees them.
The proxies' URLs are listed by the admin API (/_kiln/load-balancers).

The host counts are sampled at every tick and published once per period as a statistic set
(SampleCount, Sum, Minimum, Maximum), as ELB reports them: an alarm on the Minimum of
UnHealthyHostCount fires only when some target stayed unhealthy through whole periods, not when a
single sample caught a new instance before its app was up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from release.clock import Clock
from release.sandbox.engines.alarms import StatisticSet
from release.sandbox.engines.alb import LocalLoadBalancer, MetricDatum, is_loopback
from release.sandbox.engines.health import TargetHealthTracker

log = logging.getLogger("kiln.sandbox.alb")

NAMESPACE = "AWS/ApplicationELB"
PERIOD_AWS_SECONDS = 60
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def lb_dimension(load_balancer_arn: str) -> str:
    """CloudWatch's LoadBalancer dimension value: app/<name>/<id>."""
    return load_balancer_arn.split(":loadbalancer/", 1)[1]


def tg_dimension(target_group_arn: str) -> str:
    """CloudWatch's TargetGroup dimension value: targetgroup/<name>/<id>."""
    return target_group_arn.rsplit(":", 1)[1]


def forwarded_group(listener: Any) -> str | None:
    for action in listener.default_actions:
        data = action.data
        if data.get("Type") != "forward":
            continue
        if data.get("TargetGroupArn"):
            return str(data["TargetGroupArn"])
        groups = (data.get("ForwardConfig") or {}).get("TargetGroups") or []
        if groups:
            return str(groups[0]["TargetGroupArn"])
    return None


@dataclass
class _Proxy:
    balancer: LocalLoadBalancer
    load_balancer_arn: str
    load_balancer_name: str
    listener_port: int
    target_group_arn: str
    cloudwatch: Any  # the moto CloudWatch backend of the load balancer's account and region
    # The period being sampled: (its index since the epoch, healthy samples, unhealthy samples).
    host_counts: tuple[int, StatisticSet, StatisticSet] | None = None


class LoadBalancers:
    def __init__(self, clock: Clock, time_scale: float, tracker: TargetHealthTracker) -> None:
        self.clock = clock
        self.time_scale = time_scale
        self.tracker = tracker
        self._proxies: dict[str, _Proxy] = {}  # listener ARN -> proxy

    def _routable(self, target_group_arn: str) -> list[tuple[str, int]]:
        try:
            return self.tracker.routing_targets(target_group_arn)
        except KeyError:  # no target registered yet
            return []

    def _router(self, target_group_arn: str) -> Callable[[], list[tuple[str, int]]]:
        return lambda: self._routable(target_group_arn)

    def sync(self, elbv2_backends: list[Any], cloudwatch_of: Any) -> None:
        """Start proxies for new HTTP forward listeners, stop those whose listener is gone."""
        seen: set[str] = set()
        for backend in elbv2_backends:
            for lb in list(backend.load_balancers.values()):
                if lb.type != "application":
                    continue
                for listener in list(lb.listeners.values()):
                    target_group = forwarded_group(listener)
                    if listener.protocol != "HTTP" or target_group is None:
                        continue
                    seen.add(listener.arn)
                    proxy = self._proxies.get(listener.arn)
                    if proxy is not None and proxy.target_group_arn == target_group:
                        continue
                    if proxy is not None:
                        proxy.balancer.stop()
                    # Where the load balancer's DNS name points (a load balancer made before the
                    # server had its address pool keeps moto's name: it listens on 127.0.0.1).
                    at_home = is_loopback(lb.dns_name)
                    balancer = LocalLoadBalancer(
                        self._router(target_group),
                        self.clock,
                        host=lb.dns_name if at_home else "127.0.0.1",
                        port=int(listener.port) if at_home else 0,
                        period_seconds=PERIOD_AWS_SECONDS * self.time_scale,
                    )
                    balancer.start()
                    self._proxies[listener.arn] = _Proxy(
                        balancer, lb.arn, lb.name, int(listener.port), target_group, cloudwatch_of(backend)
                    )
                    log.info("load balancer %s:%s listens on %s", lb.name, listener.port, balancer.url)
        for arn in [a for a in self._proxies if a not in seen]:
            self._proxies.pop(arn).balancer.stop()

    def publish(self) -> None:
        """Put finished periods' metrics into CloudWatch (moto's, which feeds the evaluator)."""
        now = self.clock.now()
        period = timedelta(seconds=PERIOD_AWS_SECONDS * self.time_scale)
        for proxy in self._proxies.values():
            lb_dims = [{"Name": "LoadBalancer", "Value": lb_dimension(proxy.load_balancer_arn)}]
            both = [{"Name": "TargetGroup", "Value": tg_dimension(proxy.target_group_arn)}, *lb_dims]
            data: list[dict[str, Any]] = []
            for datum in proxy.balancer.drain_metrics():
                data += [_as_api(datum, lb_dims), _as_api(datum, both)]
            data += self._host_counts(proxy, now, period, both)
            for start in range(0, len(data), 1000):  # PutMetricData takes at most 1000 datums
                proxy.cloudwatch.put_metric_data(NAMESPACE, data[start : start + 1000])

    def _host_counts(
        self, proxy: _Proxy, now: datetime, period: timedelta, dimensions: list[dict[str, str]]
    ) -> list[dict[str, Any]]:
        """Sample the target group's host counts; when a period has ended, its statistic sets."""
        try:
            healthy, unhealthy = self.tracker.host_counts(proxy.target_group_arn)
        except KeyError:  # no target registered yet
            healthy, unhealthy = 0, 0
        index = int((now - _EPOCH) / period)
        sampled = proxy.host_counts
        if sampled is not None and sampled[0] == index:
            proxy.host_counts = (index, sampled[1].merge(StatisticSet.of(healthy)),
                                 sampled[2].merge(StatisticSet.of(unhealthy)))
            return []
        proxy.host_counts = (index, StatisticSet.of(healthy), StatisticSet.of(unhealthy))
        if sampled is None:
            return []
        at = _EPOCH + period * sampled[0] + period / 2  # mid-period: no rounding moves it to a neighbour
        return [
            {"MetricName": name, "Dimensions": dimensions, "Timestamp": at, "Unit": "Count",
             "StatisticValues": {"SampleCount": s.sample_count, "Sum": s.sum, "Minimum": s.minimum,
                                 "Maximum": s.maximum}}
            for name, s in (("HealthyHostCount", sampled[1]), ("UnHealthyHostCount", sampled[2]))
        ]

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "load_balancer": proxy.load_balancer_name,
                "load_balancer_arn": proxy.load_balancer_arn,
                "listener_port": proxy.listener_port,
                "target_group_arn": proxy.target_group_arn,
                "url": proxy.balancer.url,
            }
            for proxy in self._proxies.values()
        ]

    def stop_all(self) -> None:
        for proxy in self._proxies.values():
            proxy.balancer.stop()
        self._proxies.clear()


def _as_api(datum: MetricDatum, dimensions: list[dict[str, str]]) -> dict[str, Any]:
    stats = datum.statistics
    return {
        "MetricName": datum.metric_name,
        "Dimensions": dimensions,
        "Timestamp": datum.timestamp,
        "StatisticValues": {
            "SampleCount": stats.sample_count,
            "Sum": stats.sum,
            "Minimum": stats.minimum,
            "Maximum": stats.maximum,
        },
        "Unit": datum.unit,
    }


def apply() -> None:
    """CreateLoadBalancer answers a DNSName that is a loopback address of the load balancer's own."""
    from moto.elbv2.models import ELBv2Backend

    from release.sandbox import patches
    from release.sandbox.patches._replace import replace

    def create_load_balancer(self: Any, *args: Any, **kwargs: Any) -> Any:
        balancer = original(self, *args, **kwargs)
        balancer.dns_name = patches.runtime().addresses.allocate()
        return balancer

    original = replace(ELBv2Backend, "create_load_balancer", create_load_balancer)
