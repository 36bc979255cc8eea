"""CloudWatch metric storage and metric-alarm evaluation for the sandbox (moto stores alarms but
never evaluates them).

The control plane puts datapoints (from PutMetricData and from the local load balancer) into a
`MetricStore`, and on every tick calls `evaluate(alarm, store, now, current)` for each alarm,
writing the result back as the alarm's state.

AWS rules followed (CloudWatch user guide, "Using Amazon CloudWatch alarms": evaluating an alarm,
"M out of N", and how alarm state is evaluated when data is missing):

- A metric is identified by namespace, name and the exact set of dimensions. Datapoints are
  aggregated per Period into one value by the alarm's Statistic (SampleCount, Average, Sum,
  Minimum, Maximum). Periods are aligned to multiples of the period since the epoch, and only
  complete periods are evaluated (the one still in progress is not).
- The alarm looks at the N = EvaluationPeriods most recent datapoints and goes to ALARM when at
  least M = DatapointsToAlarm (default N) of them breach the threshold, else OK. The breaching
  datapoints need not be consecutive.
- CloudWatch retrieves more periods than N: the *evaluation range*. AWS does not publish its
  size; the sandbox uses N + 2, which is what the documentation's examples use (5 for N = 3).
  If the range holds at least N real datapoints, the N most recent real ones are evaluated and
  TreatMissingData does not matter. Otherwise the missing ones are filled in as few times as
  possible, per TreatMissingData:
    breaching     -> filled as breaching;   notBreaching -> filled as not breaching;
    missing       -> no datapoint at all: INSUFFICIENT_DATA. Some but fewer than N: ALARM when
                     M of them breach, OK when any of them does not breach, else INSUFFICIENT_DATA;
    ignore        -> like `missing`, except that where `missing` says INSUFFICIENT_DATA the alarm
                     keeps its current state.
  This reproduces every row of the two documented example tables but one: for 3 of 3 with
  datapoints `X - - - -` and `missing`, AWS shows ALARM; the sandbox says INSUFFICIENT_DATA.

Time: the sandbox runs faster than real time. Each period lasts `Period * time_scale` seconds of
the clock; a 60 s period at time_scale=0.05 is 3 s. Reasons and reason data report the alarm's
configured Period, and timestamps of the (scaled) periods.
"""

from __future__ import annotations

import bisect
import json
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast, get_args

from release.errors import UsageError

Statistic = Literal["SampleCount", "Average", "Sum", "Minimum", "Maximum"]
ComparisonOperator = Literal[
    "GreaterThanOrEqualToThreshold", "GreaterThanThreshold", "LessThanThreshold", "LessThanOrEqualToThreshold"
]
TreatMissingData = Literal["missing", "notBreaching", "breaching", "ignore"]
AlarmStateValue = Literal["OK", "ALARM", "INSUFFICIENT_DATA"]

_OPERATOR_WORDS: dict[str, str] = {
    "GreaterThanOrEqualToThreshold": "greater than or equal to",
    "GreaterThanThreshold": "greater than",
    "LessThanThreshold": "less than",
    "LessThanOrEqualToThreshold": "less than or equal to",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class StatisticSet:
    """What CloudWatch keeps of a group of samples (PutMetricData's StatisticValues)."""

    sample_count: float
    sum: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, value: float) -> StatisticSet:
        return cls(1.0, value, value, value)

    def merge(self, other: StatisticSet) -> StatisticSet:
        return StatisticSet(
            self.sample_count + other.sample_count,
            self.sum + other.sum,
            min(self.minimum, other.minimum),
            max(self.maximum, other.maximum),
        )

    def value(self, statistic: Statistic) -> float:
        if statistic == "SampleCount":
            return self.sample_count
        if statistic == "Sum":
            return self.sum
        if statistic == "Minimum":
            return self.minimum
        if statistic == "Maximum":
            return self.maximum
        return self.sum / self.sample_count if self.sample_count else 0.0


Dimensions = tuple[tuple[str, str], ...]


