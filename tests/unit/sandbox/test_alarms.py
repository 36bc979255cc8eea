"""CloudWatch alarm evaluation, table-driven from the examples in AWS's documentation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from release.clock import FakeClock
from release.errors import UsageError
from release.sandbox.engines.alarms import (
    INITIAL_STATE,
    AlarmDefinition,
    AlarmState,
    MetricStore,
    StatisticSet,
    evaluate,
)

NS, METRIC, DIMS = "AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", {"LoadBalancer": "app/web/1"}
START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)  # a period boundary


def _alarm(n: int = 3, m: int | None = None, treat: str = "missing", **overrides: object) -> AlarmDefinition:
    fields: dict[str, object] = {
        "alarm_name": "web-5xx",
        "namespace": NS,
        "metric_name": METRIC,
        "dimensions": tuple(DIMS.items()),
        "statistic": "Sum",
        "period": 60,
        "evaluation_periods": n,
        "datapoints_to_alarm": m,
        "threshold": 5.0,
        "comparison_operator": "GreaterThanThreshold",
        "treat_missing_data": treat,
    }
    fields.update(overrides)
    return AlarmDefinition(**fields)  # type: ignore[arg-type]


def _store_from(pattern: str, clock: FakeClock, period: float = 60.0) -> MetricStore:
    """One letter per period, oldest first: X breaches (10.0), 0 does not (1.0), - is missing.
    Leaves the clock inside the period after the last one (still in progress)."""
    store = MetricStore()
    for letter in pattern.split():
        if letter != "-":
            store.put(NS, METRIC, DIMS, clock.now() + timedelta(seconds=period / 2), 10.0 if letter == "X" else 1.0)
        clock.advance(period)
    clock.advance(period / 3)
    return store


RETAINED = AlarmState("OK", "kept")

# AWS docs, "How alarm state is evaluated when data is missing": 3 out of 3, then 2 out of 3.
# Columns: MISSING, IGNORE (starting from RETAINED), BREACHING, NOT BREACHING.
DOC_TABLE = [
    (3, "0 - X - X", "OK", "OK", "OK", "OK"),
    (3, "0 - - - -", "OK", "OK", "OK", "OK"),
    (3, "- - - - -", "INSUFFICIENT_DATA", "kept", "ALARM", "OK"),
    (3, "0 X X - X", "ALARM", "ALARM", "ALARM", "ALARM"),
    (3, "- - - - X", "INSUFFICIENT_DATA", "kept", "ALARM", "OK"),
    # AWS shows ALARM for `missing` here; the sandbox's rule says INSUFFICIENT_DATA (see alarms.py).
    (3, "X - - - -", "INSUFFICIENT_DATA", "kept", "ALARM", "OK"),
    (2, "0 - X - X", "ALARM", "ALARM", "ALARM", "ALARM"),
    (2, "0 0 X 0 X", "ALARM", "ALARM", "ALARM", "ALARM"),
    (2, "0 - X - -", "OK", "OK", "ALARM", "OK"),
    (2, "- - - - 0", "OK", "OK", "ALARM", "OK"),
    (2, "- - - - X", "INSUFFICIENT_DATA", "kept", "ALARM", "OK"),
]


@pytest.mark.parametrize("row", DOC_TABLE, ids=[f"{r[0]}of3 {r[1]}" for r in DOC_TABLE])
@pytest.mark.parametrize("column", [2, 3, 4, 5], ids=["missing", "ignore", "breaching", "notBreaching"])
def test_documented_missing_data_table(row: tuple[object, ...], column: int) -> None:
    treat = ["missing", "ignore", "breaching", "notBreaching"][column - 2]
    clock = FakeClock(START)
    store = _store_from(str(row[1]), clock)
    result = evaluate(_alarm(3, int(str(row[0])), treat), store, clock.now(), RETAINED)
    expected = row[column]
    if expected == "kept":
        assert result == RETAINED
    else:
        assert result.state == expected


@pytest.mark.parametrize(
    ("operator", "value", "breaches"),
    [
        ("GreaterThanThreshold", 5.0, False),
        ("GreaterThanThreshold", 5.1, True),
        ("GreaterThanOrEqualToThreshold", 5.0, True),
        ("LessThanThreshold", 5.0, False),
        ("LessThanThreshold", 4.9, True),
        ("LessThanOrEqualToThreshold", 5.0, True),
        ("LessThanOrEqualToThreshold", 5.1, False),
    ],
)
def test_comparison_operators(operator: str, value: float, breaches: bool) -> None:
    assert _alarm(comparison_operator=operator).breaches(value) is breaches


@pytest.mark.parametrize(
    ("statistic", "expected"),
    [("Sum", 12.0), ("Average", 4.0), ("Minimum", 1.0), ("Maximum", 8.0), ("SampleCount", 3.0)],
)
def test_statistics_over_a_period(statistic: str, expected: float) -> None:
    clock = FakeClock(START)
    store = MetricStore()
    for second, value in [(1, 3.0), (30, 8.0), (59, 1.0), (60, 100.0)]:  # 60 s is the next period
        store.put(NS, METRIC, DIMS, START + timedelta(seconds=second), value)
    clock.advance(61)
    alarm = _alarm(1, statistic=statistic, threshold=0.0, comparison_operator="GreaterThanThreshold")
    data = json.loads(evaluate(alarm, store, clock.now()).reason_data or "{}")
    assert data["recentDatapoints"] == [expected]


def test_statistic_sets_merge_like_cloudwatch() -> None:
    store = MetricStore()
    store.put_statistics(NS, "TargetResponseTime", DIMS, START, StatisticSet(4, 2.0, 0.1, 1.0))
    store.put(NS, "TargetResponseTime", DIMS, START + timedelta(seconds=5), 3.0)
    merged = store.aggregate(NS, "TargetResponseTime", DIMS, START, START + timedelta(seconds=60))
    assert merged == StatisticSet(5, 5.0, 0.1, 3.0)
    assert merged.value("Average") == 1.0
    assert store.aggregate(NS, "TargetResponseTime", {"LoadBalancer": "other"}, START, START + timedelta(60)) is None


def test_reason_text_for_one_period() -> None:
    clock = FakeClock(START)
    store = MetricStore()
    store.put(NS, METRIC, DIMS, START + timedelta(seconds=70), 7.0)
    clock.advance(125)
    result = evaluate(_alarm(1), store, clock.now())
    assert result == AlarmState(
        "ALARM",
        "Threshold Crossed: 1 datapoint [7.0 (22/11/26 10:01:00)] was greater than the threshold (5.0).",
        result.reason_data,
    )
    data = json.loads(result.reason_data or "{}")
    assert data["evaluatedDatapoints"] == [
        {"timestamp": "2026-11-22T10:01:00.000+0000", "sampleCount": 1.0, "value": 7.0}
    ]
    assert (data["statistic"], data["period"], data["threshold"]) == ("Sum", 60, 5.0)


def test_reason_text_for_m_out_of_n() -> None:
    clock = FakeClock(START)
    store = _store_from("X 0 X", clock)
    result = evaluate(_alarm(3, 2), store, clock.now())
    assert result.state == "ALARM"
    assert result.reason == (
        "Threshold Crossed: 2 out of the last 3 datapoints [10.0 (22/11/26 10:02:00), 10.0 (22/11/26 10:00:00)]"
        " were greater than the threshold (5.0) (minimum 2 datapoints for OK -> ALARM transition)."
    )
    ok = evaluate(_alarm(3, 3), store, clock.now())
    assert ok.reason == (
        "Threshold Crossed: 1 out of the last 3 datapoints [1.0 (22/11/26 10:01:00)] was not greater than the"
        " threshold (5.0) (minimum 1 datapoint for ALARM -> OK transition)."
    )


def test_reason_when_nothing_arrived_and_missing_means_breaching() -> None:
    clock = FakeClock(START)
    store = _store_from("- - -", clock)
    result = evaluate(_alarm(1, treat="breaching"), store, clock.now())
    assert result.reason == (
        "Threshold Crossed: no datapoints were received for 1 period and 1 missing datapoint was treated as"
        " [Breaching]."
    )
    assert evaluate(_alarm(1), store, clock.now()).reason == "Insufficient Data: 3 datapoints were unknown."


def test_period_in_progress_is_not_evaluated_and_recovery_follows() -> None:
    clock = FakeClock(START)
    store = MetricStore()
    alarm = _alarm(1, treat="notBreaching")
    store.put(NS, METRIC, DIMS, clock.now() + timedelta(seconds=1), 9.0)
    clock.advance(59)
    assert evaluate(alarm, store, clock.now()).state == "OK"  # the 5xx's period is not complete yet
    clock.advance(1)
    state = evaluate(alarm, store, clock.now())
    assert state.state == "ALARM"
    clock.advance(60)  # a quiet period: with N = 1 the most recent real datapoint still counts...
    assert evaluate(alarm, store, clock.now(), state).state == "ALARM"
    clock.advance(120)  # ...until it leaves the evaluation range (N + 2 periods)
    assert evaluate(alarm, store, clock.now(), state).state == "OK"


def test_periods_are_scaled_by_time_scale() -> None:
    clock = FakeClock(START)
    store = _store_from("X X 0", clock, period=3.0)  # 60 s periods at time_scale 0.05 last 3 s
    assert evaluate(_alarm(3, 2), store, clock.now(), time_scale=0.05).state == "ALARM"
    assert evaluate(_alarm(3, 3), store, clock.now(), time_scale=0.05).state == "OK"
    assert evaluate(_alarm(3, 2), store, clock.now(), time_scale=1.0).state == "INSUFFICIENT_DATA"


def test_new_alarm_starts_unchecked() -> None:
    assert AlarmState("INSUFFICIENT_DATA", "Unchecked: Initial alarm creation") == INITIAL_STATE
    clock = FakeClock(START)
    store = _store_from("- - -", clock)
    assert evaluate(_alarm(1, treat="ignore"), store, clock.now()) == INITIAL_STATE


def test_from_api_reads_describe_alarms_shape() -> None:
    alarm = AlarmDefinition.from_api(
        {
            "AlarmName": "web-5xx",
            "Namespace": NS,
            "MetricName": METRIC,
            "Dimensions": [{"Name": "LoadBalancer", "Value": "app/web/1"}],
            "Statistic": "Sum",
            "Period": 60,
            "EvaluationPeriods": 3,
            "DatapointsToAlarm": 2,
            "Threshold": 5,
            "ComparisonOperator": "GreaterThanThreshold",
            "TreatMissingData": "notBreaching",
        }
    )
    assert alarm == _alarm(3, 2, "notBreaching")
    assert AlarmDefinition.from_api({**_api_minimal(), "TreatMissingData": None}).treat_missing_data == "missing"
    with pytest.raises(UsageError, match="Statistic"):
        AlarmDefinition.from_api({k: v for k, v in _api_minimal().items() if k != "Statistic"})


def _api_minimal() -> dict[str, object]:
    return {
        "AlarmName": "a",
        "Namespace": NS,
        "MetricName": METRIC,
        "Statistic": "Sum",
        "Period": 60,
        "EvaluationPeriods": 1,
        "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanThreshold",
    }


@pytest.mark.parametrize(
    "overrides",
    [
        {"period": 45},
        {"evaluation_periods": 0},
        {"datapoints_to_alarm": 4},
        {"statistic": "p99"},
        {"comparison_operator": "LessThanLowerOrGreaterThanUpperThreshold"},
        {"treat_missing_data": "zero"},
        {"period": 3600, "evaluation_periods": 25},
    ],
)
def test_invalid_alarms_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        _alarm(**overrides)  # type: ignore[arg-type]


def test_forget_before_drops_old_datapoints() -> None:
    store = MetricStore()
    store.put(NS, METRIC, DIMS, START, 1.0)
    store.put(NS, METRIC, DIMS, START + timedelta(seconds=90), 2.0)
    store.forget_before(START + timedelta(seconds=60))
    assert store.aggregate(NS, METRIC, DIMS, START, START + timedelta(seconds=120)) == StatisticSet.of(2.0)
