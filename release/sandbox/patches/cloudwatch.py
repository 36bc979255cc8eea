"""CloudWatch alarm evaluation, which moto 5.2.5 lacks (PutMetricData never changes an alarm).

Every datapoint moto accepts through PutMetricData (from clients, and from the local load
balancers) is also kept in an `alarms.MetricStore`; once per alarm period (scaled by the time
scale) the server evaluates each metric alarm with `alarms.evaluate` (M out of N, TreatMissingData,
CloudWatch's reasons — see alarms.py) and writes a changed state back as moto's alarm state, with
history, exactly where DescribeAlarms reads it.

As on AWS, SetAlarmState only lasts until the next evaluation: an alarm forced into ALARM without
breaching data returns to its computed state at the next period boundary.
Alarms on metric math or extended statistics are left alone (their state changes only by
SetAlarmState).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from release.clock import Clock, as_utc
from release.errors import UsageError
from release.sandbox.engines.alarms import (
    INITIAL_STATE,
    AlarmDefinition,
    AlarmState,
    MetricStore,
    StatisticSet,
    evaluate,
)
from release.sandbox.patches._replace import replace

log = logging.getLogger("kiln.sandbox.alarms")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RETENTION_AWS_SECONDS = 24 * 3600  # datapoints older than a (scaled) day are dropped


def _timestamp(value: Any, default: datetime) -> datetime:
    return as_utc(value) or default


class AlarmEvaluator:
    def __init__(self, clock: Clock, time_scale: float) -> None:
        self.clock = clock
        self.time_scale = time_scale
        self._stores: dict[tuple[str, str], MetricStore] = {}  # per account and region, like CloudWatch
        self._evaluated_period: dict[str, int] = {}  # alarm ARN -> index of the last period evaluated

    def store(self, account_id: str, region: str) -> MetricStore:
        return self._stores.setdefault((account_id, region), MetricStore())

    def record(self, account_id: str, region: str, namespace: str, metric_data: list[dict[str, Any]]) -> None:
        """PutMetricData's MetricData (boto3 shape), as moto accepted it."""
        store = self.store(account_id, region)
        now = self.clock.now()
        for datum in metric_data:
            dimensions = {d["Name"]: d["Value"] for d in datum.get("Dimensions") or []}
            at = _timestamp(datum.get("Timestamp"), now)
            name = datum["MetricName"]
            if datum.get("Values"):
                counts = datum.get("Counts") or [1] * len(datum["Values"])
                for value, count in zip(datum["Values"], counts, strict=False):
                    for _ in range(int(float(count))):
                        store.put(namespace, name, dimensions, at, float(value))
            elif datum.get("StatisticValues"):
                stats = datum["StatisticValues"]
                store.put_statistics(
                    namespace,
                    name,
                    dimensions,
                    at,
                    StatisticSet(
                        float(stats["SampleCount"]),
                        float(stats["Sum"]),
                        float(stats["Minimum"]),
                        float(stats["Maximum"]),
                    ),
                )
            else:
                store.put(namespace, name, dimensions, at, float(datum.get("Value", 0)))

    def evaluate_due(self, account_id: str, region: str, alarms: list[Any]) -> None:
        """Evaluate each moto alarm once per (scaled) period; write changed states back."""
        store = self.store(account_id, region)
        now = self.clock.now()
        for alarm in alarms:
            definition = self._definition(alarm)
            if definition is None:
                continue
            period = timedelta(seconds=definition.period * self.time_scale)
            index = int((now - _EPOCH) / period)
            last = self._evaluated_period.get(alarm.alarm_arn)
            if last == index:
                continue
            self._evaluated_period[alarm.alarm_arn] = index
            # moto creates alarms in OK; AWS in INSUFFICIENT_DATA until their first evaluation.
            current = (
                AlarmState(alarm.state_value, alarm.state_reason, alarm.state_reason_data)
                if last is not None
                else INITIAL_STATE
            )
            new = evaluate(definition, store, now, current, time_scale=self.time_scale)
            if last is None or new.state != alarm.state_value:
                alarm.update_state(new.reason, new.reason_data or "{}", new.state)
                log.info("alarm %s: %s -> %s (%s)", alarm.name, current.state, new.state, new.reason)
        store.forget_before(now - timedelta(seconds=RETENTION_AWS_SECONDS * self.time_scale))

    @staticmethod
    def _definition(alarm: Any) -> AlarmDefinition | None:
        if not alarm.statistic or alarm.metric_data_queries:
            return None
        try:
            return AlarmDefinition.from_api(
                {
                    "AlarmName": alarm.name,
                    "Namespace": alarm.namespace,
                    "MetricName": alarm.metric_name,
                    "Statistic": alarm.statistic,
                    "Period": alarm.period,
                    "EvaluationPeriods": alarm.evaluation_periods,
                    "Threshold": alarm.threshold,
                    "ComparisonOperator": alarm.comparison_operator,
                    "Dimensions": [{"Name": d.name, "Value": d.value} for d in alarm.dimensions],
                    "DatapointsToAlarm": alarm.datapoints_to_alarm,
                    "TreatMissingData": alarm.treat_missing_data,
                }
            )
        except (UsageError, TypeError, ValueError) as exc:
            log.debug("alarm %s is not evaluated: %s", alarm.name, exc)
            return None


def apply() -> None:
    from moto.cloudwatch.models import CloudWatchBackend

    from release.sandbox.patches import runtime

    original_put: Any = CloudWatchBackend.put_metric_data

    def put_metric_data(self: Any, namespace: str, metric_data: list[dict[str, Any]]) -> None:
        original_put(self, namespace, metric_data)  # validates first
        runtime().alarms.record(self.account_id, self.region_name, namespace, metric_data)

    replace(CloudWatchBackend, "put_metric_data", put_metric_data)