def dimensions_key(dimensions: Mapping[str, str]) -> Dimensions:
    """Dimensions as a hashable, order-free key (CloudWatch matches the exact set)."""
    return tuple(sorted(dimensions.items()))


class MetricStore:
    """Timestamped datapoints per metric. Thread-safe: writers and the evaluator run apart."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str, Dimensions], tuple[list[float], list[StatisticSet]]] = {}
        self._lock = threading.Lock()

    def put(
        self, namespace: str, metric_name: str, dimensions: Mapping[str, str], timestamp: datetime, value: float
    ) -> None:
        self.put_statistics(namespace, metric_name, dimensions, timestamp, StatisticSet.of(value))

    def put_statistics(
        self,
        namespace: str,
        metric_name: str,
        dimensions: Mapping[str, str],
        timestamp: datetime,
        statistics: StatisticSet,
    ) -> None:
        key = (namespace, metric_name, dimensions_key(dimensions))
        at = _seconds(timestamp)
        with self._lock:
            times, values = self._series.setdefault(key, ([], []))
            index = bisect.bisect_right(times, at)
            times.insert(index, at)
            values.insert(index, statistics)

    def aggregate(
        self, namespace: str, metric_name: str, dimensions: Mapping[str, str], start: datetime, end: datetime
    ) -> StatisticSet | None:
        """Everything put with start <= timestamp < end, merged; None when nothing was."""
        with self._lock:
            series = self._series.get((namespace, metric_name, dimensions_key(dimensions)))
            if series is None:
                return None
            times, values = series
            low = bisect.bisect_left(times, _seconds(start))
            high = bisect.bisect_left(times, _seconds(end))
            merged: StatisticSet | None = None
            for stats in values[low:high]:
                merged = stats if merged is None else merged.merge(stats)
            return merged

    def forget_before(self, cutoff: datetime) -> None:
        """Drop datapoints older than `cutoff` (CloudWatch's retention, done on request)."""
        at = _seconds(cutoff)
        with self._lock:
            for times, values in self._series.values():
                index = bisect.bisect_left(times, at)
                del times[:index]
                del values[:index]


@dataclass(frozen=True)
class AlarmDefinition:
    """A metric alarm, with PutMetricAlarm's fields (single metric, static threshold)."""

    alarm_name: str
    namespace: str
    metric_name: str
    statistic: Statistic
    period: int
    evaluation_periods: int
    threshold: float
    comparison_operator: ComparisonOperator
    dimensions: Dimensions = ()
    datapoints_to_alarm: int | None = None  # None: EvaluationPeriods, as in AWS
    treat_missing_data: TreatMissingData = "missing"

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.statistic not in get_args(Statistic):
            problems.append(f"statistic {self.statistic!r} is not one of {', '.join(get_args(Statistic))}")
        if self.comparison_operator not in _OPERATOR_WORDS:
            problems.append(f"comparison operator {self.comparison_operator!r} is not supported by the sandbox")
        if self.treat_missing_data not in get_args(TreatMissingData):
            problems.append(f"TreatMissingData {self.treat_missing_data!r} is not valid")
        if self.period not in (10, 20, 30) and (self.period <= 0 or self.period % 60):
            problems.append("period must be 10, 20, 30 or a multiple of 60 seconds")
        if self.evaluation_periods < 1:
            problems.append("EvaluationPeriods must be at least 1")
        elif self.period * self.evaluation_periods > 86400:
            problems.append("Period * EvaluationPeriods must not exceed one day")
        if self.datapoints_to_alarm is not None and not 1 <= self.datapoints_to_alarm <= self.evaluation_periods:
            problems.append("DatapointsToAlarm must be between 1 and EvaluationPeriods")
        if problems:
            raise UsageError(f"alarm {self.alarm_name}: " + "; ".join(problems))

    @property
    def required_breaches(self) -> int:
        return self.datapoints_to_alarm or self.evaluation_periods

    def breaches(self, value: float) -> bool:
        if self.comparison_operator == "GreaterThanOrEqualToThreshold":
            return value >= self.threshold
        if self.comparison_operator == "GreaterThanThreshold":
            return value > self.threshold
        if self.comparison_operator == "LessThanThreshold":
            return value < self.threshold
        return value <= self.threshold

    @classmethod
    def from_api(cls, alarm: Mapping[str, Any]) -> AlarmDefinition:
        """From a PutMetricAlarm request or a DescribeAlarms MetricAlarms entry."""
        try:
            return cls(
                alarm_name=str(alarm["AlarmName"]),
                namespace=str(alarm["Namespace"]),
                metric_name=str(alarm["MetricName"]),
                statistic=cast(Statistic, alarm["Statistic"]),
                period=int(alarm["Period"]),
                evaluation_periods=int(alarm["EvaluationPeriods"]),
                threshold=float(alarm["Threshold"]),
                comparison_operator=cast(ComparisonOperator, alarm["ComparisonOperator"]),
                dimensions=dimensions_key({d["Name"]: d["Value"] for d in alarm.get("Dimensions") or []}),
                datapoints_to_alarm=int(alarm["DatapointsToAlarm"]) if alarm.get("DatapointsToAlarm") else None,
                treat_missing_data=cast(TreatMissingData, alarm.get("TreatMissingData") or "missing"),
            )
        except KeyError as missing:
            name = alarm.get("AlarmName", "?")
            raise UsageError(
                f"alarm {name}: {missing.args[0]} is required (only metric alarms with a Statistic)"
            ) from None


@dataclass(frozen=True)
class AlarmState:
    """StateValue, StateReason and StateReasonData (JSON text) as DescribeAlarms shows them."""

    state: AlarmStateValue
    reason: str
    reason_data: str | None = None


INITIAL_STATE = AlarmState("INSUFFICIENT_DATA", "Unchecked: Initial alarm creation")


@dataclass(frozen=True)
class _Point:
    timestamp: datetime
    value: float
    sample_count: float
    breaching: bool


def evaluate(
    alarm: AlarmDefinition,
    store: MetricStore,
    now: datetime,
    current: AlarmState = INITIAL_STATE,
    *,
    time_scale: float = 1.0,
) -> AlarmState:
    """The alarm's state at `now`, given its `current` state (which `ignore` may keep)."""
    points, range_start = _evaluation_range(alarm, store, now, time_scale)
    n, m = alarm.evaluation_periods, alarm.required_breaches
    range_size = n + 2
    if len(points) >= n:
        evaluated, fills = points[-n:], 0
    elif alarm.treat_missing_data in ("breaching", "notBreaching"):
        evaluated, fills = points, n - len(points)
    else:
        breaching = sum(p.breaching for p in points)
        if points and (breaching >= m or breaching < len(points)):
            evaluated, fills = points, 0
        elif alarm.treat_missing_data == "ignore":
            return current
        else:
            return AlarmState(
                "INSUFFICIENT_DATA",
                _insufficient_reason(alarm, points, range_size),
                _reason_data(alarm, now, range_start, points),
            )
    fill_breaching = alarm.treat_missing_data == "breaching"
    breaching = sum(p.breaching for p in evaluated) + (fills if fill_breaching else 0)
    state: AlarmStateValue = "ALARM" if breaching >= m else "OK"
    reason = _threshold_reason(alarm, evaluated, fills, fill_breaching, to_alarm=state == "ALARM")
    return AlarmState(state, reason, _reason_data(alarm, now, range_start, evaluated))


def _evaluation_range(
    alarm: AlarmDefinition, store: MetricStore, now: datetime, time_scale: float
) -> tuple[list[_Point], datetime]:
    """Real datapoints of the N + 2 most recent complete periods, oldest first."""
    period = alarm.period * time_scale
    range_end = math.floor(_seconds(now) / period) * period
    starts = [range_end - period * k for k in range(alarm.evaluation_periods + 2, 0, -1)]
    dimensions = dict(alarm.dimensions)
    points: list[_Point] = []
    for start in starts:
        begin = _EPOCH + timedelta(seconds=start)
        stats = store.aggregate(
            alarm.namespace, alarm.metric_name, dimensions, begin, begin + timedelta(seconds=period)
        )
        if stats is not None:
            value = stats.value(alarm.statistic)
            points.append(_Point(begin, value, stats.sample_count, alarm.breaches(value)))
    return points, _EPOCH + timedelta(seconds=starts[0])


def _threshold_reason(
    alarm: AlarmDefinition, evaluated: list[_Point], fills: int, fill_breaching: bool, *, to_alarm: bool
) -> str:
    """CloudWatch's wording, e.g. 'Threshold Crossed: 1 datapoint [7.0 (22/11/26 10:01:00)] was
    greater than the threshold (5.0).'"""
    n = alarm.evaluation_periods
    words = _OPERATOR_WORDS[alarm.comparison_operator]
    if not to_alarm:
        words = f"not {words}"
    shown = [p for p in reversed(evaluated) if p.breaching == to_alarm]  # newest first, as AWS lists them
    counted = len(shown) + (fills if fill_breaching == to_alarm else 0)
    if not evaluated:
        kind = "Breaching" if fill_breaching else "NonBreaching"
        return (
            f"Threshold Crossed: no datapoints were received for {_plural(n, 'period')} and "
            f"{_plural(fills, 'missing datapoint')} {_was(fills)} treated as [{kind}]."
        )
    listed = ", ".join(f"{_number(p.value)} ({_when(p.timestamp)})" for p in shown)
    if n == 1:
        head = f"1 datapoint [{listed}] was"
    else:
        head = f"{counted} out of the last {n} datapoints [{listed}] {_was(counted)}"
    text = f"Threshold Crossed: {head} {words} the threshold ({_number(alarm.threshold)})"
    if fills:
        kind = "Breaching" if fill_breaching else "NonBreaching"
        text += f", with {_plural(fills, 'missing datapoint')} treated as [{kind}]"
    if n > 1:
        needed = alarm.required_breaches if to_alarm else n - alarm.required_breaches + 1
        transition = "OK -> ALARM" if to_alarm else "ALARM -> OK"
        text += f" (minimum {_plural(needed, 'datapoint')} for {transition} transition)"
    return text + "."


def _insufficient_reason(alarm: AlarmDefinition, points: list[_Point], range_size: int) -> str:
    if not points:
        return f"Insufficient Data: {_plural(range_size, 'datapoint')} {_was(range_size)} unknown."
    listed = ", ".join(f"{_number(p.value)} ({_when(p.timestamp)})" for p in reversed(points))
    unknown = alarm.evaluation_periods - len(points)
    return (
        f"Insufficient Data: {_plural(len(points), 'datapoint')} [{listed}] {_was(len(points))} "
        f"{_OPERATOR_WORDS[alarm.comparison_operator]} the threshold ({_number(alarm.threshold)}), "
        f"fewer than the {alarm.required_breaches} needed to alarm; "
        f"{_plural(unknown, 'datapoint')} {_was(unknown)} unknown."
    )


def _reason_data(alarm: AlarmDefinition, now: datetime, start: datetime, points: list[_Point]) -> str:
    return json.dumps(
        {
            "version": "1.0",
            "queryDate": _iso(now),
            "startDate": _iso(start),
            "statistic": alarm.statistic,
            "period": alarm.period,
            "recentDatapoints": [p.value for p in points],
            "threshold": alarm.threshold,
            "evaluatedDatapoints": [
                {"timestamp": _iso(p.timestamp), "sampleCount": p.sample_count, "value": p.value}
                for p in reversed(points)
            ],
        }
    )


def _seconds(moment: datetime) -> float:
    if moment.tzinfo is None:
        raise UsageError("metric timestamps must be timezone-aware")
    return (moment - _EPOCH).total_seconds()


def _number(value: float) -> str:
    return repr(float(value))


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%d/%m/%y %H:%M:%S")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _was(count: int) -> str:
    return "was" if count == 1 else "were"
